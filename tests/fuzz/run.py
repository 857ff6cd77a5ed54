"""Run N mutants of one format in this process and record each outcome as a JSON line.

    python -m tests.fuzz.run FORMAT --out results.jsonl [--count 300] [--seed 0] [--only I --keep]

Each mutant is opened the way the studio opens it (io.load with an architecture, then the graph
summary `studio inspect` and the window build; Recipe.load; data.from_npz). The property: it
returns, or raises a StudioError whose message is one line; nothing else escapes, no traceback
reaches stderr, and it finishes within MUTANT_BOUND_S. A line {"start": i} is written
before each mutant, so if this process crashes or hangs the parent names the mutant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import time
import traceback
from pathlib import Path

MUTANT_BOUND_S = 30.0  # a TorchScript mutant includes the probe child (~2-5 s on a busy machine)
MEMORY_LIMIT = 6 * 1024**3  # an allocation from a lying claim fails here instead of taking the machine


def opener(fmt: str):
    if fmt == "recipe":
        from studio.core.recipe import Recipe

        return Recipe.load
    if fmt == "npz":
        from studio.core.data import from_npz

        return from_npz
    from studio.core import io
    from studio.core.inspect import summary

    from .seeds import ARCH

    # what `studio inspect` and the window's Open do: load, then build the graph and the stats;
    # STUDIO_FUZZ_ISOLATE=1: ONNX as the window loads it (parsed in its child, io/onnx_child.py)
    isolate = fmt == "onnx" and os.environ.get("STUDIO_FUZZ_ISOLATE") == "1"
    return lambda path: summary(io.load(path, arch=ARCH, isolate=isolate))


def mutant_of(fmt: str, seeds: list[Path], seed: int, index: int) -> tuple[bytes, str, Path]:
    from .mutate import mutant

    rng = random.Random(f"{seed}:{fmt}:{index}")
    src = seeds[index % len(seeds)]
    data, how = mutant(fmt, src.read_bytes(), rng)
    return data, f"{src.name}: {how}", src


@contextlib.contextmanager
def stderr_to(file: Path):
    """fd 2 (Python's and C++'s stderr) into `file` while the mutant is opened."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(file, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def check(open_, path: Path) -> dict:
    from studio.core.errors import StudioError

    start = time.perf_counter()
    try:
        with stderr_to(path.with_suffix(".stderr")):
            open_(path)
        result = {"outcome": "opened"}
    except StudioError as exc:
        message = str(exc)
        ok = message.strip() and "\n" not in message and "\r" not in message
        result = {"outcome": "refused" if ok else "bad", "message": message[:500]}
        if not ok:
            result["error"] = "StudioError message is not one line"
    except BaseException as exc:  # noqa: BLE001 - anything else escaping is the finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/studio/" in f.filename] or frames
        result = {"outcome": "bad", "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                  "where": f"{ours[-1].filename}:{ours[-1].lineno} (raised in {frames[-1].filename}:{frames[-1].lineno})"}
    result["seconds"] = round(time.perf_counter() - start, 3)
    printed = path.with_suffix(".stderr").read_text(errors="replace") if path.with_suffix(".stderr").exists() else ""
    if "Traceback (most recent call last)" in printed:  # the CLI user would see it above the one line
        result.update(outcome="bad", error="printed a traceback on stderr: " + printed[-300:])
    if result["seconds"] > MUTANT_BOUND_S:
        result.update(outcome="bad", error=f"took {result['seconds']} s (bound {MUTANT_BOUND_S} s)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("format")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=300, help="mutants 0..count-1")
    parser.add_argument("--start", type=int, default=0, help="first index (to split a run between processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, help="run just this mutant index")
    parser.add_argument("--work", help="folder for seeds and mutants (default: beside --out)")
    parser.add_argument("--keep", action="store_true", help="keep the mutant files")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import warnings

    warnings.simplefilter("ignore")
    from . import seeds as seed_files

    work = Path(args.work or Path(args.out).parent / f"fuzz-{args.format}")
    seeds = seed_files.build(args.format, work / "seeds")
    mutants = work / "mutants"
    mutants.mkdir(parents=True, exist_ok=True)
    (mutants / "w.bin").write_bytes(bytes(64))  # an external-data file a mutant may point to
    open_ = opener(args.format)
    indices = [args.only] if args.only is not None else range(args.start, args.count)
    with open(args.out, "a", buffering=1) as out:
        for i in indices:
            out.write(json.dumps({"start": i}) + "\n")  # before the mutant is even made: a crash names it
            data, how, src = mutant_of(args.format, seeds, args.seed, i)
            path = mutants / f"m{i}{src.suffix}"
            path.write_bytes(data)
            out.write(json.dumps({"start": i, "mutation": how}) + "\n")
            if os.environ.get("STUDIO_FUZZ_SELFTEST_CRASH") == str(i):  # the harness's own test
                os.kill(os.getpid(), 11)
            if os.environ.get("STUDIO_FUZZ_SELFTEST_HANG") == str(i):
                time.sleep(3600)
            result = check(open_, path)
            out.write(json.dumps({"index": i, "mutation": how, **result}) + "\n")
            if not args.keep:
                path.unlink(missing_ok=True)
                path.with_suffix(".stderr").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
