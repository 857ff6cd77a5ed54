"""Torch -> ONNX, and onnxruntime sessions. Evaluation, quantization and export share these, so
every number is measured on the same artifact a user would ship."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import Cancelled, StudioError
from .model import ONNX, TORCH, Model
from .training import drain

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def to_onnx_proto(model: Model):
    """The model as an onnx.ModelProto with a dynamic batch axis (torch models are exported;
    ONNX models are returned as they are)."""
    import onnx

    if model.framework == ONNX:
        return model.obj
    if model.framework != TORCH:
        raise StudioError(f"cannot convert a {model.framework} model to ONNX")
    signature = model.signature
    if signature is not None and signature.multi:
        signature.check()  # names the input that needs a size or a value
    elif model.input_shape is None:
        if signature is not None:
            signature.check()
        raise StudioError(f"{model.name}: the input shape is unknown; pass --input-shape")
    import torch

    from .signature import flatten_outputs, output_names, torch_args
    from .training import set_eval

    module = set_eval(model.obj)
    # batch 2: no batch-1 special cases get baked in; a model converted from a file with a fixed
    # batch (ultralytics' YOLO: batch 1, Reshapes to [1, ...]) runs only at that batch and keeps it
    batch = model.meta.get("fixed_batch") or 2
    args = torch_args(model.example_inputs(batch), signature) if signature is not None and signature.multi \
        else (torch.from_numpy(model.example_input(batch)),)
    # a Python number (TorchScript `sr: int`) stays an input of a scripted graph (its If reads
    # it); tracing an ordinary module bakes it in as a constant
    scripted = isinstance(module, torch.jit.ScriptModule)
    named = list(zip(signature.names if signature is not None else [INPUT_NAME], args))
    in_names = [n for n, a in named if scripted or isinstance(a, torch.Tensor)]
    tensors = [(n, a) for n, a in named if isinstance(a, torch.Tensor)]
    with torch.no_grad():
        out = module(*args)
    flat = flatten_outputs(out)
    names = output_names(out)
    if len(flat) == 1:
        out_names = [OUTPUT_NAME]
    else:  # dict keys where the model gives them, else output, output_1, ...
        out_names = [n if n else (OUTPUT_NAME if i == 0 else f"{OUTPUT_NAME}_{i}") for i, n in enumerate(names)]
        if len(set(out_names)) != len(out_names) or len(out_names) != len(flat):
            out_names = [OUTPUT_NAME if i == 0 else f"{OUTPUT_NAME}_{i}" for i in range(len(flat))]
    axes = signature.batch_axes() if signature is not None and signature.multi else {}
    dynamic = {n: {axes.get(n, 0): "batch"} for n, a in tensors
               if a.dim() > axes.get(n, 0) and a.shape[axes.get(n, 0)] == 2}
    state_shapes = {tuple(a.shape): axes[n] for n, a in tensors if n in axes}
    for n, o in zip(out_names, flat):  # a next state is batched where its state input is
        if hasattr(o, "dim") and o.dim() >= 1:
            axis = state_shapes.get(tuple(o.shape), 0)
            if o.shape[axis] == 2:
                dynamic[n] = {axis: "batch"}
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False) takes ~0.2 s on the demo nets where the
    # dynamo exporter takes ~5 s, and the studio exports every stage to measure it. It is
    # deprecated but works in torch 2.13; if it fails (or goes away) we fall back to dynamo.
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), _quiet_output():
            warnings.simplefilter("always")
            torch.onnx.export(
                module, args, buffer, dynamo=False, opset_version=OPSET,
                input_names=in_names, output_names=out_names, dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buffer.getvalue())
        traced_values = any(issubclass(w.category, torch.jit.TracerWarning) for w in caught)
        if traced_values and dynamic and batch_baked(proto, model, set(dynamic)):
            proto = _export_fixed_batch(module, model, signature, in_names, out_names)
    except Exception as legacy_error:  # noqa: BLE001 - try the other exporter before failing
        try:
            if isinstance(module, torch.jit.ScriptModule):
                proto = _export_script(module, args, in_names, out_names)
            else:
                proto = _export_dynamo(module, args, in_names, out_names)
        except Exception as exc:  # noqa: BLE001 - the exporter fails every which way: one line
            first = str(legacy_error).splitlines()[0] if str(legacy_error) else type(legacy_error).__name__
            hint = ("; the studio measures and compresses through ONNX, and this TorchScript module's code does not "
                    "convert: open an ONNX export of the model instead (torch.onnx.export of the eager module, or "
                    "the .onnx its project ships)") if scripted else ""
            raise StudioError(f"{model.name}: ONNX export failed: {first}; "
                              f"dynamo: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}{hint}") from None
    return proto


def batch_baked(proto, model: Model, dynamic_names) -> bool:
    """True when a traced export declares a free batch but does not run at another one: the trace
    turned a value computed from the batch into a constant (an onnx2torch-converted ViT's class
    token stayed expanded to 2 samples). Checked only when the tracer warned of such values."""
    try:
        outs = run_session_all(session(proto), model.example_inputs(3))
    except Exception:  # noqa: BLE001 - any failure at batch 3 is the baked batch
        return True
    names = [o.name for o in proto.graph.output]
    return any(n in dynamic_names and (out.ndim == 0 or out.shape[0] != 3) for n, out in zip(names, outs))


def _export_fixed_batch(module, model: Model, signature, in_names, out_names):
    """The legacy export at batch 1 with the batch fixed in the file: measurement and export run
    such a file one sample at a time (padded), so its numbers stay right."""
    import onnx
    import torch

    from .signature import torch_args

    args = torch_args(model.example_inputs(1), signature) if signature is not None and signature.multi \
        else (torch.from_numpy(model.example_input(1)),)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_output():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, input_names=in_names,
                          output_names=out_names, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def onnx_copy(model: Model):
    """An onnx.ModelProto of the model that the caller may change in place: an ONNX model's own
    proto is copied (to_onnx_proto returns it as is), a torch model is exported afresh."""
    import onnx

    proto = to_onnx_proto(model)
    if proto is model.obj:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        return copy
    return proto


@contextlib.contextmanager
def _quiet_output():
    """Silence C-level stdout and stderr: when the legacy exporter fails it prints its whole IR
    graph (to stdout, which would corrupt `--json` output) before we fall back to dynamo."""
    streams = []
    for stream in (sys.stdout, sys.stderr):
        try:
            streams.append((stream, stream.fileno()))
        except (AttributeError, OSError, ValueError):  # no real file (pytest capture, a GUI)
            pass
    saved = []
    try:
        with open(os.devnull, "w") as devnull:
            for stream, fd in streams:
                stream.flush()
                saved.append((stream, fd, os.dup(fd)))
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for stream, fd, copy in saved:
            stream.flush()
            os.dup2(copy, fd)
            os.close(copy)


def _export_dynamo(module, args, in_names=(INPUT_NAME,), out_names=(OUTPUT_NAME,)):
    import onnx
    import torch

    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} if a.dim() >= 1 and a.shape[0] == 2 else None for a in args)
    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, tuple(args), dynamo=True, external_data=False,
            input_names=list(in_names), output_names=list(out_names),
            dynamic_shapes=shapes, verbose=False,
        )
    return onnx.load_from_string(program.model_proto.SerializeToString())


def _export_script(module, args, in_names, out_names):
    """A loaded TorchScript file the legacy exporter cannot take (its graph lost the ranks that
    attention or dict outputs need): torch's TorchScript -> ExportedProgram converter, then the
    dynamo exporter. The program is traced at the example's batch, so the file gets a fixed
    batch axis (measurement then feeds it in batches of that size)."""
    import onnx
    from torch._export.converter import TS2EPConverter  # torch's own converter (private module)

    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        program = TS2EPConverter(module, tuple(args)).convert()
        import torch

        onnx_program = torch.onnx.export(program, tuple(args), dynamo=True, external_data=False,
                                         input_names=list(in_names), output_names=list(out_names), verbose=False)
    return onnx.load_from_string(onnx_program.model_proto.SerializeToString())


def light_onnx(model: Model):
    """(proto, tensors): the model as an ONNX proto without reading into it the big tensors the
    window left in the user's file (Model.lazy, a FileTensors, or None). write_model, session and
    count_parameters take them from the file; filling the message copied each into it with the
    GIL held (BERT-base's 94 MB embedding: ~50 ms, the window frozen) and writing it copied it out
    again. The proto is the model's own: read it, never change it. (to_onnx_proto(model), None)
    for a model whose tensors are all in its proto."""
    if model.framework == ONNX:
        tensors = model.lazy  # (read before light: filled meanwhile, its tensors are simply not pending)
        if tensors is not None:
            return model.light, tensors
    return to_onnx_proto(model), None


def onnx_tensors(proto) -> dict:
    """Every weight tensor an ONNX model holds: initializers and Constant-node values, in the main
    graph and in If/Loop/Scan subgraphs (studio.core.onnx_weights). Name -> TensorProto."""
    from .onnx_weights import tensors

    return tensors(proto)


def to_onnx_model(model: Model) -> Model:
    if model.framework == ONNX:
        return model
    return model.with_obj(to_onnx_proto(model), ONNX, format="onnx")


WRITE_WHOLE_UNDER = 16 << 20  # a ModelProto smaller than this is written from one serialization


def _part(source, keep):
    """A message of `source`'s type with copies of the set fields whose number `keep` accepts.
    A field it leaves out is not read (ListFields hands out every field's value: a tensor's
    raw_data copied whole, 94 MB on BERT-base's word embedding, the GIL held ~100 ms)."""
    target = type(source)()
    for field in source.DESCRIPTOR.fields:
        if not keep(field.number):
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            value = getattr(source, field.name)
            if len(value):
                getattr(target, field.name).extend(value)
        elif not source.HasField(field.name):
            continue
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(getattr(source, field.name))
        else:
            setattr(target, field.name, getattr(source, field.name))
    return target


def weight_bytes(proto) -> int:
    """About how many bytes the graph's initializers hold, from their shapes and types alone.
    upb's ModelProto.ByteSize() serializes the whole model to count (BERT-base: a passing copy
    of 440 MB each time a size was asked, before every session of a large model)."""
    from onnx import helper

    total = 0
    for t in proto.graph.initializer:
        try:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except Exception:  # noqa: BLE001 - an unknown or undefined type: count a byte a value
            item = 1
        total += int(np.prod(t.dims, dtype=np.int64)) * item
    return total


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


GRAPH, INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer (field numbers)
NODE = 1  # GraphProto.node


def model_bytes(proto) -> int:
    """proto.ByteSize(), counted part by part: the nodes and initializers one at a time, the rest
    of the graph and of the model together. upb's ByteSize serializes the whole model to count
    (BERT-base: +830 MB at its peak); this holds about the largest tensor."""
    if weight_bytes(proto) < WRITE_WHOLE_UNDER:
        return proto.ByteSize()
    graph = proto.graph

    def field(size: int) -> int:  # a length-delimited field with a one-byte tag
        return 1 + len(_varint(size)) + size

    inner = (_part(graph, lambda n: n not in (NODE, INITIALIZER)).ByteSize()
             + sum(field(x.ByteSize()) for x in graph.node) + sum(field(t.ByteSize()) for t in graph.initializer))
    return _part(proto, lambda n: n != GRAPH).ByteSize() + field(inner)


def write_model(proto, path, located: dict | None = None, tensors=None) -> None:
    """The ModelProto written to `path` byte for byte as onnx.save_model writes it, without the
    whole serialization in memory at once: the model's fields before the graph, the graph's
    before its initializers, each initializer serialized in turn, then the fields after (protobuf
    writes fields in the order of their numbers; a test checks the bytes are the same).
    SerializeToString (and upb's ByteSize, which serializes to count) took another ~830 MB
    at its peak for BERT-base's 434 MB; this takes about its largest tensor (94 MB).
    A big tensor's raw bytes are neither sized nor serialized by protobuf (each held the GIL for
    the whole tensor, the window frozen 100-200 ms on BERT-base's word embedding): their length
    comes from the dims and the type, the field's header is written here and the bytes, copied
    out once, go to the file in slices (each write lets the GIL go).
    `located`: a dict that gets {id(tensor): (tensor, offset, length)} of each tensor of the main
    graph whose raw bytes were written that way (with `located`, every one over MAP_OVER bytes),
    where they are in the file: what reads them
    again (stats.count_parameters) reads the file in slices instead of copying them out of the
    message (~55 ms holding the GIL for BERT-base's embedding).
    `tensors`: the io.file_tensors.FileTensors of a proto the window opened (Model.lazy, see
    light_onnx): the tensors still only in the user's file are written from there, in slices,
    as the proto would hold them once filled (the same bytes: a test checks)."""
    if located is not None:
        located.clear()
    pending = tensors is not None and any(tensors.pending(t) for t in proto.graph.initializer)
    if not pending and (weight_bytes(proto) < WRITE_WHOLE_UNDER or not len(proto.graph.initializer)):
        Path(path).write_bytes(proto.SerializeToString())
        return
    try:
        _write_parts(proto, path, trust_dims=True, located=located, tensors=tensors)
    except _RawLengthDiffers:  # raw bytes that do not match the dims (a malformed file): as protobuf counts them
        if located is not None:
            located.clear()
        _write_parts(proto, path, trust_dims=False, tensors=tensors)


class _RawLengthDiffers(Exception):
    pass


RAW_SLICE = 4 << 20  # raw bytes of a tensor over this are written in slices of this size
MAP_OVER = 64 << 10  # where write_model records where a tensor's bytes went: those over this (mapped_session)
RAW = 9  # TensorProto.raw_data (field number): dims .. name come before it, double_data .. after
EXTERNAL_DATA, DATA_LOCATION = 13, 14  # TensorProto.external_data, data_location
# bytes per element of the TensorProto data types whose raw bytes are one fixed-size item each
# (onnx.TensorProto.DataType: 4-bit and string types are not)
ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
              17: 1, 18: 1, 19: 1, 20: 1}


def _raw_length(t, over: int = RAW_SLICE) -> int | None:
    """The length of a tensor's raw_data over `over` bytes from its dims and type, without reading
    it; None for a tensor written whole (smaller, no raw bytes, a type without a fixed item size,
    or fields this protobuf does not know: those are written after the known ones)."""
    item = ITEM_BYTES.get(t.data_type)
    if item is None or t.data_location == 1:  # EXTERNAL: the bytes are elsewhere
        return None
    count = 1
    for d in t.dims:
        count *= d
    if count * item <= over or count < 0 or not t.HasField("raw_data"):
        return None
    from google.protobuf import unknown_fields

    return None if len(unknown_fields.UnknownFieldSet(t)) else count * item


def _as_filled(t):
    """The fields of a tensor left in the user's file as FileTensors.fill leaves them (a
    sidecar's tensor no longer external), without its bytes."""
    meta = type(t)()
    meta.CopyFrom(t)  # no raw bytes in it: small
    if meta.data_location == 1:
        meta.data_location = 0
        del meta.external_data[:]
    return meta


def _write_parts(proto, path, trust_dims: bool, located: dict | None = None, tensors=None) -> None:
    graph = proto.graph
    before = _part(graph, lambda n: n < INITIALIZER).SerializeToString()
    after = _part(graph, lambda n: n > INITIALIZER).SerializeToString()
    raw_tag = _varint(RAW << 3 | 2)
    # per initializer: its serialized size, and None or (fields before raw_data, raw length, fields
    # after, whether the bytes come from the user's file)
    plan: list[tuple[int, tuple | None]] = []
    for t in graph.initializer:
        in_file = tensors.pending_length(t) if tensors is not None else None  # decided once: a fill meanwhile changes nothing
        raw = in_file if in_file is not None else _raw_length(t, MAP_OVER if located is not None else RAW_SLICE) \
            if trust_dims else None
        if raw is None:
            plan.append((t.ByteSize(), None))
            continue
        meta = _as_filled(t) if in_file is not None else t
        head = _part(meta, lambda n: n < RAW).SerializeToString()
        tail = _part(meta, lambda n: n > RAW).SerializeToString()
        plan.append((len(head) + len(raw_tag) + len(_varint(raw)) + raw + len(tail), (head, raw, tail, in_file is not None)))
    tag = _varint(INITIALIZER << 3 | 2)
    body = len(before) + len(after) + sum(len(tag) + len(_varint(n)) + n for n, _ in plan)
    with open(path, "wb") as f:
        f.write(_part(proto, lambda n: n < GRAPH).SerializeToString())
        f.write(_varint(GRAPH << 3 | 2) + _varint(body) + before)
        for t, (n, parts) in zip(graph.initializer, plan, strict=True):
            f.write(tag + _varint(n))
            if parts is None:
                f.write(t.SerializeToString())
                continue
            head, length, tail, from_file = parts
            if from_file:
                f.write(head + raw_tag + _varint(length))
                if located is not None:
                    located[id(t)] = (t, f.tell(), length)
                tensors.write_to(t, f)
                f.write(tail)
                continue
            data = t.raw_data  # the one copy out of the message (~40 ms for 94 MB): protobuf has no view
            if len(data) != length:
                raise _RawLengthDiffers
            f.write(head + raw_tag + _varint(length))
            if located is not None:
                located[id(t)] = (t, f.tell(), length)
            view = memoryview(data)
            for start in range(0, length, RAW_SLICE):
                f.write(view[start:start + RAW_SLICE])
            del view, data
            f.write(tail)
        f.write(after)
        f.write(_part(proto, lambda n: n > GRAPH).SerializeToString())


def located_ranges(proto, located: dict) -> dict[int, tuple[int, int]]:
    """write_model's `located` as {initializer index: (offset, length)} (mapped_session)."""
    ranges = {}
    for i, t in enumerate(proto.graph.initializer):
        spot = located.get(id(t))
        if spot is not None and spot[0] is t:
            ranges[i] = (spot[1], spot[2])
    return ranges


def mapped_session(proto, path: Path, ranges: dict[int, tuple[int, int]], threads: int = 1):
    """A session on the model file `path` (`proto`: its model, whole or without the bytes at
    `ranges`), whose initializers at `ranges` ({index: (offset, length) of their raw bytes in
    the file}) onnxruntime maps from the file instead of copying (mapped_view). Freeing a session
    holds the GIL for all the memory it let go; mapped, BERT-base's took ~9 ms instead of ~20-45
    (the window frozen as long), and making it about half the time. For sessions whose outputs
    are compared, not timed: the latency rounds load their models as a user's runtime would (session)."""
    if not ranges:
        return session(path, threads)
    view = mapped_view(proto, path, ranges)
    try:
        return open_mapped(view, path, threads)
    finally:
        view.unlink(missing_ok=True)  # onnxruntime has read it; the data file stays mapped


def mapped_view(proto, path: Path, ranges: dict[int, tuple[int, int]]) -> Path:
    """A small model written beside `path` that names the initializers at `ranges` as external
    data in `path` itself (the rest of `proto` as it is); its path. See mapped_session."""
    import onnx

    view = _part(proto, lambda n: n != GRAPH)
    view.graph.CopyFrom(_part(proto.graph, lambda n: n != INITIALIZER))
    for i, t in enumerate(proto.graph.initializer):
        spot = ranges.get(i)
        if spot is None:
            view.graph.initializer.add().CopyFrom(t)  # small
            continue
        meta = view.graph.initializer.add()
        meta.CopyFrom(_part(t, lambda n: n not in (RAW, EXTERNAL_DATA, DATA_LOCATION)))  # without its bytes
        meta.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", path.name), ("offset", str(spot[0])), ("length", str(spot[1]))):
            entry = meta.external_data.add()
            entry.key, entry.value = key, value
    mapped = path.with_name(f"{path.stem}.mapped.onnx")
    mapped.write_bytes(view.SerializeToString())
    return mapped


def open_mapped(view: Path, path: Path, threads: int = 1):
    """A session on mapped_view's `view` of the file `path`; on `path` itself where onnxruntime
    refuses the view (its checks of external data grow): a copy of the weights then."""
    try:
        return session(view, threads)
    except StudioError:
        return session(path, threads)


SESSION_FROM_FILE = 64 << 20  # a ModelProto larger than this is handed to onnxruntime as a file


def session(proto_or_path, threads: int = 1, tensors=None, basic: bool = False):
    """An onnxruntime CPU session with a fixed thread count (measurements must not drift with
    whatever else the machine runs), from a ModelProto, a file's path or its serialized bytes.
    `tensors`: a ModelProto's tensors still in the user's file (light_onnx), written from there.
    `basic`: onnxruntime's basic graph optimizations only (the INT8 pass's float reference is
    that of its pre-processing session, so made)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if hasattr(proto_or_path, "SerializeToString") and (weight_bytes(proto_or_path) > SESSION_FROM_FILE
                                                         or tensors is not None):
        # from a file, onnxruntime reads the model straight into its own structures; from bytes it
        # holds them, a copy of them and the model parsed from them at once: BERT-base (440 MB) peaked
        # at ~1.3 GB more that way, ~0.65 GB from a file
        with tempfile.TemporaryDirectory(prefix="studio-session-") as folder:
            path = Path(folder) / "model.onnx"
            write_model(proto_or_path, path, tensors=tensors)  # a tensor at a time: no second copy in memory
            return session(path, threads, basic=basic)
    source = (proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString")
              else proto_or_path if isinstance(proto_or_path, bytes) else str(proto_or_path))
    try:
        sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes: one line
        raise StudioError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    # onnxruntime's Python session keeps the serialized model it was built from for its whole life
    # ("This is bad as we're holding the memory indefinitely", its own comment), to build itself
    # again on a fallback to other providers: a CPU-only session never does. Let it go: one copy
    # of the model less for every session (440 MB on BERT-base)
    if getattr(sess, "_model_bytes", None) is not None:
        sess._model_bytes = None
    return sess


ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(bool)": np.bool_, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
             "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64}


def input_dtype(sess):
    """The numpy dtype the session's first input takes."""
    return ORT_TYPES.get(sess.get_inputs()[0].type, np.float32)


def fixed_batch(proto_or_session) -> int | None:
    """The batch size the model's first input is pinned to (an export without a dynamic batch
    axis, e.g. torch.onnx.export without dynamic_axes), or None when the batch axis is free."""
    if hasattr(proto_or_session, "get_inputs"):
        dims = proto_or_session.get_inputs()[0].shape
        dim = dims[0] if dims else None
    else:
        graph = proto_or_session.graph
        inits = {t.name for t in graph.initializer}
        first = next((i for i in graph.input if i.name not in inits), None)
        d = first.type.tensor_type.shape.dim if first is not None else []
        dim = d[0].dim_value if len(d) and d[0].HasField("dim_value") else None
    return dim if isinstance(dim, int) and dim > 0 else None


# One onnxruntime call may take this long before it is stopped: a Loop with a trip count of 2^62
# never ends by itself, and a call in C++ cannot see Ctrl-C or a cancel.
RUN_BUDGET_S = float(os.environ.get("STUDIO_RUN_BUDGET", "900"))


def guarded_run(sess, feed: dict, cancel: threading.Event | None = None, budget_s: float | None = None):
    """sess.run(None, feed) that a cancel, Ctrl-C or the time budget stops: the call runs on a
    helper thread while this one waits in short steps (so KeyboardInterrupt and the cancel event
    are seen), and onnxruntime's RunOptions.terminate ends it at its next node."""
    import onnxruntime as ort

    budget_s = RUN_BUDGET_S if budget_s is None else budget_s
    options = ort.RunOptions()
    options.log_severity_level = 4  # a terminated run is ours to report, in one line
    result: dict = {}

    def call():
        try:
            result["out"] = sess.run(None, feed, options)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result["error"] = exc

    worker = threading.Thread(target=call, name="onnxruntime-run", daemon=True)
    deadline = time.monotonic() + budget_s
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if time.monotonic() > deadline:
                raise StudioError(f"onnxruntime ran one call for over {budget_s:.0f} s and was stopped "
                                  "(a Loop that never ends?); STUDIO_RUN_BUDGET sets the limit")
    except BaseException:
        options.terminate = True
        worker.join()
        raise
    if "error" in result:
        raise result["error"]
    return result["out"]


def run_session(sess, x, batch_size: int = 256, cancel: threading.Event | None = None) -> np.ndarray:
    """Outputs of the first output for inputs x (one array, or Inputs for every input)."""
    return run_session_all(sess, x, batch_size, cancel)[0]


def run_session_all(sess, x, batch_size: int = 256, cancel: threading.Event | None = None) -> list[np.ndarray]:
    """Every output of the model for inputs x, in batches (of the model's own size when its
    batch axis is fixed; the last one padded), as float32 arrays in the model's output order."""
    return drain(iter_session_all(sess, x, batch_size, cancel))


STREAMS = max(1, min(4, os.cpu_count() or 1))  # calls of a fixed-batch model run side by side (iter_session_all)


def iter_session_all(sess, x, batch_size: int = 256, cancel: threading.Event | None = None,
                     streams: int | None = None):
    """run_session_all as a generator: yields the fraction of samples done after each batch
    (a big model's evaluation shows progress instead of sitting at 0 %), returns the outputs.

    A model whose batch axis the file fixes (BERT-base exported at batch 1: 256 calls of ~0.4 s)
    runs `streams` calls at a time (default STREAMS, the machine's cores up to 4) on the one
    session, each call on one thread as the session was built (onnxruntime's Run is thread-safe
    and lets go of the GIL): the same calls on the same inputs, so the same outputs in the same
    order, ~2x sooner on 2 idle cores. Unlike two intra-op threads per call, which wait for each
    other at every node, two streams do not slow down on a loaded machine. A free batch axis
    keeps one call at a time (its batches are large already; two would double their memory)."""
    from .signature import Inputs, feeds

    metas = sess.get_inputs()
    fixed = fixed_batch(sess)
    step = fixed or batch_size
    width = max(1, streams if streams is not None else STREAMS) if fixed else 1
    starts = list(range(0, len(x), step))
    parts: list[list[np.ndarray]] = []

    def collect(i, outs):
        nonlocal parts
        n = min(step, len(x) - i)
        if not parts:
            parts = [[] for _ in outs]
        for j, out in enumerate(outs):
            out = np.atleast_1d(np.asarray(out))
            if isinstance(x, Inputs) and x.axes:  # a next state [2, batch, 128]: samples to axis 0
                out = x[i : i + step].samples_first(out)
            if fixed and n < fixed and out.shape[0] == fixed:
                out = out[:n]
            parts[j].append(out.astype(np.float32, copy=False))

    if width == 1 or len(starts) < 2:
        for i in starts:
            if i:
                yield i / len(x)
            collect(i, guarded_run(sess, feeds(metas, x, i, i + step, pad_to=fixed), cancel))
        return [np.concatenate(p) for p in parts]

    from collections import deque
    from concurrent.futures import ThreadPoolExecutor, wait

    stop = threading.Event()  # the workers' cancel: set on the caller's cancel, an error or a close

    def one(i):
        return guarded_run(sess, feeds(metas, x, i, i + step, pad_to=fixed), stop)

    pending: deque = deque()
    todo = iter(starts)
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="studio-stream")

    def fill():
        while len(pending) < width:
            i = next(todo, None)
            if i is None:
                return
            pending.append((i, pool.submit(one, i)))

    try:
        fill()
        while pending:  # in order: the oldest call's outputs go next
            i, future = pending.popleft()
            while True:  # short waits: Ctrl-C and a cancel are seen, also between calls
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if wait([future], timeout=0.05).done:
                    break
            outs = future.result()
            fill()
            collect(i, outs)
            if i + step < len(x):
                yield (i + step) / len(x)
    finally:
        stop.set()  # calls still running end at their next node
        pool.shutdown(wait=True, cancel_futures=True)
    return [np.concatenate(p) for p in parts]


def predict(model: Model, x) -> np.ndarray:
    """Outputs of any model on numpy inputs (torch in eval mode, ONNX in onnxruntime)."""
    return predict_all(model, x)[0]


def predict_all(model: Model, x) -> list[np.ndarray]:
    """Every output (flattened: tuples, lists, dicts) of any model on one array or Inputs."""
    if model.framework == TORCH:
        from .signature import Inputs
        from .training import predict_outputs

        # converted from a file with a fixed batch (its Reshapes say [1, ...]): run at that batch
        batch = model.meta.get("fixed_batch") or 512
        if isinstance(x, Inputs):
            return predict_outputs(model.obj, x, model.io, batch_size=batch)
        return predict_outputs(model.obj, np.ascontiguousarray(x), None, batch_size=batch)
    if not hasattr(x, "arrays"):
        x = np.ascontiguousarray(x)
    return run_session_all(session(model.obj), x)
