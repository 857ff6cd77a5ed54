"""Progress of the running job (per stage and overall, with time left) and a log."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QVBoxLayout, QWidget


class LogPanel(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.stage_bar = QProgressBar()
        self.stage_bar.setFormat("stage: %p%")
        self.overall_bar = QProgressBar()
        self.overall_bar.setFormat("overall: %p%")
        self.status = QLabel("idle")
        self.eta = QLabel("")
        self.text = QPlainTextEdit(readOnly=True)
        self.text.setMaximumBlockCount(5000)
        bars = QHBoxLayout()
        bars.addWidget(self.stage_bar, 1)
        bars.addWidget(self.overall_bar, 1)
        bars.addWidget(self.eta)
        lay = QVBoxLayout(self)
        lay.addLayout(bars)
        lay.addWidget(self.status)
        lay.addWidget(self.text)
        self._start = None
        self._last_message = ""
        session.log.connect(self.append)

    def append(self, message: str) -> None:
        self.text.appendPlainText(f"{time.strftime('%H:%M:%S')}  {message}")

    def begin(self, what: str) -> None:
        self._start = time.monotonic()
        self.stage_bar.setValue(0)
        self.overall_bar.setValue(0)
        self.status.setText(what)
        self.eta.setText("")
        self.append(what)

    def progress(self, p) -> None:
        """p: studio.core.pipeline.Progress, or the (fraction, message) of a one-step job (a
        sensitivity analysis)."""
        if isinstance(p, tuple):
            fraction, message = p
            overall, status = fraction, message
        else:
            fraction, message, overall = p.fraction, p.message, p.overall
            status = f"step {p.stage + 1}/{p.stages}: {message}"
        self.stage_bar.setValue(int(100 * fraction))
        self.overall_bar.setValue(int(100 * overall))
        self.status.setText(status)
        if message != self._last_message:
            self._last_message = message
            self.append(message)
        if self._start is not None and overall > 0.05:
            elapsed = time.monotonic() - self._start
            left = elapsed * (1 - overall) / overall
            self.eta.setText(f"about {left:.0f} s left")

    def end(self, message: str) -> None:
        self._start = None
        self.stage_bar.setValue(0)
        self.overall_bar.setValue(0)
        self.eta.setText("")
        self.status.setText(message)
        self.append(message)
