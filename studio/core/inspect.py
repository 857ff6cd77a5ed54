"""What `studio inspect` prints: the model's format, size and layers, as plain data."""

from __future__ import annotations

from .graph import build_graph
from .model import Model
from .stats import parameter_count


def summary(model: Model) -> dict:
    graph = build_graph(model)
    params, nonzeros = parameter_count(model)
    return {
        "name": model.name,
        "format": model.format,
        "framework": model.framework,
        "source": str(model.source) if model.source else None,
        "input_shape": list(model.input_shape) if model.input_shape else None,
        "signature": model.io.as_dict(),  # every input and output: names, dtypes, dynamic dims
        "parameters": params,
        "nonzeros": nonzeros,
        "macs": graph.total_macs,
        "note": graph.note,
        "nodes": [
            {"name": n.name, "op": n.op, "parameters": n.parameters, "output_shape": list(n.output_shape) if n.output_shape else None,
             "dtype": n.dtype, "sparsity": round(n.sparsity, 4), "macs": n.macs, "inputs": n.inputs}
            for n in graph.nodes
        ],
    }
