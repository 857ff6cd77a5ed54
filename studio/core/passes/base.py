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
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ..data import Data
from ..errors import Cancelled, StudioError
from ..model import Model

Progress = tuple[float, str]


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


class Pass:
    """Subclasses set `id`, `title`, `Config` and `frameworks`, and implement `apply`."""

    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    frameworks: ClassVar[tuple[str, ...]] = ("torch",)  # model frameworks apply() accepts
    needs_data: ClassVar[bool] = False

    def __init__(self, config: PassConfig | dict | None = None, **options):
        if isinstance(config, PassConfig):
            self.config = config.model_copy(update=options)
        else:
            self.config = self.Config(**{**(config or {}), **options})

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
