"""All variants in a sortable table (QSortFilterProxyModel), the same numbers as the chart, and
the confusion matrix of the selected stage (labelled data) under it."""

from __future__ import annotations

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLineEdit, QSplitter, QTableView, QVBoxLayout, QWidget

from .confusion import ConfusionView

from studio.core import stage_table
from studio.core.pipeline import run_titles

COLUMNS = ["Run", "Stage", "Quality", "File size", "Zipped", "Parameters", "Nonzeros", "MACs",
           "Latency b1 (ms)", "Latency bN (ms)", "Pass seconds", "Recipe"]
SORT = Qt.UserRole + 1


def _item(text: str, value=None) -> QStandardItem:
    item = QStandardItem(text)
    item.setEditable(False)
    item.setData(value if value is not None else text, SORT)
    if value is not None and not isinstance(value, str):
        item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
    return item


def _cell(cells: dict, key: str, suffix: str = "") -> QStandardItem:
    got = cells.get(key)
    if got is None or got.text == stage_table.NONE:
        return _item(stage_table.NONE, 0.0)
    return _item(got.text + suffix, got.value)


class ResultsTable(QWidget):
    variant_clicked = Signal(str, int)

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SingleSelection)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.view.clicked.connect(self._clicked)
        self.filter = QLineEdit(placeholderText="Filter")
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.confusion = ConfusionView()
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.view)
        split.addWidget(self.confusion)
        split.setSizes([300, 700])  # proportions: a few rows of numbers, the matrix big enough to read
        lay = QVBoxLayout(self)
        lay.addWidget(self.filter)
        lay.addWidget(split, 1)
        session.runs_changed.connect(self.refresh)
        session.stage_selected.connect(lambda: self._show_confusion(self._selected()))

    def extra_columns(self) -> list:
        """Columns only some runs have (stage_table's RAM and latency on other runtimes, when a
        run measured them), after the fixed ones, in the order the text table shows them."""
        extra: dict[str, object] = {}
        for run in self.session.runs:
            for c in stage_table.columns(run):
                if c.key == "ram" or c.key.startswith(tuple(f"{r}_" for r in stage_table.runtimes(run))):
                    extra.setdefault(c.key, c)
        return list(extra.values())

    def refresh(self) -> None:
        self.model.removeRows(0, self.model.rowCount())
        extra = self.extra_columns()
        self.model.setColumnCount(len(COLUMNS) + len(extra))
        self.model.setHorizontalHeaderLabels(COLUMNS + [c.title for c in extra])
        titles = run_titles(self.session.runs)
        for run in self.session.runs:
            base, sizes = run.stages[0].measurement, stage_table.batches(run)
            bn = max(sizes) if sizes and max(sizes) > 1 else None
            for s in run.stages:
                m = s.measurement
                # the numbers as the CLI and the report show them
                c = stage_table.cells(s, base, sizes, stage_table.runtimes(run))
                q = m.quality if m else None
                row = [
                    _item(titles[run.id]), _item(s.label, s.index),
                    _item(f"{m.quality_text} {m.quality_label}" if q is not None else "–", q if q is not None else -1.0),
                    _cell(c, "size"), _cell(c, "zipped"), _cell(c, "parameters"), _cell(c, "nonzeros"), _cell(c, "macs"),
                    _cell(c, "ms_1"), _cell(c, f"ms_{bn}", f" (b{bn})"),
                    _item(f"{s.seconds:.1f}", s.seconds),
                    _item(" → ".join(st.label() for st in s.steps) or "original"),
                    *(_cell(c, col.key) for col in extra),
                ]
                if m is not None:
                    row[2].setToolTip(m.quality_means)  # which measure, and on a model with several outputs which one
                    row[7].setToolTip(m.macs_note)  # an If graph's MACs: the pinned branch, or every branch summed
                row[0].setData((run.id, s.index), Qt.UserRole + 2)
                self.model.appendRow(row)
        self._show_confusion(self._selected())

    def _selected(self) -> tuple | None:
        """The stage shown in the window: a run's stage, or for the original the newest run's
        stage 0; with nothing shown yet, the newest run's last stage."""
        runs = self.session.runs
        if not runs:
            return None
        v = self.session.current
        if v is not None and v.run_id is not None and self.session.stage(v.run_id, v.index) is not None:
            return v.run_id, v.index
        if v is not None and v.run_id is None:
            return runs[-1].id, 0
        return runs[-1].id, len(runs[-1].stages) - 1

    def _show_confusion(self, key: tuple | None) -> None:
        stage = self.session.stage(*key) if key else None
        if stage is None:
            self.confusion.show_measurement(None, "")
            return
        self.confusion.show_measurement(stage.measurement, f"run {key[0]} · {stage.label}")

    def _clicked(self, index) -> None:
        src = self.proxy.mapToSource(index)
        rid, idx = self.model.item(src.row(), 0).data(Qt.UserRole + 2)
        self._show_confusion((rid, idx))  # at once: the window prepares the stage's graph on a worker
        self.variant_clicked.emit(rid, idx)
