"""Recovery training as a pass of its own, to sit between others (after pruning, factorizing,
clustering ...). Weights that are exactly zero stay zero: their mask is re-applied after every
optimizer step, so fine-tuning never undoes an earlier pruning pass."""

from __future__ import annotations

from pydantic import Field

from ..training import check_labels, train
from .base import Context, Pass, PassConfig, PassResult, conversion_notes
from .registry import register


class FineTuneConfig(PassConfig):
    epochs: int = Field(5, ge=1, le=500, description="Passes over the data's training split")
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, le=4096, description="Samples per step")
    keep_zeros: bool = Field(True, description="Weights that are exactly zero stay zero (keeps earlier pruning)")


def zero_masks(module, names=None):
    """{name: (parameter, 0/1 mask)} for the weight tensors that hold exact zeros."""
    masks = {}
    for name, p in module.named_parameters():
        if p.dim() < 2 or (names is not None and name not in names):
            continue
        mask = (p.detach() != 0).to(p.dtype)
        if not bool(mask.all()):
            masks[name] = (p, mask)
    return masks


def reapply(masks):
    import torch

    def after_step():
        with torch.no_grad():
            for p, mask in masks.values():
                p.mul_(mask)

    return after_step


@register
class FineTune(Pass[FineTuneConfig]):
    id = "finetune"
    title = "Fine-tune (recovery training)"
    description = "Trains the model on the data's training split; pruned (zero) weights stay zero."
    Config = FineTuneConfig
    frameworks = ("torch", "onnx")
    needs_data = True

    def apply(self, model, context: Context):
        cfg: FineTuneConfig = self.config
        data = context.require_data(self.id, labels=True)
        new = yield from self.torch_copy(model)
        module = new.obj
        masks = zero_masks(module) if cfg.keep_zeros else {}
        x = data.shaped(data.x_train, new.input_shape)
        n_outputs = check_labels(module, x, data.y_train, self.id, new.io)
        loss = None
        for fraction, message in train(module, x, data.y_train, cfg.epochs, cfg.learning_rate, cfg.batch_size,
                                       seed=context.seed, after_step=reapply(masks) if masks else None, who=self.id,
                                       signature=new.io):
            context.check_cancelled()
            loss = message
            yield fraction, message
        module.eval()
        record = {name: {"zeros_kept": int((mask == 0).sum())} for name, (_, mask) in masks.items()}
        summary = f"{cfg.epochs} epochs at lr {cfg.learning_rate}" + (f"; last {loss}" if loss else "")
        if masks:
            summary += f"; zeros kept in {len(masks)} tensors"
        warnings = conversion_notes(model)
        if n_outputs > 1:  # labels address one output; the others change only through shared layers
            first = model.io.outputs[0].name if model.io.outputs else "the first"
            summary += f"; trained on output '{first}' (1 of {n_outputs})"
            warnings.append(f"trained on the first of {n_outputs} outputs ('{first}', the one the labels are class ids "
                            "of); the other outputs were not trained and change through the layers they share with "
                            "it: check their fidelity, or use distill.kd, which learns every output")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)
