"""Widgets that never force the window wider than a laptop screen (1280x800, or 2x scaling on
2560x1600): combo boxes size to a few characters instead of their longest item, and labels
that show data (file names, layer paths, status) elide instead of growing."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QSizePolicy, QWidget
from superqt import QElidingLabel

COMBO_CHARS = 10


def compact_combo(combo: QComboBox, chars: int = COMBO_CHARS) -> QComboBox:
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


def compact_all_combos(root: QWidget) -> None:
    for combo in root.findChildren(QComboBox):
        compact_combo(combo)


class ElidedLabel(QElidingLabel):
    """A label that shows '…' when narrow; the whole text is in its tooltip."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)
