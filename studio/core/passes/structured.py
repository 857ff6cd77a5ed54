"""Structured pruning with Torch-Pruning: whole channels, neurons and attention heads leave the
model, so its tensors (and its latency on a dense runtime) really shrink.

Torch-Pruning traces the model into a dependency graph, so pruning one conv's outputs also prunes
the batch norm after it, the next conv's inputs, every branch joined by a residual add or a
concat, and the matching groups of depthwise/grouped convs; hand-written channel surgery gets
those couplings wrong. The final classifier's outputs are never pruned (they are the classes)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import StudioError
from ..training import drain
from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult, conversion_notes, scaled
from .onnx_torch import constant_matmuls
from .registry import register

KINDS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "NonDynamicallyQuantizableLinear")


class StructuredConfig(PassConfig):
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of channels removed")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field("l2", description="How channels are ranked (taylor uses a few batches of data)")
    scope: Literal["global", "per_layer"] = Field("per_layer", description="One ranking across layers (global) or the same ratio in each layer")
    round_to: int = Field(8, ge=1, le=64, description="Kept channel counts are a multiple of this (1 = no rounding)")
    prune_heads: bool = Field(False, description="Remove whole attention heads instead of head dimensions")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of recovery training after pruning (0 = none)")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Fine-tune learning rate")


def _weight_layers(module):
    return [(n, m) for n, m in module.named_modules() if type(m).__name__ in KINDS]


def recurrent_layers(module) -> set[str]:
    """Names of the LSTM/GRU/RNN layers, left whole by structured pruning: Torch-Pruning's LSTM
    pruner cuts bias_ih_l0 to the kept hidden units instead of four gates of them (the pruned
    model no longer runs) and it has no GRU pruner. The layers around them are still pruned."""
    import torch

    return {n for n, m in module.named_modules() if isinstance(m, torch.nn.RNNBase)}


def layers_feeding_gru_rnn(module, example) -> set[str]:
    """Names of the Linear/Conv layers whose outputs reach a GRU's or plain RNN's input through no
    other weight layer. Torch-Pruning has a pruner for LSTM only: it traces into a GRU and fails
    on the group of any layer that feeds one (an index out of range), and finds no group for a
    layer feeding an RNN, so those layers are kept whole (and named)."""
    import torch

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.GRU, torch.nn.RNN))]
    if not layers:
        return set()
    produced, inputs = {}, []

    def hook(o, n):
        if isinstance(o, torch.Tensor):
            produced[o.grad_fn if o.grad_fn is not None else id(o)] = n

    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: hook(o, n)) for n, m in _weight_layers(module)]
    hooks += [m.register_forward_pre_hook(lambda mod, i: inputs.append(i[0])) for m in layers]
    try:
        with torch.enable_grad():
            module(*as_args(example))
    finally:
        for h in hooks:
            h.remove()
    names = {produced[id(x)] for x in inputs if id(x) in produced}
    names |= _layers_behind([x for x in inputs if isinstance(x, torch.Tensor)], produced)
    return names


def as_args(example) -> tuple:
    """forward's positional inputs: one tensor, or a tuple of them (token ids + mask, ...)."""
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def final_layers(module, example) -> set[str]:
    """Names of the Linear/Conv layers whose outputs reach a model output through no other
    weight layer (the classifier, every box/score conv of a detection head, a decoder's fixed
    conv): their output channels are the outputs, so they are never pruned. Found by walking the
    autograd graph back from every output and stopping at the first weight layer on each path;
    a concat, split, reshape or activation on the way does not stop it."""
    import torch

    from ..signature import flatten_outputs

    produced = {}  # autograd node (or tensor id) of a layer's output -> layer name

    def hook(mod, i, o, n):
        if isinstance(o, torch.Tensor):
            produced[o.grad_fn if o.grad_fn is not None else id(o)] = n

    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in _weight_layers(module)]
    try:
        with torch.enable_grad():
            outs = [o for o in flatten_outputs(module(*as_args(example))) if isinstance(o, torch.Tensor)]
    finally:
        for h in hooks:
            h.remove()
    names = {produced[id(o)] for o in outs if id(o) in produced}
    names |= _layers_behind(outs, produced)
    if not names:  # no gradient path (constant weights only): fall back to the last layer
        layers = _weight_layers(module)
        names = {layers[-1][0]} if layers else set()
    return names


def shapes(module) -> dict[str, tuple[int, int]]:
    """(out, in) channel counts of every weight layer."""
    result = {}
    for n, m in _weight_layers(module):
        out_c, in_c = m.weight.shape[0], m.weight.shape[1]
        if type(m).__name__.startswith("Conv"):
            in_c *= m.groups
        result[n] = (int(out_c), int(in_c))
    for n, m in module.named_modules():
        if type(m).__name__ == "MultiheadAttention":
            result[n] = (int(m.embed_dim), int(m.num_heads))
    return result


def importance_of(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


# Attention written by hand (timm, Hugging Face, user code) keeps its head count and head size in
# attributes its forward reshapes with; these are the names such modules use. Their q/k/v (or
# fused qkv) Linear children are found by name and given to Torch-Pruning as `num_heads`, so a
# head's dims are removed alike in q, k, v and the output projection.
HEAD_COUNT = ("num_heads", "num_attention_heads", "n_heads", "n_head", "nhead", "heads")
HEAD_SIZE = ("head_dim", "attention_head_size", "head_size", "d_head", "dim_head", "d_k")
ALL_HEADS = ("all_head_size", "inner_dim")
QKV_NAMES = {"q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj", "to_q", "to_k", "to_v",
             "wq", "wk", "wv", "qkv", "to_qkv", "qkv_proj", "c_attn", "query_key_value", "in_proj"}
FUSED = {"qkv", "to_qkv", "qkv_proj", "c_attn", "query_key_value", "in_proj"}


def attention_modules(module) -> list[tuple]:
    """Hand-written attention modules: (module, head-count attribute, [(qkv Linear, parts)]),
    parts = 3 for a fused qkv layer, else 1."""
    import torch

    found = []
    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            continue
        attr = next((a for a in HEAD_COUNT if isinstance(getattr(m, a, None), int) and getattr(m, a) > 1), None)
        if attr is None:
            continue
        heads = getattr(m, attr)
        qkv = [(c, 3 if n.lower() in FUSED else 1) for n, c in m.named_children()
               if isinstance(c, torch.nn.Linear) and n.lower() in QKV_NAMES and c.out_features % (heads * (3 if n.lower() in FUSED else 1)) == 0]
        if qkv:
            found.append((m, attr, qkv))
    return found


def _update_attention(attention, num_heads) -> None:
    """After pruning: the head count, head size and width attributes the forward reshapes with."""
    for m, attr, qkv in attention:
        layer, parts = qkv[0]
        heads = num_heads.get(layer, getattr(m, attr))
        width = layer.out_features // parts
        old_size = next((getattr(m, a) for a in HEAD_SIZE if isinstance(getattr(m, a, None), int)), None)
        setattr(m, attr, heads)
        for a in HEAD_SIZE:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width // heads)
        for a in ALL_HEADS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width)
        scale = getattr(m, "scale", None)  # timm keeps head_size ** -0.5
        if isinstance(scale, float) and old_size and abs(scale - old_size ** -0.5) < 1e-6:
            m.scale = (width // heads) ** -0.5


class GroupFailed(Exception):
    """Torch-Pruning could not prune the channel group rooted at `name` (the model is left half-pruned)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _pruner_class():
    import torch_pruning as tp

    class Pruner(tp.pruner.MetaPruner):
        """MetaPruner that rounds kept channels to the NEAREST multiple of round_to (its own rounds
        down: 65 % asked removed 69-75 % of narrow layers), counting grouped/attention channels per
        group, and that skips (and names) a group whose importance it cannot compute instead of failing."""

        skipped: list

        def _is_atten_group(self, group):
            self._current = group  # _round_to is called right after this, for the same group
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned, current_channels, round_to):
            ch_groups = max(1, self._get_channel_groups(self._current))
            per_group = current_channels // ch_groups
            step = round_to // math.gcd(round_to, ch_groups)  # kept total a multiple of round_to
            if per_group < step:
                return n_pruned if ch_groups > 1 else 0
            kept = max(step, min(per_group, int(math.floor((per_group - n_pruned) / step + 0.5)) * step))
            return per_group - kept

        def estimate_importance(self, group):
            try:
                return super().estimate_importance(group)
            except Exception as exc:  # noqa: BLE001 - a coupling Torch-Pruning mis-indexes (concat/split)
                self.skipped.append((group[0].dep.target.module, _first_line(exc)))
                return None

    return Pruner


class _EdgeOffsets(list):
    """A split's offsets as Torch-Pruning reads them, `offsets[i:i + 2]` for its i-th consumer
    edge: the [start, end) of the output that edge reads."""

    def __init__(self, pairs):
        super().__init__(v for pair in pairs for v in pair)
        self.pairs = pairs

    def __getitem__(self, index):
        if isinstance(index, slice) and index.start is not None and index.stop == index.start + 2 \
                and 0 <= index.start < len(self.pairs):
            return list(self.pairs[index.start])
        return super().__getitem__(index)


def _fix_split_edges(graph) -> None:
    """Torch-Pruning keeps one size per split output but reads it by consumer edge (the i-th
    edge = the i-th output). YOLOv8's C2f splits a conv's output in two and reads the second half
    three times (the next bottleneck, its residual add and the concat): 4 edges, 2 sizes, and the
    dependency graph failed with `list index out of range`. Here each edge gets the size and the
    offsets of the output it really reads (from the consumer's autograd edges)."""
    import torch_pruning as tp

    for node in graph.module2node.values():
        sizes = getattr(node.module, "split_sizes", None)
        if node.type != tp.ops.OPTYPE.SPLIT or not sizes or node.grad_fn is None \
                or not all(isinstance(v, int) for v in sizes):  # sizes it could not infer: as it was
            continue
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        seen: dict[int, int] = {}
        per_edge: list[int] = []
        matched = True
        for consumer in node.outputs:
            edges = [i for fn, i in getattr(consumer.grad_fn, "next_functions", ()) if fn is node.grad_fn]
            k = seen.get(id(consumer), 0)
            seen[id(consumer)] = k + 1
            if k >= len(edges) or edges[k] >= len(sizes):
                matched = False
                break
            per_edge.append(edges[k])
        if not matched or per_edge == list(range(len(sizes))):
            continue
        node.module.split_sizes = [sizes[i] for i in per_edge]
        node.module.offsets = _EdgeOffsets([(starts[i], starts[i + 1]) for i in per_edge])


class _split_outputs_by_edge:
    """While the pruner builds its dependency graph, split sizes are fixed per edge (see
    `_fix_split_edges`)."""

    def __enter__(self):
        from torch_pruning.dependency import shape_infer

        self.original = original = shape_infer.init_shape_information

        def init_shape_information(graph):
            original(graph)
            _fix_split_edges(graph)

        shape_infer.init_shape_information = init_shape_information
        return self

    def __exit__(self, *exc):
        from torch_pruning.dependency import shape_infer

        shape_infer.init_shape_information = self.original
        return False


def _snapshot(group, extra):
    """What pruning `group` changes (each module's attributes, parameter and buffer slots), so a
    group that breaks the model can be undone; None for groups with bare nn.Parameters (Torch-
    Pruning also rewrites its graph for those)."""
    from torch_pruning import ops

    if any(dep.target.type == ops.OPTYPE.PARAMETER for dep, _ in group):
        return None
    mods = {id(m): m for m in [*(dep.target.module for dep, _ in group), *(dep.source.module for dep, _ in group), *extra]}
    slots = ("_parameters", "_buffers")
    return [(m, {k: dict(v) if k in slots else v for k, v in vars(m).items()}) for m in mods.values()
            if hasattr(m, "__dict__")]


def _restore(snapshot) -> None:
    for m, saved in snapshot:
        vars(m).clear()
        vars(m).update({k: dict(v) if k in ("_parameters", "_buffers") else v for k, v in saved.items()})


def prune_module(module, example, ratio, importance="l2", scope="per_layer", round_to=1,
                 ignored_names=(), prune_heads=False, grads=None, cancel=None, check_each=False):
    """Prune `module` in place with Torch-Pruning's MetaPruner; `example` is one input tensor or a
    tuple of them. `grads(module)` fills .grad for Taylor importance; `cancel()` is polled between
    groups. A group whose pruning fails (or, with `check_each`, after which the model no longer
    runs) is undone and left out. Returns [(root layer name, reason)] of the groups left out.
    Raises GroupFailed (module half-pruned) only when such a group cannot be undone."""
    return drain(prune_module_steps(module, example, ratio, importance, scope, round_to, ignored_names,
                                    prune_heads, grads, cancel, check_each))


def prune_module_steps(module, example, ratio, importance="l2", scope="per_layer", round_to=1,
                       ignored_names=(), prune_heads=False, grads=None, cancel=None, check_each=False,
                       groups_hint: int | None = None, counted: dict | None = None):
    """prune_module as a generator of (fraction, message): once the dependency graph is built and
    after every channel group (their number is known only at the end: `groups_hint`, or the
    prunable layers, stands in for it; `counted["groups"]` gets it); `cancel()` is polled between
    all of them."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    named = dict(module.named_modules())
    # recurrent layers are left whole (Torch-Pruning's LSTM pruner cuts the gates' biases wrongly and
    # it has none for GRU and RNN), and so are the layers feeding a GRU or RNN
    whole = set(ignored_names) | recurrent_layers(module) | layers_feeding_gru_rnn(module, example)
    ignored = [named[n] for n in sorted(whole) if n in named]
    mhas = [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    num_heads = {m: m.num_heads for m in mhas}
    if prune_heads:
        # Torch-Pruning sizes a head from a fused qkv layer's out_features (3 x the width) and
        # MultiheadAttention has none (it failed with an AttributeError): it is lent one for the
        # pruning. Its pruner removes the same indices from q, k, v and the output projection,
        # so a head's slice goes whole; _sync_attention writes the head count back.
        for m in mhas:
            m.out_features = 3 * m.embed_dim
    attention = [a for a in attention_modules(module) if not any(layer in ignored for layer, _ in a[2])]
    for m, attr, qkv in attention:
        num_heads.update({layer: getattr(m, attr) for layer, _ in qkv})
    if importance == "bn_scale" and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        raise StudioError("prune.structured: importance 'bn_scale' needs batch-norm layers; this model has none")
    args = as_args(example)
    reshapes = adaptive_reshapes(module, args)
    with _split_outputs_by_edge():
        pruner = _pruner_class()(
            module, args, importance=importance_of(importance), pruning_ratio=ratio,
            global_pruning=scope == "global", ignored_layers=ignored, round_to=round_to if round_to > 1 else None,
            num_heads=num_heads, prune_num_heads=prune_heads, prune_head_dims=not prune_heads,
            head_pruning_ratio=ratio if prune_heads else 0.0,
        )
    pruner.skipped = []
    if cancel is not None:
        cancel()
    expected = max(1, groups_hint or sum(1 for _, m in _weight_layers(module) if m not in ignored))
    yield 0.05, "dependency graph built"
    if importance == "taylor":
        module.zero_grad()
        grads(module)
    left_out = []
    heads_ok = dict(num_heads)  # head counts after the last group that pruned cleanly
    done = 0
    for group in pruner.step(interactive=True):
        if cancel is not None:
            cancel()
        if done:
            yield 0.05 + 0.9 * min(done / expected, 0.99), f"channel group {done} of about {expected}"
        done += 1
        root = names.get(group[0].dep.target.module, "?")
        undo = _snapshot(group, [m for m, _, _ in attention])
        try:
            group.prune()
            if check_each:
                _sync_attention(module, attention, num_heads)
                try:
                    with torch.no_grad():
                        module(*args)
                except Exception as exc:  # noqa: BLE001 - e.g. a reshape to a fixed width in the forward
                    raise GroupFailed(root, f"the model no longer ran after pruning it ({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - an index Torch-Pruning mapped wrongly through this group
            failed = exc if isinstance(exc, GroupFailed) else GroupFailed(root, _first_line(exc))
            if undo is None:
                raise failed from None
            _restore(undo)
            num_heads.update(heads_ok)  # the pruner counted this group's heads as removed
            pruner.out_channel_groups.update({k: v for k, v in heads_ok.items() if k in pruner.out_channel_groups})
            left_out.append((failed.name, failed.reason))
            continue
        heads_ok = dict(num_heads)
    _sync_attention(module, attention, num_heads)
    try:  # the constant reshapes take their shapes after the last group
        with torch.no_grad():
            module(*args)
    except Exception:  # noqa: BLE001 - prune_leaving_out runs it again and names the failure
        pass
    for hook in reshapes:
        hook.remove()
    for m in mhas:
        vars(m).pop("out_features", None)
    module.zero_grad(set_to_none=True)
    if counted is not None:
        counted["groups"] = done  # what a second attempt of prune_leaving_out_steps expects
    return [(names.get(m, "?"), reason) for m, reason in pruner.skipped] + left_out


def adaptive_reshapes(module, args) -> list:
    """Hooks making the Reshapes of an onnx2torch graph follow pruned channels.

    An exported transformer reshapes to shapes holding the channel count as a number (the
    attention output [T * B, E] back to [T, B, E], E stored, or concatenated to the batch taken
    from a Shape), which no longer fit once E shrinks. Each reshape's input, output and shape
    on `args` are recorded; when its input changes later, the dims carried through one-to-one
    (one input dim to one output dim of the same size, 1s aside) take the new size in its
    `shape_patch`. A dim split or merged (heads x head size) is not guessed: that reshape keeps
    failing and the group that shrank it is undone and left out."""
    import torch

    reshapes = [m for m in module.modules() if type(m).__name__ == "Reshape" and hasattr(m, "allowzero")]
    if not reshapes:
        return []
    seen: dict = {}  # reshape module -> (input shape, output shape) seen on the first call

    def record(mod, inputs, output):
        seen.setdefault(mod, (tuple(inputs[0].shape), tuple(output.shape)))

    hooks = [m.register_forward_hook(record) for m in reshapes]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in hooks:
            h.remove()

    def follow(mod, inputs):
        x, shape = inputs[0], inputs[1]
        in_old, out_old = seen[mod]
        mod.shape_patch = followed_shape(in_old, out_old, tuple(x.shape), [int(v) for v in shape.tolist()])

    return [m.register_forward_pre_hook(follow) for m in seen]


def followed_shape(in_old, out_old, in_new, shape) -> dict[int, int] | None:
    """{position: size} to write into `shape` (a reshape's shape, -1 and 0 as ONNX reads them)
    for an input now `in_new` instead of `in_old` (which gave `out_old`); None when the change
    cannot be followed or needs no patch. Only dims carried through one-to-one take the new size."""
    if tuple(in_new) == tuple(in_old) or len(in_new) != len(in_old) or len(shape) != len(out_old):
        return None
    groups = _aligned(list(in_old), list(out_old))
    if groups is None:
        return None
    patch = {}
    for ins, outs in groups:
        if all(in_new[i] == in_old[i] for i in ins):
            continue
        carried_in = [i for i in ins if in_old[i] != 1 or in_new[i] != 1]
        carried_out = [o for o in outs if out_old[o] != 1]
        if len(carried_in) != 1 or len(carried_out) != 1 or in_old[carried_in[0]] != out_old[carried_out[0]]:
            return None
        o, size = carried_out[0], int(in_new[carried_in[0]])
        if shape[o] > 0 and shape[o] != size:  # -1 (inferred) and 0 (copied from the input) follow by themselves
            patch[o] = size
    return patch or None


def _aligned(a: list[int], b: list[int]):
    """[(input dims, output dims)] of a reshape from shape `a` to `b`: the shortest runs whose
    sizes multiply alike; None when they do not line up."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ins, outs, pa, pb = [], [], 1, 1
        if i < len(a):
            ins.append(i)
            pa, i = a[i], i + 1
        if j < len(b):
            outs.append(j)
            pb, j = b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                ins.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                outs.append(j)
                pb, j = pb * b[j], j + 1
            else:
                return None
        groups.append((ins, outs))
    return groups


def _sync_attention(module, attention, num_heads) -> None:
    import torch

    # Torch-Pruning rewrites MHA's attributes but counts removed heads in its own table; keep
    # them consistent for the forward pass
    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            m.num_heads = num_heads.get(m, m.num_heads)
            m.head_dim = m.embed_dim // m.num_heads
    _update_attention(attention, num_heads)


def prune_leaving_out(module, example, ratio, importance="l2", scope="per_layer", round_to=1,
                      ignored_names=(), prune_heads=False, grads=None, cancel=None, attempts=6):
    """A pruned copy of `module` and the layers left out [(name, reason)]: a channel group that
    breaks Torch-Pruning or the pruned model is undone and named, so one odd layer never stops
    the rest from shrinking. The first try checks only the end result; if that does not run, a
    second one from the original runs the model after every group to find the ones that break it.
    `module` itself is never changed (each try prunes a copy), cancelled or not."""
    return drain(prune_leaving_out_steps(module, example, ratio, importance, scope, round_to, ignored_names,
                                         prune_heads, grads, cancel, attempts))


def prune_leaving_out_steps(module, example, ratio, importance="l2", scope="per_layer", round_to=1,
                            ignored_names=(), prune_heads=False, grads=None, cancel=None, attempts=6):
    """prune_leaving_out as a generator of (fraction, message), `cancel()` polled between every
    step: a try that checks only the end result takes the next 30 % of what is left, one that
    runs the model after every group (a forward per group: most of YOLOv8n's minute) 80 %."""
    import copy

    import torch

    left: list[tuple[str, str]] = []
    check_each = False
    start, groups = 0.0, None
    for attempt in range(attempts):
        if cancel is not None:
            cancel()
        share = (1.0 - start) * (0.8 if check_each else 0.3)
        what = "again, running the model after each group" if check_each else ("again" if attempt else "")
        yield start, f"pruning{' ' + what if what else ''}: building the dependency graph"
        trial = copy.deepcopy(module)
        counted: dict = {}
        steps = prune_module_steps(trial, example, ratio, importance, scope, round_to,
                                   [*ignored_names, *(n for n, _ in left)], prune_heads, grads, cancel, check_each,
                                   groups_hint=groups, counted=counted)
        try:
            skipped = yield from scaled(steps, start, start + share, f"pruning{' ' + what if what else ''}: ")
        except GroupFailed as failed:  # could not be undone: start again without that layer
            left.append((failed.name, failed.reason))
            start += share
            continue
        groups = counted.get("groups") or groups
        start += share
        if cancel is not None:
            cancel()
        try:
            with torch.no_grad():
                trial(*as_args(example))
        except Exception as exc:  # noqa: BLE001
            if check_each:
                raise StudioError(f"prune.structured: the pruned model no longer runs ({_first_line(exc)}); "
                                  "ignore the layers before that reshape, or use prune.magnitude / lowrank.svd") from None
            check_each = True
            continue
        return trial, left + skipped
    names = ", ".join(n for n, _ in left[:4])
    raise StudioError(f"prune.structured: Torch-Pruning failed on too many layers of this model ({names}, ...); "
                      "ignore them or use prune.magnitude / lowrank.svd")


def taylor_grads(module, x, y, batches=4, batch_size=64, signature=None):
    """Gradients of the loss on a few batches: cross-entropy on labels, or on the model's own
    top-1 when there are none (a KL to itself would have zero gradient). `x` is one array or
    Inputs (every input fed in its own dtype, in `signature`'s order); the loss is on the
    first output."""
    import torch
    import torch.nn.functional as F

    from ..training import Batches, first_output

    module.eval()
    xb = Batches(x, signature)
    count = min(len(xb), batches * batch_size)
    for i in range(0, count, batch_size):
        out = first_output(module(*xb[torch.arange(i, min(count, i + batch_size))]))
        if y is not None:
            target = torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64))
        else:
            target = out.detach().argmax(1)
        F.cross_entropy(out, target).backward()


def model_args(model) -> tuple:
    """One batch-1 sample of every input of `model`, as forward's positional tensors."""
    import torch

    from ..signature import torch_args

    if model.io.multi:
        return torch_args(model.example_inputs(1), model.io)
    return (torch.from_numpy(model.example_input(1)),)


@register
class StructuredPrune(Pass[StructuredConfig]):
    id = "prune.structured"
    title = "Structured pruning (channels, Torch-Pruning)"
    description = (
        "Removes whole channels, neurons and attention-head dimensions across dependent layers "
        "(residual adds, concat, batch norm, grouped convs): tensors really shrink, so a dense "
        "runtime runs faster."
    )
    Config = StructuredConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):

        cfg: StructuredConfig = self.config
        # an ONNX transformer's projections (MatMul by a stored weight) become nn.Linear layers in
        # the conversion (onnx_torch.matmuls_as_linear), so Torch-Pruning can shrink them
        new = yield from self.torch_copy(model)
        module = new.obj
        module.eval()
        matmuls = constant_matmuls(module) if model.is_onnx else []
        example = model_args(new)
        chosen = set(tg.select(tg.torch_layers(module, KINDS), cfg.targets, cfg.ignore))
        finals = final_layers(module, example)
        before_gru_rnn = layers_feeding_gru_rnn(module, example) - finals
        ignored = {n for n, _ in _weight_layers(module) if n not in chosen} | finals
        before = shapes(module)
        yield 0.05, f"building the dependency graph ({len(chosen - finals)} layers may shrink)"
        context.check_cancelled()
        grads = None
        if cfg.importance == "taylor":
            data = context.require_data(self.id)
            x = data.shaped(data.x_train, new.input_shape)

            def grads(m):
                taylor_grads(m, x, data.y_train, signature=new.io)

        params_before = sum(p.numel() for p in module.parameters())
        try:
            module, left_out = yield from scaled(
                prune_leaving_out_steps(module, example, cfg.ratio, cfg.importance, cfg.scope, cfg.round_to,
                                        sorted(ignored), cfg.prune_heads, grads, context.check_cancelled), 0.05, 0.3)
        except StudioError:
            raise
        except Exception as exc:  # a model Torch-Pruning cannot trace
            if type(exc).__name__ == "Cancelled":
                raise
            raise StudioError(f"prune.structured: Torch-Pruning could not trace this model ({_first_line(exc)}); "
                              "use prune.magnitude or lowrank.svd") from None
        new = new.with_obj(module)
        yield 0.3, "pruned"
        context.check_cancelled()
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(module, new.input_shape, context, 0.3, signature=new.io)
        module.eval()
        after = shapes(module)
        named = dict(module.named_modules())
        reasons = dict(left_out)
        record = {}
        for name, (out_b, in_b) in before.items():
            out_a, in_a = after.get(name, (0, 0))
            record[name] = {"op": type(named.get(name)).__name__,
                            "out_channels_before": out_b, "out_channels": out_a,
                            "removed_out": out_b - out_a, "in_channels_before": in_b, "in_channels": in_a}
            if name in reasons:
                record[name]["left_out"] = reasons[name]
        # the share really removed, over the layers that were allowed to shrink (rounding and
        # couplings make it differ from the ratio asked)
        may_shrink = [r for n, r in record.items() if n in chosen - finals and r["op"] != "MultiheadAttention"]
        total = sum(r["out_channels_before"] for r in may_shrink)
        share = sum(r["removed_out"] for r in may_shrink) / max(1, total)
        for r in may_shrink:
            r["removed_share"] = r["removed_out"] / max(1, r["out_channels_before"])
        params_after = sum(p.numel() for p in module.parameters())
        summary = (f"channels {share:.1%} removed (asked {cfg.ratio:.0%}), parameters {params_before:,} -> {params_after:,} "
                   f"({1 - params_after / max(1, params_before):.1%} removed), {cfg.importance}")
        warnings = conversion_notes(model)
        if matmuls:
            warnings.append(f"{len(matmuls)} MatMul layers of the ONNX graph kept their size ({', '.join(matmuls[:3])}"
                            f"{' ...' if len(matmuls) > 3 else ''}): their weight is shared or on the left of the "
                            "product, so they stay plain matrix products Torch-Pruning cannot shrink; prune the torch "
                            "model instead, or use prune.magnitude / lowrank.svd on the ONNX model")
        if left_out:
            warnings.append(f"left out of pruning, kept whole ({len(left_out)} layer groups Torch-Pruning could not "
                            "prune here): " + "; ".join(f"{n} ({r})" for n, r in left_out[:4])
                            + (" ..." if len(left_out) > 4 else ""))
            fused = [n for n, _ in left_out if type(named.get(n)).__name__ == "Linear"
                     and named[n].out_features == 3 * named[n].in_features]
            if model.is_onnx and fused:
                warnings.append(f"{', '.join(fused[:3])}{' ...' if len(fused) > 3 else ''}: a fused q/k/v projection of "
                                "the exported graph, split into heads by reshapes and slices of stored sizes that "
                                "Torch-Pruning cannot follow, so the attention heads keep their size; prune the torch "
                                "model to shrink heads (prune_heads)")
        recurrent = sorted(recurrent_layers(module))
        if recurrent:
            warnings.append(f"recurrent layers kept whole ({', '.join(recurrent[:3])}{' ...' if len(recurrent) > 3 else ''}): "
                            "structured pruning does not shrink LSTM/GRU/RNN layers; use prune.magnitude or prune.nm on them")
        if before_gru_rnn & chosen:
            feeding = sorted(before_gru_rnn & chosen)
            warnings.append(f"layers feeding a GRU/RNN kept whole ({', '.join(feeding[:3])}{' ...' if len(feeding) > 3 else ''}): "
                            "Torch-Pruning cannot follow their channels into a GRU or RNN")
        unchanged_attention = [n for n, r in record.items() if r["op"] == "MultiheadAttention" and r["removed_out"] == 0
                               and r["in_channels"] == r["in_channels_before"]]
        if unchanged_attention:
            warnings.append(f"attention layers kept their width and heads ({', '.join(unchanged_attention[:3])}): "
                            "Torch-Pruning found no prunable group through them here; only the feed-forward layers shrank")
        if params_after == params_before:
            warnings.append("no channel was removed: the chosen layers may all be coupled to the classifier or ignored")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)


def _layers_behind(tensors, produced: dict) -> set:
    """Names of the layers (`produced`: grad_fn -> name) the autograd graph reaches walking back
    from `tensors`, stopping at each layer found."""
    names: set = set()
    stack, seen = [t.grad_fn for t in tensors if t.grad_fn is not None], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced:
            names.add(produced[node])
            continue
        stack.extend(nxt for nxt, _ in node.next_functions)
    return names
