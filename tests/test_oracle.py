"""The oracle's judgement of saturating outputs: rounding-sized logit differences that a
Softmax amplifies on near-tied huge logits pass (judged on the logits); a real logit
difference fails."""
import numpy as np
from onnx import helper

import graphprune as gp
from graphprune import oracle
from graphprune.plan import Plan
from helpers import make_model

FEEDS = {"x": np.full((1, 8), 1000, np.float32)}


def _classifier(w: np.ndarray):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])]
    return gp.load(make_model(nodes, [("x", [1, 8])], [("p", [1, 4])], {"w": w}).SerializeToString())


def _pair(rel_change: float):
    """Logits 0 and 1 are 3.0e4 and 0.3 apart; the second model moves logit 0 by rel_change."""
    w = np.zeros((8, 4), np.float32)
    w[:, 0] = w[:, 1] = 3.75
    w[0, 1] += 3e-4
    w[:, 2] = -3.75
    other = w.copy()
    other[:, 0] *= np.float32(1 - rel_change)
    return _classifier(w), _classifier(other)


def test_rounding_sized_logit_change_passes_on_the_logits():
    ref, got = _pair(2e-7)   # one or two float32 ulps of the weights
    probs = [oracle.session(m).run(None, FEEDS)[0] for m in (ref, got)]
    assert not oracle.compare_outputs([probs[0]], [probs[1]], ["p"])[0].ok   # the probabilities moved
    res = oracle.check(ref, got, Plan([], []), inputs=[FEEDS], n_random=0)
    (d,) = res.diffs
    assert res.ok and d.judged_on == "logits" and "judged on their inputs" in res.summary()


def test_real_logit_change_fails():
    res = oracle.check(*_pair(1e-3), Plan([], []), inputs=[FEEDS], n_random=0)
    assert not res.ok and res.diffs[0].judged_on is None
