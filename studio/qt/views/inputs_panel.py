"""The model's inputs in the Data panel: name, dtype, shape (dynamic dims by name), the id range of
integer inputs, and per input what the user set, in the CLI's own words: `1,3,320,320` sizes it
(like --input x:1,3,320,320), `=16000` pins it (like --input sr=16000). The texts become --input
items applied by the core's Signature.with_overrides, so the window and the CLI read them alike.

A dynamic dim is never taken as 1: SizeDialog asks for every one still unset before a job starts,
prefilled with a suggestion the user sees and can change."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QFormLayout, QHeaderView, QLabel, QLineEdit, QSpinBox, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from studio.core.errors import StudioError

from ..compact import ElidedLabel

MAX_DIM = 1 << 20


def shape_text(spec) -> str:
    """'int64 [batch, seq] in [0, 50)' (the core's describe(), without the name)."""
    return spec.describe().split(": ", 1)[1]


def short_text(spec) -> str:
    """The table's narrow column: the shape first (what the user sizes), then dtype and range:
    '[N, seq] int64 in [0, 50)'."""
    text = shape_text(spec)
    if spec.value is not None or " " not in text:
        return text
    dtype, rest = text.split(" ", 1)
    rest = rest.replace("[batch", "[N", 1)
    shape, _, tail = rest.partition("]")
    return f"{shape}] {dtype}{tail}"


def unset_text(specs) -> str:
    """What is still open, by name: 'seq', 'sr value', 'x dim 2'."""
    names = []
    for spec in specs:
        if spec.shape is None:
            names.append(f"{spec.name} shape")
        elif len(spec.shape) == 0:
            names.append(f"{spec.name} value")
        else:
            names += [spec.shape[i] or f"{spec.name} dim {i}" for i in spec.missing_dims()]
    return ", ".join(dict.fromkeys(names))


def to_items(texts: dict[str, str]) -> list[str]:
    """{input: '1,10' or '=16000'} -> ['input:1,10', 'sr=16000'] (--input items)."""
    return [name + (t if t.startswith("=") else ":" + t) for name, t in texts.items() if t.strip()]


def from_items(items: list[str]) -> dict[str, str]:
    """The other way: saved --input items back into the panel's texts."""
    out = {}
    for item in items:
        cut = min((i for i in (item.find(":"), item.find("=")) if i > 0), default=-1)
        if cut > 0:
            out[item[:cut]] = item[cut + 1:] if item[cut] == ":" else item[cut:]
    return out


def suggest(spec, axis: int) -> int:
    """A size to offer for a dynamic dim (shown, never used unasked): the spatial dims of an
    image 224, anything else (sequence length, audio frames) 32."""
    rank = len(spec.shape or ())
    return 224 if rank == 4 and axis >= 2 else 32


def sizing_needed(signature) -> list:
    """Inputs that cannot be fed yet: dynamic dims unset, a scalar without a value, no shape."""
    return [s for s in signature.inputs if s.needs_user()]


class InputsPanel(QWidget):
    """The inputs table of the Data panel. `changed` fires when the user edits a setting."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.signature = None  # the model's own (as loaded), overrides applied on demand
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Input", "Type and shape", "Set"])
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)  # compact rows
        self.table.horizontalHeader().hide()  # height is short on a laptop; the tooltips say what a column is
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.NoSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        header.setSectionResizeMode(2, QHeaderView.Interactive)
        header.resizeSection(2, 90)
        self.table.setToolTip("Set: sizes like 1,3,320,320 for an input with dynamic dims (as --input NAME:D0,D1,...),"
                              " or =VALUE to pin an input to a constant (as --input NAME=VALUE)")
        self.status = ElidedLabel("")  # placed by the recipe panel, beside the data's name
        self.editors: dict[str, QLineEdit] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)

    def set_signature(self, signature, items: list[str] | None = None) -> None:
        """Show a model's inputs with the settings saved for it; saved settings the model no
        longer accepts (another file at that path) are dropped, with a word in the status."""
        self.signature = signature
        self.editors = {}
        self.table.setRowCount(0)
        if signature is None:
            self.status.setText("")
            return
        texts = from_items(items or [])
        dropped = ""
        try:
            signature.with_overrides(to_items(texts))
        except StudioError as exc:
            texts, dropped = {}, f"saved input settings dropped ({exc})"
        self.table.setRowCount(len(signature.inputs))
        for row, spec in enumerate(signature.inputs):
            for col, text in enumerate((spec.name, short_text(spec))):
                item = QTableWidgetItem(text)
                item.setToolTip(spec.describe())
                self.table.setItem(row, col, item)
            editor = QLineEdit(texts.get(spec.name, ""))
            editor.setObjectName(f"input_{spec.name}")
            editor.setPlaceholderText(self._placeholder(spec))
            editor.setToolTip(spec.needs_user() or "optional: sizes (D0,D1,...) or =VALUE to pin a constant")
            editor.setFrame(False)
            editor.editingFinished.connect(self._edited)
            self.table.setCellWidget(row, 2, editor)
            self.editors[spec.name] = editor
        # one row at least (a laptop's height is short), up to four when there is room
        row = self.table.rowHeight(0) if signature.inputs else 24
        self.table.setMinimumHeight(row + 2)
        self.table.setMaximumHeight(min(len(signature.inputs), 4) * row + 2)
        self._update_status(dropped)

    @staticmethod
    def _placeholder(spec) -> str:
        if spec.shape is None:
            return "D0,D1,..."
        if len(spec.shape) == 0:
            return "=VALUE"
        if not spec.missing_dims():
            return ""
        return ",".join("1" if i == spec.batch_axis else str(d) if isinstance(d, int) else str(d or "?").upper()
                        for i, d in enumerate(spec.shape))

    def texts(self) -> dict[str, str]:
        return {name: e.text().strip() for name, e in self.editors.items() if e.text().strip()}

    def items(self) -> list[str]:
        """The settings as --input items."""
        return to_items(self.texts())

    def set_items(self, items: list[str]) -> None:
        texts = from_items(items)
        for name, editor in self.editors.items():
            editor.setText(texts.get(name, ""))
        self._update_status()
        self.changed.emit()

    def sized(self):
        """The model's signature with the settings applied (a StudioError names a bad one)."""
        return self.signature.with_overrides(self.items())

    def _edited(self) -> None:
        self._update_status()
        self.changed.emit()

    def _update_status(self, note: str = "") -> None:
        try:
            sig = self.sized()
        except StudioError as exc:
            self.status.setText(str(exc))
            self.status.setStyleSheet("color: #b00020")
            return
        self.status.setStyleSheet("")
        need = sizing_needed(sig)
        count = f"{len(sig.inputs)} input{'s' * (len(sig.inputs) != 1)}"
        if need:
            text = f"{count} · unset: {unset_text(need)} (asked at Run)"
        else:
            text = f"{count}, all sized"
        self.status.setText(f"{text} · {note}" if note else text)


class SizeDialog(QDialog):
    """Asks for what a run needs and the settings do not give: one size per dynamic dim (dims
    that share a name in the file are one question), a value per scalar input, whole dims for an
    input of unknown rank. Each prefilled where a suggestion exists; nothing is assumed."""

    def __init__(self, signature, parent=None):
        super().__init__(parent)
        self.setObjectName("size_dialog")
        self.setWindowTitle("Sizes the model needs")
        self.signature = signature
        self.need = sizing_needed(signature)
        form = QFormLayout()
        self.dims: dict[object, QSpinBox] = {}  # a dim's name, or (input, axis) for an unnamed one
        self.texts: dict[str, QLineEdit] = {}  # inputs asked as text: scalars, unknown rank
        users: dict[object, list[str]] = {}
        labels: dict[object, QLabel] = {}
        for spec in self.need:
            if spec.shape is None or len(spec.shape) == 0:
                editor = QLineEdit()
                editor.setObjectName(f"value_{spec.name}")
                editor.setPlaceholderText("D0,D1,..." if spec.shape is None else "a number, e.g. 16000")
                self.texts[spec.name] = editor
                form.addRow(f"{spec.name} ({shape_text(spec)}): " + ("its dims" if spec.shape is None else "its value"),
                            editor)
                continue
            for axis in spec.missing_dims():
                key = spec.shape[axis] or (spec.name, axis)
                users.setdefault(key, []).append(spec.name)
                if key not in self.dims:
                    box = QSpinBox()
                    box.setRange(1, MAX_DIM)
                    box.setValue(suggest(spec, axis))
                    box.setObjectName(f"dim_{key if isinstance(key, str) else f'{spec.name}_{axis}'}")
                    self.dims[key] = box
                    labels[key] = QLabel()
                    form.addRow(labels[key], box)
        for key, label in labels.items():
            name = key if isinstance(key, str) else f"dim {key[1]}"
            where = ", ".join(f"{n} {shape_text(self.signature.input(n)).split(' ', 1)[1]}" for n in users[key])
            label.setText(f"{name}  ({where})")
        intro = QLabel("The file leaves these sizes (or values) open and the studio does not guess them: "
                       "give what your application feeds (the numbers shown are only suggestions).")
        intro.setWordWrap(True)
        self.error = QLabel()
        self.error.setStyleSheet("color: #b00020")
        self.error.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Use these sizes")
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        self.buttons = buttons
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.setMinimumWidth(460)

    def items(self) -> list[str]:
        """The answers as --input items, whole shapes (the batch axis given as 1: it stays free)."""
        out = []
        for spec in self.need:
            if spec.name in self.texts:
                text = self.texts[spec.name].text().strip()
                if text:
                    out.append(f"{spec.name}={text}" if spec.shape is not None else f"{spec.name}:{text}")
                continue
            dims = []
            for axis, d in enumerate(spec.shape):
                if isinstance(d, int):
                    dims.append(d)
                elif axis == spec.batch_axis:
                    dims.append(1)
                else:
                    dims.append(self.dims[d or (spec.name, axis)].value())
            out.append(f"{spec.name}:{','.join(map(str, dims))}")
        return out

    def _accept(self) -> None:
        """Only answers the model takes close the dialog."""
        try:
            sig = self.signature.with_overrides(self.items())
            sig.check()
        except StudioError as exc:
            self.error.setText(str(exc))
            return
        self.accept()

