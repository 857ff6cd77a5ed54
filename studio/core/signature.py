"""What a model takes and gives: one description of its inputs and outputs that every part uses
(data sources, calibration, measurement, export and verification).

A `TensorSpec` is a name, a dtype and a shape whose dims are ints, or names/None where they are
dynamic. Dim 0 of an input is its batch (samples) axis (`batch_axis` for a recurrent state
[2, batch, 128], see find_batch_axes); the studio picks batch sizes itself, but
any other dynamic dim must be given by the user (`--input x:1,3,320,320`): it is never taken as 1
silently. An input may carry a value range (token ids: [0, vocab) from the embedding table) or a
pinned constant (`--input sr=16000`), fed as is to every call.

`Inputs` holds many samples of a model with several inputs: name -> array, samples along axis 0.
It slices like an array (len, [a:b], [indices]) so the code that batches one array batches it.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import StudioError

Dim = int | str | None
INT_KINDS = "iu"
DEFAULT_INT_RANGE = (0, 2)  # integer inputs that feed no embedding: masks, flags
# ops an id tensor passes through on its way to an embedding lookup
PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Clip"}


@dataclass
class TensorSpec:
    name: str
    dtype: str = "float32"
    shape: tuple[Dim, ...] | None = None  # None: rank unknown
    value_range: tuple[float, float] | None = None  # integers: [lo, hi)
    value: np.ndarray | None = None  # a pinned constant, fed as is
    batch_axis: int = 0  # where samples run when fed (a recurrent state [2, batch, 128]: 1)
    python_scalar: bool = False  # a TorchScript `int`/`float`/`bool` argument: fed as a Python number

    @property
    def is_constant(self) -> bool:
        return self.value is not None

    @property
    def batched(self) -> bool:
        """Samples run along `batch_axis` (every input of rank >= 1 that is not a constant)."""
        return self.value is None and bool(self.shape)

    def missing_dims(self) -> list[int]:
        """Positions of dynamic dims the user has to give (the batch axis excepted)."""
        if self.value is not None or self.shape is None:
            return []
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int) and i != self.batch_axis]

    def needs_user(self) -> str | None:
        """Why this input cannot be fed yet, as the one-line error the CLI shows, or None."""
        if self.value is not None:
            return None
        if self.shape is None:
            return f"input '{self.name}' has no recorded shape: give it with --input {self.name}:D0,D1,..."
        if len(self.shape) == 0:
            return (f"input '{self.name}' is a scalar {self.dtype} (a setting, not data): "
                    f"give its value with --input {self.name}=VALUE")
        if self.missing_dims():
            dims = ", ".join(_dim_text(d, i, self.batch_axis) for i, d in enumerate(self.shape))
            hint = ",".join(str(d) if isinstance(d, int) else "1" if i == self.batch_axis else _placeholder(d, i)
                            for i, d in enumerate(self.shape))
            return f"input '{self.name}' has dynamic dims [{dims}]: give them with --input {self.name}:{hint} (numbers)"
        return None

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape of `batch` samples as fed (a batch axis fixed in the file keeps its size)."""
        problem = self.needs_user()
        if problem:
            raise StudioError(problem)
        a, shape = self.batch_axis, self.shape or ()
        fixed = shape[a]
        size = fixed if isinstance(fixed, int) and fixed > 0 else batch
        return tuple(size if i == a else int(d) for i, d in enumerate(shape))  # type: ignore[arg-type]

    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: the fed shape without its batch axis (the studio keeps samples
        along axis 0 whatever axis the model takes them on)."""
        shape = list(self.concrete(1))
        del shape[self.batch_axis]
        return tuple(shape)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` random samples: token ids in the value range for integer inputs, standard
        normal (or uniform in the range) for float ones."""
        if self.value is not None:
            return self.value
        shape = (count, *self.sample_shape())
        dtype = np.dtype(self.dtype)
        if dtype == np.bool_:
            return rng.integers(0, 2, size=shape).astype(bool)
        if dtype.kind in INT_KINDS:
            lo, hi = self.value_range or DEFAULT_INT_RANGE
            return rng.integers(int(lo), max(int(lo) + 1, int(hi)), size=shape).astype(dtype)
        if self.value_range is not None:
            return rng.uniform(*self.value_range, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    def describe(self) -> str:
        if self.value is not None:
            return f"{self.name}: {self.dtype} = {np.asarray(self.value).tolist()}"
        dims = "?" if self.shape is None else \
            "[" + ", ".join(_dim_text(d, i, self.batch_axis) for i, d in enumerate(self.shape)) + "]"
        rng = f" in [{self.value_range[0]:g}, {self.value_range[1]:g})" if self.value_range else ""
        return f"{self.name}: {self.dtype} {dims}{rng}"

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else [d if isinstance(d, int) else (d or "?") for d in self.shape],
                "value_range": list(self.value_range) if self.value_range else None,
                "value": None if self.value is None else np.asarray(self.value).tolist()}


def _placeholder(d: Dim, i: int) -> str:
    """What the --input hint shows for a dim to fill in: its name in capitals when it is a short
    word (SEQ, H), else D<position>: Paddle names its dims "p2o.DynamicDimension.1", others "?"."""
    return d.upper() if isinstance(d, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,15}", d) else f"D{i}"


def _dim_text(d: Dim, i: int, batch_axis: int = 0) -> str:
    if isinstance(d, int):
        return str(d)
    if i == batch_axis:
        return "batch"
    return str(d) if d else "?"


@dataclass
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=list)

    @classmethod
    def single(cls, input_shape, dtype: str = "float32", name: str = "input") -> Signature:
        """The one-input description of a model known only by its batch-1 input shape."""
        shape = None if input_shape is None else ("batch", *tuple(input_shape)[1:])
        return cls([TensorSpec(name, dtype, shape)])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def input(self, name: str) -> TensorSpec:
        for s in self.inputs:
            if s.name == name:
                return s
        raise StudioError(f"the model has no input '{name}'; its inputs: {', '.join(self.names)}")

    def first_shape(self) -> tuple[int, ...] | None:
        """Batch-1 shape of the first input, or None while it has dims the user must give."""
        if not self.inputs or self.inputs[0].needs_user():
            return None
        return (1, *self.inputs[0].concrete(1)[1:])

    def problems(self) -> list[str]:
        return [p for p in (s.needs_user() for s in self.inputs) if p]

    def check(self) -> None:
        """Raise the one-line error naming the first input that needs a size or a value."""
        problems = self.problems()
        if problems:
            raise StudioError(problems[0])

    @property
    def multi(self) -> bool:
        """More than the one float tensor the old single-array code paths handle."""
        return len(self.inputs) != 1 or self.inputs[0].value is not None or np.dtype(self.inputs[0].dtype).kind != "f"

    def unbatched(self, spec: TensorSpec) -> bool:
        """An input whose first dim the file fixes while another input's batch is free (a
        recurrent state [2, batch, 128]): one value fed to every call, not sliced."""
        free = any(s.shape and not isinstance(s.shape[s.batch_axis], int) for s in self.inputs if s.value is None)
        return free and bool(spec.shape) and isinstance(spec.shape[spec.batch_axis], int)

    def batch_axes(self) -> dict[str, int]:
        """Inputs fed with their samples on an axis other than 0: name -> axis."""
        return {s.name: s.batch_axis for s in self.inputs if s.batch_axis and s.value is None}

    def random(self, count: int, seed: int = 0) -> Inputs:
        """`count` random samples of every input; constants (and fixed-size inputs of a model
        whose batch is free) are fed as they are."""
        self.check()
        rng = np.random.default_rng(seed)
        arrays, constants = {}, {}
        for s in self.inputs:
            if s.value is not None:
                constants[s.name] = s.value
            elif self.unbatched(s):
                constants[s.name] = s.sample(s.shape[0], rng)
            elif s.batched:
                arrays[s.name] = s.sample(count, rng)
        return Inputs(arrays, constants, self.batch_axes())

    def constants(self) -> dict[str, np.ndarray]:
        return {s.name: s.value for s in self.inputs if s.value is not None}

    def with_overrides(self, items: list[str]) -> Signature:
        """Apply `--input NAME:D0,D1,...` (shape) and `--input NAME=VALUE` (constant). A name a
        shape gives to a symbolic dim is used for every input that shares the symbol."""
        inputs = [replace(s) for s in self.inputs]
        by_name = {s.name: s for s in inputs}
        symbols: dict[str, int] = {}
        for item in items:
            m = re.fullmatch(r"\s*([^:=]+?)\s*([:=])\s*(.+?)\s*", item)
            if not m:
                raise StudioError(f"--input takes NAME:D0,D1,... or NAME=VALUE, not {item!r}")
            name, kind, rest = m.groups()
            if name not in by_name:
                if len(inputs) == 1 and kind == ":" and name == "input":
                    name = inputs[0].name
                else:
                    raise StudioError(f"--input {item}: the model has no input '{name}'; its inputs: "
                                      f"{', '.join(by_name)}")
            spec = by_name[name]
            try:
                if kind == "=":
                    values = [float(v) for v in rest.split(",")]
                    arr = np.array(values if len(values) > 1 else values[0]).astype(spec.dtype)
                    spec.value = arr
                    continue
                dims = tuple(int(v) for v in rest.replace("x", ",").split(","))
            except ValueError:
                raise StudioError(f"--input {item}: expected numbers after '{kind}'") from None
            if any(d <= 0 for d in dims):
                raise StudioError(f"--input {item}: sizes must be positive")
            if spec.shape is not None and len(spec.shape) != len(dims):
                raise StudioError(f"--input {item}: input '{name}' has {len(spec.shape)} dims, not {len(dims)}")
            old = spec.shape or (None,) * len(dims)
            a = spec.batch_axis if dims else 0
            for i, (d, new) in enumerate(zip(old, dims)):
                if isinstance(d, str) and d and i != a:
                    symbols[d] = new
            # the batch axis stays free where the file leaves it free: the studio picks batch sizes
            spec.shape = tuple(old[i] if i == a and not isinstance(old[i], int) else n for i, n in enumerate(dims))
        for spec in inputs:  # symbolic dims shared with an input the user sized
            if spec.shape:
                spec.shape = tuple(symbols.get(d, d) if i != spec.batch_axis and isinstance(d, str) else d
                                   for i, d in enumerate(spec.shape))
        return Signature(inputs, list(self.outputs))

    def describe(self) -> list[str]:
        return ([f"input  {s.describe()}" for s in self.inputs]
                + [f"output {s.describe()}" for s in self.outputs])

    def as_dict(self) -> dict:
        return {"inputs": [s.as_dict() for s in self.inputs], "outputs": [s.as_dict() for s in self.outputs]}


class Inputs:
    """Samples of a model's inputs: name -> array with samples along axis 0, plus constants fed
    as they are. Indexing picks samples of every batched input at once. `axes` names the inputs
    the model takes with their samples on another axis (a state [2, batch, 128]): they are kept
    samples-first like the rest and moved to that axis only when fed (`fed`)."""

    def __init__(self, arrays: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None,
                 axes: dict[str, int] | None = None):
        self.arrays = dict(arrays)
        self.constants = dict(constants or {})
        self.axes = {k: a for k, a in (axes or {}).items() if a and k in self.arrays}
        counts = {len(a) for a in self.arrays.values()}
        if len(counts) > 1:
            sizes = ", ".join(f"{k}: {len(a)}" for k, a in self.arrays.items())
            raise StudioError(f"inputs have different numbers of samples ({sizes})")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 1

    def __getitem__(self, index) -> Inputs:
        return Inputs({k: a[index] for k, a in self.arrays.items()}, self.constants, self.axes)

    def fed(self, name: str, arr):
        """`arr` (samples of input `name` along axis 0, numpy or torch) with its samples moved to
        the axis the model takes them on."""
        axis = self.axes.get(name, 0)
        if not axis:
            return arr
        return np.moveaxis(arr, 0, axis) if isinstance(arr, np.ndarray) else arr.movedim(0, axis)

    def samples_first(self, out):
        """An output of a call on these samples with its samples on axis 0: an output shaped like
        an input fed on another axis (the next state of a recurrent model) has its samples there,
        every other output on axis 0."""
        shape = tuple(out.shape)
        for name, axis in self.axes.items():
            fed = list(self.arrays[name].shape)
            fed.insert(axis, fed.pop(0))
            if shape == tuple(fed):
                return np.moveaxis(out, axis, 0) if isinstance(out, np.ndarray) else out.movedim(axis, 0)
        return out

    @property
    def names(self) -> list[str]:
        return [*self.arrays, *self.constants]

    @property
    def shape(self) -> tuple:
        """(samples,) + the first input's sample shape, for code that only reports sizes."""
        first = next(iter(self.arrays.values()), None)
        return (len(self), *first.shape[1:]) if first is not None else (len(self),)

    def __repr__(self) -> str:
        parts = [f"{k} {a.dtype}{list(a.shape)}" for k, a in self.arrays.items()]
        parts += [f"{k}={np.asarray(v).tolist()}" for k, v in self.constants.items()]
        return f"Inputs({', '.join(parts)})"


def first_array(x) -> np.ndarray:
    """The first input's array (old single-input code paths: the digits, one float tensor)."""
    return next(iter(x.arrays.values())) if isinstance(x, Inputs) else x


def feeds(sess_inputs, x, start: int, stop: int, pad_to: int | None = None) -> dict:
    """The onnxruntime feed dict of samples [start, stop) of `x` (one array, or Inputs) for a
    session's inputs (`sess.get_inputs()`), each cast to the dtype the session takes; padded
    to `pad_to` samples for a model whose batch axis is fixed by repeating the samples (real
    inputs, not zeros a model may not expect: a log of 0, a division by a norm); the caller drops
    the outputs of the padding."""
    from .convert import ORT_TYPES

    out = {}
    for i, meta in enumerate(sess_inputs):
        dtype = ORT_TYPES.get(meta.type, np.float32)
        if isinstance(x, Inputs):
            if meta.name in x.arrays:
                arr = x.arrays[meta.name][start:stop]
            elif meta.name in x.constants:
                out[meta.name] = np.asarray(x.constants[meta.name]).astype(dtype)
                continue
            elif i == 0 and len(x.arrays) == 1 and not x.constants:
                arr = first_array(x)[start:stop]  # one input under another name (a re-export)
            else:
                raise StudioError(f"no data for the model's input '{meta.name}' (the data has "
                                  f"{', '.join(x.names)}): give it in the .npz or pin it with --input {meta.name}=VALUE")
        elif i == 0:
            arr = x[start:stop]
        else:
            raise StudioError(f"the model has {len(sess_inputs)} inputs but the data holds one array: "
                              "use --data random or a .npz with one array per input name")
        arr = np.ascontiguousarray(arr).astype(dtype, copy=False)
        if pad_to and len(arr) < pad_to:
            arr = arr[np.arange(pad_to) % len(arr)] if len(arr) else np.zeros((pad_to, *arr.shape[1:]), dtype)
        if isinstance(x, Inputs):
            arr = np.ascontiguousarray(x.fed(meta.name, arr))
        out[meta.name] = arr
    return out


def torch_args(x, signature: Signature | None) -> tuple:
    """Positional torch tensors for a module's forward, in the signature's input order."""
    import torch

    if not isinstance(x, Inputs):
        return (torch.from_numpy(np.ascontiguousarray(x)),)
    names = signature.names if signature is not None else x.names
    scalars = {s.name for s in signature.inputs if s.python_scalar} if signature is not None else set()
    args = []
    for name in names:
        if name in x.arrays:
            args.append(torch.from_numpy(np.ascontiguousarray(x.fed(name, x.arrays[name]))))
        elif name in scalars:  # forward(x: Tensor, sr: int) takes a number, not a tensor
            args.append(np.asarray(x.constants[name]).item())
        elif name in x.constants:
            args.append(torch.as_tensor(np.asarray(x.constants[name])))
        else:
            raise StudioError(f"no data for the model's input '{name}'")
    return tuple(args)


def samples_first(outs: list, args: tuple, signature: Signature | None) -> list:
    """A module's flattened outputs for positional `args` (as torch_args built them) with their
    samples on axis 0: an output shaped like an argument fed on another axis (the next state) is
    moved back, like Inputs.samples_first does for onnxruntime's outputs."""
    axes = signature.batch_axes() if signature is not None else {}
    fed = {tuple(a.shape): axes[n] for n, a in zip(signature.names, args) if n in axes and hasattr(a, "shape")} \
        if axes and signature is not None else {}
    if not fed:
        return outs
    return [o.movedim(fed[tuple(o.shape)], 0) if hasattr(o, "movedim") and tuple(o.shape) in fed else o for o in outs]


def flatten_outputs(out) -> list:
    """A model's outputs as a flat list (tuples, lists and dicts, in order), like the ONNX
    exporter lays them out."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    if out is None:
        return []
    return [out]


def output_names(out, prefix: str = "") -> list[str]:
    """Names for the flattened outputs: dict keys ("box", "heads.0") where there are any, ""
    for plain tuple members (the caller names those output, output_1, ...)."""
    if isinstance(out, dict):
        return [n for k, o in out.items() for n in output_names(o, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(out, (tuple, list)):
        return [n for i, o in enumerate(out) for n in output_names(o, f"{prefix}.{i}" if prefix else "")]
    return [prefix]


# ------------------------------------------------------------------------ finding signatures


def _np_dtype(elem_type: int) -> str:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown element types read as float
        return "float32"


def _onnx_spec(value_info) -> TensorSpec:
    tt = value_info.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                      for d in tt.shape.dim)
    return TensorSpec(value_info.name, _np_dtype(tt.elem_type), shape)


def from_onnx(proto) -> Signature:
    """Graph inputs (initializers skipped) and outputs; integer inputs that reach an embedding
    lookup (Gather) get ids in [0, rows of the smallest table they index)."""
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [_onnx_spec(i) for i in graph.input if i.name not in inits]
    vocab = embedding_sizes(proto)
    for spec in inputs:
        if np.dtype(spec.dtype).kind in INT_KINDS and spec.name in vocab:
            spec.value_range = (0, vocab[spec.name])
    find_batch_axes(inputs)
    return Signature(inputs, [_onnx_spec(o) for o in graph.output])


def find_batch_axes(inputs: list[TensorSpec]) -> None:
    """Set the batch axis of inputs that take their samples on an axis other than 0: a recurrent
    state [layers, batch, hidden] (LSTM/GRU initial_h, silero VAD, streaming ASR caches). Such an
    input has dim 0 fixed while another input's dim 0 is free; its batch axis is the dim that
    shares that input's batch symbol, or, where the exporter named no dims, its one dynamic dim.
    The samples are then sliced and fed along that axis like any other input, so every call
    (calibration, measurement, verification, training) runs at the batch the studio picks; the
    alternative, a batch-1 call for every sample, would make such models hundreds of times slower
    to measure. A fixed-size input with no such dim stays one value fed to every call."""
    free = [s for s in inputs if s.value is None and s.shape and not isinstance(s.shape[0], int)]
    if not free:
        return
    symbols = {s.shape[0] for s in free if s.shape[0]}
    for spec in inputs:
        if spec.value is not None or not spec.shape or not isinstance(spec.shape[0], int):
            continue
        dynamic = [i for i, d in enumerate(spec.shape) if not isinstance(d, int)]
        shared = [i for i in dynamic if spec.shape[i] in symbols]
        if shared:
            spec.batch_axis = shared[0]
        elif len(dynamic) == 1 and not spec.shape[dynamic[0]]:
            spec.batch_axis = dynamic[0]


def embedding_sizes(proto) -> dict[str, int]:
    """Graph input -> rows of the smallest table it indexes through Gather (following Cast,
    Reshape and the like)."""
    from .convert import onnx_tensors

    tensors = onnx_tensors(proto)
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for j, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, j))
    sizes = {}
    for inp in proto.graph.input:
        seen, frontier, found = set(), [inp.name], []
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node, j in consumers.get(name, []):
                if node.op_type == "Gather" and j == 1 and node.input[0] in tensors and tensors[node.input[0]].dims:
                    found.append(int(tensors[node.input[0]].dims[0]))
                elif node.op_type in PASS_THROUGH and j == 0:
                    frontier.extend(node.output)
        if found:
            sizes[inp.name] = min(found)
    return sizes


def from_torch_export(program) -> Signature | None:
    """Inputs and outputs of a torch.export program from its graph: the user inputs' fake
    tensors (symbolic dims stay dynamic) and the output node's values."""
    try:
        user_inputs = list(program.graph_signature.user_inputs)
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        inputs = []
        for name in user_inputs:
            val = placeholders[name].meta.get("val")
            inputs.append(_spec_from_fake(name, val))
        outputs = []
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        user_outputs = list(program.graph_signature.user_outputs)
        vals = {getattr(a, "name", None): a for a in out_node.args[0]} if out_node.args else {}
        for i, name in enumerate(user_outputs):
            node = vals.get(name)
            val = node.meta.get("val") if node is not None and hasattr(node, "meta") else None
            outputs.append(_spec_from_fake(f"output_{i}" if i else "output", val))
        sig = Signature(inputs, outputs)
    except Exception:  # noqa: BLE001 - an unusual program: fall back to its example inputs
        return None
    try:
        known = _export_embedding_sizes(program)
    except Exception:  # noqa: BLE001 - ranges are a refinement
        known = {}
    _torch_ranges(sig, program.module(), known)
    return sig


def _spec_from_fake(name: str, val) -> TensorSpec:
    if val is None or not hasattr(val, "shape"):
        return TensorSpec(name, "float32", None)
    dims = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in val.shape)
    if dims:
        dims = ("batch" if isinstance(dims[0], str) else dims[0], *dims[1:])
    return TensorSpec(name, str(val.dtype).replace("torch.", ""), dims)


TORCH_PASS_THROUGH = ("view", "reshape", "unsqueeze", "squeeze", "flatten", "to", "_to_copy", "contiguous",
                      "clone", "clamp", "expand", "type_as", "long", "int")


def _op_name(target) -> str:
    """'aten::unsqueeze' / aten.unsqueeze.default -> 'unsqueeze'."""
    text = str(target).replace("aten::", "aten.")
    return text.split(".")[1] if text.startswith("aten.") and "." in text else text


def _export_embedding_sizes(program) -> dict[str, int]:
    """User input -> rows of the smallest embedding table it indexes, read from the program's
    aten.embedding calls (following views and casts back to the input)."""
    users = set(program.graph_signature.user_inputs)
    sizes: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or _op_name(node.target) != "embedding" or len(node.args) < 2:
            continue
        weight, ids = node.args[0], node.args[1]
        val = getattr(weight, "meta", {}).get("val")
        while getattr(ids, "op", None) == "call_function" and _op_name(ids.target) in TORCH_PASS_THROUGH:
            ids = ids.args[0]
        if val is not None and getattr(ids, "op", None) == "placeholder" and ids.name in users:
            sizes[ids.name] = min(sizes.get(ids.name, 1 << 62), int(val.shape[0]))
    return sizes


def _script_embedding_sizes(module) -> dict[str, int]:
    """The same for TorchScript: aten::embedding in the inlined graph, its weight found by
    following the GetAttr chain from `self`, its ids followed back to a forward argument."""
    sizes: dict[str, int] = {}
    graph = module.inlined_graph
    params = {v.debugName(): i for i, v in enumerate(graph.inputs())}
    for node in graph.nodes():
        if node.kind() != "aten::embedding":
            continue
        weight, ids = list(node.inputs())[:2]
        path, v = [], weight
        while v.node().kind() == "prim::GetAttr":
            path.append(v.node().s("name"))
            v = next(v.node().inputs())
        obj = module
        for name in reversed(path):
            obj = getattr(obj, name, None)
        while ids.node().kind() != "prim::Param" and _op_name(ids.node().kind()) in TORCH_PASS_THROUGH:
            ids = next(ids.node().inputs())
        if hasattr(obj, "shape") and ids.node().kind() == "prim::Param" and ids.debugName() in params:
            arg = module.forward.schema.arguments[params[ids.debugName()]].name
            sizes[arg] = min(sizes.get(arg, 1 << 62), int(obj.shape[0]))
    return sizes


def _torch_ranges(sig: Signature, module, known: dict[str, int] | None = None) -> None:
    """Integer inputs of a torch model index its embeddings: ids in [0, rows of the table).
    Where the graph says which input feeds which table (`known`), that table; otherwise every
    integer input but a mask gets the range every table accepts (the smallest)."""
    import torch

    known = known or {}
    for spec in sig.inputs:
        if spec.name in known and np.dtype(spec.dtype).kind in INT_KINDS:
            spec.value_range = (0, known[spec.name])
    if known:
        return
    sizes = []
    for sub in module.modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        weight = getattr(sub, "weight", None)
        if kind in ("Embedding", "EmbeddingBag") and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            sizes.append(int(weight.shape[0]))
    for spec in sig.inputs:
        if np.dtype(spec.dtype).kind in INT_KINDS and spec.value_range is None:
            if sizes and "mask" not in spec.name.lower():
                spec.value_range = (0, min(sizes))


class _TracedInputsReader(pickle.Unpickler):
    """Reads the shapes and dtypes torch.jit.trace stored in a TorchScript archive
    (traced_inputs.pkl) without running anything: only the few tensor-rebuilding globals are
    allowed, and they rebuild nothing but (dtype, shape)."""

    STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
                "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "BFloat16Storage": "float32"}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: ("tensor", storage, tuple(size))
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, tag=None: value
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in self.STORAGES:
            return self.STORAGES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed here")

    def persistent_load(self, pid):
        # ('storage', dtype-name, key, location, numel): keep the dtype only
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 else "float32"


SCRIPT_SCALARS = {"IntType": "int64", "FloatType": "float64", "BoolType": "bool"}


def from_script_schema(module) -> Signature | None:
    """A scripted (not traced) module records no shapes, but forward's schema gives every
    argument's name and type (`forward(self, Tensor x, int sr)`): a Tensor is an input whose
    shape the user gives (--input x:1,512), an int/float/bool a setting pinned with --input
    sr=16000 and passed as a Python number. A scalar with a default starts pinned to it; an
    argument of another type (lists, optionals) ends the signature there if it has a default
    (forward uses it), else the module is left to the single-input path (None), as is a forward
    of one tensor. Read from the module torch already loaded (after the probe child): nothing in
    the file runs."""
    try:
        arguments = list(module.forward.schema.arguments)[1:]
    except Exception:  # noqa: BLE001 - no scripted forward to read
        return None
    inputs = []
    for arg in arguments:
        kind = type(arg.type).__name__
        default = arg.default_value if arg.has_default_value() else None
        if kind == "TensorType" and default is None:
            inputs.append(TensorSpec(arg.name, "float32", None))
        elif kind in SCRIPT_SCALARS:
            value = None if default is None else np.asarray(default).astype(SCRIPT_SCALARS[kind])
            inputs.append(TensorSpec(arg.name, SCRIPT_SCALARS[kind], (), value=value, python_scalar=True))
        elif arg.has_default_value():
            break
        else:
            return None
    if len(inputs) < 2 or not any(s.shape is None for s in inputs):
        return None  # one tensor: the single-input path (--input-shape) already serves it
    sig = Signature(inputs, [])
    try:
        _torch_ranges(sig, module, _script_embedding_sizes(module))
    except Exception:  # noqa: BLE001 - ranges are a refinement
        pass
    return sig


def from_torchscript(path, module) -> Signature | None:
    """A traced TorchScript file records the inputs it was traced with (shapes and dtypes, no
    values) in traced_inputs.pkl; names come from forward's schema. A scripted one has only its
    schema (from_script_schema)."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/traced_inputs.pkl")), None)
            if member is None:
                return from_script_schema(module)
            if archive.getinfo(member).file_size > 1_000_000:
                return None
            traced = _TracedInputsReader(io.BytesIO(archive.read(member))).load()
        tensors = traced.get("forward") if isinstance(traced, dict) else None
        if not tensors:
            return None
        names = [a.name for a in module.forward.schema.arguments[1:]]
    except Exception:  # noqa: BLE001 - a scripted (not traced) module, or an older layout
        return None
    inputs = []
    traced_batch = None
    for i, t in enumerate(tensors):
        if not (isinstance(t, tuple) and t and t[0] == "tensor"):
            return None  # non-tensor arguments: leave the shape to the user
        _, dtype, shape = t
        name = names[i] if i < len(names) else f"input_{i}"
        # a state traced as [2, B, 16] beside an input [B, 64]: its batch is where B is, when B
        # is not also its dim 0 (traced at batch 2 it cannot be told and stays on axis 0)
        axis = 0
        if traced_batch is None and shape:
            traced_batch = shape[0]
        elif shape and shape[0] != traced_batch and list(shape).count(traced_batch) == 1:
            axis = list(shape).index(traced_batch)
        inputs.append(TensorSpec(name, dtype, tuple("batch" if j == axis else d for j, d in enumerate(shape)),
                                 batch_axis=axis))
    sig = Signature(inputs, [])
    try:
        known = _script_embedding_sizes(module)
    except Exception:  # noqa: BLE001 - ranges are a refinement
        known = {}
    _torch_ranges(sig, module, known)
    return sig


def from_torch_module(module, input_shape, dtype: str = "float32") -> Signature:
    """An in-memory torch module known by its first input's shape (demo models, --arch)."""
    sig = Signature.single(input_shape, dtype)
    _torch_ranges(sig, module)
    return sig
