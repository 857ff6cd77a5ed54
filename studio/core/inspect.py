"""What `studio inspect` prints: the model's format, size and layers, as plain data."""

from __future__ import annotations

from .graph import build_graph
from .model import ONNX, Model
from .stats import parameter_count


def free_dims(model: Model) -> dict[str, list[int]]:
    """{input: positions of its dynamic dims beyond the batch that nothing sized} (--input sizes them)."""
    return {s.name: s.missing_dims() for s in model.io.inputs if s.missing_dims()}


def size_note(model: Model) -> str:
    """One line when MACs and shapes were counted with dynamic dims taken as 1 (an ONNX graph's
    free dims, unsized): which dims, the shape that means, and the --input that gives the size."""
    free = free_dims(model)
    if not free or model.framework != ONNX:
        return ""
    from .signature import _placeholder

    parts, hints = [], []
    for spec in model.io.inputs:
        if spec.name not in free:
            continue
        at = [d if isinstance(d, int) else 1 for d in spec.shape]
        dims = ", ".join(str(i) for i in free[spec.name])
        parts.append(f"'{spec.name}' as {at} (dynamic dim{'s' if len(free[spec.name]) > 1 else ''} {dims} taken as 1)")
        hint = ",".join(str(d) if isinstance(d, int) else "1" if i == 0 else _placeholder(d, i)
                        for i, d in enumerate(spec.shape))
        hints.append(f"--input {spec.name}:{hint}")
    return (f"MACs and output shapes are counted with {', '.join(parts)}: give the size you run at "
            f"with {' '.join(hints)} (numbers)")


def summary(model: Model) -> dict:
    from .stats import macs_counted

    graph = build_graph(model)
    params, nonzeros = parameter_count(model)
    macs, counted = macs_counted(model)
    return {
        "name": model.name,
        "format": model.format,
        "framework": model.framework,
        "source": str(model.source) if model.source else None,
        "input_shape": list(model.input_shape) if model.input_shape else None,
        "signature": model.io.as_dict(),  # every input and output: names, dtypes, dynamic dims
        "parameters": params,
        "nonzeros": nonzeros,
        "macs": macs,
        # "" when every input dim is known and there is no If; else how the MACs were counted
        "macs_note": "; ".join(n for n in (size_note(model), counted) if n),
        "note": graph.note,
        "nodes": [
            {"name": n.name, "op": n.op, "parameters": n.parameters, "output_shape": list(n.output_shape) if n.output_shape else None,
             "dtype": n.dtype, "sparsity": round(n.sparsity, 4), "macs": n.macs, "inputs": n.inputs}
            for n in graph.nodes
        ],
    }
