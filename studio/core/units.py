"""One way to write sizes, for the command line, the report, the window's table and chart."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def byte_unit(n: float) -> tuple[str, int]:
    """The binary unit that suits `n` bytes, and its size in bytes."""
    for i, unit in enumerate(UNITS):
        if abs(n) < 1024 ** (i + 1) or unit == UNITS[-1]:
            return unit, 1024**i
    raise AssertionError("unreachable")


def fmt_bytes(n) -> str:
    """1536 -> '1.5 KiB' (binary units, named as such); None -> '-'."""
    if n is None:
        return "-"
    unit, size = byte_unit(n)
    return f"{n:.0f} B" if unit == "B" else f"{n / size:.1f} {unit}"
