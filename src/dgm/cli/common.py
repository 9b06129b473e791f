"""What the commands share: the standard-error remark."""

from __future__ import annotations


def pm(se: float | None) -> str:
    """'± 0.25' for a standard error, or a remark when there is none (a single example)."""
    return f"± {se:.2f}" if se is not None else "(one example: no standard error)"
