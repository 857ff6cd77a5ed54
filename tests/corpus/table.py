"""The corpus table: every model of `models.py` in every form, through `inspect` and every
registered pass, against the expected outcomes in `expected.yaml`.

A cell is
  `ok: N layers, P params`  inspect ran (layers = nodes with weights)
  `ok`                      the pass ran and its stage's ONNX runs in onnxruntime, every output finite
  `ok: N channels removed`  the same, for prune.structured: how many output channels it removed
  `refused: TEXT`           a one-line StudioError; the expected TEXT is a substring of the message
  `xfail: REASON`           a known bug, counted but not failed on (it must still be a bug)
  `bug: MESSAGE`            a crash, a traceback, an internal error message, a non-finite output;
                            never expected: the test fails on every one

    python -m tests.corpus.table            # run the table, print the cells that differ
    python -m tests.corpus.table --update   # rewrite expected.yaml from what the code does now
    python -m tests.corpus.table --only lstm,vit

Files are written once into a cache folder in the temp directory, keyed by the model sources
and the torch version, so a second run skips the (slow) dynamo exports."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected.yaml"
WORKERS = 2

# the least work each pass needs to run (few epochs, few calibration samples): fine_tune_epochs
# keep their default 0, the trainers get one epoch
PASS_OPTIONS = {
    "cluster.kmeans": {"iterations": 3},
    "distill.kd": {"epochs": 1},
    "finetune": {"epochs": 1},
    "quantize.int8_static": {"calibration_samples": 16},
}
CELL_SECONDS = float(os.environ.get("STUDIO_CORPUS_CELL_SECONDS", 180))  # then the cell is a hang
SAMPLES = 160  # random inputs: 128 to train/calibrate on, 32 held out to run each stage on

# what an internal error looks like inside a message: an exception class, a traceback, the
# texts of Python's own errors
INTERNAL = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|index out of range|has no attribute|"
                      r"object is not|unexpected keyword|positional argument|NoneType|not subscriptable|"
                      r"referenced before assignment|\bKeyError\b|<built-in|File \"")


def cache_dir() -> Path:
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for source in (HERE / "models.py", HERE.parent / "core" / "multi_io_models.py"):
        digest.update(source.read_bytes())
    path = Path(tempfile.gettempdir()) / f"studio-corpus-{digest.hexdigest()[:12]}"
    path.mkdir(exist_ok=True)
    return path


def file_for(name: str, form: str, folder: Path) -> Path:
    """The model file, written on first use (to a temporary name renamed when complete, so a
    killed run leaves no half file in the cache)."""
    from tests.corpus.models import cases, write

    path = folder / f"{name}.{form}.{'pt' if form == 'trace' else 'onnx'}"
    if not path.exists():
        part = path.with_name(f".{path.name}.{os.getpid()}")
        write(cases()[name], form, part)
        os.replace(part, path)
    return path


def one_line(message: str, folder: Path | None = None) -> str:
    text = str(message)
    if folder is not None:
        text = text.replace(str(folder), "<cache>")
    return re.sub(r"0x[0-9a-f]{6,}", "0x…", text).strip()


def classify(exc: BaseException, folder: Path) -> str:
    """`refused: ...` for a one-line StudioError that names a reason, `bug: ...` otherwise."""
    from studio.core.errors import StudioError

    message = one_line(str(exc), folder)
    if not isinstance(exc, StudioError):
        return f"bug: {type(exc).__name__}: {message.splitlines()[0] if message else ''}"[:300]
    if "\n" in message or not message or INTERNAL.search(message):
        return f"bug: {message.splitlines()[0] if message else '(empty message)'}"[:300]
    return f"refused: {message}"


def labelled_random(model):
    """The studio's random inputs (every input in its own dtype and id range), labelled with the
    original model's own top-1 where its first output is class scores: so fine-tuning has labels."""
    from studio.core.convert import run_session_all, session, to_onnx_proto
    from studio.core.data import Data, random_inputs
    from studio.core.evaluate import is_class_scores

    data = random_inputs(model.input_shape, count=SAMPLES, signature=model.io)
    sess = session(to_onnx_proto(model))
    outs = [run_session_all(sess, data.shaped(x, model.input_shape))[0] for x in (data.x_train, data.x_test)]
    if all(is_class_scores(o) for o in outs):
        return Data(data.name, data.x_train, data.x_test, outs[0].argmax(1), outs[1].argmax(1))
    return data


def check_stage(stage, model, data) -> None:
    """The stage's ONNX runs in onnxruntime on the held-out inputs, every output finite."""
    import numpy as np

    from studio.core.convert import run_session_all, session
    from studio.core.errors import StudioError

    for out in run_session_all(session(stage.onnx()), data.shaped(data.x_test, model.input_shape)):
        if not np.isfinite(np.asarray(out, dtype=np.float64)).all():
            raise RuntimeError(f"the stage's output {out.shape} is not finite")
    if stage.model is model or stage.model.obj is model.obj:
        raise StudioError("returned its input model")  # a pass must work on a copy


def outcome(pass_id: str, stage) -> str:
    """`ok`, or for structured pruning `ok: N channels removed` (the output channels removed
    over every weight layer; a pass that ran but shrank nothing shows as `ok: 0 channels removed`)."""
    if pass_id != "prune.structured":
        return "ok"
    removed = sum(r.get("removed_out", 0) for r in stage.record.values() if r.get("op") != "MultiheadAttention")
    return f"ok: {removed} channels removed"


def run_cells(name: str, form: str, done: dict[str, str] | None = None, starting=None) -> dict[str, str]:
    """Every cell of one (model, form) row: the model is loaded as the CLI loads it. Cells in
    `done` are kept (a row resumed after its process died); `starting(cell)` is told before each."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from studio.core import io, pipeline
    from studio.core.inspect import summary
    from studio.core.passes import all_passes
    from studio.core.recipe import Recipe, RecipeStep
    from studio.core.training import drain
    from tests.corpus.models import cases

    starting = starting or (lambda cell: None)
    folder = cache_dir()
    cells: dict[str, str] = dict(done or {})
    path = file_for(name, form, folder)
    try:
        starting("inspect")
        model = io.load(path)
        info = summary(model)
        layers = sum(1 for n in info["nodes"] if n.get("parameters"))
        cells.setdefault("inspect", f"ok: {layers} layers, {info['parameters']:,} params")
    except Exception as exc:  # noqa: BLE001 - every failure is a cell of the table
        cells["inspect"] = classify(exc, folder)
        return cells
    if cells["inspect"].startswith("bug: "):  # died inspecting it: nothing to run the passes on
        return cells
    try:
        starting("data")
        overrides = cases()[name].overrides
        if overrides:  # what the user gives with --input
            model = model.with_signature(model.io.with_overrides(overrides))
        model.io.check()
        data = labelled_random(model)
    except Exception as exc:  # noqa: BLE001
        cells["data"] = classify(exc, folder)
        return cells
    for pass_id in all_passes():
        if pass_id in cells:
            continue
        starting(pass_id)
        recipe = Recipe([RecipeStep(pass_id, dict(PASS_OPTIONS.get(pass_id, {})))])
        try:
            run = drain(pipeline.run(model, recipe, data, measure_stages=False))
            check_stage(run.stages[-1], model, data)
            cells[pass_id] = outcome(pass_id, run.stages[-1])
        except Exception as exc:  # noqa: BLE001
            cells[pass_id] = classify(exc, folder)
    return cells


def worker() -> None:
    """`--worker`: rows asked for on stdin (JSON lines), answered on the original stdout (the
    passes' own prints go to stderr): {"cell": C} before each cell, then {"cells": {...}}."""
    import faulthandler
    import json

    faulthandler.enable()
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        cells = run_cells(job["name"], job["form"], job["done"],
                          starting=lambda cell: answer.write(json.dumps({"cell": cell}) + "\n"))
        answer.write(json.dumps({"cells": cells}) + "\n")


class Worker:
    """A `--worker` process; a row whose process dies (a segfault in a library) records the cell
    it died in as a bug and goes on in a new process."""

    def __init__(self, log_file):
        import subprocess

        self.log_file = log_file
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.corpus.table", "--worker"], cwd=HERE.parents[1],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                     bufsize=1, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.buffer = b""

    def row(self, name: str, form: str, done: dict[str, str] | None = None) -> dict[str, str]:
        import json

        done = dict(done or {})
        while True:
            self.proc.stdin.write(json.dumps({"name": name, "form": form, "done": done}) + "\n")
            self.proc.stdin.flush()
            cell, why = None, None
            while True:
                line = self.readline(CELL_SECONDS)
                if line is None:  # a cell that runs on and on: the process is stopped
                    self.proc.kill()
                    why = f"no answer in {CELL_SECONDS} s (a hang) in {cell}"
                    break
                if not line:
                    why = f"the process died (exit {self.proc.wait()}) in {cell}"
                    break
                message = json.loads(line)
                if "cells" in message:
                    return message["cells"]
                cell = message["cell"]
            self.proc.wait()
            if cell is None:
                raise RuntimeError(f"the corpus worker ended before starting {name}/{form}: {why}")
            done[cell] = f"bug: {why}"
            self.__init__(self.log_file)
            if cell in ("inspect", "data"):
                return done

    def readline(self, timeout: float) -> str | None:
        """The next line the worker writes, '' at its end, None after `timeout` s of silence."""
        import select

        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:  # it died already
            pass
        self.proc.wait()


def rows(only: list[str] | None = None) -> list[tuple[str, str]]:
    from tests.corpus.models import cases

    return [(name, form) for name, case in cases().items() if not only or name in only for form in case.forms]


def known_hangs(expected: dict) -> dict:
    """{(model, form): {cell: value}} of the cells expected.yaml marks as an xfail hang: the test
    does not wait for them again (`--update` runs every cell)."""
    out: dict = {}
    for name, forms in expected.items():
        for form, cells in (forms or {}).items():
            for cell, value in (cells or {}).items():
                if value.startswith("xfail: ") and "(a hang)" in value:
                    out.setdefault((name, form), {})[cell] = value
    return out


def run_table(only: list[str] | None = None, workers: int = WORKERS, log=None, skip: dict | None = None) -> dict:
    """{model: {form: {cell: outcome}}}, rows run in `workers` processes (each imports torch
    once; dynamo rows first, they are the slow ones). `log(text)` hears of each row; `skip`
    gives cells not to run, with their value."""
    import queue
    import threading

    todo: queue.Queue = queue.Queue()
    for row in sorted(rows(only), key=lambda r: r[1] != "dynamo"):
        todo.put(row)
    table: dict = {}
    errors: list[BaseException] = []
    log_path = Path(tempfile.gettempdir()) / "studio-corpus-workers.log"

    def serve(log_file):
        w = Worker(log_file)
        try:
            while True:
                try:
                    name, form = todo.get_nowait()
                except queue.Empty:
                    return
                start = time.perf_counter()
                table.setdefault(name, {})[form] = w.row(name, form, (skip or {}).get((name, form)))
                if log:
                    log(f"{name}/{form}: {time.perf_counter() - start:.1f} s")
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            errors.append(exc)
        finally:
            w.close()

    with open(log_path, "w") as log_file:
        threads = [threading.Thread(target=serve, args=(log_file,)) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    order = [name for name, _ in rows(only)]
    return {name: dict(sorted(table[name].items(), key=lambda kv: FORM_ORDER.index(kv[0])))
            for name in dict.fromkeys(order)}


FORM_ORDER = ["dynamo", "legacy", "trace"]


def matches(expected: str, actual: str) -> bool:
    if expected.startswith("refused: "):
        return actual.startswith("refused: ") and expected[len("refused: "):] in actual[len("refused: "):]
    if expected.startswith("xfail: "):  # still a bug, or a known hang not run again
        return actual.startswith("bug: ") or actual == expected
    return expected == actual


def differences(expected: dict, actual: dict) -> list[str]:
    """One line per cell that changed (or appeared, or vanished)."""
    lines = []
    for name in dict.fromkeys([*expected, *actual]):
        forms_e, forms_a = expected.get(name) or {}, actual.get(name) or {}
        for form in dict.fromkeys([*forms_e, *forms_a]):
            cells_e, cells_a = forms_e.get(form) or {}, forms_a.get(form) or {}
            for cell in dict.fromkeys([*cells_e, *cells_a]):
                want, got = cells_e.get(cell), cells_a.get(cell)
                if want is None or got is None or not matches(want, got):
                    lines.append(f"{name} / {form} / {cell}: expected {want!r}, got {got!r}")
    return lines


def counts(table: dict) -> dict[str, Counter]:
    """Per column: how many ok / refused / xfail / bug cells."""
    out: dict[str, Counter] = {}
    for forms in table.values():
        for cells in forms.values():
            for cell, value in cells.items():
                out.setdefault(cell, Counter())[value.split(":")[0]] += 1
    return out


def with_xfails(expected: dict, actual: dict) -> dict:
    """The actual table with the bugs expected.yaml marks `xfail` shown as such (for counting)."""
    out: dict = {}
    for name, forms in actual.items():
        for form, cells in forms.items():
            for cell, got in cells.items():
                want = ((expected.get(name) or {}).get(form) or {}).get(cell) or ""
                out.setdefault(name, {}).setdefault(form, {})[cell] = (
                    want if want.startswith("xfail: ") and got.startswith("bug: ") else got)
    return out


def count_text(table: dict) -> str:
    lines = [f"{'cell':22} {'ok':>4} {'refused':>8} {'xfail':>6} {'bug':>4}"]
    for cell, c in counts(table).items():
        lines.append(f"{cell:22} {c['ok']:>4} {c['refused']:>8} {c['xfail']:>6} {c['bug']:>4}")
    return "\n".join(lines)


def load_expected() -> dict:
    import yaml

    return yaml.safe_load(EXPECTED.read_text()) if EXPECTED.exists() else {}


def updated(expected: dict, actual: dict) -> dict:
    """The actual table to write, keeping an xfail cell (and its reason) that is still a bug, and
    a shortened refusal text that still matches."""
    out: dict = {}
    for name, forms in actual.items():
        for form, cells in forms.items():
            for cell, got in cells.items():
                want = ((expected.get(name) or {}).get(form) or {}).get(cell)
                keep = want is not None and want.startswith(("xfail: ", "refused: ")) and matches(want, got)
                out.setdefault(name, {}).setdefault(form, {})[cell] = want if keep else got
    return out


def write_expected(table: dict) -> None:
    import yaml

    head = ("# The corpus table (tests/corpus): each model, each form, the outcome of inspect and of every pass.\n"
            "# Rewrite with `python -m tests.corpus.table --update`; review the diff before committing.\n"
            "# `refused:` texts are substrings of the message; a `bug:` cell fails the test until it is fixed\n"
            "# or marked `xfail: <reason>`.\n")
    EXPECTED.write_text(head + yaml.safe_dump(table, sort_keys=False, width=1000, allow_unicode=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.corpus.table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite expected.yaml from the current behaviour")
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    only = args.only.split(",") if args.only else None
    actual = run_table(only, args.workers, log=lambda text: print(text, file=sys.stderr, flush=True))
    expected = load_expected()
    if only:
        expected = {k: v for k, v in expected.items() if k in only}
    if args.update:
        full = load_expected()
        table = updated(full, actual)
        write_expected({**full, **table} if only else table)
        print(f"wrote {EXPECTED}")
    for line in differences(expected, actual):
        print(line)
    print(count_text(with_xfails(load_expected(), actual)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
