"""lsq-reconstruct's dense-row cache (set by the candidate search on its fit calibration):
a run that reads the dense model's rows from the cache writes exactly the weights a run
without the cache writes."""
from __future__ import annotations

import numpy as np

import graphprune as gp
from graphprune.ir.constants import const_array
from graphprune.passes import PassContext, PassManager
from graphprune.passes.reconstruction.lsq import DENSE_ROWS, DenseRows
from graphprune.runtime.calibration import Calibration
from test_repair import calib_for, cnn_proto

LSQ = "lsq-reconstruct{layers=all,max_rows=20}"  # 20 of 36 positions per batch: rows are sampled


def _repaired(proto, calib):
    data = proto.SerializeToString()
    model = gp.load(data)
    ctx = PassContext()
    ctx.results["calibration"] = calib
    dg = gp.analyze(gp.load(data))
    ctx.results["selection"] = {dg.prunable_groups[0].id: [1, 4, 6]}
    PassManager.parse("prune-channels").run(model, ctx)
    PassManager.parse(LSQ).run(model, ctx)
    assert not ctx.results["repair"][0]["reverted"], ctx.results["repair"]
    return {n: const_array(v).copy() for n, v in model.graph.initializers.items()}


def _with_cache(batches):
    calib = Calibration.from_batches(batches)
    calib.cache[DENSE_ROWS] = DenseRows()
    return calib


def test_cached_rows_give_the_same_weights():
    proto = cnn_proto(seed=4)
    batches = list(calib_for((4, 4, 6, 6), n=4, seed=5))
    plain = _repaired(proto, Calibration.from_batches(batches))
    calib = _with_cache(batches)
    first = _repaired(proto, calib)
    cache = calib.cache[DENSE_ROWS]
    assert cache.hits == 0 and cache.rows
    second = _repaired(proto, calib)  # another run on the same model and batches: reads them
    assert cache.hits == len(cache.rows)
    for got in (first, second):
        assert got.keys() == plain.keys()
        for name in plain:
            np.testing.assert_array_equal(got[name], plain[name], err_msg=name)
    # the repair did change weights (so equality above is not about untouched tensors)
    dense = {n: const_array(v) for n, v in gp.load(proto.SerializeToString()).graph.initializers.items()}
    assert any(plain[n].shape == dense[n].shape and not np.array_equal(plain[n], dense[n]) for n in dense)


def test_rows_of_another_sample_are_not_reused():
    cache = DenseRows()
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    cache.put(("y", 0, 4, 0), np.array([0, 2, 5, 7]), rows)
    assert cache.get(("y", 0, 4, 0), np.array([0, 2, 5, 7])) is rows
    assert cache.get(("y", 0, 4, 0), np.array([0, 2, 5, 8])) is None
    assert cache.get(("y", 0, 4, 0), None) is None
    assert cache.get(("y", 1, 4, 0), np.array([0, 2, 5, 7])) is None
    assert cache.hits == 1


def test_the_cache_stops_growing_at_its_limit():
    cache = DenseRows(limit=100)
    cache.put(("a",), None, np.zeros(20, np.float32))  # 80 bytes
    cache.put(("b",), None, np.zeros(20, np.float32))  # would pass 100: not kept
    assert list(cache.rows) == [("a",)] and cache.nbytes == 80
