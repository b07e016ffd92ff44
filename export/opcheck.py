"""Check that a level graph uses only operators TensorRT's ONNX parser converts natively."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["tensorrt_supported_ops", "graph_op_types", "unsupported_ops", "UnsupportedOperatorError"]

_OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.json")


class UnsupportedOperatorError(ValueError):
    """A level graph holds operators TensorRT cannot build without plugins."""


@lru_cache(maxsize=1)
def tensorrt_supported_ops() -> frozenset:
    data = json.loads(_OPS_FILE.read_text())
    return frozenset(data["supported"]) | frozenset(data["additions"])


def graph_op_types(model) -> set[tuple[str, str]]:
    """``(domain, op_type)`` of every node in `model` (an onnx.ModelProto), subgraphs included."""
    import onnx

    found = set()

    def visit(graph):
        for node in graph.node:
            found.add((node.domain or "", node.op_type))
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for sub in attribute.graphs:
                        visit(sub)

    visit(model.graph)
    # Local functions (the dynamo exporter emits some) are inlined by TensorRT only if their
    # bodies are supported, so check those too.
    for function in model.functions:
        for node in function.node:
            found.add((node.domain or "", node.op_type))
    return found


def unsupported_ops(model_or_path) -> list[str]:
    """Sorted names of operators in the graph that TensorRT does not support natively."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    function_names = {(f.domain, f.name) for f in model.functions}
    supported = tensorrt_supported_ops()
    bad = set()
    for domain, op_type in graph_op_types(model):
        if (domain, op_type) in function_names:
            continue
        if domain not in ("", "ai.onnx") or op_type not in supported:
            bad.add(f"{domain}::{op_type}" if domain else op_type)
    return sorted(bad)
