"""TorchScript -> Graph. torch.fx cannot trace a ScriptModule, but its own graph keeps the module
hierarchy: `prim::GetAttr` chains name the submodules and `prim::CallMethod` calls them. We walk
that graph, recursing into containers, so nodes carry the same names as the state_dict keys
(`layer1.0.conv1`) and edges are the real data flow. With an example input, the walk also runs
each step (leaf modules are callable ScriptModules; aten ops go through `torch.ops.aten`) to record
output shapes and MACs; if a step cannot run, shapes stop there and the graph is still built."""

from __future__ import annotations

from dataclasses import dataclass, field


from . import Graph, Node, macs

# values that only bundle or unbundle others: no node of their own, data flows through
PASSTHROUGH = {"prim::ListConstruct", "prim::TupleConstruct", "prim::ListUnpack", "prim::TupleUnpack",
               "prim::TupleIndex", "prim::NumToTensor", "aten::Int", "aten::size", "prim::dtype", "prim::device",
               "aten::ScalarImplicit", "aten::detach", "aten::contiguous", "aten::dropout", "aten::feature_dropout"}
CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}
_MISSING = object()  # a value the walk could not compute


@dataclass
class _Val:
    producers: list[str] = field(default_factory=list)  # graph nodes this value comes from
    value: object = _MISSING
    module: object = None  # a submodule reference (from prim::GetAttr)
    path: str = ""
    param: str = ""  # a weight's state_dict key, when the value is one


def _qualified(module) -> str:
    try:
        return module._c._type().qualified_name()
    except Exception:  # noqa: BLE001
        return ""


def _is_leaf(module) -> bool:
    """A layer the user thinks of as one node: torch.nn's own modules (Conv2d, Linear,
    MultiheadAttention, which has an out_proj child), or any module without children."""
    name = getattr(module, "original_name", type(module).__name__)
    if name in CONTAINERS:
        return False
    if _qualified(module).startswith("__torch__.torch.nn.modules."):
        return True
    return not any(True for _ in module.children())


def _leaf_macs(module, out) -> int:
    import torch

    if not isinstance(out, torch.Tensor):
        return 0
    params = dict(module.named_parameters())
    numel = out.numel()
    name = getattr(module, "original_name", "")
    weight = params.get("weight")
    if name.startswith("Conv") and "Transpose" not in name and weight is not None and weight.dim() >= 3:
        return macs.conv(numel, weight.shape)
    if name.endswith("Linear") and weight is not None and weight.dim() == 2:
        return macs.dense(numel, weight.shape[1])
    if name == "MultiheadAttention" and "in_proj_weight" in params:
        return macs.attention(numel, int(params["in_proj_weight"].shape[1]))
    return 0


def _op_macs(op: str, args: list, out) -> int:
    import torch

    if not isinstance(out, torch.Tensor):
        return 0
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if op in ("_convolution", "conv1d", "conv2d", "conv3d", "convolution") and len(tensors) >= 2:
        return macs.conv(out.numel(), tensors[1].shape)
    if op == "linear" and len(tensors) >= 2:
        return macs.dense(out.numel(), tensors[1].shape[-1])
    if op in ("matmul", "mm", "bmm") and tensors:
        return macs.dense(out.numel(), tensors[0].shape[-1])
    if op in ("addmm", "baddbmm") and len(tensors) >= 2:
        return macs.dense(out.numel(), tensors[1].shape[-1])
    return 0


class _Walker:
    def __init__(self, run: bool):
        self.nodes: list[Node] = []
        self.used: set[str] = set()
        self.run = run  # compute values (shapes) as we go

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def walk(self, graph, module, path: str, args: list[_Val]) -> list[_Val]:
        import torch

        env: dict[int, _Val] = {}
        inputs = list(graph.inputs())
        env[inputs[0].unique()] = _Val(module=module, path=path)
        for v, a in zip(inputs[1:], args):
            env[v.unique()] = a

        def get(v) -> _Val:
            return env.get(v.unique()) or _Val()

        for node in graph.nodes():
            kind = node.kind()
            ins = [get(v) for v in node.inputs()]
            outs = list(node.outputs())
            producers = list(dict.fromkeys(p for a in ins for p in a.producers))
            if kind == "prim::Constant":
                try:
                    value = node.output().toIValue()
                except Exception:  # noqa: BLE001
                    value = _MISSING
                env[outs[0].unique()] = _Val(value=value)
            elif kind == "prim::GetAttr" and ins and ins[0].module is not None:
                attr = node.s("name")
                owner = ins[0].module
                sub = getattr(owner, attr, _MISSING)
                sub_path = f"{ins[0].path}.{attr}" if ins[0].path else attr
                if isinstance(sub, torch.jit.ScriptModule):
                    env[outs[0].unique()] = _Val(module=sub, path=sub_path)
                else:
                    is_param = isinstance(sub, torch.nn.Parameter) or attr in dict(owner.named_parameters(recurse=False))
                    env[outs[0].unique()] = _Val(value=sub, param=sub_path if is_param else "")
            elif kind == "prim::CallMethod" and ins and ins[0].module is not None:
                results = self.call(ins[0], node.s("name"), ins[1:], producers)
                for v, r in zip(outs, results):
                    env[v.unique()] = r
            elif kind in PASSTHROUGH or not any(o.type().kind() == "TensorType" for o in outs):
                self.passthrough(kind, node, ins, outs, producers, env)
            else:
                env.update(self.function(kind, node, ins, outs, producers, path))
        return [get(v) for v in graph.return_node().inputs()]

    def call(self, target: _Val, method: str, args: list[_Val], producers: list[str]) -> list[_Val]:
        sub = target.module
        if not _is_leaf(sub):
            # through the C++ method: an in-memory traced module's .forward is a Python wrapper
            return self.walk(sub._c._get_method(method).graph, sub, target.path, args)
        out = _MISSING
        values = [a.value for a in args]
        if self.run and all(v is not _MISSING for v in values):
            try:
                out = sub._c._get_method(method)(*values)  # (traced submodules refuse a Python call)
            except Exception:  # noqa: BLE001 - shapes are a nicety
                out = _MISSING
        params = list(sub.named_parameters())
        count = sum(p.numel() for _, p in params)
        zeros = sum(int((p == 0).sum()) for _, p in params)
        name = self.unique(target.path or "model")
        shape = _first_shape(out)
        self.nodes.append(Node(
            name, getattr(sub, "original_name", type(sub).__name__), producers, count,
            [f"{target.path}.{n}" if target.path else n for n, _ in params], shape,
            str(params[0][1].dtype).replace("torch.", "") if params else "float32",
            zeros / count if count else 0.0, _leaf_macs(sub, out) if out is not _MISSING else 0,
        ))
        return [_Val([name], out)]

    def passthrough(self, kind, node, ins, outs, producers, env):
        import torch

        values = [a.value for a in ins]
        known = all(v is not _MISSING for v in values)
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            seq = values[0] if known else None
            for i, v in enumerate(outs):
                env[v.unique()] = _Val(producers, seq[i] if seq is not None and i < len(seq) else _MISSING)
            return
        value = _MISSING
        if known and self.run:
            try:
                if kind == "prim::ListConstruct":
                    value = list(values)
                elif kind == "prim::TupleConstruct":
                    value = tuple(values)
                elif kind == "prim::TupleIndex":
                    value = values[0][values[1]]
                elif kind == "prim::NumToTensor":  # a traced size (x.shape[1]) as a 0-d tensor
                    value = torch.scalar_tensor(values[0], dtype=torch.int64 if isinstance(values[0], int) else None)
                elif kind == "prim::dtype":
                    value = values[0].dtype
                elif kind == "prim::device":
                    value = values[0].device
                elif kind.startswith("aten::"):
                    value = _aten(node, values)
            except Exception:  # noqa: BLE001
                value = _MISSING
        for v in outs:
            env[v.unique()] = _Val(producers, value if len(outs) == 1 else _MISSING)

    def function(self, kind, node, ins, outs, producers, path):
        op = kind.split("::", 1)[1]
        values = [a.value for a in ins]
        out = _MISSING
        if self.run and kind.startswith("aten::") and all(v is not _MISSING for v in values):
            try:
                out = _aten(node, values)
            except Exception:  # noqa: BLE001
                out = _MISSING
        weights = [a for a in ins if a.param]
        count = sum(int(a.value.numel()) for a in weights)
        zeros = sum(int((a.value == 0).sum()) for a in weights)
        name = self.unique(f"{path}.{op.rstrip('_')}" if path else op.rstrip("_"))
        self.nodes.append(Node(
            name, op.rstrip("_").lstrip("_"), producers, count, [a.param for a in weights], _first_shape(out),
            str(weights[0].value.dtype).replace("torch.", "") if weights else "float32",
            zeros / count if count else 0.0, _op_macs(op, values, out) if out is not _MISSING else 0,
        ))
        if len(outs) == 1:
            return {outs[0].unique(): _Val([name], out)}
        seq = out if isinstance(out, (tuple, list)) else None
        return {v.unique(): _Val([name], seq[i] if seq is not None else _MISSING) for i, v in enumerate(outs)}


def _aten(node, values: list):
    """Run one aten node on concrete values, through the overload its schema names (some
    arguments, like add's alpha, are keyword-only in Python)."""
    import torch

    packet = getattr(torch.ops.aten, node.kind().split("::", 1)[1])
    schema = node.schema()
    if schema == "(no schema)":
        return packet(*values)
    parsed = torch._C.parse_schema(schema)
    args, kwargs = [], {}
    for arg, value in zip(parsed.arguments, values):
        if arg.kwarg_only:
            kwargs[arg.name] = value
        else:
            args.append(value)
    return getattr(packet, parsed.overload_name or "default")(*args, **kwargs)


def _first_shape(value):
    import torch

    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(d) for d in value[0].shape)
    return None


def graph_from_script(module, example=None) -> Graph:
    """Graph of a torch.jit ScriptModule (traced or scripted). Control flow (prim::If, prim::Loop)
    shows as one node; shapes stop there."""
    import torch

    walker = _Walker(run=example is not None)
    walker.nodes.append(Node("input", "input", [], output_shape=tuple(example.shape) if example is not None else None))
    walker.used.add("input")
    with torch.no_grad():
        outs = walker.walk(module.graph, module, "", [_Val(["input"], example if example is not None else _MISSING)])
    outputs = list(dict.fromkeys(p for o in outs for p in o.producers))
    return Graph(walker.nodes, ["input"], outputs)
