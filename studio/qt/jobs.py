"""The window's long jobs: a recipe run, a per-layer sensitivity analysis, a search. One at a
time, on the window's job runner (workers.Tasks, task name "run"): the progress bars and the log
follow it, Esc / Cancel stops it at its next step, the Run buttons wait for it, and a result for
a model no longer open (or cancelled) is dropped.

The views that start them (the recipe panel, the Sensitivity and Search tabs) only emit
run_requested / cancel_requested; this controller reads their settings, starts the job and lands
its result in the session. It is given what it needs (the session, the runner, the log, the
views, the window's input sizing) and never reaches up to the window."""

from __future__ import annotations

import threading
import traceback

from PySide6.QtCore import QObject, Signal

from studio.core.errors import Cancelled, StudioError
from studio.core.recipe import Recipe


def data_key(spec: str, input_shape, signature) -> str:
    """The data cache's key: a model with several (or integer) inputs gets data of its own."""
    extra = "|" + ";".join(signature.describe()) if signature is not None and signature.multi else ""
    return f"{spec}|{input_shape}{extra}"


class Jobs(QObject):
    running_changed = Signal(bool)  # a job started (True) or ended (False)
    run_added = Signal()  # a recipe run landed in the session

    def __init__(self, session, tasks, log_panel, settings, sized_model, recipe_panel, sensitivity_view,
                 search_view, parent=None):
        """sized_model(variant, retry, error_label): the variant's model with the Data panel's
        input settings, or None when it cannot run yet (MainWindow.sized_model)."""
        super().__init__(parent)
        self.session, self.tasks, self.log_panel, self.settings = session, tasks, log_panel, settings
        self.sized_model = sized_model
        self.recipe_panel, self.sensitivity_view, self.search_view = recipe_panel, sensitivity_view, search_view
        self.data_cache: dict[str, object] = {}
        self.cancel_event: threading.Event | None = None
        self.label = "job"  # what the running job is ("recipe run", "sensitivity analysis", "search")
        self.latency_batches: tuple[int, ...] = (1, 32)
        # where a run times latency: the recipe panel's Latency checkboxes, kept in the settings
        saved = settings.value("runtimes", ["ort"]) if settings is not None else ["ort"]
        recipe_panel.set_runtimes([saved] if isinstance(saved, str) else list(saved or []))
        self.runtimes: tuple[str, ...] = recipe_panel.runtimes()  # ("ort", "pte"): ExecuTorch too (exports each stage)
        recipe_panel.set_measure_ram(settings is not None and settings.value("measure_ram", False, type=bool))
        self.measure_ram = recipe_panel.measure_ram()  # RAM per stage and runtime, in fresh processes
        recipe_panel.runtimes_changed.connect(self._runtimes_chosen)
        for view, run in ((recipe_panel, self.run_recipe), (sensitivity_view, self.run_sensitivity),
                          (search_view, self.run_search)):
            view.run_requested.connect(run)
            view.cancel_requested.connect(self.cancel)
            self.running_changed.connect(view.set_running)
            view.set_running(False)

    def _runtimes_chosen(self) -> None:
        self.runtimes = self.recipe_panel.runtimes()
        self.measure_ram = self.recipe_panel.measure_ram()
        if self.settings is not None:
            self.settings.setValue("runtimes", list(self.runtimes))
            self.settings.setValue("measure_ram", self.measure_ram)

    def running(self) -> bool:
        return self.tasks.running("run")

    def _loading_refused(self, error_label) -> bool:
        """Run waits while a model is being opened (its result would be for a model about to go)."""
        if not self.tasks.running("load"):
            return False
        error_label.setText("A model is being opened: run once it is open.")
        return True

    # -- data ----------------------------------------------------------------------------
    def data_for(self, spec: str, input_shape, signature=None):
        """Open (and cache) the evaluation data: called on workers. With the model's signature,
        random data and .npz files cover every input."""
        from studio.core.data import open_data

        key = data_key(spec, input_shape, signature)
        if key not in self.data_cache:
            self.data_cache[key] = open_data(spec, input_shape, signature=signature)
        return self.data_cache[key]

    def cached_data(self, spec: str, input_shape, signature=None):
        """The evaluation data if a job opened it already, else None."""
        return self.data_cache.get(data_key(spec, input_shape, signature))

    # -- the jobs ------------------------------------------------------------------------
    def run_recipe(self) -> None:
        s, panel = self.session, self.recipe_panel
        if s.model is None:
            panel.error.setText("Open a model first.")
            return
        if self.running() or self._loading_refused(panel.error):
            return
        recipe = Recipe([type(st)(st.id, dict(st.options), st.enabled) for st in s.recipe.passes], s.recipe.name,
                        s.recipe.evaluator, s.recipe.ship, s.recipe.max_drop, list(s.recipe.export))
        if not recipe.enabled_steps():
            panel.error.setText("Add a pass to the recipe first.")
            return
        try:
            recipe.validate()
        except StudioError as exc:
            panel.error.setText(str(exc))
            return
        model = self.sized_model(s.original, self.run_recipe, panel.error)
        if model is None:
            return
        spec, previous = s.data_spec, s.previous_stages()
        latency, runtimes, ram = self.latency_batches, self.runtimes, self.measure_ram

        def job(cancel_event):
            from studio.core.pipeline import run

            data = self.data_for(spec, model.input_shape, model.signature)
            return (yield from run(model, recipe, data, latency_batches=latency, cancel_event=cancel_event,
                                   previous=previous, runtimes=runtimes, measure_ram=ram))

        def done(result):
            result.data_name = spec
            s.add_run(result)
            last = result.stages[-1].measurement
            q = f"{last.quality_text} {last.quality_label}" if last and last.quality is not None else ""
            self.log_panel.end(f"run {result.id} done: {len(result.stages) - 1} passes · last stage {q}",
                               "done")
            for st in result.stages:
                for w in st.warnings:
                    self.log_panel.append(f"⚠ {st.label}: {w}")
            self.run_added.emit()

        steps = " → ".join(st.label() for st in recipe.enabled_steps())
        self.start("run", f"running {steps} on {spec}", job, done, panel.error)

    def run_sensitivity(self) -> None:
        """Per-layer sensitivity of the variant shown, on the evaluation data chosen in the recipe
        panel: the same worker, progress, log and cancel as a recipe run (one such job at a time)."""
        s, view = self.session, self.sensitivity_view
        variant = s.current
        if variant is None:
            view.error.setText("Open a model first.")
            return
        if self.running() or self._loading_refused(view.error):
            return
        try:
            kind, ratios = view.request()
        except StudioError as exc:
            view.error.setText(str(exc))
            return
        model = self.sized_model(variant, self.run_sensitivity, view.error)
        if model is None:
            return
        spec, key = s.data_spec, variant.key
        shown = "the original" if variant.run_id is None else f"run {variant.run_id}, stage {variant.index}"

        def job(cancel_event):
            from studio.core.sensitivity import prune_sensitivity, quant_sensitivity

            def check():
                if cancel_event.is_set():
                    raise Cancelled()

            data = self.data_for(spec, model.input_shape, model.signature)
            if kind == "int8":
                return (yield from quant_sensitivity(model, data, cancel=check))
            return (yield from prune_sensitivity(model, data, ratios=ratios, method=kind, cancel=check))

        def done(result):
            result.meta.update(variant=f"{model.name} ({shown})", data=spec)
            s.set_sensitivity(result, key)
            worst = result.layers[int(result.drop().max(axis=1).argmax())]
            self.log_panel.end(f"sensitivity of {len(result.layers)} layers done: the most sensitive is "
                               f"{worst}", "done")

        how = "INT8 with one layer kept in float" if kind == "int8" else \
            f"{kind} pruning at {', '.join(f'{r:.0%}' for r in ratios)}"
        self.start("sensitivity analysis", f"sensitivity of {model.name} ({shown}): {how} on {spec}",
                   job, done, view.error)

    def run_search(self) -> None:
        """studio.core.search over the open model on the evaluation data of the recipe panel: the
        same worker, progress, log and cancel as a recipe run; each candidate lands on the
        Search tab's chart as soon as it is measured."""
        from studio.core import search

        s, view = self.session, self.search_view
        if s.model is None:
            view.error.setText("Open a model first.")
            return
        if self.running() or self._loading_refused(view.error):
            return
        model = s.original.model
        if model.format == "zoo":
            spec = "demo:" + model.name.removeprefix("demo-")
        elif model.source is not None:
            spec = str(model.source)
        else:
            view.error.setText("Search needs a model file (or a demo model): save this one first.")
            return
        try:
            settings = search.Settings(
                search.Source.of(spec, s.data_spec, inputs=tuple(self.recipe_panel.inputs.items())),
                view.folder(), objectives=view.objectives(), max_drop=view.max_drop.value(),
                seconds=view.seconds.value(), workers=view.workers.value(), trials=view.trials.value() or None,
                max_epochs=0 if view.quick.isChecked() else None)
        except StudioError as exc:
            view.error.setText(str(exc))
            return
        view.clear()

        def job(cancel_event):
            return (yield from search.search(settings, cancel_event))

        def landed(event):
            self.log_panel.progress((event.fraction, event.message))
            if event.earlier:
                view.add_candidates(event.earlier)
            if event.candidate is not None:
                view.add_candidate(event.candidate)

        def done(summary):
            view.show_summary(summary)
            best = summary["best"]
            self.log_panel.end(f"search done: {len(summary['candidates'])} candidates; best "
                               + (f"{best['recipe']['name']} in {best['recipe_file']}" if best else "none within budget"),
                               "done")

        self.start("search", f"search on {model.name} ({' + '.join(settings.objectives)}, "
                   f"<= {settings.max_drop:g} points, {settings.seconds:.0f} s) in {settings.out}",
                   job, done, view.error, on_yield=landed)

    # -- the one job at a time -----------------------------------------------------------
    def start(self, label: str, what: str, job, done, error_label, on_yield=None) -> None:
        """Start the one long job on a worker. job(cancel_event) is a generator function;
        done(result) lands a fresh result; a failure's reason goes to `error_label`."""
        s = self.session
        self.cancel_event = cancel = threading.Event()
        generation = s.generation

        def returned(result):
            self.running_changed.emit(False)
            if cancel.is_set():  # it finished just as Cancel was pressed: cancelled all the same
                self.log_panel.end(f"{label} cancelled: the model is unchanged and no result was added",
                                   "cancelled")
            elif generation != s.generation:
                self.log_panel.end(f"{label} finished for a model no longer open: dropped", "cancelled")
            else:
                done(result)

        def failed(exc):
            self.running_changed.emit(False)
            if isinstance(exc, Cancelled):
                self.log_panel.end(f"{label} cancelled: the model is unchanged and no result was added",
                                   "cancelled")
            else:
                reason = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
                self.log_panel.end(f"{label} failed: {reason}", "failed")
                error_label.setText(reason)
                if not isinstance(exc, StudioError):
                    self.log_panel.append("".join(traceback.format_exception(exc)))

        error_label.setText("")
        self.label = "recipe run" if label == "run" else label
        self.running_changed.emit(True)
        self.log_panel.begin(what)
        self.settings.setValue("data_spec", s.data_spec)
        self.tasks.start("run", job, cancel, _cancel=cancel, on_yield=on_yield or self.log_panel.progress,
                         on_return=returned, on_error=failed)

    def cancel(self) -> None:
        if self.cancel_event is not None and not self.cancel_event.is_set() and self.running():
            self.cancel_event.set()
            self.log_panel.append("cancelling…")

    def stop(self) -> None:
        """Quitting: the running job stops at its next step (no message)."""
        if self.cancel_event is not None:
            self.cancel_event.set()
