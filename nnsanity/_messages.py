"""Failure messages in one shape: what was measured against what bound, likely causes, how to relax.

Modelled on torch.testing.assert_close and Hypothesis's health checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from nnsanity.errors import SanityError


def failure(
    header: str,
    measured: str,
    causes: Sequence[str] = (),
    relax: str | None = None,
    result: object | None = None,
) -> SanityError:
    """Build the error a failed check raises (the caller writes ``raise failure(...)``)."""
    lines = [f"{header}: {measured}"]
    if causes:
        lines.append("Likely causes: " + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)))
    if relax:
        lines.append(relax)
    return SanityError("\n".join(lines), result=result)
