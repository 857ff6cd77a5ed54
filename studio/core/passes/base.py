"""The pass protocol.

A pass is a small object: a typed config (a pydantic model, so the window draws its form from
the JSON schema and a recipe stores it as plain data) and `apply(model, context)`, a generator
that yields progress `(fraction, message)` and returns a `PassResult`. Each yield is where a
cancel takes effect; long library calls poll `context.check_cancelled()`. A pass never mutates
its input model: it works on `model.copy()`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..data import Data
from ..errors import Cancelled, StudioError
from ..model import Model

Progress = tuple[float, str]

FINE_TUNED_IN_TORCH = ("fine-tuning ran on a torch conversion of the ONNX model (onnx2torch), so this stage is a "
                       "torch model; weights onnx2torch keeps as constants (e.g. MatMul weights) did not train")


class PassConfig(BaseModel):
    """Options every pass has: which layers it touches. Targets are names, `re:` patterns or
    op types (Conv, Linear, Gemm, MatMul, ...); empty means every layer the pass can handle."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    targets: list[str] = Field(default_factory=list, description="Layers to change: names, re:patterns or op types; empty = all")
    ignore: list[str] = Field(default_factory=list, description="Layers to leave alone: names, re:patterns or op types")


@dataclass
class Context:
    """What a pass may use besides the model."""

    data: Data | None = None
    original: Model | None = None  # the model before any pass, for agreement and distillation
    seed: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # the batch sizes the run measures latency at (pipeline.run's latency_batches): a pass that
    # times its own variants (quantize.int8_static's float blocks) times them at these too
    latency_batches: tuple[int, ...] = ()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def require_data(self, pass_id: str, labels: bool = False) -> Data:
        if self.data is None:
            raise StudioError(f"{pass_id} needs data: choose evaluation data (digits, .npz, folder, random)")
        if labels and not self.data.labelled:
            raise StudioError(f"{pass_id} needs labelled data; '{self.data.name}' has no labels")
        return self.data


@dataclass
class PassResult:
    """The new model and a record of what changed: per layer, plain data (kept/removed
    channels, sparsity, dtype, rank, ...)."""

    model: Model
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: str = ""
    warnings: list[str] = field(default_factory=list)
    tries: list[dict[str, Any]] = field(default_factory=list)  # a pass that tried variants: each, with its numbers


def scaled(steps, start: float, end: float, prefix: str = ""):
    """A pass's part: the (fraction 0..1, message) steps of `steps` as the pass's own progress in
    [start, end], each message after `prefix`; returns the steps' result."""
    while True:
        try:
            fraction, message = next(steps)
        except StopIteration as stop:
            return stop.value
        yield start + (end - start) * fraction, prefix + message


def is_torchscript(model: Model) -> bool:
    if not model.is_torch:
        return False
    import torch

    return isinstance(model.obj, torch.jit.ScriptModule)


SCRIPT_AS_ONNX = ("the TorchScript model was exported to ONNX for this pass (its compiled modules cannot be changed "
                  "in place), so this stage is an ONNX model; for a torch result load the state_dict with --arch")


def script_as_onnx(model: Model, pass_id: str) -> Model:
    """A TorchScript model as its ONNX export, or a one-line refusal saying what to do."""
    from ..convert import to_onnx_model

    try:
        return to_onnx_model(model)
    except StudioError as exc:
        raise StudioError(f"{pass_id} cannot change a TorchScript model in place and exporting it to ONNX failed "
                          f"({str(exc).splitlines()[0][:160]}); load the state_dict with --arch instead") from None


def conversion_notes(model: Model) -> list[str]:
    """What torch_copy did to a model that was not plain torch, for the stage's warnings."""
    if is_torchscript(model):
        return ["the TorchScript model was exported to ONNX and converted to torch (onnx2torch) for this pass, "
                "so this stage is a converted torch model"]
    if model.is_onnx:
        return ["the ONNX model was converted to torch (onnx2torch) for this pass, so this stage is a torch model"]
    return []


ConfigT = TypeVar("ConfigT", bound=PassConfig)


class Pass(Generic[ConfigT]):
    """Subclasses set `id`, `title`, `Config` and `frameworks`, and implement `apply`. A pass
    names its config type twice, `class Prune(Pass[PruneConfig])` and `Config = PruneConfig`:
    the first types `self.config` for the checker, the second builds it at run time."""

    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    frameworks: ClassVar[tuple[str, ...]] = ("torch",)  # model frameworks apply() accepts
    needs_data: ClassVar[bool] = False

    config: ConfigT

    def __init__(self, config: PassConfig | dict | None = None, **options):
        if isinstance(config, PassConfig):
            self.config = config.model_copy(update=options)  # type: ignore[assignment]  # a Config
        else:
            self.config = self.Config(**{**(config or {}), **options})  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.model_dump()})"

    def check(self, model: Model) -> list[str]:
        """Problems that stop this pass from running on `model` (empty = fine), or warnings
        about choices known to hurt; called before apply so errors come before long work."""
        if model.framework not in self.frameworks:
            return [f"{self.id} works on {' or '.join(self.frameworks)} models, not {model.framework}"]
        return []

    def warnings(self, model: Model) -> list[str]:
        """Choices known to hurt on this runtime (e.g. dynamic INT8 on convs)."""
        return []

    def apply(self, model: Model, context: Context) -> Generator[Progress, None, PassResult]:
        raise NotImplementedError

    def options(self) -> dict:
        """The config as plain data, for recipes: only what differs from the defaults."""
        return self.config.model_dump(exclude_defaults=True)

    # -- shared steps of the passes that change torch weights ---------------------------------
    def unless_script(self, model: Model) -> Generator[Progress, None, tuple[Model, list[str]]]:
        """(model, notes): a TorchScript model becomes its ONNX export (the ONNX-native path of
        a weight pass then changes it), with a note for the stage's warnings."""
        if not is_torchscript(model):
            return model, []
        yield 0.0, "exporting TorchScript to ONNX"
        return script_as_onnx(model, self.id), [SCRIPT_AS_ONNX]

    def torch_copy(self, model: Model) -> Generator[Progress, None, Model]:
        """A torch model this pass may change: a copy, or for ONNX a conversion (onnx2torch).
        A TorchScript model goes through its ONNX export: its compiled modules can neither be
        restructured (Torch-Pruning) nor trained after a deep copy."""
        if is_torchscript(model):
            yield 0.0, "exporting TorchScript to ONNX"
            model = script_as_onnx(model, self.id)
        if model.is_onnx:
            from .onnx_torch import onnx_to_torch

            yield 0.0, "converting ONNX to torch (onnx2torch)"
            return onnx_to_torch(model)
        return model.copy()

    def fine_tune_onnx(self, model: Model, context: Context, start: float,
                       constraint=None) -> Generator[Progress, None, Model]:
        """Fine-tuning asked of a pass that changed an ONNX model directly: the changed ONNX model
        is converted to torch (onnx2torch) and trained, keeping its exact zeros, or the constraint
        `constraint(module)` returns (run after every optimiser step). Never skipped silently: a
        model onnx2torch cannot convert fails with the way out (fine_tune_epochs 0)."""
        from .finetune import reapply, zero_masks
        from .onnx_torch import onnx_to_torch

        yield start, "converting to torch for fine-tuning (onnx2torch)"
        try:
            new = onnx_to_torch(model)
        except StudioError as exc:
            raise StudioError(f"{self.id}: fine-tuning needs a torch model; {exc}. "
                              "Set fine_tune_epochs to 0 to change the ONNX model without training") from None
        if constraint is None:
            masks = zero_masks(new.obj)
            after_step = reapply(masks) if masks else None
        else:
            after_step = constraint(new.obj)
        yield from self.recovery_training(new.obj, new.input_shape, context, start, after_step=after_step,
                                          signature=new.io)
        new.obj.eval()
        return new

    def recovery_training(self, module, input_shape, context: Context, start: float,
                          after_step=None, signature=None) -> Generator[Progress, None, None]:
        """`fine_tune_epochs` of training on the data's training split (progress from `start`
        to 1); `after_step` re-applies constraints (masks) after every optimiser step.
        `signature` (the model's `io`) orders the inputs of a model with several."""
        from ..training import train

        cfg: Any = self.config  # the passes that fine-tune have these two options
        data = context.require_data(self.id, labels=True)
        x = data.shaped(data.x_train, input_shape)
        for fraction, message in train(module, x, data.y_train, cfg.fine_tune_epochs, cfg.learning_rate,
                                       seed=context.seed, after_step=after_step, who=self.id, signature=signature):
            context.check_cancelled()
            yield start + (1 - start) * fraction, f"fine-tune {message}"
