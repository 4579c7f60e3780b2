"""Graph walks shared by the INT8 and FP16 converters: topological order, ancestors and descendants."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from powersam.deploy.onnx_graph import ancestors, descendants, sort_topologically, upstream_to


def chain_graph(order: list[int]) -> onnx.GraphProto:
    """x → a → b → c → y, plus d reading x and c; nodes listed in ``order``."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a_out"], name="a"),
        helper.make_node("Conv", ["a_out", "w"], ["b_out"], name="b"),
        helper.make_node("Relu", ["b_out"], ["c_out"], name="c"),
        helper.make_node("Add", ["x", "c_out"], ["y"], name="d"),
    ]
    value = helper.make_tensor_value_info
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    return helper.make_graph([nodes[i] for i in order], "g", [value("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                             [value("y", TensorProto.FLOAT, [1, 1, 2, 2])], [weight])


def test_sort_topologically_restores_a_valid_order():
    graph = chain_graph([3, 2, 0, 1])
    sort_topologically(graph)
    assert [n.name for n in graph.node] == ["a", "b", "c", "d"]
    onnx.checker.check_model(helper.make_model(graph))

    ordered = chain_graph([0, 1, 2, 3])
    sort_topologically(ordered)
    assert [n.name for n in ordered.node] == ["a", "b", "c", "d"], "a sorted graph is left as it is"


def test_sort_topologically_reports_cycles_and_dangling_inputs():
    graph = chain_graph([0, 1, 2, 3])
    graph.node[0].input[0] = "c_out"  # a reads c, which reads a
    with pytest.raises(ValueError, match="cycle"):
        sort_topologically(graph)
    graph = chain_graph([0, 1, 2, 3])
    graph.node[3].input[1] = "nowhere"
    with pytest.raises(ValueError, match="'nowhere'"):
        sort_topologically(graph)


def test_walks():
    nodes = list(chain_graph([0, 1, 2, 3]).node)
    assert descendants(nodes, [nodes[1]]) == {"b", "c", "d"}
    assert ancestors(nodes, ["c_out"]) == {"a", "b", "c"}
    passed, stops = upstream_to(nodes, [nodes[3]], ("Conv",))
    assert passed == {"c"} and stops == {"b"}
