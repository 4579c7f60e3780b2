"""Walks over an exported graph's nodes, shared by the INT8 quantiser and the FP16 converter.

Both need the same structural facts about an integrated graph, found from its wiring rather than node names (which
change with the exporter): where ``NonMaxSuppression`` is, which convolutions are the detection predictors (the
last convolutions before it), which nodes decode their outputs into boxes and scores, and which nodes carry the
selected detections to the ``boxes`` / ``scores`` / ``labels`` outputs. Only ``onnx`` protobufs are touched.
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Iterable, Sequence

import onnx

__all__ = ["DETECTION_OUTPUTS", "ancestors", "descendants", "detection_path", "nms_nodes", "sort_topologically",
           "upstream_to"]

Nodes = Sequence[onnx.NodeProto]
# The integrated graph's outputs that describe detections (its others are mask logits and the image embedding).
DETECTION_OUTPUTS = ("boxes", "scores", "labels")


def _links(nodes: Nodes) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """``(producer of each tensor, consumers of each tensor)``."""
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    return producer, consumers


def nms_nodes(nodes: Nodes) -> list[onnx.NodeProto]:
    """The ``NonMaxSuppression`` nodes; ValueError if there are none (not a PowerSAM integrated export)."""
    selectors = [node for node in nodes if node.op_type == "NonMaxSuppression"]
    if not selectors:
        raise ValueError("the integrated graph has no NonMaxSuppression node; is it a PowerSAM integrated export?")
    return selectors


def descendants(nodes: Nodes, seeds: Iterable[onnx.NodeProto]) -> set[str]:
    """Names of ``seeds`` and of every node fed, directly or not, by their outputs."""
    _, consumers = _links(nodes)
    found: set[str] = set()
    queue = deque(seeds)
    while queue:
        node = queue.popleft()
        if node.name in found:
            continue
        found.add(node.name)
        queue.extend(c for out in node.output for c in consumers.get(out, []))
    return found


def ancestors(nodes: Nodes, tensor_names: Iterable[str]) -> set[str]:
    """Names of every node that the tensors ``tensor_names`` depend on."""
    producer, _ = _links(nodes)
    found: set[str] = set()
    queue = deque(producer[name] for name in tensor_names if name in producer)
    while queue:
        node = queue.popleft()
        if node.name in found:
            continue
        found.add(node.name)
        queue.extend(producer[name] for name in node.input if name in producer)
    return found


def upstream_to(nodes: Nodes, seeds: Iterable[onnx.NodeProto], stop_ops: Sequence[str]) -> tuple[set[str], set[str]]:
    """Walk up from ``seeds``' inputs, stopping at the first node of a type in ``stop_ops`` on each path.

    Returns ``(passed, stops)``: names of the nodes walked through (``seeds`` excluded) and of the stopping nodes.
    """
    producer, _ = _links(nodes)
    passed: set[str] = set()
    stops: set[str] = set()
    queue = deque(producer[name] for seed in seeds for name in seed.input if name in producer)
    while queue:
        node = queue.popleft()
        if node.name in passed or node.name in stops:
            continue
        if node.op_type in stop_ops:
            stops.add(node.name)
            continue
        passed.add(node.name)
        queue.extend(producer[name] for name in node.input if name in producer)
    return passed, stops


def detection_path(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """An integrated graph's detection nodes: ``(predictors, bookkeeping)``.

    ``predictors``: the class / box / objectness convolutions (the last convolutions before NMS). ``bookkeeping``:
    everything from their outputs to NMS (decoding, score products, thresholds), NMS itself, and the nodes after it
    that lead to the ``boxes`` / ``scores`` / ``labels`` outputs. The prompt encoder and mask decoder, which also
    follow NMS, are not part of it.
    """
    nodes = list(model.graph.node)
    selectors = nms_nodes(nodes)
    decode, predictors = upstream_to(nodes, selectors, ("Conv",))
    outputs = [o.name for o in model.graph.output if o.name in DETECTION_OUTPUTS]
    selection = descendants(nodes, selectors) & ancestors(nodes, outputs)
    return predictors, decode | selection | {node.name for node in selectors}


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph``'s nodes in place so each comes after the producers of its inputs (as ONNX requires and
    TensorRT's parser expects); among nodes that are ready, the original order is kept.

    Raises ValueError if the nodes form a cycle or read a tensor that nothing provides.
    """
    nodes = list(graph.node)
    available = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    producer_of = {name: i for i, node in enumerate(nodes) for name in node.output}
    waiting_on = []
    for node in nodes:
        unknown = [x for x in node.input if x not in available and x not in producer_of]
        if unknown:
            raise ValueError(f"node {node.name!r} reads {unknown[0]!r}, which no node, input or initializer provides")
        waiting_on.append({producer_of[x] for x in node.input if x not in available})
    dependants: dict[int, list[int]] = {}
    for i, producers in enumerate(waiting_on):
        for j in producers:
            dependants.setdefault(j, []).append(i)
    ready = [i for i, producers in enumerate(waiting_on) if not producers]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in dependants.get(i, []):
            waiting_on[k].discard(i)
            if not waiting_on[k]:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        raise ValueError(f"the graph's nodes form a cycle ({len(nodes) - len(order)} nodes never become ready)")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
