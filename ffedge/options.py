"""Checks of numeric options shared by every command (device side): bad values fail before any work."""

from __future__ import annotations

import os

from ffedge.errors import FFEdgeError

# More threads than this only oversubscribes the cores; far more can hang thread-pool start-up.
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))


def check_threads(threads: int | None, option: str = "--threads") -> int | None:
    """``None`` (the library's choice) or a thread count in 1..MAX_THREADS."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise FFEdgeError(f"{option} must be between 1 and {MAX_THREADS}, got {threads!r}")
    return threads


def check_int(value: int | None, option: str, minimum: int = 0, maximum: int | None = None) -> int | None:
    """``None`` or an integer in ``minimum..maximum`` (inclusive)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise FFEdgeError(f"{option} must be {rng}, got {value!r}")
    return value


def check_float(
    value: float | None,
    option: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
    strict_max: bool = False,
) -> float | None:
    """``None`` or a finite float within the bounds (``strict_min``/``strict_max``: excluding the bound)."""
    if value is None:
        return None
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict_min else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if strict_max else value <= maximum
    if not ok:
        low = "" if minimum is None else (f"> {minimum:g}" if strict_min else f">= {minimum:g}")
        high = "" if maximum is None else (f"< {maximum:g}" if strict_max else f"<= {maximum:g}")
        rng = " and ".join(s for s in (low, high) if s) or "finite"
        raise FFEdgeError(f"{option} must be a finite number {rng}, got {value!r}".replace("number finite", "number"))
    return float(value)
