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
Only options that differ from the defaults are written. `evaluator: NAME` (optional) measures
quality with an installed plugin's evaluator instead of accuracy/agreement/cosine.

Which stage a run ships (`studio run` exports it) is the recipe's choice too:

    ship: fastest      # last (default), fastest or smallest of the measured stages
    max_drop: 1.0      # ... among those within this many points of the original's quality

and `export: [onnx, tflite, pte]` the formats `studio run` writes it as (default: ONNX, plus the
packed file after clustering; `--export` overrides the list).

A later stage is not always better: INT8 after pruning can run slower than the pruned float
stage it came from; `ship: fastest` then ships the pruned stage, measured, not assumed.

A recipe may come from anyone, so loading checks everything before a run can start: the YAML
is read by safe_yaml (no aliases, tags or duplicate keys; bounded), values must have the types
the pass declares (`"0.5"` and `enabled: "no"` are refused, not guessed), `re:` patterns must
compile, and every refusal is one line naming the file and the pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import safe_yaml
from .errors import StudioError
from .passes import registry
from .safe_yaml import show

VERSION = 1
RESERVED = {"id", "enabled"}
KEYS = ("studio_recipe", "name", "passes", "evaluator", "ship", "max_drop", "export")
SHIP = ("last", "fastest", "smallest")
FORMAT_NAME = re.compile(r"[a-z0-9_]{1,40}")  # which formats exist is export's to say, when the run starts
MAX_BYTES = 1 << 20  # a recipe is well under 10 KiB; the bound keeps a hostile file from eating memory


def pattern_problem(options: dict) -> str | None:
    """Why a `re:` target or ignore pattern cannot be compiled, or None: found when the recipe
    is loaded, not after the run has started."""
    for key in ("targets", "ignore"):
        for pattern in options.get(key) or ():
            if isinstance(pattern, str) and pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except (re.error, OverflowError, RecursionError) as exc:
                    return f"{key}: {show(pattern)} is not a regular expression ({exc})"
    return None


def options_problem(pass_id: str, options: dict) -> str | None:
    """Why options from a file do not fit the pass, or None. Strict: a recipe says 0.5, not
    "0.5", and 3, not 3.0 (the window's form is lax; a file must say what it means)."""
    from pydantic import ValidationError

    config = registry.get(pass_id).Config
    for key in options:
        if not isinstance(key, str):
            return f"option names are text, not {show(key)}"
        if key not in config.model_fields:
            return f"unknown option {show(key)} (options: {', '.join(config.model_fields)})"
    try:
        config.model_validate(options, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        return f"{where}: {first['msg']} (got {show(first.get('input'))})"
    return pattern_problem(options)


@dataclass
class RecipeStep:
    id: str
    options: dict = field(default_factory=dict)
    enabled: bool = True

    def build(self):
        built = registry.create(self.id, **self.options)
        problem = pattern_problem(built.config.model_dump())
        if problem:
            raise StudioError(f"{self.id}: {problem}")
        return built

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.options.items() if k not in ("targets", "ignore"))
        return f"{self.id}({shown})" if shown else self.id


@dataclass
class Recipe:
    passes: list[RecipeStep] = field(default_factory=list)
    name: str = "recipe"
    evaluator: str = ""  # an installed evaluator's name (plugins.py); empty = the studio's own quality
    ship: str = "last"  # which measured stage `studio run` exports: last, fastest or smallest
    max_drop: float = 1.0  # quality budget for ship: points below the original's quality
    # formats `studio run` writes the shipped stage as (studio.core.export.FORMATS; the run refuses an
    # unknown one before it starts); empty: ONNX, plus the packed file after clustering
    export: list[str] = field(default_factory=list)

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
        data = {"studio_recipe": VERSION, "name": self.name, "passes": steps}
        if self.evaluator:
            data["evaluator"] = self.evaluator
        if self.ship != "last":
            data.update(ship=self.ship, max_drop=self.max_drop)
        if self.export:
            data["export"] = list(self.export)
        return data

    @classmethod
    def from_dict(cls, data, source: str = "recipe") -> Recipe:
        """A recipe from plain data (a parsed file), checked completely: every problem is
        refused here, with the pass named, rather than after a run has started."""

        def refuse(problem: str):
            raise StudioError(f"{source}: {problem}")

        if not isinstance(data, dict):
            refuse("a recipe is a mapping with 'passes' (see recipes/*.yaml)")
        unknown = [k for k in data if k not in KEYS]
        if unknown:
            refuse(f"unknown key {show(unknown[0])} (a recipe has {', '.join(KEYS)})")
        version = data.get("studio_recipe", VERSION)
        if type(version) is not int:  # not "1", 1.0 or true
            refuse(f"studio_recipe must be an integer, as in 'studio_recipe: {VERSION}', not {show(version)}")
        if version != VERSION:
            refuse(f"recipe version {version} is not supported (this studio reads {VERSION})")
        name = data.get("name")
        if name is None:
            name = Path(source).stem
        elif not isinstance(name, str):
            refuse(f"name must be text, not {show(name)}")
        evaluator = data.get("evaluator", "")
        if not isinstance(evaluator, str):
            refuse(f"evaluator must be the name of an installed evaluator, not {show(evaluator)}")
        if evaluator:
            from .plugins import evaluator as find_evaluator

            try:
                find_evaluator(evaluator)  # installed evaluators only: a recipe never imports code
            except StudioError as exc:
                refuse(str(exc))
        ship = data.get("ship", "last")
        if ship not in SHIP:
            refuse(f"ship must be one of {', '.join(SHIP)}, not {show(ship)}")
        max_drop = data.get("max_drop", 1.0)
        if type(max_drop) not in (int, float) or not 0 <= max_drop <= 100:
            refuse(f"max_drop is points of quality between 0 and 100, as in 'max_drop: 1.0', not {show(max_drop)}")
        export = data.get("export", [])
        if not isinstance(export, list) or not all(isinstance(f, str) and FORMAT_NAME.fullmatch(f) for f in export):
            refuse(f"export is a list of formats, as in 'export: [onnx, tflite]', not {show(export)}")
        if len(set(export)) != len(export):
            refuse(f"export names a format twice: {show(export)}")
        entries = data.get("passes")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            refuse("'passes' must be a list")
        steps = []
        known = registry.all_passes()
        for i, entry in enumerate(entries, 1):
            if not isinstance(entry, dict) or "id" not in entry:
                refuse(f"pass {i} needs an 'id' (e.g. '- id: quantize.int8_static')")
            pass_id = entry["id"]
            if not isinstance(pass_id, str) or pass_id not in known:
                refuse(f"pass {i}: unknown pass {show(pass_id)}; known: {', '.join(known)}")
            enabled = entry.get("enabled", True)
            options = {k: v for k, v in entry.items() if k not in RESERVED}
            if type(enabled) is not bool:  # YAML `"no"` or `0` is not false, and not true either
                problem = f"enabled must be true or false (got {show(enabled)})"
            else:
                problem = options_problem(pass_id, options)
            if problem:
                refuse(f"pass {i} ({pass_id}): {problem}")
            steps.append(RecipeStep(pass_id, options, enabled))
        return cls(steps, name, evaluator, ship, float(max_drop), list(export))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read and check a recipe file. Files may come from anyone: the size is bounded before
        parsing, and the YAML reader refuses aliases, tags and duplicate keys (safe_yaml)."""
        path = Path(path)
        source = " ".join(path.name.splitlines())  # the file name in one-line messages
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            shown = " ".join(str(path).splitlines())
            raise StudioError(f"cannot read recipe {shown}: {exc.strerror or exc}") from None
        if len(raw) > MAX_BYTES:
            raise StudioError(f"{source}: larger than {MAX_BYTES >> 20} MiB; is it a recipe?")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise StudioError(f"{source}: not UTF-8 text (byte {exc.start}); is it a recipe?") from None
        try:
            data = safe_yaml.load(text)
        except safe_yaml.YAMLProblem as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise StudioError(f"{source}: {where}{exc.problem}") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> None:
        from .fileio import atomic_write_text

        text = yaml.dump(self.to_dict(), Dumper=safe_yaml.Dumper, sort_keys=False, allow_unicode=True)
        atomic_write_text(Path(path), text)


def demo_recipe() -> Recipe:
    """The demo's stack: magnitude pruning with fine-tuning, then static INT8."""
    return Recipe(
        [
            RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 10, "learning_rate": 5e-4}),
            RecipeStep("quantize.int8_static", {}),
        ],
        name="demo: prune 90% + INT8",
    )
