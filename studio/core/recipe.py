"""A recipe: the passes in order with their options, as a versioned YAML file.

    studio_recipe: 1
    name: prune-then-int8
    passes:
      - id: prune.magnitude
        sparsity: 0.9
        fine_tune_epochs: 3
        ignore: [fc2]
      - id: quantize.int8_static
        enabled: false

Options sit beside `id` (and `enabled`), so a recipe reads like the form the window draws.
Only options that differ from the defaults are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import StudioError, one_line
from .passes import registry

VERSION = 1
RESERVED = {"id", "enabled"}


@dataclass
class RecipeStep:
    id: str
    options: dict = field(default_factory=dict)
    enabled: bool = True

    def build(self):
        return registry.create(self.id, **self.options)

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.options.items() if k not in ("targets", "ignore"))
        return f"{self.id}({shown})" if shown else self.id


@dataclass
class Recipe:
    passes: list[RecipeStep] = field(default_factory=list)
    name: str = "recipe"

    def build(self) -> list:
        """The enabled steps as configured Pass objects (options validated here)."""
        return [step.build() for step in self.passes if step.enabled]

    def enabled_steps(self) -> list[RecipeStep]:
        return [s for s in self.passes if s.enabled]

    def validate(self) -> None:
        self.build()

    def to_dict(self) -> dict:
        steps = []
        for step in self.passes:
            options = registry.create(step.id, **step.options).options()  # normalized, defaults dropped
            entry = {"id": step.id, **options}
            if not step.enabled:
                entry["enabled"] = False
            steps.append(entry)
        return {"studio_recipe": VERSION, "name": self.name, "passes": steps}

    @classmethod
    def from_dict(cls, data, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise StudioError(f"{source}: a recipe is a mapping with 'passes'")
        version = data.get("studio_recipe", VERSION)
        if version != VERSION:
            raise StudioError(f"{source}: recipe version {version!r} is not supported (this studio reads {VERSION})")
        entries = data.get("passes") or []
        if not isinstance(entries, list):
            raise StudioError(f"{source}: 'passes' must be a list")
        steps = []
        for i, entry in enumerate(entries, 1):
            if not isinstance(entry, dict) or "id" not in entry:
                raise StudioError(f"{source}: pass {i} needs an 'id'")
            options = {k: v for k, v in entry.items() if k not in RESERVED}
            if not all(isinstance(k, str) for k in options):
                raise StudioError(f"{source}: pass {i}: option names must be text, not "
                                  f"{', '.join(repr(k) for k in options if not isinstance(k, str))}")
            step = RecipeStep(str(entry["id"]), options, bool(entry.get("enabled", True)))
            try:
                step.build()  # unknown ids and bad options fail here, with the pass named
            except StudioError as exc:  # one line even if the file's own ids or keys hold line breaks
                raise StudioError(one_line(f"{source}: pass {i}: {exc}")) from None
            steps.append(step)
        name = data.get("name", Path(source).stem)
        if not isinstance(name, (str, int, float)):  # str() of nested YAML aliases never ends
            raise StudioError(f"{source}: 'name' must be text")
        return cls(steps, str(name))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StudioError(f"cannot read recipe {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise StudioError(f"{path.name}: not a recipe (not UTF-8 text)") from None
        _check_shape(text, path.name)
        try:
            data = yaml.safe_load(text)  # safe_load: a recipe never constructs Python objects
        except yaml.YAMLError as exc:
            raise StudioError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            raise StudioError(f"{path.name}: not a recipe (nested too deep)") from None
        except ValueError as exc:  # a value YAML itself cannot build: a 13th month, a !!float 'x'
            raise StudioError(f"{path.name}: not valid YAML ({one_line(exc)})") from None
        try:
            return cls.from_dict(data, path.name)
        except StudioError as exc:  # one line, even for a file whose name holds a line break
            raise StudioError(one_line(exc)) from None

    def save(self, path: str | Path) -> None:
        from .fileio import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


MAX_TEXT = 1024 * 1024  # real recipes are a few hundred bytes
MAX_NESTING = 64


def _check_shape(text: str, name: str) -> None:
    """PyYAML parses [ and { nesting recursively: thousands of levels end in a RecursionError after
    one to two seconds on the window's thread. A recipe nests two or three levels, so deep or huge
    text is refused before it is parsed."""
    if len(text) > MAX_TEXT:
        raise StudioError(f"{name}: {len(text):,} characters is not a recipe (at most {MAX_TEXT:,})")
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_NESTING:
        raise StudioError(f"{name}: not a recipe (nested {deepest:,} levels deep)")


def demo_recipe() -> Recipe:
    """The demo's stack: magnitude pruning with fine-tuning, then static INT8."""
    return Recipe(
        [
            RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 10, "learning_rate": 5e-4}),
            RecipeStep("quantize.int8_static", {}),
        ],
        name="demo: prune 90% + INT8",
    )
