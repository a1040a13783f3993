"""Issue 13 §1: MAC and latency targets are taken at the run's representative shapes, the
same ones the summary states, also when calibration data of another shape is given."""
from __future__ import annotations

import numpy as np
from onnx import helper

import graphprune as gp
from graphprune.allocation import cost as cost_mod
from graphprune.allocation.driver import select
from graphprune.input_shapes import InputShapes
from tests.helpers import make_model, w


class _Calib:
    def first(self):
        return {"x": np.zeros((2, 3, 16, 24), np.float32)}


def test_mac_target_is_computed_at_the_resolved_shapes(monkeypatch):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", ["N", 8, "H", "W"])],
                       {"w1": w(8, 3, 3, 3, seed=1), "w2": w(8, 8, 3, 3, seed=2)})
    model = gp.load(proto.SerializeToString())
    dg = gp.analyze(model)
    seen = []
    real = cost_mod.mac_shapes

    def spy(m, feeds):
        seen.append({k: v.shape for k, v in feeds.items()})
        return real(m, feeds)

    monkeypatch.setattr(cost_mod, "mac_shapes", spy)
    shapes = InputShapes({"x": (1, 3, 40, 56)}, {"x": "--input-shape"})
    _, sel, _ = select(model, dg, {"target_macs": 0.7}, _Calib(), shapes)
    assert seen == [{"x": (1, 3, 40, 56)}] and sel
