"""The session: the one place the window's data lives (open model, its graph and statistics,
the recipe, the runs, what is selected). Views listen to its signals and never own data."""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from studio.core.recipe import Recipe


@dataclass
class Variant:
    """What the views show for one model: the original (run_id None) or a run's stage."""

    run_id: str | None
    index: int
    model: object  # studio.core.model.Model
    graph: object = None  # studio.core.graph.Graph, filled by a worker
    layout: dict = field(default_factory=dict)
    stats: list = field(default_factory=list)  # list[LayerStats]
    stats_pending: bool = False  # a large model's statistics are still being computed on a worker

    @property
    def key(self) -> tuple:
        return (self.run_id, self.index)


class Session(QObject):
    model_changed = Signal()  # a new model is open (or closed)
    stage_selected = Signal()  # the variant shown changed (original or a run's stage)
    runs_changed = Signal()
    selection_changed = Signal()  # selected layers changed
    recipe_changed = Signal()
    data_changed = Signal()
    sensitivity_changed = Signal()  # a per-layer sensitivity analysis finished (or was cleared)
    stats_arrived = Signal()  # a shown variant's weight statistics arrived after its graph
    log = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.original: Variant | None = None
        self.current: Variant | None = None
        self.runs: list = []  # list[studio.core.pipeline.Run]
        self.selected_layers: list[str] = []
        self.recipe = Recipe([], name="recipe")
        self.data_spec = "digits"
        self.sensitivity = None  # studio.core.sensitivity.SensitivityResult of the last analysis
        self.sensitivity_of: tuple | None = None  # key of the variant it was measured on
        self.generation = 0  # bumps on every model change: results for an older model are dropped

    # -- model ---------------------------------------------------------------------------
    @property
    def model(self):
        return self.original.model if self.original else None

    def set_model(self, variant: Variant) -> None:
        self.generation += 1
        self.original = variant
        self.current = variant
        self.runs = []
        self.selected_layers = []
        self.sensitivity, self.sensitivity_of = None, None
        self.model_changed.emit()
        self.runs_changed.emit()
        self.stage_selected.emit()
        self.selection_changed.emit()
        self.sensitivity_changed.emit()

    # -- runs and variants ---------------------------------------------------------------
    def add_run(self, run) -> None:
        self.runs.append(run)
        self.runs_changed.emit()

    def run(self, run_id: str):
        return next((r for r in self.runs if r.id == run_id), None)

    def stage(self, run_id: str | None, index: int):
        if run_id is None:
            return None
        run = self.run(run_id)
        return run.stages[index] if run and 0 <= index < len(run.stages) else None

    def show_variant(self, variant: Variant) -> None:
        self.current = variant
        self.stage_selected.emit()

    def set_stats(self, variant: Variant, stats: list) -> None:
        """A variant's statistics, computed after its graph was drawn (large models)."""
        shown = False
        for v in (variant, self.original, self.current):  # stage 0 of a run shows the original's model
            if v is not None and v.model is variant.model:
                v.stats, v.stats_pending = stats, False
                shown = shown or v is not variant or v is self.original or v is self.current
        if shown:
            self.stats_arrived.emit()

    def previous_stages(self):
        """The last run's stages, so an edited recipe reuses the unchanged prefix."""
        return self.runs[-1].stages if self.runs else None

    # -- selection -----------------------------------------------------------------------
    def select_layers(self, names: list[str]) -> None:
        names = list(dict.fromkeys(names))
        if names != self.selected_layers:
            self.selected_layers = names
            self.selection_changed.emit()

    @property
    def selected_layer(self) -> str | None:
        return self.selected_layers[0] if self.selected_layers else None

    # -- sensitivity ---------------------------------------------------------------------
    def set_sensitivity(self, result, variant_key: tuple | None = None) -> None:
        self.sensitivity, self.sensitivity_of = result, variant_key
        self.sensitivity_changed.emit()

    # -- recipe and data -----------------------------------------------------------------
    def set_recipe(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.recipe_changed.emit()

    def set_data_spec(self, spec: str) -> None:
        self.data_spec = spec
        self.data_changed.emit()
