"""Seeded mutation fuzzing of every file the studio opens: each mutant of a small valid file is
opened as the studio opens it and must come back as a model (or recipe, or data set) or a
one-line StudioError: never another exception, a hang or a crash.

The mutants run in child processes (tests/fuzz/run.py), a batch per format, so a crash or a hang
kills a child, not this test run, and names the mutant to reproduce:
    python -m tests.fuzz.run FORMAT --out r.jsonl --seed SEED --only INDEX --keep
STUDIO_FUZZ_SEED and STUDIO_FUZZ_COUNT change the seed (default 0) and the mutants per format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .seeds import BUILDERS

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("STUDIO_FUZZ_SEED", "0"))
COUNT = int(os.environ.get("STUDIO_FUZZ_COUNT", "300"))
# A TorchScript mutant that passes the static checks costs a probe child (an interpreter start with
# torch, ~2 s): its 300 mutants run as 5 tests of 60, so pytest-xdist spreads them over both cores.
CHUNKS = {"torchscript": 5}
STALL_S = float(os.environ.get("STUDIO_FUZZ_STALL", "240"))  # no mutant finished for this long: a hang (a TorchScript mutant is ~2-20 s)


def _results(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _run(fmt: str, folder: Path, count: int = COUNT, stall: float = STALL_S, env: dict | None = None,
         start: int = 0, processes: int = 1):
    """Run mutants start .. start+count-1 of `fmt` in child processes; (per-mutant results, problems with children)."""
    n = processes
    bounds = [start + count * k // n for k in range(n + 1)]
    env = {**os.environ, "STUDIO_PROBE_TIMEOUT": "60", "PYTHONWARNINGS": "ignore", **(env or {})}
    children = []
    for k in range(n):
        out = folder / f"{fmt}-{k}.jsonl"
        cmd = [sys.executable, "-m", "tests.fuzz.run", fmt, "--out", str(out), "--seed", str(SEED),
               "--start", str(bounds[k]), "--count", str(bounds[k + 1]), "--work", str(folder / fmt)]
        log = open(folder / f"{fmt}-{k}.log", "w")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        children.append((proc, out, log, time.time()))
    problems = []
    for proc, out, log, started in children:
        hung = False
        while proc.poll() is None:
            last = max(started, out.stat().st_mtime if out.exists() else 0)
            if time.time() - last > stall:
                proc.kill()
                proc.wait()
                problems.append(f"hang: {_in_flight(out)} made no progress for {stall:.0f} s")
                hung = True
            time.sleep(0.5)
        log.close()
        if proc.returncode and not hung:
            problems.append(f"crash (exit {proc.returncode}): {_in_flight(out)}; "
                            f"log {log.name}: {Path(log.name).read_text()[-300:]}")
    results = [r for _, out, _, _ in children for r in _results(out) if "index" in r]
    return results, problems


def _in_flight(out: Path) -> str:
    """The mutant that was running when a child died: started, never finished."""
    started = {r["start"]: r.get("mutation", "(being made)") for r in _results(out) if "start" in r}
    done = {r["index"] for r in _results(out) if "index" in r}
    pending = [i for i in started if i not in done]
    if not pending:
        return "no mutant in flight (the child died outside a mutant)"
    i = pending[-1]
    return f"mutant {i} (seed {SEED}: {started[i]})"


def _repro(fmt: str, index: int) -> str:
    return f"python -m tests.fuzz.run {fmt} --out r.jsonl --seed {SEED} --only {index} --keep"


def _cases():
    """(format, first mutant, mutants): every format's COUNT mutants, in CHUNKS tests where slow."""
    for fmt in BUILDERS:
        n = CHUNKS.get(fmt, 1)
        for k in range(n):
            first, end = COUNT * k // n, COUNT * (k + 1) // n
            yield pytest.param(fmt, first, end - first, id=fmt if n == 1 else f"{fmt}-{first}")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # TorchScript: 60 mutants ~1 min idle, 5+ min at load 10 (probe children)
@pytest.mark.parametrize(("fmt", "first", "count"), list(_cases()))
def test_mutants_open_or_are_refused_in_one_line(fmt, first, count, tmp_path):
    results, problems = _run(fmt, tmp_path, count=count, start=first)
    bad = [r for r in results if r["outcome"] == "bad"]
    report = [f"{fmt} mutant {r['index']}: {r['mutation']} -> {r.get('error')} {r.get('where', '')} "
              f"{r.get('message', '')!r} [{_repro(fmt, r['index'])}]" for r in bad]
    assert not problems and not bad, "\n".join(problems + report)
    assert len(results) == count, f"only {len(results)} of {count} mutants reported"
    outcomes = {r["outcome"] for r in results}
    # a fuzzer whose mutants all fail at the first byte tests nothing: some must get deep enough to open
    assert outcomes == {"opened", "refused"}, outcomes


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_onnx_mutants_get_the_same_outcome_in_the_windows_child(tmp_path):
    """The window parses ONNX in a child process and reads the big weights from the file (io/onnx_child.py):
    each mutant opens, or is refused with the same one line, exactly as in-process."""
    outcomes = []
    for name, env in (("direct", {}), ("isolated", {"STUDIO_FUZZ_ISOLATE": "1"})):
        (tmp_path / name).mkdir()
        results, problems = _run("onnx", tmp_path / name, count=100, env=env)
        assert not problems and len(results) == 100, problems
        outcomes.append({r["index"]: (r["outcome"], r.get("message")) for r in results})
    direct, isolated = outcomes
    differ = [f"mutant {i}: {direct[i]} in-process, {isolated[i]} in the child" for i in direct if direct[i] != isolated[i]]
    assert not differ, "\n".join(differ)
    assert {o for o, _ in isolated.values()} == {"opened", "refused"}


@pytest.mark.parametrize("trouble", ["CRASH", pytest.param("HANG", marks=pytest.mark.slow)])
def test_a_crash_or_hang_in_a_child_names_the_mutant(trouble, tmp_path):
    """The harness itself: a child killed by SIGSEGV, or stuck, is reported with the mutant it was on."""
    results, problems = _run("recipe", tmp_path, count=6, stall=15, env={f"STUDIO_FUZZ_SELFTEST_{trouble}": "4"})
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert len(problems) == 1 and "mutant 4 (seed" in problems[0]
    assert problems[0].startswith("crash (exit -11)" if trouble == "CRASH" else "hang:")
