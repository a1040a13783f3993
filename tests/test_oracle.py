"""The oracle's judgement of saturating outputs: rounding-sized logit differences that a
Softmax amplifies on near-tied huge logits pass (judged on the logits); a real logit
difference fails."""
import numpy as np
import pytest
from onnx import helper

import graphprune as gp
from graphprune.plan import Plan
from graphprune.runtime import oracle, ort
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
    probs = [ort.session(m).run(None, FEEDS)[0] for m in (ref, got)]
    assert not oracle.compare_outputs([probs[0]], [probs[1]], ["p"])[0].ok   # the probabilities moved
    res = oracle.check(ref, got, Plan([], []), inputs=[FEEDS], n_random=0)
    (d,) = res.diffs
    assert res.ok and d.judged_on == "logits" and "judged on their inputs" in res.summary()


def test_real_logit_change_fails():
    res = oracle.check(*_pair(1e-3), Plan([], []), inputs=[FEEDS], n_random=0)
    assert not res.ok and res.diffs[0].judged_on is None


# ---- the oracle never passes what it did not really compare (issue 12, section 2) ------------

def _conv_sigmoid(w1: np.ndarray, bias: float = -40.0):
    """x:[N,3,H,W] (dynamic) -> Conv -> Relu -> 1x1 Conv with bias `bias` -> Sigmoid: at random
    inputs the probability map saturates at ~0 (below the oracle's absolute floor)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    inits = {"w1": w1, "w2": np.full((1, 4, 1, 1), 0.5, np.float32), "b2": np.array([bias], np.float32)}
    return gp.load(make_model(nodes, [("x", ["N", 3, "H", "W"])], [("prob", ["N", 1, "H", "W"])], inits)
                   .SerializeToString(), fold=False)


def test_saturated_sigmoid_is_judged_on_its_logits():
    """det's case: the Sigmoid output is ~1e-17 everywhere for both models, yet their logits
    differ: the oracle must compare the logits and fail."""
    w1 = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    other = w1.copy()
    other[:2] = 0  # "pruned" two channels the plan does not list
    res = oracle.check(_conv_sigmoid(w1), _conv_sigmoid(other), Plan([], []), n_random=2)
    assert not res.ok, res.summary()
    assert any(d.judged_on == "logit" and not d.ok for d in res.diffs)
    # and the same model against itself passes, judged on its logits
    same = oracle.check(_conv_sigmoid(w1), _conv_sigmoid(w1), Plan([], []), n_random=2)
    assert same.ok, same.summary()


def _tiny_output_model(scale: float):
    """A Conv whose outputs are all below the oracle's absolute floor (1e-6) at scale 1e-9."""
    w = (scale * np.random.default_rng(1).standard_normal((2, 3, 1, 1))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    return gp.load(make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])], {"w": w})
                   .SerializeToString(), fold=False)


def test_vacuous_comparison_is_refused():
    """Reference outputs all below the floor: nothing was compared, so no PASS."""
    a, b = _tiny_output_model(1e-9), _tiny_output_model(3e-9)
    res = oracle.check(a, b, Plan([], []), n_random=2)
    assert not res.ok
    assert "below" in res.summary() and "--input-shape" in res.summary()


def test_zero_input_sets_never_pass():
    a = _tiny_output_model(1.0)
    res = oracle.check(a, a, Plan([], []), n_random=0)
    assert not res.ok and res.runs == 0


def test_random_inputs_are_streamed(monkeypatch):
    """A failing pair with 10**8 random sets: one set is made, compared, and the verdict
    returned; the sets are never all built up front."""
    made = []
    real = ort.random_inputs

    def counting(*args, **kwargs):
        made.append(1)
        if len(made) > 3:
            raise RuntimeError("built more random input sets than were compared")
        return real(*args, **kwargs)

    monkeypatch.setattr(oracle, "random_inputs", counting)  # where the oracle looks it up
    a, b = _tiny_output_model(1.0), _tiny_output_model(2.0)
    res = oracle.check(a, b, Plan([], []), n_random=10**8)
    assert not res.ok and res.runs == 1


def test_default_shape_of_a_dynamic_image_input_is_realistic():
    """Not 32x32 for a net that divides by 32: the oracle's random image is 224x224."""
    w1 = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    sess = ort.session(_conv_sigmoid(w1))
    feeds = ort.random_inputs(sess, 0)
    assert feeds["x"].shape == (1, 3, 224, 224)


def test_input_shape_resolver():
    from graphprune.input_shapes import InputSpec, resolve

    specs = [InputSpec("det", ["N", 3, "H", "W"]), InputSpec("rec", ["N", 3, 48, "Wr"]),
             InputSpec("ids", ["B", "T"], floating=False), InputSpec("fixed", [2, 5])]
    res = resolve(specs)
    assert res.shapes == {"det": (1, 3, 224, 224), "rec": (1, 3, 48, 192), "ids": (1, 32), "fixed": (2, 5)}
    assert res.sources["det"].startswith("default") and res.sources["fixed"] == "static dims"
    res = resolve(specs, user={"det": [1, 3, 640, 640]}, calib={"rec": np.zeros((8, 3, 48, 320))})
    assert res.shapes["det"] == (1, 3, 640, 640) and res.sources["det"] == "--input-shape"
    assert res.shapes["rec"] == (1, 3, 48, 320) and res.sources["rec"] == "calibration data"
    assert "rec: 1×3×48×320 (calibration data)" in res.describe()


def test_a_dim_name_is_one_size_in_every_input():
    """An image x[N,3,H,W] and its bool mask m[N,1,H,W]: the mask had the sequence default
    (32x32) against the image's 224x224, and a valid model was refused as one ONNX Runtime
    cannot run (exit 4). The mask now takes the image's sizes, whichever input fixes them."""
    from graphprune.input_shapes import InputSpec, resolve

    specs = [InputSpec("m", ["N", 1, "H", "W"], floating=False), InputSpec("x", ["N", 3, "H", "W"])]
    res = resolve(specs)
    assert res.shapes == {"m": (1, 1, 224, 224), "x": (1, 3, 224, 224)} and list(res.shapes) == ["m", "x"]
    assert res.sources["m"] == "dims named as in x" and res.defaulted
    res = resolve(specs, user={"x": [2, 3, 48, 320]})
    assert res.shapes["m"] == (2, 1, 48, 320)
    res = resolve(specs, calib={"m": np.zeros((4, 1, 64, 96), bool)})
    assert res.shapes["x"] == (1, 3, 64, 96) and "dims named as in m" in res.sources["x"]
    # one name for two sizes in one input (PP-OCR's '?' for H and W) names no size
    res = resolve([InputSpec("x", ["N", 3, "?", "?"]), InputSpec("t", ["?"], floating=False)],
                  user={"x": [1, 3, 48, 192]})
    assert res.shapes["t"] == (1,)  # its own default (a rank-1 input: the batch), not 48 or 192


def test_default_falls_back_to_a_size_the_model_runs():
    """A recogniser-like net that needs H == 64 cannot run at 224x224: the next default runs."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["t", "w"], ["y"])]
    m = gp.load(make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", ["N", 3, "W", 8])],
                           {"w": np.ones((64, 8), np.float32)}, check=False).SerializeToString(), fold=False)
    res = oracle.check(m, m, Plan([], []), n_random=1)
    # and at another size of each dynamic dim it runs at: N and W change, H stays 64 (32 and
    # 96 do not run in the input model either: a note, not a failure)
    assert res.ok and res.runs == 2
    assert [s.shapes["x"] for s in res.sizes] == [(1, 3, 64, 256), (2, 3, 64, 128)]
    assert res.shapes.note.startswith("H checked at one size only")
    assert "1×3×64×256 (default for image inputs), 2×3×64×128" in res.shapes.describe()


def _save(model, path):
    gp.save(model, path)
    return str(path)


@pytest.mark.parametrize("n", ["0", "-1"])
def test_check_with_no_input_sets_is_a_usage_error(tmp_path, n, capsys):
    from graphprune.cli.main import main

    m = _save(_tiny_output_model(1.0), tmp_path / "m.onnx")
    Plan([], []).save(tmp_path / "p.plan.json")
    assert main(["check", m, m, "--plan", str(tmp_path / "p.plan.json"), "--random", n]) == 2
    assert "PASS" not in capsys.readouterr().out


def test_check_takes_input_shape(tmp_path, capsys):
    from graphprune.cli.main import main

    w1 = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = _save(_conv_sigmoid(w1), tmp_path / "m.onnx")
    Plan([], []).save(tmp_path / "p.plan.json")
    assert main(["check", m, m, "--plan", str(tmp_path / "p.plan.json"), "--random", "1",
                 "--input-shape", "x:1,3,40,24"]) == 0
    assert "1×3×40×24 (--input-shape)" in capsys.readouterr().out


@pytest.mark.parametrize("path", ["big", "files"])
def test_large_model_paths_share_the_judgement(path, tmp_path, monkeypatch):
    """The large-model oracles (`_check_big`, `check_files`) judge saturating outputs on their
    logits and refuse empty comparisons like `check` (they compared the outputs only)."""
    import graphprune.ir.serialize as serialize

    w1 = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    other = w1.copy()
    other[:2] = 0

    def run(a, b):
        if path == "big":
            monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
            return oracle.check(a, b, Plan([], []), n_random=2)
        pa, pb = _save(a, tmp_path / "a.onnx"), _save(b, tmp_path / "b.onnx")
        return oracle.check_files(pa, pb, Plan([], []), n_random=2)

    assert not run(_conv_sigmoid(w1), _conv_sigmoid(other)).ok
    assert run(_conv_sigmoid(w1), _conv_sigmoid(w1)).ok
    refused = run(_tiny_output_model(1e-9), _tiny_output_model(3e-9))
    assert not refused.ok and refused.refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if path == "big" else ["a.onnx", "b.onnx"])


# ---- issue 13 §1: two sizes of every dynamic dim ----------------------------------------------

def _conv_then(extra_nodes, extra_inits=None, out="y"):
    """x:[N,3,H,W] (dynamic) -> 3x3 Conv (3->4) -> `extra_nodes` (reading "c", making `out`)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), *extra_nodes]
    inits = {"w1": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
             **(extra_inits or {})}
    return gp.load(make_model(nodes, [("x", ["N", 3, "H", "W"])], [(out, ["N", 4, "H", "W"])], inits,
                              check=False).SerializeToString(), fold=False)


def _right_only_at_width(width: int):
    """Equal to `_conv_then([Identity])` at W == `width` only: past column `width` the output
    is zeroed (the Slice from `width` on is empty at that width)."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    return _conv_then([helper.make_node("Slice", ["c", "z", "wd", "ax"], ["left"]),
                       helper.make_node("Slice", ["c", "wd", "big", "ax"], ["right"]),
                       helper.make_node("Mul", ["right", "zero"], ["gone"]),
                       helper.make_node("Concat", ["left", "gone"], ["y"], axis=3)],
                      {"z": i64(0), "wd": i64(width), "big": i64(1 << 30), "ax": i64(3),
                       "zero": np.zeros((), np.float32)})


@pytest.mark.parametrize("path", ["check", "big", "files"])
def test_a_model_right_at_one_width_only_fails(path, tmp_path, monkeypatch):
    """The written model keeps its dynamic dims, so the oracle runs at a second size of each:
    a pruned model that is right only at the representative width FAILs (all three paths)."""
    import graphprune.ir.serialize as serialize

    ref = _conv_then([helper.make_node("Identity", ["c"], ["y"])])
    bad = _right_only_at_width(24)

    def run(a, b):
        if path == "check":
            return oracle.check(a, b, Plan([], []), n_random=2, shapes={"x": [1, 3, 16, 24]})
        if path == "big":
            monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
            return oracle.check(a, b, Plan([], []), n_random=2, shapes={"x": [1, 3, 16, 24]})
        pa, pb = _save(a, tmp_path / "a.onnx"), _save(b, tmp_path / "b.onnx")
        return oracle.check_files(pa, pb, Plan([], []), n_random=2, shapes={"x": [1, 3, 16, 24]})

    res = run(ref, bad)
    assert not res.ok and res.runs == 3, res.summary()  # the two sets at 1x3x16x24 pass; the third fails
    assert [s.shapes["x"] for s in res.sizes] == [(1, 3, 16, 24), (2, 3, 32, 32)]
    assert "1×3×16×24 (--input-shape), 2×3×32×32 (another size of the dynamic dims)" in res.shapes.describe()
    good = run(ref, _conv_then([helper.make_node("Identity", ["c"], ["y"])]))
    assert good.ok and good.runs == 3 and good.sizes[1].shapes["x"] == (2, 3, 32, 32)


def test_at_the_representative_width_alone_the_same_model_passes():
    """What the second size adds: the one-width model is indistinguishable at that width."""
    ref = _conv_then([helper.make_node("Identity", ["c"], ["y"])])
    res = oracle.check(ref, _right_only_at_width(24), Plan([], []), n_random=2,
                       inputs=[{"x": np.random.default_rng(5).standard_normal((1, 3, 16, 24)).astype(np.float32)}])
    assert not res.ok  # inputs given and random sets: the random sets add the second size
    res = oracle.check(ref, _right_only_at_width(24), Plan([], []), n_random=0,
                       inputs=[{"x": np.random.default_rng(5).standard_normal((1, 3, 16, 24)).astype(np.float32)}])
    assert res.ok and res.sizes == []


def test_a_pruned_model_that_cannot_run_at_the_other_size_fails():
    """A constant that broadcasts at one width only: the input model runs at 2x3x32x32, the
    'pruned' one does not — a FAIL that says where, not a crash."""
    ref = _conv_then([helper.make_node("Identity", ["c"], ["y"])])
    bad = _conv_then([helper.make_node("Add", ["c", "row"], ["y"])], {"row": np.zeros((1, 1, 1, 24), np.float32)})
    res = oracle.check(ref, bad, Plan([], []), n_random=1, shapes={"x": [1, 3, 16, 24]})
    assert not res.ok and "does not run at x:2x3x32x32" in res.summary(), res.summary()
    assert any(not d.ok for d in res.diffs)


def test_an_input_model_that_runs_at_one_width_only_is_a_note_not_a_failure():
    """The input model itself needs W == 24 (the same constant): checked at the sizes it runs
    at (batch 2, another H), W at one size only, and said so."""
    m = _conv_then([helper.make_node("Add", ["c", "row"], ["y"])], {"row": np.ones((1, 1, 1, 24), np.float32)})
    res = oracle.check(m, m, Plan([], []), n_random=1, shapes={"x": [1, 3, 16, 24]})
    assert res.ok and res.runs == 2
    assert res.sizes[1].shapes["x"] == (2, 3, 32, 24)
    assert res.shapes.note.startswith("W checked at one size only")


def test_a_static_model_is_checked_at_its_one_size():
    res = oracle.check(_tiny_output_model(1.0), _tiny_output_model(1.0), Plan([], []), n_random=2)
    assert res.ok and res.runs == 2 and len(res.sizes) == 1 and res.shapes.note is None


def test_other_sizes_change_every_dynamic_dim_and_shared_names_together():
    from graphprune.input_shapes import InputSpec, dynamic_dims, other_sizes, resolve

    specs = [InputSpec("ids", ["B", "T"], floating=False), InputSpec("mask", ["B", "T"], floating=False),
             InputSpec("img", ["N", 3, 48, "W"]), InputSpec("fixed", [2, 5])]
    rep = resolve(specs, user={"img": [1, 3, 48, 320]})
    assert dynamic_dims(specs) == ["B", "T", "N", "W"]
    other = other_sizes(specs, rep)
    assert other.shapes == {"ids": (2, 16), "mask": (2, 16), "img": (2, 3, 48, 160), "fixed": (2, 5)}
    assert other_sizes(specs, rep, 1).shapes["img"] == (2, 3, 48, 352)
    assert other_sizes(specs, rep, {"T": 0}).shapes == {**rep.shapes, "ids": (1, 16), "mask": (1, 16)}
    assert other_sizes([InputSpec("fixed", [2, 5])], resolve([InputSpec("fixed", [2, 5])])) is None


def _cancelling(w1: np.ndarray, w2: np.ndarray):
    """y = x·W1 − x·W2 with W2 ≈ W1: the output is ~1e-3 of the terms, so float32 rounding of
    the terms alone moves it by ~1e-4 of its scale (an ill-conditioned model)."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["y"])]
    return gp.load(make_model(nodes, [("x", [2, 64])], [("y", [2, 16])], {"w1": w1, "w2": w2}).SerializeToString())


def _cancelling_pair(change):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 16)).astype(np.float32)
    w2 = (w1 * (1 + 1e-3 * rng.standard_normal((64, 16)))).astype(np.float32)
    return _cancelling(w1, w2), _cancelling(change(w1), w2)


def test_rounding_sized_mismatch_on_an_ill_conditioned_model_passes_with_its_measured_floor():
    """A few ulps on W1 (what a different summation or a rewritten weight does) exceed the
    1e-4 default here, but stay within 10x what one-ulp weight noise does to this model on the
    same inputs: PASS, and the summary says which tolerance was used and why."""
    a, b = _cancelling_pair(lambda w: (w * np.float32(1 + 3 * 2.0 ** -23)).astype(np.float32))
    first = oracle._check(a, b, Plan(tensors=[], groups=[]))
    assert not first.ok  # the default tolerance alone would call rounding a mismatch
    res = oracle.check(a, b, Plan(tensors=[], groups=[]))
    assert res.ok and res.tolerance_note and "one-ulp" in res.summary()
    assert oracle.rounding_floor(a) > 1e-5


def test_a_real_difference_on_an_ill_conditioned_model_still_fails():
    """A 1e-5 relative change of one weight column (~6e-3 of the output scale: below the cap, so the
    floor is measured) is beyond 10x rounding: FAIL."""
    def change(w):
        w = w.copy()
        w[:, 3] *= np.float32(1 + 1e-5)
        return w

    a, b = _cancelling_pair(change)
    res = oracle.check(a, b, Plan(tensors=[], groups=[]))
    assert not res.ok, res.summary()


def _check_on(path: str, a, b, tmp_path, monkeypatch):
    """`check` in memory, `check` of a large model (floor measured on disk), or `check_files`
    (both models saved with external data: the noisy copy is made through memory maps)."""
    import graphprune.ir.serialize as serialize
    from graphprune.frontends.onnx import save_onnx

    if path == "memory":
        return oracle.check(a, b, Plan(tensors=[], groups=[]))
    if path == "big":
        monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
        return oracle.check(a, b, Plan(tensors=[], groups=[]))
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir(parents=True)
    save_onnx(a, tmp_path / "a" / "m.onnx", external_data=True)
    save_onnx(b, tmp_path / "b" / "m.onnx", external_data=True)
    return oracle.check_files(str(tmp_path / "a" / "m.onnx"), str(tmp_path / "b" / "m.onnx"), Plan(tensors=[], groups=[]))


@pytest.mark.parametrize("path", ["memory", "big", "files"])
def test_every_oracle_path_judges_rounding_against_the_measured_floor(path, tmp_path, monkeypatch):
    """The rounding floor reaches the large-model paths too (an exact rewrite of a model
    above BIG_MODEL_BYTES, e.g. slice-hidden's rotation of an LLM, must not FAIL on rounding
    there while passing in memory), and a real difference still FAILs on each path."""
    def changed_column(w):
        w = w.copy()
        w[:, 3] *= np.float32(1 + 1e-5)
        return w

    a, b = _cancelling_pair(lambda w: (w * np.float32(1 + 3 * 2.0 ** -23)).astype(np.float32))
    res = _check_on(path, a, b, tmp_path / "rounding", monkeypatch)
    assert res.ok and res.tolerance_note and "one-ulp" in res.summary(), res.summary()
    a, b = _cancelling_pair(changed_column)
    res = _check_on(path, a, b, tmp_path / "real", monkeypatch)
    assert not res.ok, res.summary()


def test_rounding_floor_on_disk_matches_the_in_memory_one(tmp_path):
    """The file-based floor adds the same one-ulp noise (same seed, same order) as the
    in-memory one, so the two measure the same thing."""
    from graphprune.frontends.onnx import save_onnx

    a, _ = _cancelling_pair(lambda w: w)
    save_onnx(a, tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    on_disk = oracle.rounding_floor_files(str(tmp_path / "m.onnx"))
    in_memory = oracle.rounding_floor(a)
    assert on_disk > 1e-5 and on_disk == pytest.approx(in_memory, rel=1e-3)


# ---- a Concat-made output is judged part by part ------------------------------------------------

def _boxes_and_classes(wc: np.ndarray):
    """x:[N,8] -> boxes (sigmoid * 1280, four columns) and class scores (x @ wc, three columns),
    concatenated into one output, as detection heads export them: a tensor scale of ~1e3."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["b0"]), helper.make_node("Sigmoid", ["b0"], ["b1"]),
             helper.make_node("Mul", ["b1", "size"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wc"], ["cls"]),
             helper.make_node("Concat", ["boxes", "cls"], ["y"], axis=-1)]
    inits = {"wb": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32),
             "size": np.full((4,), 1280, np.float32), "wc": wc}
    return gp.load(make_model(nodes, [("x", ["N", 8])], [("y", ["N", 7])], inits).SerializeToString(), fold=False)


@pytest.mark.parametrize("path", ["check", "big", "files"])
def test_a_wrong_part_of_a_concat_output_fails_on_its_own_scale(path, tmp_path, monkeypatch):
    """Class scores off by ~0.05 hide under 1e-4 of the boxes' 1280 when the output is judged as
    one tensor (a wrong model passed that way); judged part by part they fail, and say where.
    Rounding-sized differences in a part still pass."""
    import graphprune.ir.serialize as serialize

    wc = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)

    def run(other):
        a, b = _boxes_and_classes(wc), _boxes_and_classes(other)
        if path == "files":
            return oracle.check_files(_save(a, tmp_path / "a.onnx"), _save(b, tmp_path / "b.onnx"), Plan([], []),
                                      n_random=2)
        if path == "big":
            monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
        return oracle.check(a, b, Plan([], []), n_random=2)

    whole = oracle.compare_outputs  # the old judgement, one scale for the tensor, would pass it
    a, b = _boxes_and_classes(wc), _boxes_and_classes(wc + 0.02)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)}
    ya, yb = (ort.session(m).run(None, feeds)[0] for m in (a, b))
    assert whole([ya], [yb], ["y"])[0].ok
    res = run(wc + 0.02)
    assert not res.ok and res.diffs[0].part == "cls" and "y in cls" in res.summary()
    assert run(wc * np.float32(1 + 2e-7)).ok


def test_a_rank_0_bool_input_gets_a_random_flag_and_the_model_is_checked():
    """A scalar bool input (a flag) was fed a numpy scalar, which ONNX Runtime refused, and a
    valid model was reported as one that 'fails to run' (exit 4)."""
    from onnx import TensorProto

    from helpers import w

    flag = helper.make_tensor_value_info("flip", TensorProto.BOOL, [])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1] * 4), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Neg", ["r"], ["n"]), helper.make_node("Where", ["flip", "r", "n"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"])]
    m = make_model(nodes, [("x", ["N", 3, "H", "W"]), flag], [("y", ["N", 4, "H", "W"])],
                   {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(4, 8, 1, 1, seed=3)})
    feeds = ort.random_inputs(ort.session(gp.load(m.SerializeToString(), fold=False)), 0)
    assert isinstance(feeds["flip"], np.ndarray) and feeds["flip"].shape == () and feeds["flip"].dtype == bool
    from helpers import prune_and_check

    _, plan, _ = prune_and_check(m, ratio=0.5)  # pruned, and the oracle ran with the flag fed
    assert plan.groups


def _plain_and_cancelling(w: np.ndarray):
    """Two outputs: y = x·W (well conditioned) and z = x·W1 − x·W2 with W2 ≈ W1 (rounding
    moves it by ~1e-4 of its scale)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 16)).astype(np.float32)
    w2 = (w1 * (1 + 1e-3 * rng.standard_normal((64, 16)))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("MatMul", ["x", "w1"], ["a"]),
             helper.make_node("MatMul", ["x", "w2"], ["b"]), helper.make_node("Sub", ["a", "b"], ["z"])]
    return gp.load(make_model(nodes, [("x", [2, 64])], [("y", [2, 16]), ("z", [2, 16])],
                              {"w": w, "w1": w1, "w2": w2}).SerializeToString())


@pytest.mark.parametrize("path", ["memory", "big", "files"])
def test_one_rounding_sensitive_output_does_not_loosen_the_others(path, tmp_path, monkeypatch):
    """The tolerance was 10x the worst output's rounding floor, for every output: z's ~1e-4
    made it ~1e-3, and y wrong by 3e-3 of its scale in one column... passed. Each output is
    now held to its own floor (y's is ~1e-7)."""
    w = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    wrong = w.copy()
    wrong[:, 3] *= np.float32(1 + 3e-3)
    res = _check_on(path, _plain_and_cancelling(w), _plain_and_cancelling(wrong), tmp_path / "wrong", monkeypatch)
    assert not res.ok and [d.name for d in res.diffs if not d.ok] == ["y"], res.summary()
    res = _check_on(path, _plain_and_cancelling(w), _plain_and_cancelling(w), tmp_path / "same", monkeypatch)
    assert res.ok, res.summary()


def _scorer(w_out, opset=17, rank3=False, log=False):
    """x[N, 4] -> MatMul(w1) -> Relu -> MatMul(w_out) -> Softmax (or LogSoftmax) -> y: a
    classifier whose logits are the value "logits" (rank3: [N, 2, C], the scores of two
    positions, as a sequence model writes them)."""
    import graphprune as gp
    from onnx import helper

    from helpers import make_model

    w1 = np.abs(np.random.default_rng(0).standard_normal((4, 8))).astype(np.float32)  # positive: no all-zero rows
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits" if not rank3 else "flat"])]
    c = w_out.shape[1] // (2 if rank3 else 1)
    if rank3:
        nodes.append(helper.make_node("Reshape", ["flat", "shape"], ["logits"]))
    kind = "LogSoftmax" if log else "Softmax"
    nodes.append(helper.make_node(kind, ["logits"], ["y"], axis=-1 if opset >= 13 else (2 if rank3 else 1)))
    inits = {"w1": w1, "w2": w_out, **({"shape": np.array([-1, 2, c], np.int64)} if rank3 else {})}
    out = ["N", 2, c] if rank3 else ["N", c]
    return gp.load(make_model(nodes, [("x", ["N", 4])], [("y", out)], inits, opset=opset).SerializeToString())


@pytest.mark.parametrize("opset,rank3,log", [(17, False, False), (17, True, False), (11, False, False),
                                             (17, False, True)])
def test_the_fidelity_of_softmax_scores_is_measured_on_their_centred_logits(opset, rank3, log):
    """Probabilities near one keep a high cosine whatever the other classes do: PP-OCR rec
    models reading 0.16-0.37 of what the dense one reads kept 0.935-0.967 and passed the
    default gate (0.9). The logits, centred over the classes (what softmax ignores), are
    compared instead, and the result names the outputs so measured."""
    from graphprune.runtime.oracle import _with_outputs, output_fidelity, session

    rng = np.random.default_rng(1)
    c = 6
    w_dense = (rng.standard_normal((8, c * (2 if rank3 else 1))) * 3).astype(np.float32)
    w_other = w_dense + (rng.standard_normal(w_dense.shape) * 1.5).astype(np.float32)
    dense, other = _scorer(w_dense, opset, rank3, log), _scorer(w_other, opset, rank3, log)
    batch = {"x": np.abs(rng.standard_normal((16, 4))).astype(np.float32) + 0.1}
    fid = output_fidelity(dense, other, [batch])
    assert fid["on_logits"] == ["y"] and fid["samples"] == 16
    la, lb = (session(_with_outputs(m, ["logits"])).run(["logits"], batch)[0].astype(np.float64) for m in (dense, other))
    la, lb = la - la.mean(-1, keepdims=True), lb - lb.mean(-1, keepdims=True)  # (opset 11 rank 2: the same axis)
    la, lb = la.reshape(16, -1), lb.reshape(16, -1)
    expect = np.mean((la * lb).sum(1) / np.linalg.norm(la, axis=1) / np.linalg.norm(lb, axis=1))
    assert fid["mean_cosine"] == pytest.approx(expect, abs=1e-9)
    assert fid["relative_error"] == pytest.approx(np.linalg.norm(la - lb) / np.linalg.norm(la), rel=1e-9)
    same = output_fidelity(dense, dense, [batch])
    assert same["mean_cosine"] == pytest.approx(1.0, abs=1e-12) and same["relative_error"] == 0.0
