"""Files for phones and boards: ExecuTorch `.pte` (XNNPACK delegate) and LiteRT `.tflite`,
written from a torch stage (an ONNX stage goes through onnx2torch first) and run back in their
own runtimes to verify them.

Both are written for batch 1, the way a phone runs a model: their runtimes plan memory for the
exported shapes. Verification runs the samples one at a time.

Versions that work with torch 2.13.0 (the pinned torch): executorch 1.5.1 (its wheel links
libtorch; no torch requirement declared, built against 2.13) and ai-edge-litert 2.3.0 (runtime;
the `edge` extra). The LiteRT converter litert-torch 0.10.0 (torch>=2.4,<2.15) works too, but
not as an extra: installed with its dependencies, litert-converter's xdsl==0.28.0 pins
typing-extensions<4.13, which takes pydantic 2.14 -> 2.11.10 (pip's dry run, 2026-12). make setup
installs it with --no-deps and only the modules a conversion imports
(packaging/litert-converter.txt, ~680 MB): nothing downgraded; float and INT8 .tflite of the demo
CNN and ResNet, and float of a ResNet-18 ONNX (via onnx2torch), written and verified.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import StudioError
from .model import ONNX, TORCH, Model

CALIBRATION_SAMPLES = 128
INSTALL_EDGE = "pip install -c constraints.txt 'compression-studio[edge]'"
INSTALL_LITERT = "pip install --no-deps -r packaging/litert-converter.txt (make setup does; see that file)"

# format id -> (module that writes it, module that runs it, what to install)
NEEDS = {
    "pte": ("executorch.exir", "executorch.runtime", f"ExecuTorch is not installed: {INSTALL_EDGE}"),
    "pte_int8": ("executorch.exir", "executorch.runtime", f"ExecuTorch is not installed: {INSTALL_EDGE}"),
    "tflite": ("litert_torch", "ai_edge_litert.interpreter",
               f"the LiteRT converter is not installed: {INSTALL_LITERT}"),
}
NEEDS["tflite_int8"] = NEEDS["tflite"]


def missing(fmt: str) -> str | None:
    """Why `fmt` cannot be written on this machine (one line saying what to install), or None."""
    import importlib.util

    if fmt not in NEEDS:
        return None
    *modules, hint = NEEDS[fmt]
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return hint
        except (ImportError, ValueError):  # a parent package missing, or a half-installed one
            return hint
    return None


def check_available(fmt: str) -> None:
    reason = missing(fmt)
    if reason is not None:
        raise StudioError(f"cannot write {fmt}: {reason}")


def torch_module(model: Model, notes: list | None = None):
    """The stage as a torch module in eval mode: a torch stage as it is, an ONNX stage converted
    by onnx2torch (checked against onnxruntime; one line naming the op when it cannot be).

    torch.export reads no number out of a tensor (a stored tensor is an input of the exported
    program, a number read from it is data-dependent), while onnx2torch's Reshape, Split, Slice
    and Resize read their shapes from tensors at run time: ultralytics' YOLOv8 export failed on
    "data-dependent expression u0". So an ONNX stage is converted from its graph specialized to
    the signature's shapes at batch 1 (shape computations folded to constants, `specialized`), and the
    converted module (also a torch stage converted earlier, on a copy) gets those shapes as
    Python numbers (`static_shape_args`). The files are written at batch 1 and verified against
    the stage anyway. A TorchScript stage (which torch.export does not take) goes through its
    ONNX export first. When the specialized graph replaced If nodes by the branch the pinned
    inputs take (Silero VAD with sr pinned), the file computes only that branch: a warning in
    the same words as the INT8 stage's (onnx_torch.pinned_branch_warning) is appended to `notes`."""
    import copy

    from .passes.base import is_torchscript
    from .passes.onnx_torch import (
        branches_pinned,
        onnx_to_torch,
        pinned_branch_warning,
        pins_text,
        specialized,
        static_shape_args,
    )
    from .training import set_eval

    if model.framework == TORCH and is_torchscript(model):  # torch.export takes no ScriptModule
        from .convert import to_onnx_model

        model = to_onnx_model(model)  # its ONNX export, then onnx2torch below
    if model.framework == TORCH:
        module = model.obj
        if getattr(module, "graph", None) is not None and model.meta.get("converted_from") == "onnx":
            module = copy.deepcopy(module)
            static_shape_args(module)
        return set_eval(module)
    if model.framework == ONNX:
        folded = specialized(model.obj, _batch1(model.signature)) if not model.io.problems() else None
        converted = None
        if folded is not None:
            try:
                converted = onnx_to_torch(model.with_obj(folded, ONNX, format="onnx"))
            except StudioError:
                converted = None  # the graph as it is may still convert
            if converted is not None and notes is not None and pins_text(model.signature) \
                    and branches_pinned(model.obj, folded):
                notes.append(pinned_branch_warning(model.signature, "the file", "export the original"))
        if converted is None:
            converted = onnx_to_torch(model)
        static_shape_args(converted.obj)
        return set_eval(converted.obj)
    raise StudioError(f"cannot convert a {model.framework} model for a phone runtime")


def _batch1(signature):
    """The signature with every batched input's batch axis at 1 (what the phone files take), so
    the shape computations that read the batch fold too."""
    from dataclasses import replace

    if signature is None:
        return None
    inputs = []
    for spec in signature.inputs:
        if spec.batched and spec.shape is not None and spec.batch_axis < len(spec.shape):
            shape = list(spec.shape)
            shape[spec.batch_axis] = 1
            spec = replace(spec, shape=tuple(shape))
        inputs.append(spec)
    return replace(signature, inputs=inputs)


def _batch1_args(model: Model, x) -> tuple:
    return _sample_args(x[:1], model)


def _sample_args(x, model: Model) -> tuple:
    """forward's tensors for samples x, with row-major strides. A numpy slice such as
    (1, 1, 8, 8) with strides (256, 4, 32, 4) is contiguous to torch, but ExecuTorch reads a dim
    order off the strides: exported so, the XNNPACK program expected channels-last input and
    failed on every ordinary tensor."""
    import torch

    from .signature import torch_args

    return tuple(torch.empty(a.shape, dtype=a.dtype).copy_(a) for a in torch_args(x, model.io))


def _program(module, args):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(module, args)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow, unsupported ops, ...
            raise StudioError(f"torch.export cannot capture this model: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- ExecuTorch


def pte_bytes(model: Model, x, data=None, int8: bool = False, notes: list | None = None) -> bytes:
    """The stage as an ExecuTorch program, lowered to XNNPACK. INT8: the pt2e flow with
    ExecuTorch's XNNPACKQuantizer (symmetric, per-channel weights), calibrated on `data`'s
    training split."""
    check_available("pte")
    from .convert import _quiet_output

    module = torch_module(model, notes)
    args = _batch1_args(model, x)
    program = _program(module, args)
    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            if int8:
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                    XNNPACKQuantizer,
                    get_symmetric_quantization_config,
                )

                quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
                program = _program(_quantize_pt2e(program, quantizer, model, data), args)
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            return bytes(lowered.to_executorch().buffer)
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - an op ExecuTorch cannot lower
            raise StudioError(f"ExecuTorch cannot lower this model: {_first_line(exc)}") from None


def _quantize_pt2e(program, quantizer, model: Model, data, **convert_options):
    """torch's pt2e flow (torchao): observers where `quantizer` says, calibrated sample by
    sample on the first CALIBRATION_SAMPLES of the training split (never the held-out samples
    the export is verified on), then quantize/dequantize pairs. Returns the converted module."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if data is None:
        raise StudioError("INT8 export calibrates on data: choose evaluation data")
    prepared = prepare_pt2e(program.module(), quantizer)
    samples = data.shaped(data.x_train[:CALIBRATION_SAMPLES], model.input_shape)
    with torch.no_grad():
        for i in range(len(samples)):
            prepared(*_sample_args(samples[i:i + 1], model))
    return convert_pt2e(prepared, **convert_options)


def pte_outputs(file: Path, model: Model, x) -> list[np.ndarray]:
    """Every output of the .pte file on x, run sample by sample in ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    # the program must outlive its method: a method of a freed program reads freed memory
    # (a SIGSEGV in method.execute, seen in a CI run)
    program = Runtime.get().load_program(Path(file))
    method = program.load_method("forward")
    rows: list[list[np.ndarray]] = []
    for i in range(len(x)):
        outs = method.execute(list(_sample_args(x[i:i + 1], model)))
        rows.append([_samples_first(x[i:i + 1], np.atleast_1d(np.asarray(
            o.detach().float().numpy() if hasattr(o, "numpy") else o, dtype=np.float32))) for o in outs])
    del method, program  # the method first
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))] if rows else []


# ----------------------------------------------------------------------------- LiteRT


def tflite_bytes(model: Model, x, data=None, int8: bool = False, notes: list | None = None) -> bytes:
    """The stage as a LiteRT flatbuffer (litert-torch: torch.export -> StableHLO -> TFLite).
    INT8: litert-torch's PT2EQuantizer (symmetric, per-channel weights, static activations)."""
    check_available("tflite")
    from .convert import _quiet_output

    module = torch_module(model, notes)
    args = _batch1_args(model, x)
    with warnings.catch_warnings(), _quiet_output():
        warnings.simplefilter("ignore")
        import litert_torch

        try:
            options = {}
            if int8:
                from litert_torch.quantize.pt2e_quantizer import (
                    PT2EQuantizer,
                    get_symmetric_quantization_config,
                )
                from litert_torch.quantize.quant_config import QuantConfig

                quantizer = _float_softmax(PT2EQuantizer)().set_global(
                    get_symmetric_quantization_config(is_per_channel=True))
                module = _quantize_pt2e(_program(module, args), quantizer, model, data, fold_quantize=False)
                options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
            return bytes(litert_torch.convert(module, args, **options).model_content())
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - an op LiteRT cannot take
            raise StudioError(f"LiteRT cannot convert this model: {_first_line(exc)}") from None


def _float_softmax(base):
    """litert-torch's PT2EQuantizer that leaves every softmax in float. It gives a softmax's
    output the fixed INT8 parameters TFLite's kernel demands (scale 1/256), but in YOLOv8's DFL
    head (a softmax over the box bins, after a transpose) the converted file's SOFTMAX came out
    with another scale and LiteRT refused the file ("output->params.scale not near 1.f / 256").
    A softmax marked annotated with nothing to observe is skipped by its annotators: its input is
    dequantized and it runs in float."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    softmax = {torch.ops.aten._softmax.default, torch.ops.aten.softmax.int}
    passing = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.permute.default,
               torch.ops.aten.transpose.int, torch.ops.aten._unsafe_view.default, torch.ops.aten.clone.default,
               torch.ops.aten.contiguous.default}

    class FloatSoftmax(base):
        def annotate(self, model):
            # the softmax, the shape ops after it and the ops that read it: a quantized reader
            # would lend the softmax its input's scale when the converter fuses them
            todo = [n for n in model.graph.nodes if n.op == "call_function" and n.target in softmax]
            seen = set()
            while todo:
                node = todo.pop()
                if node in seen or node.op != "call_function":
                    continue
                seen.add(node)
                node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
                if node.target in softmax or node.target in passing:
                    todo.extend(node.users)
            return super().annotate(model)

    return FloatSoftmax


def tflite_outputs(file: Path, model: Model, x) -> list[np.ndarray]:
    """Every output of the .tflite file on x, run sample by sample in the LiteRT interpreter
    (inputs args_0, args_1, ... in forward's order; outputs output_0, output_1, ...). An INT8
    file may take and give quantized tensors: inputs are quantized and outputs dequantized with
    the scale and zero point the file records."""
    from ai_edge_litert.interpreter import Interpreter

    from .convert import _quiet_output

    with _quiet_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on stderr
        interpreter = Interpreter(model_path=str(file), num_threads=1)
        runner = interpreter.get_signature_runner()
        ins, outs = runner.get_input_details(), runner.get_output_details()
        rows = []
        for i in range(len(x)):
            args = _sample_args(x[i:i + 1], model)
            feed = {f"args_{k}": _to_tflite(a.numpy(), ins.get(f"args_{k}")) for k, a in enumerate(args)}
            got = runner(**feed)
            names = sorted(got, key=_output_number)
            rows.append([_samples_first(x[i:i + 1], np.atleast_1d(_from_tflite(got[n], outs.get(n)))) for n in names])
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))] if rows else []


def _samples_first(sample, out: np.ndarray) -> np.ndarray:
    """An output of one sample with that sample on axis 0 (a next state [2, 1, 128] comes with
    its batch on axis 1, as the state was fed), so the rows concatenate like onnxruntime's."""
    return sample.samples_first(out) if hasattr(sample, "samples_first") else out


def _output_number(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _to_tflite(value: np.ndarray, detail: dict | None) -> np.ndarray:
    if detail is None:
        return value
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and value.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)
    return value.astype(dtype, copy=False)


def _from_tflite(value: np.ndarray, detail: dict | None) -> np.ndarray:
    scale, zero = (detail or {}).get("quantization", (0.0, 0))
    if np.asarray(value).dtype.kind in "iu" and scale:
        return ((np.asarray(value, dtype=np.float32) - zero) * scale).astype(np.float32)
    return np.asarray(value, dtype=np.float32)
