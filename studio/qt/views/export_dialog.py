"""Export the selected variant: format, destination, then the written file is loaded back and
compared with the variant (studio.core.export verifies); the result is shown here. The export
runs on the job runner it is given (workers.Tasks); `exported` carries the verified result."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from studio.core import edge
from studio.core import export as core_export


class ExportDialog(QDialog):
    exported = Signal(object)  # the ExportResult of a finished export

    def __init__(self, tasks, variant, data, folder: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export the selected variant")
        self.tasks = tasks
        self.variant = variant
        self.data = data
        self.result = None
        self.format = QComboBox()
        hints = {}
        for fmt, (label, suffix, needs_torch) in core_export.FORMATS.items():
            if needs_torch and variant.model.framework != "torch":
                continue
            missing = edge.missing(fmt)
            self.format.addItem(f"{label} ({suffix})" + (" · not installed" if missing else ""), fmt)
            if missing:  # shown, with what to install, but not chosen by mistake
                i = self.format.count() - 1
                self.format.model().item(i).setEnabled(False)
                self.format.setItemData(i, missing, Qt.ToolTipRole)
                hints.setdefault(missing, label)
        self.hint = QLabel("<br>".join(f"{label}: {why}" for why, label in hints.items()))
        self.hint.setStyleSheet("color: gray")
        self.hint.setWordWrap(True)
        self.hint.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the pip line can be copied
        self.hint.setVisible(bool(hints))
        self.path = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.folder = folder
        self.format.currentIndexChanged.connect(self._default_path)
        self._default_path()
        dest = QHBoxLayout()
        dest.addWidget(self.path, 1)
        dest.addWidget(browse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.AcceptRole)
        self.export_button.clicked.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        which = "original" if variant.run_id is None else f"run {variant.run_id}, stage {variant.index}"
        form.addRow("Variant", QLabel(f"{variant.model.name} · {which} ({variant.model.framework})"))
        form.addRow("Format", self.format)
        form.addRow("", self.hint)
        form.addRow("Destination", dest)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.buttons)
        self.resize(560, 220)

    def _default_path(self) -> None:
        fmt = self.format.currentData()
        name = core_export.default_name(self.variant.model, fmt)
        if self.variant.run_id is not None:
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{self.variant.run_id}-s{self.variant.index}{dot}{ext}"
        self.path.setText(str(Path(self.folder) / name))

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to", self.path.text())
        if path:
            self.path.setText(path)

    def start(self) -> None:
        fmt, path = self.format.currentData(), self.path.text().strip()
        if not path:
            return
        self.export_button.setEnabled(False)
        self.status.setText("exporting…")

        def job(model, path, fmt, data):
            return (yield from core_export.export(model, path, fmt, data=data))

        self.tasks.start("export", job, self.variant.model, path, fmt, self.data,
                         on_yield=self._progress, on_return=self._done, on_error=self._failed)

    def _progress(self, value) -> None:
        fraction, message = value
        self.progress.setValue(int(100 * fraction))
        self.status.setText(message)

    def _done(self, result) -> None:
        self.result = result
        self.progress.setValue(100)
        ok = "✔ verified" if result.verified else "✘ NOT verified"
        diff = f"max abs diff {result.max_abs_diff:.3g}" if result.max_abs_diff is not None else ""
        agree = f"agreement {result.agreement:.1%}" if result.agreement is not None else ""
        self.status.setText(f"<b>{ok}</b> · {Path(result.path).name} · {result.size_bytes:,} bytes · "
                            f"{diff} · {agree}<br>{result.message}")
        self.export_button.setEnabled(True)
        self.exported.emit(result)

    def _failed(self, exc) -> None:
        self.status.setText(f"<span style='color:#c0392b'>Export failed: {exc}</span>")
        self.export_button.setEnabled(True)
