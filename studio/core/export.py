"""Writers for deployable files, each verified by loading the written file back and running it
against the model it came from. Writes are atomic (fileio.atomic_path): a failed, refused or
cancelled export leaves no partial file and never replaces the user's file."""

from __future__ import annotations

import io
import warnings
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .convert import model_bytes, predict_all, run_session_all, session, to_onnx_proto, write_model
from .data import Data
from .errors import StudioError
from .fileio import atomic_path
from .model import ONNX, TORCH, Model
from .training import set_eval

TWO_GB = 2**31 - 1
VERIFY_SAMPLES = 64

# format id -> (label, file suffix, needs a torch model)
FORMATS = {
    "onnx": ("ONNX (as is)", ".onnx", False),
    "onnx_fp16": ("ONNX FP16", ".onnx", False),
    "onnx_int8": ("ONNX INT8 (static, QDQ)", ".onnx", False),
    "torchscript": ("TorchScript", ".pt", True),
    "torch_export": ("torch.export program", ".pt2", True),
    "safetensors": ("safetensors (weights)", ".safetensors", True),
    # the clustered model's shipping form: codebook + bit-packed indices, LZMA; loads back as ONNX
    "packed": ("Packed (clustered weights, entropy coded)", ".packed", False),
    # onnxruntime's own flatbuffer format, what ORT Mobile and minimal builds load
    "ort": ("ORT format (ORT Mobile)", ".ort", False),
    # phones and boards (studio.core.edge; an ONNX stage goes through onnx2torch), batch 1
    "pte": ("ExecuTorch (XNNPACK)", ".pte", False),
    "pte_int8": ("ExecuTorch INT8 (XNNPACK, pt2e)", ".pte", False),
    "tflite": ("LiteRT (TFLite)", ".tflite", False),
    "tflite_int8": ("LiteRT INT8 (TFLite, pt2e)", ".tflite", False),
}
EDGE = ("pte", "pte_int8", "tflite", "tflite_int8")
LOSSY = ("onnx_fp16", "onnx_int8", "pte_int8", "tflite_int8")
# how close a lossless format must match; lossy conversions (FP16, INT8) are judged by agreement
LOSSLESS_ATOL = 1e-4
LOSSY_AGREEMENT = 0.9
LOSSY_COSINE = 0.95  # outputs that are not class scores: every output this close to the original


@dataclass
class ExportResult:
    path: str
    format: str
    verified: bool
    max_abs_diff: float | None
    agreement: float | None
    size_bytes: int
    message: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def default_name(model: Model, fmt: str) -> str:
    stem = model.name.replace(" ", "_")
    tag = {"onnx_fp16": "-fp16", "onnx_int8": "-int8", "pte_int8": "-int8", "tflite_int8": "-int8"}.get(fmt, "")
    return f"{stem}{tag}{FORMATS[fmt][1]}"


def sample_inputs(model: Model, data: Data | None):
    """Held-out samples to verify on: one array, or Inputs for a model with several inputs."""
    if data is not None:
        return data.shaped(data.x_test[:VERIFY_SAMPLES], model.input_shape)
    return model.example_inputs(VERIFY_SAMPLES)


def export(
    model: Model, path: str | Path, fmt: str, *, data: Data | None = None, cancel=None,
) -> Generator[tuple[float, str], None, ExportResult]:
    """Write `model` as `fmt` to `path`, then verify the written file against `model`."""
    if fmt not in FORMATS:
        raise StudioError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    label, _, needs_torch = FORMATS[fmt]
    if needs_torch and model.framework != TORCH:
        raise StudioError(f"{label} needs a torch model; this stage is {model.framework} (export ONNX instead)")
    if fmt in EDGE:
        from .edge import check_available

        check_available(fmt)  # one line saying what to install, before any work
    if fmt.endswith("int8") and data is None:
        raise StudioError("INT8 export calibrates on data: choose evaluation data")
    path = Path(path)
    x = sample_inputs(model, data)
    yield 0.05, f"writing {label}"
    # converted (INT8: calibrated) before the temporary exists, which then is never idle for long
    proto = _onnx_variant(model, fmt, data, cancel) if fmt.startswith("onnx") else None
    if fmt == "ort":
        proto = to_onnx_proto(model)
        if model_bytes(proto) > TWO_GB:
            raise StudioError("the ORT format holds models under 2 GB only; export ONNX instead")
    notes: list[str] = []  # what the file does not compute as the stage does (pinned If branches)
    edge_file = _edge_bytes(model, fmt, x, data, notes) if fmt in EDGE else None
    large = fmt.startswith("onnx") and model_bytes(proto) > TWO_GB  # (upb's ByteSize serializes to count)
    sidecars = [_sidecar_name(path.name)] if large else []
    with atomic_path(path, companions=sidecars) as tmp:
        if fmt.startswith("onnx"):
            _save_onnx(proto, tmp, path.name)
        elif fmt == "ort":
            _save_ort(proto, tmp)
        elif fmt in EDGE:
            tmp.write_bytes(edge_file)
        elif fmt == "torchscript":
            _save_torchscript(model, x, tmp)
        elif fmt == "torch_export":
            _save_torch_export(model, x, tmp)
        elif fmt == "packed":
            from . import packed

            tmp.write_bytes(packed.packed_bytes(model)[0])
        else:
            _save_safetensors(model, tmp)
        if cancel is not None:
            cancel()
        yield 0.6, "verifying the written file"
        result = verify(model, tmp, fmt, x)
        if result.max_abs_diff is None or not np.isfinite(result.max_abs_diff):
            # a file that does not run is never put in place of the user's file
            refused = _litert_refusal(fmt, result.message)
            raise StudioError(refused or f"export {fmt} failed verification: {result.message}")
    result.path = str(path)
    if notes:
        result.warnings = notes
        result.message += "".join(f"; warning: {n}" for n in notes)
    yield 1.0, result.message
    return result


def _litert_refusal(fmt: str, message: str) -> str | None:
    """One line when LiteRT refuses an INT8 file at load because an op's quantization does not
    meet its kernel (YOLOv8n's DFL SOFTMAX: "output->params.scale not near 1.f / 256"): the op,
    and the formats that do take the model."""
    import re

    found = re.search(r"Node number \d+ \((\w+)\) failed to prepare", message)
    if fmt != "tflite_int8" or not found:
        return None
    return (f"LiteRT refuses the INT8 file: its {found.group(1)} op is quantized with parameters its kernel does "
            "not take; export tflite (float) or pte_int8 instead")


def _onnx_variant(model: Model, fmt: str, data, cancel):
    from .training import drain

    if fmt == "onnx":
        return to_onnx_proto(model)
    from .passes import Context, create

    pass_id = "quantize.fp16" if fmt == "onnx_fp16" else "quantize.int8_static"
    return drain(create(pass_id).apply(model, Context(data=data))).model.obj


def _edge_bytes(model: Model, fmt: str, x, data, notes: list) -> bytes:
    from . import edge

    if fmt.startswith("tflite"):
        return edge.tflite_bytes(model, x, data, int8=fmt == "tflite_int8", notes=notes)
    return edge.pte_bytes(model, x, data, int8=fmt == "pte_int8", notes=notes)


def _sidecar_name(final_name: str) -> str:
    return final_name + ".data"


def _save_onnx(proto, tmp: Path, final_name: str) -> None:
    """One file; weights go to a sidecar beside `tmp` only when the model is over protobuf's
    2 GB limit (export() then has atomic_path put `tmp` in a folder of its own)."""
    import onnx

    if model_bytes(proto) > TWO_GB:
        sidecar = _sidecar_name(final_name)
        copy = onnx.ModelProto()  # saving with external data empties the proto's tensors in place
        copy.CopyFrom(proto)
        proto = copy
        onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=sidecar)
    else:
        write_model(proto, tmp)  # onnx.save_model's bytes, a tensor at a time


def _save_ort(proto, tmp: Path) -> None:
    """onnxruntime's ORT format, written the way its converter (onnxruntime.tools.
    convert_onnx_models_to_ort, default 'fixed' style) writes it: the graph optimized at level
    'all' and saved by the session, without the NCHWc layout transformer, whose x86-only layout
    would not run on an ARM phone."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime refuses, said in one line
        raise StudioError(f"onnxruntime cannot convert the model to the ORT format: {str(exc).splitlines()[0]}") from None


def _ort_session(file: Path):
    """A session on an ORT-format file, whatever its name ends with (onnxruntime goes by the
    suffix unless told)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


def _save_torchscript(model: Model, x, tmp: Path) -> None:
    import torch

    module = set_eval(model.obj)
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit is deprecated but still what many runtimes load
            scripted = torch.jit.trace(module, _args(model, x[:1]), check_trace=False, strict=False)  # verify() checks
    # saved to memory, written by Python: torch's own file writer aborts the whole process
    # (std::terminate) when the disk fills up mid-write
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    tmp.write_bytes(buffer.getvalue())


def _save_torch_export(model: Model, x, tmp: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = _args(model, x[:2])
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} if a.dim() >= 1 and a.shape[0] == 2 else None for a in args)
        program = torch.export.export(set_eval(model.obj), args, dynamic_shapes=shapes)
        buffer = io.BytesIO()  # as in _save_torchscript: a full disk must not abort the process
        torch.export.save(program, buffer)
    tmp.write_bytes(buffer.getvalue())


def _save_safetensors(model: Model, tmp: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in model.obj.state_dict().items()}
    tmp.write_bytes(save(state))  # a failed write is then an OSError, reported as one line


def _args(model: Model, x) -> tuple:
    """forward's positional tensors for samples x (one array, or Inputs in signature order)."""
    from .signature import torch_args

    return torch_args(x, model.io)


def _load_outputs(tmp: Path, fmt: str, x, model: Model) -> list[np.ndarray]:
    """Every output of the written file on x, flattened like the model's own."""
    import torch

    from .signature import flatten_outputs, samples_first

    if fmt.startswith("onnx"):
        return run_session_all(session(tmp), x)
    if fmt == "ort":
        return run_session_all(_ort_session(tmp), x)
    if fmt in EDGE:
        from . import edge

        return edge.tflite_outputs(tmp, model, x) if fmt.startswith("tflite") else edge.pte_outputs(tmp, model, x)
    if fmt == "packed":
        from . import packed

        return run_session_all(session(packed.unpack(tmp)), x)
    if fmt in ("torchscript", "torch_export"):
        loaded = torch.jit.load(str(tmp)) if fmt == "torchscript" else torch.export.load(str(tmp)).module()
        with torch.no_grad():
            args = _args(model, x)
            outs = samples_first(flatten_outputs(loaded(*args)), args, model.io)
        return [np.atleast_1d(o.detach().float().numpy()) for o in outs]
    from safetensors.torch import load_file

    restored = model.copy()
    restored.obj.load_state_dict(load_file(str(tmp)))
    return predict_all(restored, x)


def verify(model: Model, file: Path, fmt: str, x) -> ExportResult:
    """Load the written file back, run it on `x`, and compare every output with `model`'s own:
    lossless formats must match closely; lossy ones (FP16, INT8) by top-1 agreement on the output
    that is class scores (evaluate.class_scores), by cosine similarity elsewhere."""
    from .evaluate import class_scores, embedding_vocab, fidelity

    size = file.stat().st_size
    try:
        got_all = _load_outputs(file, fmt, x, model)
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is the verdict
        return ExportResult(str(file), fmt, False, None, None, size, f"the written file does not run: {exc}")
    want_all = predict_all(model, x)
    if len(got_all) != len(want_all):
        return ExportResult(str(file), fmt, False, None, None, size,
                            f"the file gives {len(got_all)} outputs, the model {len(want_all)}")
    for i, (got, want) in enumerate(zip(got_all, want_all)):
        if got.shape != want.shape:
            return ExportResult(str(file), fmt, False, None, None, size,
                                f"output {i}: shape {got.shape} != {want.shape}")
    diff = max((float(np.max(np.abs(g - w))) if g.size else 0.0) for g, w in zip(got_all, want_all))
    choice, _ = class_scores(want_all, want_all, vocab=embedding_vocab(model))
    agreement = None
    if choice is not None:
        got, want = got_all[choice.index], want_all[choice.index]
        agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    cosines = [fidelity(g, w)["cosine"] for g, w in zip(got_all, want_all)]
    known = [c for c in cosines if c is not None]
    worst_cos = min(known) if known else None
    lossy = fmt in LOSSY
    finite = all(bool(np.isfinite(g).all()) for g in got_all)
    if lossy:
        # class scores by agreement, every other output (a classifier's extra heads too) by cosine
        others = [c for i, c in enumerate(cosines) if choice is None or i != choice.index]
        ok = finite and (agreement is None or agreement >= LOSSY_AGREEMENT) and all(
            c is not None and c >= LOSSY_COSINE for c in others)
    else:
        ok = finite and all(
            (float(np.max(np.abs(g - w))) if g.size else 0.0) <= LOSSLESS_ATOL * max(1.0, float(np.abs(w).max(initial=0)))
            for g, w in zip(got_all, want_all))
    what = f"max abs diff {diff:.2e}"
    if len(got_all) > 1:
        what += f" over {len(got_all)} outputs"
    if agreement is not None and choice is not None:
        what += f", top-1 agreement {agreement:.1%}" + (" per position" if choice.per_position else "")
        if len(got_all) > 1:
            what += f" (output {choice.index}, the class scores" + ("; the others by cosine)" if lossy else ")")
    elif lossy and worst_cos is not None:
        what += f", cosine {worst_cos:.4f} (worst output)"
    verdict = "verified" if ok else "NOT verified"
    return ExportResult(str(file), fmt, ok, diff, agreement, size, f"{verdict}: {what} on {len(x)} samples")


__all__ = ["FORMATS", "ExportResult", "export", "verify", "default_name", "ONNX"]
