"""A big model's outputs on samples, and the zipped size of its file, computed in a child process
(`studio _outputs REQUEST`) while the job's thread only waits.

onnxruntime lets go of the GIL while it runs, but the Python around its calls takes it back: each
stream's wait and outputs, the zip's chunks. With both cores busy the thread holding the GIL waits
for a core, and the window waits for the GIL: the ui_stall benchmark's BERT-base run froze it
50-110 ms at a time while the original was measured. The window's thread was not waiting for a
core (its run-queue wait stayed under 5 ms in those stalls) but for the GIL. In a child there is
nothing in the window's process to hand the GIL to: measured alone on the same phase, the longest
stall went from 40-86 ms to 10 ms.

The parent writes the samples (child.write_samples: no pickles) and names the model file and, where
the model's big tensors lie in it, the small view that maps them (convert.mapped_view); the child
prints its progress, writes each output to an .npy and answers with the outputs' names and the
zipped size. A cancel kills the child; a crash (C++ in onnxruntime) is a one-line StudioError, not
the window's end. Small models run in-process (CHILD_OVER), and every model on the command line
(ENABLED).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import child
from .errors import StudioError

# Below this many bytes of weights a model runs in the job's own process: a child's start costs
# 1-2 s (its imports), more than such a model's whole run, and its Python holds the GIL briefly.
CHILD_OVER = 32 * 2**20

# Only the window turns the children on (qt.app.create_app): the command line has no window to keep
# responsive, and there the child's session came on top of the CLI's own copy of the model (the
# scale benchmark's BERT-base run: 2,152 MB at the INT8 pass's float reference run, 1,503 MB in-process).
ENABLED = False


def wanted(weights: int) -> bool:
    """Whether a model holding `weights` bytes of weights runs in a child: in the window, when big."""
    return ENABLED and weights > CHILD_OVER

class Ran(NamedTuple):
    """What outputs_steps returns: the outputs, their names, the zipped size and the MACs (None
    when not asked for)."""
    outputs: list
    names: list[str]
    zip_bytes: int | None
    macs: int | None


RAN = "studio-ran"  # the child's progress lines: "studio-ran FRACTION", "studio-zipped FRACTION"
ZIPPED = "studio-zipped"


def outputs_steps(path: Path, view: Path | None, x, *, zipped: bool = False, weights: int = 0,
                  stop: Callable[[], bool] | None = None, basic: bool = False, macs: tuple | None = None):
    """Every output of the model file `path` (or of `view`, mapped_view's view of it) on the
    samples `x` (an array or signature.Inputs), as convert.iter_session_all gives them, from a
    child; with `zipped`, the zipped size of `path` too (evaluate.zipped_size); `basic`: the session
    with onnxruntime's basic graph optimizations only (convert.session); `macs`: (input_shape,
    graph.input_sizes) of the opened model, to count its MACs at batch 1 as graph.build_graph does
    (_macs). A generator: yields ("ran" or "zipped", fraction) as the child goes, returns a Ran.
    Cancelled when stop() is true (the child killed); StudioError in one line when onnxruntime
    fails, the child dies or it passes its time budget (child.budget(weights, samples))."""
    with tempfile.TemporaryDirectory(prefix="studio-outputs-") as name:
        folder = Path(name)
        samples = folder / "samples.npz"
        layout = child.write_samples(x, samples)
        asked, reply = folder / "request.json", folder / "reply.json"
        asked.write_text(json.dumps({"model": str(view or path), "whole": str(path), "samples": str(samples),
                                     "layout": layout, "zipped": zipped, "basic": basic,
                                     "macs": None if macs is None else {"input_shape": macs[0], "sizes": macs[1]},
                                     "reply": str(reply)}))
        what = "onnxruntime's run of the model"
        steps = child.lines("_outputs", [str(asked)], stop=stop, budget=child.budget(weights, len(x)), what=what)
        try:
            while True:
                try:
                    line = next(steps)
                except StopIteration as end:
                    code = end.value
                    break
                word, _, number = line.partition(" ")
                if word in (RAN, ZIPPED):
                    yield ("ran" if word == RAN else "zipped"), float(number)
                else:  # anything else a library printed: to the terminal, as in-process
                    print(line, file=sys.stderr)
        finally:
            steps.close()  # this generator closed: the child killed before its folder goes
        try:
            answer = json.loads(reply.read_text())
        except (OSError, ValueError):
            answer = None
        if answer is None or code != 0:
            raise StudioError(f"{what} stopped ({child.ended(code)}) before it wrote the outputs")
        if "error" in answer:
            raise StudioError(answer["error"])
        # np.load reads an .npy with one read that lets go of the GIL
        outs = [np.load(folder / f"out{i}.npy", allow_pickle=False) for i in range(len(answer["names"]))]
        return Ran(outs, answer["names"], answer.get("zip_bytes"), answer.get("macs"))


def outputs(path: Path, view: Path | None, x, *, weights: int = 0, stop: Callable[[], bool] | None = None,
            basic: bool = False):
    """outputs_steps without the zipped size, in convert.iter_session_all's shape: yields the fraction
    run, returns the outputs. Closing it kills the child."""
    steps = outputs_steps(path, view, x, weights=weights, stop=stop, basic=basic)
    try:
        while True:
            try:
                _, done = next(steps)
            except StopIteration as end:
                return end.value.outputs
            yield done
    finally:
        steps.close()


def _macs(path: Path, input_shape, sizes: dict) -> int:
    """The MACs at batch 1 of the model file `path`, as graph.build_graph counts them for the
    opened model: its graph read without the big tensors' bytes (onnx_child's walk), those left in
    the file (their zeros counted from it). In the window's process this held the GIL 40-50 ms
    at a time on BERT-base's INT8 stage (onnx's copy of the graph and its shape inference)."""
    import onnx

    from .graph.from_onnx import graph_from_onnx
    from .io.onnx_child import from_reply, locate, parse_reduced

    shape = None if input_shape is None else tuple(input_shape)
    given = {name: tuple(dims) for name, dims in sizes.items()}
    reduced = parse_reduced(path)
    if reduced is None:  # not plain to the walk: the whole file parsed (in this child)
        return graph_from_onnx(onnx.load(str(path)), shape, given).total_macs
    proto, ranges = reduced
    located = locate(proto, path, ranges)
    proto, _, lazy = from_reply(path, {"external": False, "located": located}, proto.SerializeToString(), lazy=True)
    return graph_from_onnx(proto, shape, given, lazy).total_macs


def child_main(argv: list[str]) -> int:
    """`studio _outputs REQUEST`: the model's outputs on the samples, each to out{i}.npy beside the
    request, its progress on stdout, {"names": [...], "zip_bytes": n or null, "macs": n or null}
    or {"error": its first line} to the request's "reply"."""
    from .convert import iter_session_all, open_mapped, session
    from .evaluate import _Zipping

    request = json.loads(Path(argv[0]).read_text())
    folder = Path(request["reply"]).parent
    zipping = None
    try:
        x = child.read_samples(Path(request["samples"]), request["layout"])
        whole = Path(request["whole"])
        macs = None
        if request.get("macs") is not None:  # first, before the session holds its copy of the weights
            try:
                macs = _macs(whole, request["macs"]["input_shape"], request["macs"]["sizes"])
            except Exception:  # noqa: BLE001 - as in-process: MACs of exotic graphs may be unknown; 0 means unknown
                macs = 0
        if request["zipped"]:
            zipping = _Zipping(whole)  # on the other core while the model runs, as in-process
        model = Path(request["model"])
        sess = open_mapped(model, whole) if model != whole else session(whole, basic=request.get("basic", False))
        names = [o.name for o in sess.get_outputs()]
        steps = iter_session_all(sess, x)
        while True:
            try:
                done = next(steps)
            except StopIteration as stop:
                outs = stop.value
                break
            print(f"{RAN} {done:.4f}", flush=True)
        del sess, steps
        for i, out in enumerate(outs):
            np.save(folder / f"out{i}.npy", out, allow_pickle=False)
        size = None
        if zipping is not None:
            while not zipping.wait(0.5):
                print(f"{ZIPPED} {zipping.fraction:.4f}", flush=True)
            size = zipping.result()
        answer: dict = {"names": names, "zip_bytes": size, "macs": macs}
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own classes: one line to the parent
        answer = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    finally:
        if zipping is not None:
            zipping.stop()
    Path(request["reply"]).write_text(json.dumps(answer))
    return 0
