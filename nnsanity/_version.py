"""The package version: its one source (pyproject.toml reads it through hatch)."""

__version__ = "0.2.0.dev0"
