"""The main window: menus, docks, and the glue between the session, the views and the workers.
Every heavy call into studio.core runs on a worker (workers.Tasks); slots only move results
into the session. The long jobs (recipe run, sensitivity analysis, search) are jobs.Jobs'."""

from __future__ import annotations

import hashlib
import os
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QPushButton, QStackedWidget, QTabWidget,
    QVBoxLayout, QWidget,
)

from studio.core import plugins
from studio.core.errors import Cancelled, LoadError, StudioError, TrustRequired


def _load_views() -> None:
    """The views and what they import (pyqtgraph, superqt, pydantic: over a second on 2 cores)
    load on first use, not with this module: `studio` paints its window before they are ready
    (MainWindow(deferred=True))."""
    global Recipe, ElidedLabel, compact_all_combos, Session, Variant, CompareView, tensor_key, DistributionView
    global GraphView, HistogramOptions, SizeDialog, from_items, sizing_needed, to_items, LayerInspector, LogPanel
    global RecipePanel, ResultsTable, SearchView, SensitivityView, TradeoffChart, Tasks
    from studio.core.recipe import Recipe

    from .app import _plots_follow_palette
    from .compact import ElidedLabel, compact_all_combos
    from .session import Session, Variant
    from .views.compare import CompareView, tensor_key
    from .views.distribution import DistributionView
    from .views.graph_view import GraphView
    from .views.histogram import HistogramOptions
    from .views.inputs_panel import SizeDialog, from_items, sizing_needed, to_items
    from .views.inspector import LayerInspector
    from .views.log_panel import LogPanel
    from .views.recipe_panel import RecipePanel
    from .views.results import ResultsTable
    from .views.search_view import SearchView
    from .views.sensitivity import SensitivityView
    from .views.tradeoff import TradeoffChart
    from .workers import Tasks

    _plots_follow_palette(QApplication.instance())  # pyqtgraph follows the light or dark palette

MAX_RECENT = 10
DEMO_MODELS = ("cnn", "mlp", "resnet")


def about_text() -> str:
    """Versions of the studio and of the libraries whose behaviour its numbers depend on."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    libs = ("torch", "onnx", "onnxruntime", "onnxscript", "torch-pruning", "onnx2torch", "PySide6", "pyqtgraph", "netron")
    rows = "".join(f"<tr><td>{name}</td><td>&nbsp;&nbsp;{version(name)}</td></tr>" for name in libs)
    return (f"<h3>Compression Studio {version('compression-studio')}</h3>"
            "<p>Make a trained model smaller and faster, and see what it cost.</p>"
            f"<table>{rows}</table>")


def settings() -> QSettings:
    """STUDIO_SETTINGS=path.ini keeps tests and screenshots away from the user's settings."""
    path = os.environ.get("STUDIO_SETTINGS")
    return QSettings(path, QSettings.IniFormat) if path else QSettings("compression-studio", "studio")


# Weight statistics of a large model take seconds (BERT-base: ~5 s, more than loading and the
# graph together): over this many parameters the graph is drawn first and they follow.
STATS_INLINE_PARAMS = 5_000_000


STATS_DELAY_MS = 150  # from a big model's graph on screen to its statistics' start


def prepare_variant(model, run_id=None, index=0, stats: bool | None = None) -> Variant:
    """Graph, layout and (small models, or stats=True) statistics of a model: worker-thread work.
    Without statistics the variant is `stats_pending`: MainWindow.fill_stats computes them."""
    from studio.core.graph import build_graph
    from studio.core.stats import layer_stats

    from .layout import layout
    from .session import Variant

    graph = build_graph(model)
    variant = Variant(run_id, index, model, graph, layout(graph))
    if stats or (stats is None and graph.total_parameters <= STATS_INLINE_PARAMS):
        variant.stats = layer_stats(model)
    else:
        variant.stats_pending = True
    return variant


STATS_LET_GO_S = 1.0  # how long a load waits for the previous model's statistics to stop


def load_job(path: str, trust: bool, stats_stopped: threading.Event | None = None):
    from studio.core import io

    # the statistics being stopped may be inside one copy of a big tensor (BERT-base's embedding:
    # ~50 ms holding the GIL); this load's own reads hold it as long: one after the other, not
    # back to back in one stall of the window (117 ms measured)
    if stats_stopped is not None:
        stats_stopped.wait(STATS_LET_GO_S)
    return prepare_variant(io.load(path, trust=trust, isolate=True))


def demo_job(name: str, stats_stopped: threading.Event | None = None):
    from studio.core import zoo

    if stats_stopped is not None:
        stats_stopped.wait(STATS_LET_GO_S)
    return prepare_variant(zoo.load(name))


def warm_up_job():
    """First use of torch's training path, onnxruntime and the digits loader pays one-off costs
    (imports, lazy initialisation) that hold the GIL for a few hundred ms. Paid here, right after
    start-up, they do not stall the window in the middle of the user's first run."""
    from studio.core.io.onnx_child import PARSER

    PARSER.start()  # the child that parses ONNX files for the window: its imports run beside these
    import torch

    import onnxruntime  # noqa: F401
    from onnxruntime import quantization  # noqa: F401

    from studio.core import data
    from studio.core.evaluate import measure
    from studio.core.model import TORCH, Model

    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 10))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    loss = module(torch.zeros(2, 1, 8, 8)).sum()
    loss.backward()
    optimizer.step()
    # the first measurement (ONNX export, session, zipped size, MACs) held the GIL for ~120 ms
    # in one piece, in "measuring the original model" of the user's first run
    measure(Model(module.eval(), TORCH, (1, 1, 8, 8), name="warm-up"), data.digits())
    return True


class _FirstPaint(QObject):
    """Calls `then` once, at the first paint of `widget`."""

    def __init__(self, widget: QWidget, then):
        super().__init__(widget)
        self.then = then
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Paint and self.then is not None:
            then, self.then = self.then, None
            obj.removeEventFilter(self)
            then()
        return False


class MainWindow(QMainWindow):
    def __init__(self, parent=None, warm_up: bool = False, deferred: bool = False):
        """deferred: show the window with its welcome page first and build the views right after
        its first paint (`studio` at start-up); call when_ready() for what needs them."""
        super().__init__(parent)
        self.setWindowTitle("Compression Studio")
        self.setAcceptDrops(True)
        self.settings = settings()
        self.ready = False
        self._when_ready: list = []
        self.stack = QStackedWidget()
        self.stack.addWidget(self._welcome())
        self.setCentralWidget(self.stack)
        self._fit_to_screen(1400, 900)
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if deferred:
            self._first_paint = _FirstPaint(self.stack, lambda: QTimer.singleShot(0, lambda: self._build(warm_up)))
            QTimer.singleShot(3000, lambda: self._build(warm_up))  # a window never painted (minimized) builds too
        else:
            self._build(warm_up)

    def when_ready(self, call) -> None:
        """Run call() once the views exist (at once when they do)."""
        if self.ready:
            call()
        else:
            self._when_ready.append(call)

    def _build(self, warm_up: bool) -> None:
        if hasattr(self, "session"):  # built already
            return
        _load_views()
        from .jobs import Jobs

        self.session = Session(self)
        self.tasks = Tasks(self)
        self.variants: dict[tuple, Variant] = {}  # prepared variants (graph, layout, stats) by (run, stage)
        self.error_box: QMessageBox | None = None
        self.trust_box: QMessageBox | None = None
        self.export_dialog = None
        self.size_dialog: SizeDialog | None = None
        self.inputs_key: str | None = None  # where the open model's input settings are kept
        self._sized = None  # (model, --input items, the model sized with them)
        self.auto_random = False  # the data went to random because the last model could not take digits
        self.netron = None

        s = self.session
        self.graph_view = GraphView(s, self.tasks)
        self.chart = TradeoffChart(s)
        self.results = ResultsTable(s)
        self.histogram_options = HistogramOptions(self.settings, self)  # one pair of toggles for every histogram
        self.compare = CompareView(s, self.histogram_options)
        self.inspector = LayerInspector(s, self.histogram_options, tasks=self.tasks)
        self.inspector.setMinimumWidth(240)  # room for the histogram and heatmap axes, and for a laptop
        self.distribution = DistributionView(s)
        self.recipe_panel = RecipePanel(s)
        self.log_panel = LogPanel(s)
        for line in plugins.problems():  # the recipe panel looked the passes up: a broken plugin, one line
            self.log_panel.append(f"⚠ {line}")
        self.sensitivity_view = SensitivityView(s)
        self.chart.variant_clicked.connect(self.show_stage)
        self.results.variant_clicked.connect(self.show_stage)
        self.recipe_panel.inputs.changed.connect(self._inputs_changed)
        self.sensitivity_view.exclude_requested.connect(self.exclude_layers)
        self.search_view = SearchView(s)
        self.search_view.recipe_picked.connect(self.pick_recipe)
        # the recipe run, the sensitivity analysis and the search: started from those three views
        self.jobs = Jobs(s, self.tasks, self.log_panel, self.settings, self.sized_model, self.recipe_panel,
                         self.sensitivity_view, self.search_view, self)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.graph_view, "Graph")
        self.tabs.addTab(self.chart, "Trade-off")
        self.tabs.addTab(self.results, "Results")
        self.tabs.addTab(self.compare, "Compare")
        self.tabs.addTab(self.sensitivity_view, "Sensitivity")
        self.netron_page = QWidget()  # the web view is created on first visit, never at start-up
        QVBoxLayout(self.netron_page)
        self.tabs.addTab(self.netron_page, "Netron")
        self.tabs.addTab(self.search_view, "Search")
        self.tabs.currentChanged.connect(self._tab_changed)
        self.stack.addWidget(self.tabs)

        self.docks = {}
        for key, title, widget, area in (
            ("recipe", "Recipe", self.recipe_panel, Qt.LeftDockWidgetArea),
            ("inspector", "Layer inspector", self.inspector, Qt.RightDockWidgetArea),
            ("distribution", "Parameter distribution", self.distribution, Qt.RightDockWidgetArea),
            ("log", "Progress and log", self.log_panel, Qt.BottomDockWidgetArea),
        ):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock_{key}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[key] = dock
        self.tabifyDockWidget(self.docks["inspector"], self.docks["distribution"])
        self.docks["inspector"].raise_()
        self._menus()
        compact_all_combos(self)  # every view's combo boxes: sized to a few characters, not their longest item
        self.status = ElidedLabel("Open a model to begin.")
        self.statusBar().addWidget(self.status, 1)
        self.working = QLabel("working…")  # its own label: showMessage() would hide the status text
        self.working.hide()
        self.statusBar().addPermanentWidget(self.working)
        s.model_changed.connect(self._model_changed)
        self.tasks.busy_changed.connect(self.working.setVisible)
        self.jobs.running_changed.connect(self._set_running)
        # a run landed: switching tabs paints the chart, a separate event, so no single slot stalls the window
        self.jobs.run_added.connect(lambda: QTimer.singleShot(0, lambda: self.tabs.setCurrentWidget(self.chart)))
        state = self.settings.value("state")
        if state is not None:
            self.restoreState(state)
        else:  # first start: room for the inspector's plots, a short log
            QTimer.singleShot(0, lambda: (
                self.resizeDocks([self.docks["recipe"], self.docks["inspector"]], [400, 460], Qt.Horizontal),
                self.resizeDocks([self.docks["log"]], [160], Qt.Vertical)))
        data = self.settings.value("data_spec")
        if data:
            s.set_data_spec(str(data))
        if warm_up:
            from .compat import freeze_start_up

            # warm: what start-up made lives to the end; full collections stop walking it
            self.tasks.start("warm-up", warm_up_job, on_return=lambda _: freeze_start_up(), on_error=lambda e: None)
        self.ready = True
        for call in self._when_ready:
            call()
        self._when_ready.clear()

    def _fit_to_screen(self, width: int, height: int) -> None:
        """The first size: what we'd like, but never more than the screen offers (a 1280x800 laptop)."""
        screen = self.screen()
        if screen is not None:
            room = screen.availableGeometry()
            width, height = min(width, room.width()), min(height, room.height())
        self.resize(width, height)

    # -- layout pieces -------------------------------------------------------------------
    def _welcome(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.addStretch(1)
        title = QLabel("<h1>Compression Studio</h1><p>Open a model (ONNX, TorchScript, torch.export, "
                       "state_dict, safetensors), drop one here, or start with the demo.</p>")
        title.setAlignment(Qt.AlignCenter)
        title.setWordWrap(True)
        lay.addWidget(title)
        self.demo_button = QPushButton("Open demo model (a small CNN trained on digits)")
        self.demo_button.setMinimumHeight(48)
        self.demo_button.clicked.connect(lambda: self.when_ready(lambda: self.open_demo("cnn")))
        open_button = QPushButton("Open a model file…")
        open_button.setMinimumHeight(36)
        open_button.clicked.connect(lambda: self.when_ready(self.open_dialog))
        for b in (self.demo_button, open_button):
            lay.addWidget(b, 0, Qt.AlignCenter)
        lay.addStretch(2)
        return w

    def _action(self, menu, text, slot, shortcut=None, name=None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        if name:
            self.actions_[name] = action
        return action

    def _menus(self) -> None:
        self.actions_: dict[str, QAction] = {}
        bar = self.menuBar()
        f = bar.addMenu("&File")
        self._action(f, "&Open…", self.open_dialog, QKeySequence.Open, "open")
        demo = f.addMenu("Open &demo model")
        for name in DEMO_MODELS:
            self._action(demo, name, lambda checked=False, n=name: self.open_demo(n), name=f"demo_{name}")
        self.recent_menu = f.addMenu("&Recent")
        self._fill_recent()
        f.addSeparator()
        self._action(f, "&Export selected variant…", self.export_selected, "Ctrl+E", "export")
        self._action(f, "Save &report (HTML)…", self.save_report_dialog, "Ctrl+Shift+S", "report")
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.Quit, "quit")
        r = bar.addMenu("&Recipe")
        self._action(r, "&Load…", self.load_recipe_dialog, "Ctrl+L", "load_recipe")
        self._action(r, "&Save…", self.save_recipe_dialog, QKeySequence.Save, "save_recipe")
        self._action(r, "&Run", self.jobs.run_recipe, "Ctrl+R", "run")
        self._action(r, "&Cancel", self.jobs.cancel, "Esc", "cancel")
        r.addSeparator()
        self._action(r, "Run se&nsitivity analysis", self.sensitivity_from_menu, "Ctrl+Shift+R",
                     "sensitivity")
        exclude = self.sensitivity_view.exclude_button
        self._action(r, "E&xclude sensitive layers", lambda: exclude.click(), None, "exclude")
        r.aboutToShow.connect(lambda: self.actions_["exclude"].setEnabled(exclude.isEnabled()))
        v = bar.addMenu("&View")
        for i in range(self.tabs.count()):  # Ctrl+1 … Ctrl+6: the tabs, in their order
            self._action(v, self.tabs.tabText(i), lambda checked=False, i=i: self.tabs.setCurrentIndex(i),
                         f"Ctrl+{i + 1}", f"tab_{self.tabs.tabText(i).lower()}")
        v.addSeparator()
        for dock in self.docks.values():
            v.addAction(dock.toggleViewAction())
        v.addSeparator()
        self._action(v, "Zoom &in", self.graph_view.zoom_in, "Ctrl+=", "zoom_in")
        self._action(v, "Zoom &out", self.graph_view.zoom_out, "Ctrl+-", "zoom_out")
        self._action(v, "&Fit graph", self.graph_view.fit, "Ctrl+0", "fit")
        self._action(v, "Find layer", lambda: self.graph_view.search.setFocus(), QKeySequence.Find, "find")
        # not "Ctrl+O, O": Ctrl+O opens a file at once, so that chord could never be typed
        self._action(v, "Show &original model", self.show_original, "Ctrl+Home", "original")
        h = bar.addMenu("&Help")
        self._action(h, "&Keyboard shortcuts", lambda: self._info("Keyboard shortcuts", self.shortcuts_text()),
                     QKeySequence.HelpContents, "shortcuts")
        self._action(h, "&About Compression Studio", lambda: self._info("About", about_text()), None, "about")
        self._set_running(False)

    def shortcuts_text(self) -> str:
        """Every command that has a shortcut, as the menus show it (one table, from the actions)."""
        rows = [(a.text().replace("&", ""), a.shortcut().toString(QKeySequence.NativeText))
                for a in self.actions_.values() if not a.shortcut().isEmpty()]
        return "<table>" + "".join(f"<tr><td>{t}</td><td>&nbsp;&nbsp;<b>{k}</b></td></tr>" for t, k in rows) + "</table>"

    def _info(self, title: str, html: str) -> None:
        box = QMessageBox(QMessageBox.Information, title, html, QMessageBox.Ok, self)
        box.setTextFormat(Qt.RichText)
        box.open()  # window-modal, not blocking the event loop (jobs keep reporting)

    # -- opening -------------------------------------------------------------------------
    def open_dialog(self) -> None:
        from studio.core.io.detect import file_filter

        if self._open_refused("another model"):  # before the dialog, not after a file was chosen
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a model", self.folder("open"), file_filter())
        if path:
            self.open_path(path)

    # Opening another model while a recipe run or a sensitivity analysis works is refused with a
    # message, rather than cancelling the job: the job may be minutes of fine-tuning the user
    # asked for, and one deliberate Esc (or waiting) costs less than losing it to a stray drop
    # or a click in Recent. The job keeps its progress bars, its Run buttons come back when it
    # ends, and the open can simply be repeated then. The other way round, Run waits while a
    # model is being opened (its result would be for a model about to be replaced).
    def _open_refused(self, what: str) -> bool:
        if not self.jobs.running():
            return False
        message = (f"A {self.jobs.label} is in progress: wait for it to finish or cancel it (Esc), "
                   f"then open {what}.")
        self.statusBar().showMessage(message, 15_000)
        self.log_panel.append(message)
        return True

    def open_path(self, path: str, trust: bool = False) -> None:
        path = str(path)
        if self._open_refused(path):
            return
        self.log_panel.begin(f"opening {path}", job=False)
        self.remember_folder("open", str(Path(path).parent))
        stopped = self._stop_stats()
        self.tasks.start("load", load_job, path, trust, stopped,
                         on_return=lambda v: self._opened(v, path),
                         on_error=lambda e: self._open_failed(e, path))

    def open_demo(self, name: str = "cnn") -> None:
        if self._open_refused(f"the demo model '{name}'"):
            return
        self.log_panel.begin(f"opening the demo model '{name}'", job=False)
        stopped = self._stop_stats()
        self.tasks.start("load", demo_job, name, stopped, on_return=lambda v: self._opened(v, None),
                         on_error=lambda e: self._open_failed(e, f"demo {name}"))

    def _opened(self, variant: Variant, path: str | None) -> None:
        if self._open_refused(path or f"the demo model '{variant.model.name}'"):
            return  # a job started while this was loading (Run waits for loads: should not happen)
        self.variants = {variant.key: variant}
        self.session.set_model(variant)
        # after the views have painted and the window has handled its events: the statistics'
        # first copy of a big tensor holds the GIL (BERT-base's 94 MB embedding: ~50 ms); started
        # on the next turn of the event loop it still followed this handler's own time in one stall
        # (not if another model is being opened by then: _open_failed starts them if that fails)
        generation = self.session.generation
        def late_stats() -> None:
            if self.session.generation == generation and not self.tasks.running("load"):
                self.fill_stats(variant)

        QTimer.singleShot(STATS_DELAY_MS, self, late_stats)
        if path:
            self._add_recent(path)
        m = variant.model
        self._show_inputs(m, path)
        self.log_panel.end(f"opened {m.name} ({m.framework}, {m.format}): {len(variant.graph.nodes)} nodes, "
                           f"{variant.graph.total_parameters:,} parameters")

    def _stop_stats(self) -> threading.Event | None:
        """Stop the statistics of the model shown (another one is being opened); the event their
        worker sets once it has let go (None: none running)."""
        running = getattr(self, "_stats_running", None)
        if running is None:
            return None
        cancel, stopped = running
        cancel.set()
        self._stats_running: tuple[threading.Event, threading.Event] | None = None
        return stopped

    def _open_failed(self, exc: Exception, what: str) -> None:
        current = self.session.current
        if current is not None and current.stats_pending:
            self.fill_stats(current)  # the model still shown: its statistics, stopped for this open
        if isinstance(exc, TrustRequired):
            self.log_panel.end(f"{what}: asks for trust")
            self.ask_trust(what, str(exc))
            return
        reason = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
        self.log_panel.end(f"could not open {what}: {reason}")
        details = "".join(traceback.format_exception(exc)) if not isinstance(exc, LoadError) else f"{what}\n{reason}"
        self.show_error("Cannot open the model", reason.splitlines()[0] if reason else "unknown error", details)

    def ask_trust(self, path: str, reason: str) -> None:
        box = QMessageBox(QMessageBox.Warning, "Trust this file?",
                          f"{reason}\n\nLoading it runs Python code stored in the file. "
                          "Only continue if you trust where it came from.",
                          QMessageBox.Yes | QMessageBox.No, self)
        box.setDefaultButton(QMessageBox.No)
        box.button(QMessageBox.Yes).setText("Trust and open")
        box.finished.connect(lambda result: result == QMessageBox.Yes and self.open_path(path, trust=True))
        self.trust_box = box
        box.open()  # not exec(): no nested event loop, tests can answer it

    def show_error(self, title: str, reason: str, details: str = "") -> None:
        box = QMessageBox(QMessageBox.Critical, title, reason, QMessageBox.Ok, self)
        if details:
            box.setDetailedText(details)
        self.error_box = box
        box.open()

    def _model_changed(self) -> None:
        self.stack.setCurrentIndex(1 if self.session.model is not None else 0)
        m = self.session.model
        if m is not None:
            self.setWindowTitle(f"{m.name} — Compression Studio")
            inputs = "; ".join(spec.describe() for spec in m.io.inputs)  # dynamic dims by name, not None
            self.status.setText(f"{m.name} · {m.framework} · {inputs}")
            if self.netron is not None:
                self.netron.show_variant(self.session.current)

    # -- the model's inputs ----------------------------------------------------------------
    def _show_inputs(self, model, path: str | None) -> None:
        """The Data panel lists the model's inputs with the settings saved for this file. Digits
        cannot feed a model with several, integer or unsized inputs: random inputs then."""
        where = str(Path(path).resolve()) if path else f"demo:{model.name}"
        self.inputs_key = "model_inputs/" + hashlib.sha1(where.encode()).hexdigest()[:16]
        saved = self.settings.value(self.inputs_key, [])
        sig = model.io
        self.recipe_panel.inputs.set_signature(sig, [saved] if isinstance(saved, str) else list(saved or []))
        digits_cannot = sig.multi or bool(sig.problems())
        if self.session.data_spec == "digits" and digits_cannot:
            self.session.set_data_spec("random")
            self.auto_random = True
            self.log_panel.append("the built-in digits do not fit this model's inputs: evaluating on random inputs "
                                  "(quality is measured against the original's outputs); choose a .npz in Data for your own")
        elif self.auto_random and self.session.data_spec == "random" and not digits_cannot:
            self.session.set_data_spec("digits")  # back to what the user had, for a model digits can feed
            self.auto_random = False

    def _inputs_changed(self) -> None:
        if self.inputs_key:
            self.settings.setValue(self.inputs_key, self.recipe_panel.inputs.items())

    def sized_model(self, variant, retry, error_label: QLabel):
        """The variant's model with the Data panel's input settings applied (as --input), or None
        when it cannot run yet: a wrong setting is shown in `error_label`; sizes still missing
        open the dialog that asks for them, and `retry` runs once it is answered (cancel: nothing).
        A run's stage is already sized by its run."""
        model = variant.model
        if variant.run_id is not None:
            return model
        panel = self.recipe_panel.inputs
        try:
            sig = panel.sized()
        except StudioError as exc:
            error_label.setText(str(exc))
            return None
        if sizing_needed(sig):
            self.ask_sizes(sig, retry)
            return None
        items = panel.items()
        if not items:
            return model
        # the same object for the same settings: the next run reuses this run's unchanged stages
        if self._sized is None or self._sized[0] is not model or self._sized[1] != items:
            self._sized = (model, items, model.with_signature(sig))
        return self._sized[2]

    def ask_sizes(self, signature, then) -> None:
        """The window-modal dialog for dynamic dims (and scalar values) nobody gave: its answers go
        into the Data panel (and the settings), then `then()` runs. Cancel changes nothing."""
        dialog = SizeDialog(signature, self)
        generation = self.session.generation

        def answered():
            if generation != self.session.generation:
                return
            texts = from_items(self.recipe_panel.inputs.items())
            texts.update(from_items(dialog.items()))
            self.recipe_panel.inputs.set_items(to_items(texts))
            self.log_panel.append("input sizes set: " + " ".join(f"--input {i}" for i in dialog.items()))
            then()

        dialog.accepted.connect(answered)
        self.size_dialog = dialog
        dialog.open()  # not exec(): no nested event loop, tests can answer it

    # -- recent files and folders --------------------------------------------------------
    def recent(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        items = [path] + [p for p in self.recent() if p != path]
        self.settings.setValue("recent", items[:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.recent():
            a = self.recent_menu.addAction(path)
            a.triggered.connect(lambda checked=False, p=path: self.open_path(p))
        self.recent_menu.setEnabled(bool(self.recent()))

    def folder(self, kind: str) -> str:
        return str(self.settings.value(f"folders/{kind}", str(Path.home())))

    def remember_folder(self, kind: str, folder: str) -> None:
        self.settings.setValue(f"folders/{kind}", folder)

    # -- drag and drop -------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not files:
            return
        event.acceptProposedAction()
        if files[0].endswith((".yaml", ".yml")):
            self.when_ready(lambda: self.load_recipe(files[0]))
        else:
            self.when_ready(lambda: self.open_path(files[0]))

    # -- variants ------------------------------------------------------------------------
    def show_original(self) -> None:
        if self.session.original is not None:
            self._show(self.session.original)

    def show_stage(self, run_id: str, index: int) -> None:
        stage = self.session.stage(run_id, index)
        if stage is None:
            return
        if index == 0:  # stage 0 is the open model itself: reuse its graph and statistics
            o = self.session.original
            self._show(Variant(run_id, 0, o.model, o.graph, o.layout, o.stats, o.stats_pending))
            return
        cached = self.variants.get((run_id, index))
        if cached is not None:
            self._show(cached)
            return
        generation = self.session.generation
        self.log_panel.append(f"preparing run {run_id}, stage {index}")

        def done(variant):
            if generation == self.session.generation:
                self.variants[variant.key] = variant
                self._show(variant)
                self.fill_stats(variant)

        self.tasks.start("variant", prepare_variant, stage.model, run_id, index, on_return=done,
                         on_error=lambda e: self.log_panel.append(f"cannot show stage {index}: {e}"))

    def fill_stats(self, variant: Variant) -> None:
        """A large model's graph is on screen: its weight statistics follow from a worker."""
        if not variant.stats_pending or self.stopping:
            return
        from studio.core.stats import layer_stats

        generation = self.session.generation

        def done(stats):
            if generation == self.session.generation:
                self.session.set_stats(variant, stats)

        def failed(exc):
            if not isinstance(exc, Cancelled):
                self.log_panel.append(f"weight statistics failed: {exc}")

        # a model opened next stops them: their copies of big tensors would hold the GIL while
        # that model's own load does (two threads taking turns: the window waited for both)
        cancel, stopped = threading.Event(), threading.Event()
        self._stats_running = (cancel, stopped)

        def stats():
            try:
                return layer_stats(variant.model, cancel=cancel)
            finally:
                stopped.set()

        self.tasks.start(f"stats {variant.key}", stats, _cancel=cancel, on_return=done, on_error=failed)

    def _show(self, variant: Variant) -> None:
        """Show a variant; the selected layers follow to their counterparts in it."""
        old = self.session.current
        keys = set()
        if old is not None:
            keys = {tensor_key(s.tensor) for s in old.stats if s.name in self.session.selected_layers}
        self.session.show_variant(variant)
        mapped = [s.name for s in variant.stats if tensor_key(s.tensor) in keys]
        if mapped:
            self.session.select_layers(mapped)
        if self.netron is not None:
            self.netron.show_variant(variant)

    # -- jobs (the run, the sensitivity analysis and the search live in jobs.Jobs) -----------
    def _set_running(self, running: bool) -> None:
        """The menu commands follow the views' Run / Cancel buttons: Cancel (and Esc) only while a job runs."""
        self.actions_["run"].setEnabled(not running)
        self.actions_["sensitivity"].setEnabled(not running)
        self.actions_["cancel"].setEnabled(running)

    def sensitivity_from_menu(self) -> None:
        """Recipe > Run sensitivity analysis: the Sensitivity tab comes to the front (its settings
        and the heatmap are there) and the analysis starts with them."""
        self.tabs.setCurrentWidget(self.sensitivity_view)
        self.jobs.run_sensitivity()

    def exclude_layers(self, layers: list[str], family: str) -> None:
        if not layers:
            self.log_panel.append("no layer is over the threshold: nothing to exclude")
            return
        rows = self.recipe_panel.ignore_layers(layers, family)
        steps = ", ".join(f"{i + 1}. {self.session.recipe.passes[i].id}" for i in rows)
        self.log_panel.append(f"added {', '.join(layers)} to the ignore list of {steps}")

    def pick_recipe(self, recipe: dict) -> None:
        """A search candidate clicked on the chart: its recipe goes into the recipe panel."""
        try:
            self.session.set_recipe(Recipe.from_dict(recipe, "candidate"))
        except StudioError as exc:
            self.search_view.error.setText(str(exc))
            return
        self.log_panel.append(f"recipe of the search candidate put in the recipe panel: {recipe.get('name')}")

    # -- recipes -------------------------------------------------------------------------
    def load_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a recipe", self.folder("recipe"), "Recipes (*.yaml *.yml)")
        if path:
            self.load_recipe(path)

    def load_recipe(self, path: str) -> None:
        try:
            recipe = Recipe.load(path)
        except StudioError as exc:
            self.show_error("Cannot load the recipe", str(exc))
            return
        self.remember_folder("recipe", str(Path(path).parent))
        self.session.set_recipe(recipe)
        self.log_panel.append(f"recipe loaded from {path}")

    def save_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the recipe", str(Path(self.folder("recipe")) / "recipe.yaml"),
                                              "Recipes (*.yaml *.yml)")
        if path:
            self.save_recipe(path)

    def save_recipe(self, path: str) -> None:
        try:
            self.session.recipe.save(path)
        except StudioError as exc:
            self.show_error("Cannot save the recipe", str(exc))
            return
        self.remember_folder("recipe", str(Path(path).parent))
        self.log_panel.append(f"recipe saved to {path}")

    # -- export and report ---------------------------------------------------------------
    def export_selected(self):
        from .views.export_dialog import ExportDialog

        v = self.session.current
        if v is None:
            return None
        model = self.sized_model(v, self.export_selected, self.recipe_panel.error)  # its check needs every size
        if model is None:
            return None
        v = Variant(v.run_id, v.index, model, v.graph, v.layout, v.stats)
        data = self.jobs.cached_data(self.session.data_spec, model.input_shape, model.signature)
        self.export_dialog = dialog = ExportDialog(self.tasks, v, data, self.folder("export"), self)
        dialog.exported.connect(lambda result: (
            self.remember_folder("export", str(Path(result.path).parent)),
            self.session.log.emit(f"exported {result.path}: {result.message}")))
        self.export_dialog.open()
        return self.export_dialog

    def save_report_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save a report", str(Path(self.folder("report")) / "report.html"),
                                              "HTML (*.html)")
        if path:
            self.save_report(path)

    def save_report(self, path: str) -> Path | None:
        from studio.core.report import write_html

        m = self.session.model
        if m is None:
            return None
        png = self.chart.png_bytes() if self.session.runs else None
        out = write_html(path, self.session.runs, png, model_name=m.name, source=str(m.source or m.format))
        self.remember_folder("report", str(Path(path).parent))
        self.log_panel.append(f"report written to {out}")
        return out

    # -- Netron --------------------------------------------------------------------------
    def _tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.netron_page and self.netron is None:
            from .views.netron_view import NetronView

            self.netron = NetronView(self.tasks)
            self.netron_page.layout().addWidget(self.netron)
            self.netron.show_variant(self.session.current)

    # -- quitting ------------------------------------------------------------------------
    def shutdown(self, timeout: float = 60.0) -> bool:
        """Cancel every worker and wait up to `timeout` s for them; stop the Netron server.
        Returns whether every worker finished."""
        if not self.ready:  # closed before its views were built: no worker was started
            return True
        self.stopping = True  # nothing new starts (a model's statistics wait STATS_DELAY_MS)
        self.jobs.stop()
        if self.netron is not None:
            self.netron.stop()
        return self.tasks.wait(timeout)

    stopping = False  # shut down: no new worker

    # Quitting: None waits for every worker (tests); the application sets a budget in seconds.
    quit_budget_s: float | None = None

    @staticmethod
    def leave_now() -> None:
        """A worker inside one long C++ call (an onnxruntime run, a training step) cannot stop
        sooner. Its writes are atomic (temporary file, then rename), so leaving loses only its
        temporaries, which the next write to that folder removes."""
        os._exit(0)

    def closeEvent(self, event) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        if self.ready:  # the docks' places: not before the docks exist
            self.settings.setValue("state", self.saveState())
        self.settings.sync()
        self.hide()  # at once: the user asked to quit, the window must not look hung
        QApplication.processEvents()
        if self.quit_budget_s is None:
            self.shutdown()
        elif not self.shutdown(self.quit_budget_s):
            self.leave_now()
        super().closeEvent(event)

