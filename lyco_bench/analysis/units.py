"""Numbers in the units a reader expects: counts ``11.6 k``, sizes ``71 kB`` / ``3.2 MB`` (SI,
1 kB = 1000 bytes, as file browsers show them), durations ``42 s`` / ``3.5 min`` / ``1.2 h``,
relative overheads ``+5.7 %``.

Every function returns ``–`` for a missing value (None, NaN), as the leaderboard's cells do.
"""

from __future__ import annotations

import math

MISSING = "–"
COUNT_PREFIXES = ("", " k", " M", " G", " T")
BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")


def _missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def _scaled(value: float, base: float, n_units: int) -> tuple[float, int]:
    """(value / base**k, k) with the mantissa below ``base`` (the last unit takes the rest)."""
    k = 0
    while abs(value) >= base and k < n_units - 1:
        value /= base
        k += 1
    return value, k


def _significant(value: float, digits: int) -> str:
    """``value`` at ``digits`` significant digits, without an exponent (11.58 → ``11.6``)."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def human_count(value: object) -> str:
    """A count at 3 significant digits with k/M/G: 980 → ``980``, 11580 → ``11.6 k``, 215040 →
    ``215 k``, 1158000 → ``1.16 M``."""
    if _missing(value):
        return MISSING
    number = float(value)  # type: ignore[arg-type]
    if abs(number) < 1000:
        return f"{number:.0f}" if number == round(number) else _significant(number, 3)
    # rounded before scaling: 999 960 → 1.00 M, not 1000 k
    mantissa, k = _scaled(float(f"{number:.3g}"), 1000.0, len(COUNT_PREFIXES))
    return _significant(mantissa, 3) + COUNT_PREFIXES[k]


def human_bytes(value: object) -> str:
    """A size in B/kB/MB/GB: one decimal below 10 of its unit, whole above (70 810 → ``71 kB``,
    3 200 000 → ``3.2 MB``, 512 → ``512 B``)."""
    if _missing(value):
        return MISSING
    number = float(value)  # type: ignore[arg-type]
    mantissa, k = _scaled(number, 1000.0, len(BYTE_UNITS))
    if k == 0:
        return f"{number:.0f} B"
    if round(abs(mantissa)) >= 1000 and k < len(BYTE_UNITS) - 1:
        mantissa, k = mantissa / 1000.0, k + 1  # 999.7 kB → 1.0 MB
    text = f"{mantissa:.1f}" if abs(mantissa) < 9.95 else f"{mantissa:.0f}"
    return f"{text} {BYTE_UNITS[k]}"


def human_percent(value: object) -> str:
    """A fraction as a signed percentage at 2 significant digits: 0.0565 → ``+5.7 %``, 0.5 →
    ``+50 %``, 0 → ``0 %``."""
    if _missing(value):
        return MISSING
    percent = 100.0 * float(value)  # type: ignore[arg-type]
    if percent == 0:
        return "0 %"
    return ("+" if percent > 0 else "") + _significant(percent, 2) + " %"


def human_seconds(value: object) -> str:
    """A duration: ``4.2 s`` / ``42 s`` below a minute, ``3.5 min`` below an hour, else ``1.2 h``."""
    if _missing(value):
        return MISSING
    seconds = float(value)  # type: ignore[arg-type]
    for unit, size, limit in (("s", 1.0, 59.5), ("min", 60.0, 3570.0), ("h", 3600.0, math.inf)):
        if abs(seconds) < limit:
            scaled = seconds / size
            return (f"{scaled:.1f}" if abs(scaled) < 9.95 else f"{scaled:.0f}") + f" {unit}"
    raise AssertionError("unreachable: the last limit is infinite")
