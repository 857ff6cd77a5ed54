"""Progress of the running job (per stage and overall, with time left) and a log. After a job the
bars keep saying how it ended (done, cancelled, failed) until the next one starts."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QProgressBar, QVBoxLayout, QWidget

from ..compact import ElidedLabel

# time left is shown only once the estimate means something: a few percent done, a few seconds in
ETA_MIN_FRACTION = 0.03
ETA_MIN_SECONDS = 2.0


def duration(seconds: float) -> str:
    """'8 s', '2 min 05 s', '1 h 03 min'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LogPanel(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.stage_bar = QProgressBar()
        self.overall_bar = QProgressBar()
        self.status = ElidedLabel("idle")
        self.text = QPlainTextEdit(readOnly=True)
        self.text.setMaximumBlockCount(5000)
        bars = QHBoxLayout()
        bars.addWidget(self.stage_bar, 1)
        bars.addWidget(self.overall_bar, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(bars)
        lay.addWidget(self.status)
        lay.addWidget(self.text)
        self._start = None  # monotonic start of the running job, None when no job runs
        self._overall = 0.0
        self._last_message = ""
        # the estimate is recomputed every second, not only when the job reports: a step that
        # reports nothing for a while makes the time left grow instead of standing still
        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._show_overall)
        self.idle()
        session.log.connect(self.append)

    def append(self, message: str) -> None:
        self.text.appendPlainText(f"{time.strftime('%H:%M:%S')}  {message}")

    def idle(self) -> None:
        """No job has run for the model open."""
        self._stop()
        for bar, name in ((self.stage_bar, "stage"), (self.overall_bar, "overall")):
            bar.setValue(0)
            bar.setFormat(f"{name}: idle")

    def begin(self, what: str, job: bool = True) -> None:
        """A job starts (job=False: something without progress, e.g. opening a model; the bars
        go back to idle)."""
        self.status.setText(what)
        self.append(what)
        self._last_message = ""
        if not job:
            self.idle()
            return
        self._start = time.monotonic()
        self._overall = 0.0
        self.stage_bar.setValue(0)
        self.stage_bar.setFormat("stage: %p%")
        self.overall_bar.setValue(0)
        self._show_overall()
        self._tick.start()

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
        self._overall = overall
        self.status.setText(status)
        if message != self._last_message:
            self._last_message = message
            self.append(message)
        self._show_overall()

    def time_left(self) -> float | None:
        """Seconds left at the pace so far (elapsed / fraction done), or None while that says
        nothing yet."""
        if self._start is None:
            return None
        elapsed = time.monotonic() - self._start
        if self._overall < ETA_MIN_FRACTION or self._overall >= 1 or elapsed < ETA_MIN_SECONDS:
            return None
        return elapsed * (1 - self._overall) / self._overall

    def _show_overall(self) -> None:
        left = self.time_left()
        eta = f" · about {duration(left)} left" if left is not None else ""
        self.overall_bar.setFormat(f"overall: %p%{eta}")

    def end(self, message: str, outcome: str | None = None) -> None:
        """The job ended: outcome 'done' (the bars fill), 'cancelled' or 'failed' (they stay
        where the job got to); None for something without progress (the bars go idle)."""
        elapsed = time.monotonic() - self._start if self._start is not None else None
        self._stop()
        self.status.setText(message)
        self.append(message)
        after = f" after {duration(elapsed)}" if elapsed is not None else ""
        if outcome == "done":
            self.stage_bar.setValue(100)
            self.overall_bar.setValue(100)
            self.stage_bar.setFormat("stage: done")
            self.overall_bar.setFormat(f"overall: done in {duration(elapsed)}" if elapsed is not None
                                       else "overall: done")
        elif outcome in ("cancelled", "failed"):
            self.stage_bar.setFormat(f"stage: {outcome} at %p%")
            self.overall_bar.setFormat(f"overall: {outcome} at %p%{after}")
        else:
            self.idle()

    def _stop(self) -> None:
        self._tick.stop()
        self._start = None
        self._overall = 0.0

    def bar_texts(self) -> tuple[str, str]:
        """What the two bars read (their format with the percentage filled in)."""
        return self.stage_bar.text(), self.overall_bar.text()
