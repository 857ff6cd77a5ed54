"""Passes and quality measures from other packages, found through entry points (Orange3 finds its
add-ons the same way). A package declares them in its pyproject.toml:

    [project.entry-points."studio.passes"]
    round = "my_package.passes:RoundWeights"   # a Pass subclass, or a module: its Pass subclasses

    [project.entry-points."studio.evaluators"]
    top2 = "my_package.metrics:top2"           # metric(outputs, labels, reference) -> float

and is installed with pip. A plugin that fails to load is skipped and reported in one line
(`problems()`): a broken add-on never stops the studio from starting. docs/plugins.md has the
whole story.

An evaluator is a function of the model's outputs on the held-out inputs (the list of every
output), the labels (or None) and the original model's outputs (or None); it returns one number,
higher is better, and becomes the stage's quality. A recipe may name an installed evaluator only
(a recipe can come from anyone, and naming `module:function` would import code); the command
line's `--metric module:function` takes any, because the user typed it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TypeVar

from .errors import StudioError

PASSES = "studio.passes"
EVALUATORS = "studio.evaluators"

_problems: dict[str, str] = {}  # "group:name" -> one line


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    # sorted, so two plugins fighting over a name resolve the same way every time
    return sorted(metadata.entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def _dist(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _report(group: str, ep: metadata.EntryPoint, exc: BaseException | str) -> None:
    why = exc if isinstance(exc, str) else _one_line(exc)
    _problems[f"{group}:{ep.name}"] = (f"plugin '{ep.name}' ({ep.value}, from {_dist(ep)}) was skipped: {why}")


def problems() -> list[str]:
    """One line per plugin that failed to load (look up passes or evaluators first)."""
    return list(_problems.values())


def forget() -> None:
    """Clear the problems seen so far (the registry looks again after a package was installed)."""
    _problems.clear()


T = TypeVar("T")


def pass_classes(base: type[T]) -> list[tuple[type[T], str]]:
    """(Pass subclass, distribution) from every `studio.passes` entry point: a class, or each Pass
    subclass a module defines. A plugin that cannot be imported is reported and skipped."""
    found = []
    for ep in _entry_points(PASSES):
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of a plugin: report it, go on
            _report(PASSES, ep, exc)
            continue
        # a class, or a module: the passes defined in it (not the ones it imports)
        candidates = [obj] if isinstance(obj, type) else list(vars(obj).values())
        good = [c for c in candidates if isinstance(c, type) and issubclass(c, base) and getattr(c, "id", None)
                and (c is obj or c.__module__ == getattr(obj, "__name__", None))]
        if not good:
            _report(PASSES, ep, "it names no Pass subclass with an id")
        found += [(c, _dist(ep)) for c in good]
    return found


def refused(cls: type, origin: str, why: str) -> None:
    """Record a plugin pass the registry would not take (e.g. its id is a built-in pass's)."""
    where = f"{cls.__module__}.{cls.__name__}"
    _problems[f"{PASSES}:{where}"] = f"plugin pass {where} (from {origin}) was skipped: {why}"


# ---------------------------------------------------------------------------------- evaluators

Metric = Callable[..., float]


@dataclass(frozen=True)
class Evaluator:
    """A user's quality measure: `name` labels the quality column, `fn` computes it."""

    name: str
    fn: Metric
    description: str = ""

    def __call__(self, outputs: list, labels, reference) -> float:
        try:
            value = self.fn(outputs, labels, reference)
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: one line saying whose it is
            raise StudioError(f"evaluator '{self.name}' failed: {_one_line(exc)}") from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StudioError(f"evaluator '{self.name}' returned {type(value).__name__}, not a number") from None
        if not math.isfinite(number):
            raise StudioError(f"evaluator '{self.name}' returned {number}; it must return a finite number")
        return number


def _described(name: str, fn) -> Evaluator:
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return Evaluator(name, fn, doc[0] if doc else f"{name} (a user's evaluator)")


def evaluators() -> dict[str, Evaluator]:
    """Installed evaluators by entry-point name; a broken one is reported and skipped."""
    found: dict[str, Evaluator] = {}
    for ep in _entry_points(EVALUATORS):
        if ep.name in found:
            _report(EVALUATORS, ep, f"another plugin already names an evaluator '{ep.name}'")
            continue
        try:
            fn = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - as for passes
            _report(EVALUATORS, ep, exc)
            continue
        if not callable(fn):
            _report(EVALUATORS, ep, "it is not a function")
            continue
        found[ep.name] = _described(ep.name, fn)
    return found


def evaluator(spec: str, allow_import: bool = False) -> Evaluator:
    """The evaluator an installed plugin names `spec`, or, with allow_import (the user typed it on
    the command line), the function `module:function`."""
    known = evaluators()
    if spec in known:
        return known[spec]
    if ":" not in spec or not allow_import:
        names = ", ".join(known) or "none installed"
        hint = "; a recipe names an installed evaluator, `--metric module:function` takes any" if ":" in spec else ""
        raise StudioError(f"unknown evaluator '{spec}' (installed: {names}){hint}")
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise StudioError(f"evaluator '{spec}': cannot import {module_name} ({_one_line(exc)}); is it installed "
                          "or on PYTHONPATH?") from None
    except AttributeError:
        raise StudioError(f"evaluator '{spec}': {module_name} has no '{attr}'") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise StudioError(f"evaluator '{spec}': importing {module_name} failed: {_one_line(exc)}") from None
    if not callable(fn):
        raise StudioError(f"evaluator '{spec}' is not a function")
    return _described(attr, fn)
