"""The studio window: a thin face over studio.core."""

from .compat import guard_none_refcount

guard_none_refcount()  # before any widget paints: see compat.py
