"""torch -> Graph, via torch.fx: modules are leaves named as in the state_dict, functions
(add, flatten, relu) are nodes of their own. Graphs that come from torch.export keep their module
names through `nn_module_stack`. Models fx cannot trace get one node per leaf module, in order."""

from __future__ import annotations

import numpy as np

from . import Graph, Node, macs


def _shape(value):
    if hasattr(value, "shape"):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (tuple, list)) and value and hasattr(value[0], "shape"):
        return tuple(int(d) for d in value[0].shape)
    return None


def _module_macs(module, out_shape) -> int:
    from torch import nn

    if out_shape is None:
        return 0
    out = int(np.prod(out_shape))
    if isinstance(module, nn.modules.conv._ConvNd):  # transposed too: in_channels, not the weight's dim 1
        return macs.dense(out, module.in_channels // module.groups * int(np.prod(module.kernel_size)))
    if isinstance(module, nn.Linear):
        return macs.dense(out, module.in_features)
    if isinstance(module, nn.MultiheadAttention):
        return macs.attention(out, module.embed_dim)
    return 0


def _weights(params) -> tuple[int, float, str]:
    count = sum(p.numel() for p in params)
    if not count:
        return 0, 0.0, "float32"
    zeros = sum(int((p == 0).sum()) for p in params)
    return count, zeros / count, str(params[0].dtype).replace("torch.", "")


def graph_from_torch(module, input_shape=None, input_dtype: str = "float32", examples=None) -> Graph:
    """`examples`: a tuple of tensors for a model with several inputs (else one is made from
    input_shape)."""
    import torch

    example = examples
    if example is None and input_shape is not None:
        example = torch.zeros(input_shape, dtype=getattr(torch, input_dtype, torch.float32))

    if isinstance(module, torch.fx.GraphModule):
        return _from_fx(module, module.graph, example, exported=True)
    if isinstance(module, torch.jit.ScriptModule):
        # fx cannot trace TorchScript; its own graph keeps module names and the data flow
        from .from_script import graph_from_script

        try:
            if isinstance(example, tuple):  # the walk feeds one input: a one-input tuple is that input
                example = example[0] if len(example) == 1 else None
            return graph_from_script(module, example)
        except Exception as exc:  # noqa: BLE001 - an unusual TorchScript graph: fall back to the layer list
            return _from_leaves(module, example, f"could not read this TorchScript graph ({type(exc).__name__}); "
                                "layers are shown in definition order and edges are approximate")
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - dynamic control flow, TorchScript, ...
        return _from_leaves(module, example, f"torch.fx could not trace this model ({type(exc).__name__}); "
                            "layers are shown in definition order and edges are approximate")
    return _from_fx(module, traced.graph, example, exported=False, traced=traced)


def _propagate(traced, example):
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    if example is None:
        return False
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(*(example if isinstance(example, tuple) else (example,)))
        return True
    except Exception:  # noqa: BLE001 - shapes are a nicety
        return False


def _export_name(node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return path.replace("L['self'].", "").replace("L__self___", "") or None
    return None


def _from_fx(module, graph, example, exported: bool, traced=None) -> Graph:

    if traced is not None:
        _propagate(traced, example)
    elif example is not None and exported:
        _propagate(module, example)
    modules = dict(module.named_modules())
    params = dict(module.named_parameters())
    nodes: list[Node] = []
    name_of: dict[str, str] = {}
    inputs, outputs = [], []
    used = set()
    for n in graph.nodes:
        preds = [name_of[a.name] for a in n.all_input_nodes if a.name in name_of]
        if n.op == "placeholder":
            name_of[n.name] = n.name
            inputs.append(n.name)
            nodes.append(Node(n.name, "input", [], output_shape=_shape(n.meta.get("tensor_meta"))))
            continue
        if n.op == "output":
            outputs.extend(preds)
            continue
        if n.op == "get_attr":
            # a weight used by a function (torch.export graphs): fold into its consumer
            name_of[n.name] = None
            continue
        if n.op == "call_module" and n.target.startswith("_guards"):
            # torch.export's input guard check (`_guards_fn`), not a layer of the user's model
            name_of[n.name] = None
            continue
        shape = _shape(n.meta.get("tensor_meta")) if "tensor_meta" in n.meta else _shape(n.meta.get("val"))
        if n.op == "call_module":
            sub = modules[n.target]
            # a traced leaf owns its children's weights too (MultiheadAttention's out_proj)
            own = list(sub.parameters())
            count, sparsity, dtype = _weights(own)
            name = n.target
            node = Node(name, type(sub).__name__, preds, count,
                        [f"{n.target}.{p}" for p, _ in sub.named_parameters()], shape, dtype, sparsity,
                        _module_macs(sub, shape))
        else:
            op = getattr(n.target, "__name__", str(n.target)).replace("aten.", "").split(".")[0]
            attrs = [a for a in n.all_input_nodes if a.op == "get_attr"]
            # weights only: buffers (batch-norm running stats) are not parameters
            attrs = [a for a in attrs if a.target in params and params[a.target].is_floating_point()]
            tensors = [params[a.target] for a in attrs]
            count, sparsity, dtype = _weights(tensors)
            name = (_export_name(n) if exported else None) or n.name
            if name in used:
                name = f"{name}.{n.name}" if exported else n.name
            work = 0
            if op in ("conv2d", "conv1d", "linear", "addmm", "matmul", "mm") and tensors and shape:
                work = macs.conv(int(np.prod(shape)), tensors[0].shape)  # [out, in(, k...)]: a Linear too
            node = Node(name, op, preds, count, [a.target for a in attrs], shape, dtype, sparsity, work)
        used.add(node.name)
        name_of[n.name] = node.name
        nodes.append(node)
    for node in nodes:
        node.inputs = [p for p in node.inputs if p]
    return Graph(nodes, inputs, outputs)


def _from_leaves(module, example, note: str) -> Graph:
    """One node per leaf module with a weight (or any leaf), chained in definition order; shapes
    and MACs from forward hooks when the input shape is known."""
    import torch

    # leaves, and any module holding weights of its own (MultiheadAttention's in_proj, a ViT's
    # position embedding on the root module)
    leaves = [(n or "(root)", m) for n, m in module.named_modules()
              if (n and not list(m.children())) or list(m.parameters(recurse=False))]
    shapes: dict[str, tuple] = {}
    if example is not None and not isinstance(module, torch.jit.ScriptModule):
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, _shape(o))) for n, m in leaves]
        try:
            with torch.no_grad():
                module(*(example if isinstance(example, tuple) else (example,)))
        except Exception:  # noqa: BLE001
            pass
        finally:
            for h in hooks:
                h.remove()
    nodes, prev = [Node("input", "input")], "input"
    for name, m in leaves:
        own = list(m.parameters(recurse=False))
        count, sparsity, dtype = _weights(own)
        op = getattr(m, "original_name", type(m).__name__)
        prefix = "" if name == "(root)" else f"{name}."
        nodes.append(Node(name, op, [prev], count, [f"{prefix}{p}" for p, _ in m.named_parameters(recurse=False)],
                          shapes.get(name), dtype, sparsity, _module_macs(m, shapes.get(name))))
        prev = name
    return Graph(nodes, ["input"], [prev], note=note)
