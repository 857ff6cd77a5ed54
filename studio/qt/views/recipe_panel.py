"""The recipe: passes from the registry, in order, each enabled or not, with its options as a
form drawn from the pass's pydantic config schema. "Apply to selection" fills a pass's targets
with the layers selected in the graph. Also where the evaluation data is chosen, the model's
inputs are sized (inputs_panel.py) and the runtimes a run times latency on are ticked."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
    QLineEdit, QListWidget, QListWidgetItem, QPushButton, QScrollArea, QSizePolicy, QSpinBox, QVBoxLayout, QWidget,
)

from studio.core import plugins
from studio.core.passes import all_passes
from studio.core.recipe import RecipeStep
from studio.core.runtimes import RUNTIMES, SHORT, missing, title

from ..compact import ElidedLabel, compact_combo
from .inputs_panel import InputsPanel
from .job_controls import job_controls

DATA_CHOICES = [("digits", "Built-in digits (labelled)"), ("random", "Random inputs (vs the original)"),
                ("npz", "A .npz file…"), ("folder", "An image folder…")]


def _resolve(schema: dict, prop: dict) -> dict:
    if "$ref" in prop:
        return schema.get("$defs", {}).get(prop["$ref"].split("/")[-1], prop)
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return {**_resolve(schema, prop["allOf"][0]), **{k: v for k, v in prop.items() if k != "allOf"}}
    return prop


def gist(text: str, limit: int = 90) -> str:
    """The first sentence of a pass's description, cut at a clause (', ', ': ', '; ', ' (')
    outside brackets if longer than `limit` characters; '…' where something was left out."""
    first, dot, _ = text.partition(". ")
    if len(first) > limit:
        cuts = [i for i in range(limit // 3, limit) if first[i:i + 2] in (", ", ": ", "; ", " (")
                and first[:i].count("(") == first[:i].count(")")]
        if cuts:
            return first[:cuts[-1]] + " …"
    return f"{first.rstrip('.')}. …" if dot else text


class OptionsForm(QWidget):
    """One editor per config field, built from model_json_schema()."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        # narrow (a laptop, a large font, the dock dragged in): a label goes above its field
        # instead of squeezing it or needing a horizontal scroll bar; fields take the width left
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.editors: dict[str, tuple[str, QWidget]] = {}

    def build(self, pass_cls, options: dict) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.editors = {}
        schema = pass_cls.Config.model_json_schema()
        for name, raw in schema.get("properties", {}).items():
            prop = _resolve(schema, raw)
            value = options.get(name, prop.get("default"))
            kind = prop.get("type")
            if "enum" in prop:
                w = compact_combo(QComboBox())
                w.addItems([str(v) for v in prop["enum"]])
                w.setCurrentText(str(value))
                w.currentTextChanged.connect(self.changed)
                kind = "enum"
            elif kind == "boolean":
                w = QCheckBox()
                w.setChecked(bool(value))
                w.toggled.connect(self.changed)
            elif kind == "integer":
                w = QSpinBox()
                w.setRange(int(prop.get("minimum", prop.get("exclusiveMinimum", -1) + 1)),
                           int(prop.get("maximum", 10**9)))
                w.setValue(int(value or 0))
                w.valueChanged.connect(self.changed)
            elif kind == "number":
                w = QDoubleSpinBox()
                w.setDecimals(5)
                lo = prop.get("minimum", prop.get("exclusiveMinimum", -1e9))
                hi = prop.get("maximum", prop.get("exclusiveMaximum", 1e9))
                if "exclusiveMaximum" in prop:
                    hi -= 1e-5
                w.setRange(float(lo), float(hi))
                w.setSingleStep(0.05 if hi <= 1 else 1.0)
                w.setValue(float(value or 0))
                w.valueChanged.connect(self.changed)
            else:  # lists of layer names / patterns, or text
                w = QLineEdit(", ".join(value) if isinstance(value, list) else str(value or ""))
                w.setPlaceholderText("all layers" if name == "targets" else "comma separated")
                w.editingFinished.connect(self.changed)
                kind = "array" if kind == "array" else "string"
            w.setToolTip(prop.get("description", ""))
            w.setObjectName(f"option_{name}")
            self.editors[name] = (kind, w)
            label = QLabel(prop.get("title", name))
            label.setToolTip(prop.get("description", ""))
            label.setBuddy(w)
            self.form.addRow(label, w)

    def values(self) -> dict:
        out = {}
        for name, (kind, w) in self.editors.items():
            if kind == "enum":
                out[name] = w.currentText()
            elif kind == "boolean":
                out[name] = w.isChecked()
            elif kind in ("integer", "number"):
                out[name] = w.value()
            elif kind == "array":
                out[name] = [t.strip() for t in w.text().split(",") if t.strip()]
            else:
                out[name] = w.text()
        return out

    def set_value(self, name: str, value) -> None:
        kind, w = self.editors[name]
        if kind == "array":
            w.setText(", ".join(value))
        elif kind == "enum":
            w.setCurrentText(str(value))
        elif kind == "boolean":
            w.setChecked(bool(value))
        elif kind in ("integer", "number"):
            w.setValue(value)
        else:
            w.setText(str(value))
        self.changed.emit()


class RecipePanel(QWidget):
    run_requested = Signal()
    cancel_requested = Signal()
    runtimes_changed = Signal()  # a runtime or RAM ticked or unticked (jobs.Jobs keeps the choice in the settings)

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.passes = all_passes()
        self.add_box = compact_combo(QComboBox())
        for pid, cls in self.passes.items():
            self.add_box.addItem(f"{cls.title} ({pid})", pid)
            self.add_box.setItemData(self.add_box.count() - 1, cls.description, Qt.ToolTipRole)
        add = QPushButton("Add")
        add.clicked.connect(lambda: self.add_pass(self.add_box.currentData()))
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._show_form)
        self.list.itemChanged.connect(self._item_toggled)
        up, down, remove = QPushButton("Up"), QPushButton("Down"), QPushButton("Remove")
        up.clicked.connect(lambda: self.move(-1))
        down.clicked.connect(lambda: self.move(1))
        remove.clicked.connect(self.remove)
        self.apply_sel = QPushButton("Apply to selection")
        self.apply_sel.setToolTip("Set this pass's targets to the layers selected in the graph")
        self.apply_sel.clicked.connect(self.apply_to_selection)
        self.form_box = QGroupBox("Options")
        self.form = OptionsForm()
        self.form.changed.connect(self._form_changed)
        self.description = QLabel()
        self.description.setWordWrap(True)
        fl = QVBoxLayout(self.form_box)
        fl.addWidget(self.description)
        # a pass with many options (INT8's remedies) scrolls inside the panel instead of making
        # the window taller than a laptop screen
        scroll = QScrollArea()
        scroll.setWidget(self.form)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setMinimumHeight(120)
        fl.addWidget(scroll, 1)
        fl.addWidget(self.apply_sel)
        self.data_box = compact_combo(QComboBox())
        for key, label in DATA_CHOICES:
            self.data_box.addItem(label, key)
        self.data_box.activated.connect(self._data_chosen)
        # how quality is measured: the studio's own, or an installed plugin's evaluator
        self.quality_box = compact_combo(QComboBox())
        self.quality_box.addItem("Built-in", "")
        self.quality_box.setItemData(0, "accuracy with labels, else top-1 agreement with the original, or cosine "
                                        "similarity for outputs that are not class scores", Qt.ToolTipRole)
        for name, evaluator in plugins.evaluators().items():
            self.quality_box.addItem(f"{name} (plugin)", name)
            self.quality_box.setItemData(self.quality_box.count() - 1, evaluator.description, Qt.ToolTipRole)
        self.quality_box.activated.connect(self._quality_chosen)
        self.data_label = ElidedLabel("digits")
        self.inputs = InputsPanel()  # the model's inputs: sizes for dynamic dims, pinned constants
        job_controls(self, "Run  (Ctrl+R)")
        # where a run times each stage: onnxruntime always; ExecuTorch and LiteRT export every
        # stage first (seconds each), greyed with what to install where they are missing
        self.runtime_boxes: dict[str, QCheckBox] = {}
        for name in RUNTIMES:
            box = QCheckBox(SHORT[name])
            box.setObjectName(f"runtime_{name}")
            why = missing(name) if name != "ort" else None
            if name == "ort":
                box.setChecked(True)
                box.setEnabled(False)
                box.setToolTip("onnxruntime's CPU provider: always measured")
            elif why is not None:
                box.setEnabled(False)
                box.setToolTip(why)
            else:
                box.setToolTip(f"also time each stage at batch 1 in {title(name)}, in the same rounds "
                               "(each stage is exported for it first: seconds per stage)")
            box.toggled.connect(self._runtime_toggled)
            self.runtime_boxes[name] = box
        self.ram_box = QCheckBox("RAM")
        self.ram_box.setObjectName("measure_ram")
        self.ram_box.setToolTip("also the RAM each stage takes to load and run one input on each ticked runtime, "
                                "in a fresh process per stage (a second or two each)")
        self.ram_box.toggled.connect(self._runtime_toggled)

        row = QHBoxLayout()
        row.addWidget(self.add_box, 1)
        row.addWidget(add)
        moves = QHBoxLayout()
        for b in (up, down, remove):
            moves.addWidget(b)
        data = QHBoxLayout()
        data.addWidget(QLabel("Data"))
        data.addWidget(self.data_box, 1)
        latency = QHBoxLayout()
        latency.addWidget(QLabel("Latency"))
        for box in self.runtime_boxes.values():
            latency.addWidget(box)
        latency.addWidget(self.ram_box)
        latency.addStretch(1)
        runs = QHBoxLayout()
        runs.addWidget(self.run_button)
        runs.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.list, 1)
        lay.addLayout(moves)
        lay.addWidget(self.form_box, 5)  # the height past the minimums goes mostly to the options
        lay.addLayout(data)
        if self.quality_box.count() > 1:  # only where a plugin offers a choice
            quality = QHBoxLayout()
            quality.addWidget(QLabel("Quality"))
            quality.addWidget(self.quality_box, 1)
            lay.addLayout(quality)
        shown = QHBoxLayout()
        shown.addWidget(self.data_label, 1)
        shown.addWidget(self.inputs.status, 2)
        lay.addLayout(shown)
        # grows first (up to four inputs) when there is room, and no further: blank rows would
        # take the height the pass options need on a laptop
        self.inputs.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        lay.addWidget(self.inputs, 4)
        lay.addLayout(latency)
        lay.addLayout(runs)
        lay.addWidget(self.error)
        self._filling = False
        session.recipe_changed.connect(self.refresh)
        session.data_changed.connect(self._data_changed)

    # -- the list ------------------------------------------------------------------------
    @property
    def steps(self) -> list[RecipeStep]:
        return self.session.recipe.passes

    def refresh(self) -> None:
        self.quality_box.setCurrentIndex(max(0, self.quality_box.findData(self.session.recipe.evaluator)))
        self._filling = True
        row = self.list.currentRow()
        self.list.clear()
        for step in self.steps:
            item = QListWidgetItem(step.label())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if step.enabled else Qt.Unchecked)
            self.list.addItem(item)
        self._filling = False
        if self.steps:
            self.list.setCurrentRow(min(max(row, 0), len(self.steps) - 1))
        else:
            self._show_form(-1)

    def add_pass(self, pass_id: str) -> None:
        self.steps.append(RecipeStep(pass_id, {}))
        self.session.recipe_changed.emit()
        self.list.setCurrentRow(len(self.steps) - 1)

    def move(self, delta: int) -> None:
        i = self.list.currentRow()
        j = i + delta
        if 0 <= i < len(self.steps) and 0 <= j < len(self.steps):
            self.steps[i], self.steps[j] = self.steps[j], self.steps[i]
            self.session.recipe_changed.emit()
            self.list.setCurrentRow(j)

    def remove(self) -> None:
        i = self.list.currentRow()
        if 0 <= i < len(self.steps):
            del self.steps[i]
            self.session.recipe_changed.emit()

    def _item_toggled(self, item) -> None:
        if self._filling:
            return
        i = self.list.row(item)
        self.steps[i].enabled = item.checkState() == Qt.Checked

    # -- the form ------------------------------------------------------------------------
    def _show_form(self, row: int) -> None:
        self.form_box.setEnabled(0 <= row < len(self.steps))
        if not 0 <= row < len(self.steps):
            self.form.build(type("Empty", (), {"Config": _Empty}), {})
            self.description.setText("")
            self.description.setToolTip("")
            return
        step = self.steps[row]
        cls = self.passes[step.id]
        # the gist only (a laptop's height goes to the options); the whole text is the tooltip
        self.description.setText(f"<b>{cls.title}</b>: {gist(cls.description)}")
        self.description.setToolTip(f"<b>{cls.title}</b>: {cls.description}")
        self._filling = True
        self.form.build(cls, step.options)
        self._filling = False

    def _form_changed(self) -> None:
        if self._filling:
            return
        i = self.list.currentRow()
        if not 0 <= i < len(self.steps):
            return
        step = self.steps[i]
        values = self.form.values()
        try:  # keep only what differs from the defaults, validated by the pass itself
            options = self.passes[step.id](**values).options()
        except Exception as exc:  # noqa: BLE001 - pydantic ValidationError and others: show, keep the old options
            self.error.setText(str(exc).splitlines()[0])
            return
        self.error.setText("")
        step.options = options
        self.list.item(i).setText(step.label())

    def apply_to_selection(self) -> None:
        if self.list.currentRow() < 0 or "targets" not in self.form.editors:
            return
        self.form.set_value("targets", list(self.session.selected_layers))

    def ignore_layers(self, layers: list[str], family: str) -> list[int]:
        """Add `layers` to the ignore list of the selected pass if it is a `family` pass ("prune"
        or "quantize"), else of every `family` pass, else of a new one. Only passes of the kind
        that was measured: a pruning sensitivity says nothing about which layers bear INT8, and
        the other way round. Returns the rows changed."""
        def fits(i: int) -> bool:
            return self.steps[i].id.split(".")[0] == family

        row = self.list.currentRow()
        if 0 <= row < len(self.steps) and fits(row):
            rows = [row]
        else:
            rows = [i for i in range(len(self.steps)) if fits(i)]
        if not rows:
            new = "prune.magnitude" if family == "prune" else "quantize.int8_static"
            self.steps.append(RecipeStep(new, {}))
            rows = [len(self.steps) - 1]
        for i in rows:
            step = self.steps[i]
            ignore = list(dict.fromkeys(step.options.get("ignore", []) + list(layers)))
            step.options = self.passes[step.id](**{**step.options, "ignore": ignore}).options()
        self.session.recipe_changed.emit()  # the list and the form show the new options
        self.list.setCurrentRow(rows[0])
        return rows

    # -- data ----------------------------------------------------------------------------
    def _data_chosen(self, index: int) -> None:
        key = self.data_box.itemData(index)
        if key == "npz":
            path, _ = QFileDialog.getOpenFileName(self, "Evaluation data", "", "NumPy archive (*.npz)")
            if not path:
                return
            key = path
        elif key == "folder":
            path = QFileDialog.getExistingDirectory(self, "Image folder (one sub-folder per class, or images alone)")
            if not path:
                return
            key = path
        self.session.set_data_spec(key)

    def _quality_chosen(self, index: int) -> None:
        self.session.recipe.evaluator = self.quality_box.itemData(index)

    def _data_changed(self) -> None:
        """The combo follows the data in use (the window may switch digits to random for a model
        digits cannot feed); a file or a folder is named in the label under it."""
        spec = self.session.data_spec
        self.data_label.setText(spec)
        if spec in ("digits", "random"):
            key = spec
        else:
            key = "npz" if spec.endswith(".npz") else "folder"
        self.data_box.setCurrentIndex(self.data_box.findData(key))

    # -- the runtimes ----------------------------------------------------------------------
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes ticked (installed ones only), onnxruntime first."""
        return ("ort", *(n for n, b in self.runtime_boxes.items() if n != "ort" and b.isEnabled() and b.isChecked()))

    def set_runtimes(self, names) -> None:
        """Tick `names` (a runtime not installed, or unknown, stays unticked); no runtimes_changed."""
        for name, box in self.runtime_boxes.items():
            if name != "ort":
                box.blockSignals(True)
                box.setChecked(box.isEnabled() and name in names)
                box.blockSignals(False)

    def measure_ram(self) -> bool:
        return self.ram_box.isChecked()

    def set_measure_ram(self, on: bool) -> None:
        self.ram_box.blockSignals(True)
        self.ram_box.setChecked(bool(on))
        self.ram_box.blockSignals(False)

    def _runtime_toggled(self, _checked: bool) -> None:
        self.runtimes_changed.emit()

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)


class _Empty:
    @staticmethod
    def model_json_schema():
        return {"properties": {}}
