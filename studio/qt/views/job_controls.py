"""The Run / Cancel buttons and the one-line error label every job-starting view has."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QPushButton


def job_controls(view, run_text: str) -> None:
    """Give `view` run_button, cancel_button and error, wired to its run_requested and
    cancel_requested signals (jobs.Jobs starts the job and enables them while it runs)."""
    view.run_button = QPushButton(run_text)
    view.run_button.clicked.connect(view.run_requested)
    view.cancel_button = QPushButton("Cancel  (Esc)")
    view.cancel_button.setEnabled(False)
    view.cancel_button.clicked.connect(view.cancel_requested)
    view.error = QLabel()
    view.error.setStyleSheet("color: #c0392b")
    view.error.setWordWrap(True)
