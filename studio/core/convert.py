"""Torch -> ONNX, and onnxruntime sessions. Evaluation, quantization and export share these, so
every number is measured on the same artifact a user would ship."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

import numpy as np

from .errors import StudioError
from .model import ONNX, TORCH, Model

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
    if model.input_shape is None:
        raise StudioError(f"{model.name}: the input shape is unknown; pass --input-shape")
    import torch

    from .training import set_eval

    module = set_eval(model.obj)
    example = torch.from_numpy(model.example_input(2))  # batch 2: no batch-1 special cases get baked in
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False) takes ~0.2 s on the demo nets where the
    # dynamo exporter takes ~5 s, and the studio exports every stage to measure it. It is
    # deprecated but works in torch 2.13; if it fails (or goes away) we fall back to dynamo.
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_output():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buffer.getvalue())
    except Exception as legacy_error:  # noqa: BLE001 - try the other exporter before failing
        try:
            proto = _export_dynamo(module, example)
        except Exception as exc:
            raise StudioError(f"{model.name}: ONNX export failed: {legacy_error}; dynamo: {exc}") from None
    return proto


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


def _export_dynamo(module, example):
    import onnx
    import torch

    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), dynamo=True, external_data=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
    return onnx.load_from_string(program.model_proto.SerializeToString())


def onnx_tensors(proto) -> dict:
    """Every weight tensor an ONNX model holds: initializers and Constant-node values, in the main
    graph and in If/Loop/Scan subgraphs (studio.core.onnx_weights). Name -> TensorProto."""
    from .onnx_weights import tensors

    return tensors(proto)


def to_onnx_model(model: Model) -> Model:
    if model.framework == ONNX:
        return model
    return model.with_obj(to_onnx_proto(model), ONNX, format="onnx")


def session(proto_or_path, threads: int = 1):
    """An onnxruntime CPU session with a fixed thread count (measurements must not drift with
    whatever else the machine runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StudioError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


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


def run_session(sess, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the first output for inputs x, in batches (of the model's own size when its
    batch axis is fixed; the last one padded)."""
    name = sess.get_inputs()[0].name
    dtype = input_dtype(sess)
    outs = []
    fixed = fixed_batch(sess)
    step = fixed or batch_size
    for i in range(0, len(x), step):
        chunk = x[i : i + step].astype(dtype, copy=False)
        if len(chunk) < step and fixed:
            pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype)
            out = sess.run(None, {name: np.concatenate([chunk, pad])})[0][: len(chunk)]
        else:
            out = sess.run(None, {name: chunk})[0]
        outs.append(np.asarray(out, dtype=np.float32))
    return np.concatenate(outs)


def predict(model: Model, x: np.ndarray) -> np.ndarray:
    """Outputs of any model on numpy inputs (torch in eval mode, ONNX in onnxruntime)."""
    x = np.ascontiguousarray(x)
    if model.framework == TORCH:
        from .training import predict as torch_predict

        return torch_predict(model.obj, x)
    return run_session(session(model.obj), x)
