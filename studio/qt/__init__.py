"""The studio window: a thin face over studio.core."""
