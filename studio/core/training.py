"""One small, plain training loop: the zoo, fine-tuning and distillation all use it.

It is a generator like a pass: it yields (fraction, message) after every batch so a cancel
takes effect within one batch, and `keep` callbacks (e.g. re-applying pruning masks) run after
each optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

Progress = Generator[tuple[float, str], None, None]


def train(
    module,
    x: np.ndarray,
    y: np.ndarray | None,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
    loss_fn: Callable | None = None,
    params=None,
    who: str = "training",
    signature=None,
) -> Progress:
    """Train `module` in place with Adam. `x` is one float array or `signature.Inputs` (several
    or integer inputs: each fed in its own dtype, as forward's positional arguments in the
    order of `signature`, the model's `io`). `loss_fn(module, args, yb, idx)` overrides the
    default cross-entropy on the first output (distillation passes its own); `args` is the tuple
    of forward's arguments for the batch, `idx` the batch's sample indices. `params` limits what
    is trained; `who` (a pass id) starts a refusal's line."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    batches = Batches(x, signature)
    yt = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))
    optimizer = torch.optim.Adam(params if params is not None else module.parameters(), lr=lr)
    fixed = fixed_batch(module)
    if fixed:  # converted from a file with a fixed batch: only whole batches of that size
        batch_size = fixed
        steps_per_epoch = max(1, len(batches) // fixed)
        note_samples(module, min(len(batches), steps_per_epoch * fixed), len(batches), fixed)
    else:
        steps_per_epoch = max(1, -(-len(batches) // batch_size))
    total = max(1, epochs * steps_per_epoch)
    if loss_fn is None and yt is not None:
        check_labels(module, x, y, who, signature)
    module.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(batches), generator=generator)
            if fixed and len(order) < fixed:  # fewer samples than one batch: repeated to fill it
                order = order[torch.arange(fixed) % len(order)]
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                args = batches[idx]
                yb = None if yt is None else yt[idx]
                optimizer.zero_grad()
                if loss_fn is not None:
                    loss = loss_fn(module, args, yb, idx)
                else:
                    loss = F.cross_entropy(first_output(module(*args)), yb)
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                done = epoch * steps_per_epoch + step + 1
                yield done / total, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.4g}"
    finally:
        module.eval()


class Batches:
    """Forward's positional arguments for samples picked by index: one float32 tensor for an
    array, or one tensor per input of `signature.Inputs` in its own dtype (token ids stay
    integers; pinned constants are fed as they are)."""

    def __init__(self, x, signature=None):
        import torch

        self.signature = signature
        if isinstance(x, np.ndarray):
            self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            self.x = x  # Inputs: sliced per batch, then converted

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> tuple:
        from .signature import torch_args

        if not hasattr(self.x, "arrays"):
            return (self.x[idx],)
        return torch_args(self.x[np.asarray(idx)], self.signature)


TRAINED_SAMPLES = "studio_trained_samples"


def note_samples(module, used: int, total: int, fixed: int) -> None:
    """Writes in the module's meta how many samples an epoch of training at the file's fixed
    batch used (the pipeline moves it into the stage's record and warnings)."""
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict):
        meta[TRAINED_SAMPLES] = {"used_per_epoch": int(used), "samples": int(total), "fixed_batch": int(fixed)}


def trained_samples_note(module) -> str | None:
    """One line saying how many samples training at a fixed batch used, taken out of the
    module's meta (so a later stage does not repeat it); None when all were used or nothing
    was trained."""
    meta = getattr(module, "meta", None)
    info = meta.pop(TRAINED_SAMPLES, None) if isinstance(meta, dict) else None
    if not info:
        return None
    used, total, fixed = info["used_per_epoch"], info["samples"], info["fixed_batch"]
    if total < fixed:
        return (f"the file fixes the batch at {fixed}: training had {total} samples, repeated to fill each batch")
    if used == total:
        return None
    return (f"the file fixes the batch at {fixed}: each epoch trained on {used} of the {total} training samples "
            f"(the last partial batch of {total - used} dropped; the order is shuffled each epoch)")


def sample_indices(module, count: int, n: int) -> np.ndarray:
    """Indices of `count` samples out of `n` to probe a module with: exactly its fixed batch
    when it has one (the first samples, repeated if there are fewer)."""
    fixed = fixed_batch(module)
    want = fixed or min(count, n)
    return np.arange(want) % max(1, n)


def first_output(out):
    """The first of a module's outputs (tuples, lists and dicts flattened in order): the one
    labels and accuracy refer to, as in measurement."""
    from .signature import flatten_outputs

    outs = flatten_outputs(out)
    return outs[0] if outs else out


def check_labels(module, x, y: np.ndarray, who: str = "training", signature=None) -> int:
    """The number of outputs of `module`, after checking that labels can train it: they are class
    ids of its first output, which must be [batch, classes] scores with a class for every label.
    Refuses in one line otherwise (a reconstruction or box output has no classes to match).
    `x` is one array or Inputs (fed in `signature`'s order)."""
    import torch

    from .errors import StudioError
    from .signature import flatten_outputs

    set_eval(module)
    with torch.no_grad():
        outs = flatten_outputs(module(*Batches(x, signature)[torch.from_numpy(sample_indices(module, 2, len(x)))]))
    first = outs[0] if outs else None
    top = int(np.max(y)) if len(y) else 0
    if not isinstance(first, torch.Tensor) or first.dim() != 2 or first.shape[1] <= max(1, top):
        shape = "nothing" if first is None else f"shape {list(getattr(first, 'shape', []))}"
        raise StudioError(f"{who}: the labels are class ids (0-{top}) of the model's first output, but it gives {shape}, "
                          "not [batch, classes] scores with that many classes: training on labels needs a "
                          "classifier's output first; use distill.kd (it learns every output, no labels needed)")
    return len(outs)


def set_eval(module):
    """module.eval(), for modules that allow it (torch.export's modules refuse: they are already
    in the mode they were exported in)."""
    try:
        module.eval()
    except NotImplementedError:
        pass
    return module


def drain(gen):
    """Run a progress generator to the end and return its result (tests, scripts)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def predict(module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits (its first output) of a torch module on numpy inputs, in eval mode, without gradients."""
    import torch

    set_eval(module)
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = first_output(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))))  # dtype as given
            outs.append(out.detach().float().numpy())
    return np.concatenate(outs)


def fixed_batch(module) -> int | None:
    """The batch a module converted from a fixed-batch ONNX file takes (its Reshapes say
    [1, ...]: ultralytics' YOLO export), set by onnx_to_torch; None for any batch."""
    meta = getattr(module, "meta", None)  # a GraphModule's meta survives deepcopy (an attribute does not)
    return meta.get("studio_fixed_batch") if isinstance(meta, dict) else None


def predict_outputs(module, x, signature=None, batch_size: int = 512) -> list[np.ndarray]:
    """Every output of a torch module (tuples, lists and dicts flattened in order) on one array
    or on Inputs (fed as forward's positional arguments in the signature's order)."""
    import torch

    from .signature import flatten_outputs, torch_args

    set_eval(module)
    fixed = fixed_batch(module)
    batch_size = fixed or batch_size
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            real = min(batch_size, len(x) - i)
            if fixed and real < fixed:  # the last partial batch: padded by repeating its samples
                part = x[np.arange(i, i + real)[np.arange(fixed) % real]]
            else:
                part = x[i : i + batch_size]
            outs = flatten_outputs(module(*torch_args(part, signature)))
            if not parts:
                parts = [[] for _ in outs]
            for j, out in enumerate(outs):
                out = np.atleast_1d(out.detach().float().numpy())
                out = part.samples_first(out) if hasattr(part, "samples_first") else out
                parts[j].append(out[:real] if fixed and real < fixed and len(out) == fixed else out)
    return [np.concatenate(p) for p in parts]
