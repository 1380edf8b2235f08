"""The exception every failed check raises."""

from __future__ import annotations


class SanityError(AssertionError):
    """A sanity check measured something outside its bound.

    A subclass of :class:`AssertionError`, so pytest shows it as a test failure and
    ``pytest.raises(AssertionError)`` catches it. ``result`` holds what the check measured.
    """

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
