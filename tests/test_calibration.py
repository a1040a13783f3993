"""Calibration sources (.npz, image folders, callables), batching, streaming statistics."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper

import graphprune as gp
from graphprune.errors import UsageError
from graphprune.runtime.calibration import Calibration, ImagePreprocess, load_calibration, progress
from graphprune.runtime.ort import concrete_shapes
from graphprune.runtime.stats import ChannelStats, GramStats, StatsRequest, collect
from helpers import make_model


def conv_model(batch=None):
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="c", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return gp.load(make_model(nodes, [("x", [batch, 3, 4, 4])], [("y", [batch, 3, 4, 4])], {"w": w}).SerializeToString())


def test_npz_samples_are_batched(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    cal = load_calibration(str(tmp_path / "c.npz"), conv_model(), batch_size=4)
    shapes = [b["x"].shape[0] for b in cal.batches()]
    assert shapes == [4, 4, 2] and cal.num_batches == 3
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in cal]), x)
    # a model with a fixed batch of 1 gets batches of 1, whatever was asked
    cal1 = load_calibration(str(tmp_path / "c.npz"), conv_model(batch=1), batch_size=4, limit=5)
    assert [b["x"].shape for b in cal1] == [(1, 3, 4, 4)] * 5
    # single array under another name maps to the single input
    np.savez(tmp_path / "d.npz", whatever=x)
    assert load_calibration(str(tmp_path / "d.npz"), conv_model()).first()["x"].shape == (8, 3, 4, 4)


def test_image_folder_with_declared_preprocessing(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for k in range(3):
        a = np.zeros((6, 8, 3), np.uint8)
        a[..., 0] = 255  # red
        a[..., 2] = 51 * k
        Image.fromarray(a).save(tmp_path / f"im{k}.png")
    pre = ImagePreprocess.parse("size=4x4,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,layout=nchw")
    cal = load_calibration(str(tmp_path), conv_model(), preprocess="size=4x4,mean=0.5/0.5/0.5,std=0.5/0.5/0.5",
                           batch_size=2)
    batches = list(cal)
    assert [b["x"].shape for b in batches] == [(2, 3, 4, 4), (1, 3, 4, 4)]
    x = np.concatenate([b["x"] for b in batches])
    np.testing.assert_allclose(x[:, 0], 1.0)  # (255/255 - .5)/.5
    np.testing.assert_allclose(x[:, 1], -1.0)
    np.testing.assert_allclose(x[:, 2, 0, 0], [(51 * k / 255 - 0.5) / 0.5 for k in range(3)], atol=1e-6)
    assert pre.apply(tmp_path / "im0.png").shape == (3, 4, 4)
    nhwc = ImagePreprocess.parse("size=4x4,layout=nhwc,color=bgr").apply(tmp_path / "im0.png")
    assert nhwc.shape == (4, 4, 3) and nhwc[0, 0, 2] == pytest.approx(1.0)
    with pytest.raises(UsageError):
        ImagePreprocess.parse("size=big")


@pytest.mark.parametrize("spec,says", [
    ("mean=1/2", "mean needs 1 or 3 values for color=rgb, got 2"),
    ("mean=1/2/3/4", "mean needs 1 or 3 values"),
    ("color=gray,std=0.2/0.2/0.2", "std needs 1 value for color=gray, got 3"),
    ("size=0x192", "size 0x192 must be positive"),
    ("std=0/0/0", "std and scale must be non-zero"),
    ("scale=0", "std and scale must be non-zero"),
    ("mean=nan", "must be finite"),
])
def test_preprocessing_that_cannot_apply_is_a_usage_error(spec, says):
    """These parsed, then failed on the first image as numpy errors reported as graphprune
    bugs ("internal error ... please report it"), or gave NaN inputs (std=0) (probe)."""
    with pytest.raises(UsageError, match=says):
        ImagePreprocess.parse(spec)


def test_images_of_another_size_are_refused_with_the_resize_option_named(tmp_path):
    """A folder of 6x8 images for a model that takes 4x4, without size=HxW: refused before
    any work, and the error says how to resize them (it said only the shapes)."""
    Image = pytest.importorskip("PIL.Image")
    for k in range(2):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / f"im{k}.png")
    with pytest.raises(UsageError, match=r"has shape \[2, 3, 6, 8\]") as e:
        load_calibration(str(tmp_path), conv_model(), preprocess="mean=0.5")
    assert "--calib-preprocess size=4x4" in (e.value.hint or "")
    # an .npz of the wrong size is refused without that hint (it is not an image folder)
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 6, 8), np.float32))
    with pytest.raises(UsageError) as e:
        load_calibration(str(tmp_path / "c.npz"), conv_model())
    assert "calib-preprocess" not in (e.value.hint or "")


@pytest.mark.parametrize("given,hint", [("layout=nhwc", "size=4x4,layout=nchw"), ("color=gray", "size=4x4,color=rgb"),
                                        ("layout=nhwc,color=gray,mean=0.5", "size=4x4,mean=0.5,layout=nchw,color=rgb")])
def test_the_hint_fixes_a_layout_or_colour_the_model_does_not_take(tmp_path, given, hint):
    """The hint kept layout=nhwc / color=gray, the cause of the mismatch, and only added a size."""
    Image = pytest.importorskip("PIL.Image")
    for k in range(2):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / f"im{k}.png")
    with pytest.raises(UsageError) as e:
        load_calibration(str(tmp_path), conv_model(), preprocess=given)
    assert e.value.hint == f"match the model's input: --calib-preprocess {hint}"


def test_images_of_several_sizes_fill_batches_by_size_for_a_dynamic_model(tmp_path, caplog):
    """Text lines of several widths for a model whose width is dynamic (an OCR recogniser):
    each size fills its own batches (stacking them crashed with numpy's ValueError), every
    image is used once, and a model with a static size still refuses the odd ones."""
    Image = pytest.importorskip("PIL.Image")
    widths = [8, 12, 8, 16, 12, 8]
    for k, w in enumerate(widths):
        Image.fromarray(np.full((4, w, 3), 10 * k, np.uint8)).save(tmp_path / f"im{k}.png")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[1, 1])]
    dynamic = gp.load(make_model(nodes, [("x", ["n", 3, 4, "w"])], [("y", ["n", 3, 4, "w"])],
                                 {"w": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)}).SerializeToString())
    with caplog.at_level(logging.INFO):
        batches = list(load_calibration(str(tmp_path), dynamic, batch_size=2))
    assert [b["x"].shape for b in batches] == [(2, 3, 4, 8), (2, 3, 4, 12), (1, 3, 4, 8), (1, 3, 4, 16)]
    # the figures are at the first image's size, and the others are said (they were not)
    assert "calibration images come in 3 sizes (width x height: 8x4 (3), 12x4 (2), 16x4 (1))" in caplog.text
    assert "measured at the first image's, 8x4" in caplog.text
    assert sorted(round(float(v) * 255 / 10) for b in batches for v in b["x"][:, 0, 0, 0]) == list(range(6))
    with pytest.raises(UsageError, match="has shape"):  # a static 4x4 model: the resize hint, as before
        list(load_calibration(str(tmp_path), conv_model(), batch_size=2))


def test_callable_source(tmp_path):
    mod = tmp_path / "feeds.py"  # its third batch is broken: found when it is read
    mod.write_text("import numpy as np\n"
                   "def data():\n"
                   "    for k in range(3):\n"
                   "        yield np.full((2, 3, 4, 4), k, np.float32)\n")
    cal = load_calibration(f"{mod}:data", conv_model())
    assert [float(b["x"].mean()) for b in cal] == [0.0, 1.0, 2.0]
    assert [float(b["x"].mean()) for b in cal] == [0.0, 1.0, 2.0]  # re-iterable
    with pytest.raises(UsageError):
        load_calibration("no_such_module_xyz:fn", conv_model())
    with pytest.raises(UsageError):
        load_calibration(str(tmp_path / "missing.npz"), conv_model())


def test_running_stats_equal_full_data_stats():
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((2, 3, 5)) * [[[1], [2], [3]]] for _ in range(4)]
    st, gr = ChannelStats(axis=1), GramStats(axis=1)
    for c in chunks:
        c[0, 0, :2] = 0
        st.update(c)
        gr.update(c)
    full = np.concatenate([np.moveaxis(c, 1, 0).reshape(3, -1) for c in chunks], axis=1)
    np.testing.assert_allclose(st.mean, full.mean(1))
    np.testing.assert_allclose(st.var, full.var(1))
    np.testing.assert_allclose(st.mean_abs, np.abs(full).mean(1))
    np.testing.assert_allclose(st.apoz, (full == 0).mean(1))
    np.testing.assert_allclose(gr.matrix, full @ full.T / full.shape[1])


def test_channel_stats_leave_out_values_that_are_not_finite():
    """Attention scores with a causal mask hold -inf: a channel's mean |x| was inf and the
    group's normalised scores NaN (GPT-2, activation criterion). The statistics are over the
    finite values; float32 values whose squares overflow float32 stay finite too."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 3, 6)).astype(np.float32)
    a[:, 1, 3:] = -np.inf
    a[0, 2, 0] = np.nan
    a[1, 0, 0] = 3e38  # squared: inf in float32
    st = ChannelStats(axis=1)
    st.update(a)
    for c in range(3):
        v = np.moveaxis(a, 1, 0)[c].astype(np.float64).ravel()
        v = v[np.isfinite(v)]
        np.testing.assert_allclose([st.mean[c], st.mean_abs[c], st.mean_sq[c], st.apoz[c]],
                                   [v.mean(), np.abs(v).mean(), (v * v).mean(), (v == 0).mean()], rtol=1e-6)
    assert np.isfinite(st.rms).all() and np.isfinite(st.var).all()


def test_collect_streams_intermediate_tensors(caplog):
    model = conv_model()
    rng = np.random.default_rng(2)
    batches = [{"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)} for _ in range(3)]
    req = StatsRequest()
    req.want_channel("h", 1)
    req.want_gram("h", 1)
    collect(model, req, Calibration.from_batches(batches))
    h = np.concatenate([b["x"] for b in batches])  # identity conv
    np.testing.assert_allclose(req.channel[("h", 1)].mean, h.mean((0, 2, 3)), atol=1e-6)
    assert req.gram[("h", 1)].count == 3 * 2 * 16
    # the input model is not modified by adding outputs
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert concrete_shapes(model, ["h"], batches[0]) == {"h": (2, 3, 4, 4)}


def test_progress_logs_when_not_a_tty():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("graphprune.runtime.calibration")
    h, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    try:
        assert list(progress(range(3), 3, "demo")) == [0, 1, 2]
    finally:
        logger.removeHandler(h)
        logger.setLevel(level)
    assert any("demo: 3 batches" in m for m in records)


def test_whole_feeds_of_a_fixed_batch_are_batches_as_they_are(tmp_path):
    """An .npz of whole feeds ([N, 4, 8] for an input fixed at [4, 8]) gives N batches of 4
    rows; before, four feeds were stacked into one batch of 16 the model cannot run."""
    import onnx
    from onnx import TensorProto, helper

    from graphprune.frontends.onnx import load_onnx
    from graphprune.runtime.calibration import from_npz

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    feeds = np.random.default_rng(0).standard_normal((6, 4, 8)).astype(np.float32)
    np.savez(tmp_path / "whole.npz", x=feeds)
    cal = from_npz(tmp_path / "whole.npz", load_onnx(str(src)))
    batches = list(cal.batches())
    assert [b["x"].shape for b in batches] == [(4, 8)] * 6 and cal.num_batches == 6
    assert np.array_equal(batches[5]["x"], feeds[5])
    np.savez(tmp_path / "rows.npz", x=feeds.reshape(24, 8))  # one row per sample: stacked 4 at a time
    assert [b["x"].shape for b in from_npz(tmp_path / "rows.npz", load_onnx(str(src))).batches()] == [(4, 8)] * 6


@pytest.mark.parametrize("array,says", [
    (np.zeros((2, 3, 4, 4), np.int64), "input 'x' is int64, the model takes float32"),
    (np.full((2, 3, 4, 4), np.nan, np.float32), "holds NaN or infinite values"),
    (np.full((2, 3, 4, 4), np.inf, np.float32), "holds NaN or infinite values"),
    (np.zeros((2, 3, 8, 8), np.float32), "has shape [2, 3, 8, 8]; the model takes [?, 3, 4, 4]"),
    (np.zeros((2, 3, 4), np.float32), "has shape [2, 3, 4]"),
])
def test_a_batch_the_model_cannot_take_is_refused_before_any_work(tmp_path, array, says):
    """Such data ended in ONNX Runtime's 'Got invalid dimensions' as an internal error after
    the search had started, or (NaN) pruned by NaN scores and reported a repair."""
    np.savez(tmp_path / "c.npz", x=array)
    with pytest.raises(UsageError) as e:
        load_calibration(str(tmp_path / "c.npz"), conv_model())
    assert says in str(e.value)


def test_batches_are_checked_and_cast_to_the_model_s_float_type(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4))  # float64, numpy's default
    np.savez(tmp_path / "c.npz", x=x)
    cal = load_calibration(str(tmp_path / "c.npz"), conv_model())
    got = cal.first()["x"]
    assert got.dtype == np.float32 and np.array_equal(got, x.astype(np.float32))

    mod = tmp_path / "feeds.py"  # its third batch is broken: found when it is read
    mod.write_text("import numpy as np\n"
                   "def gen():\n"
                   "    for k in range(3):\n"
                   "        yield {'x': np.full((1, 3, 4, 4), np.nan if k == 2 else 1.0, np.float32)}\n"
                   "def other():\n"
                   "    yield {'y': np.ones((1, 3, 4, 4), np.float32)}\n")
    cal = load_calibration(f"{mod}:gen", conv_model())
    with pytest.raises(UsageError, match="NaN"):
        list(cal.batches())
    with pytest.raises(UsageError, match="array 'y' is not an input of the model"):
        load_calibration(f"{mod}:other", conv_model())
    # a Calibration object is checked, not rewritten: another dtype is refused with a hint
    obj = Calibration.from_batches([{"x": x[:1]}], "my batches")
    with pytest.raises(UsageError, match="my batches: batch dtypes differ"):
        load_calibration(obj, conv_model())
    ok = Calibration.from_batches([{"x": x[:1].astype(np.float32)}])
    assert load_calibration(ok, conv_model()) is ok


def test_constant_calibration_data_and_a_renamed_array_are_said(tmp_path, caplog):
    """An .npz holding one array of zeros under another name than the model's input: the key
    was mapped and the data used without a word, and the gate then reported a perfect 1.0000
    measured on constant inputs (probe)."""
    import logging

    np.savez(tmp_path / "z.npz", images=np.zeros((4, 3, 4, 4), np.float32))
    with caplog.at_level(logging.INFO, logger="graphprune.runtime.calibration"):
        load_calibration(str(tmp_path / "z.npz"), conv_model())
    text = caplog.text
    assert "array 'images' of z.npz taken as the model's only input 'x'" in text
    assert "input 'x' is constant in the first batch (every value 0)" in text
    caplog.clear()
    np.savez(tmp_path / "r.npz", x=np.random.default_rng(0).standard_normal((4, 3, 4, 4)).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="graphprune.runtime.calibration"):
        load_calibration(str(tmp_path / "r.npz"), conv_model())
    assert "constant" not in caplog.text and "taken as" not in caplog.text



def test_calibration_given_in_memory_reads_as_the_same_data_in_a_file(tmp_path):
    """gp.PruneOptions(calib=array) — what a Python user passes first — failed with 'expected
    str, bytes or os.PathLike object, not ndarray' (and gp.compile with numpy's 'truth value
    ... ambiguous'). Arrays, {input: array} and lists of feed dicts now read as an .npz of
    the same arrays does; other types and empty data are refused in words."""
    x = np.random.default_rng(0).standard_normal((10, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    from_file = [b["x"] for b in load_calibration(str(tmp_path / "c.npz"), conv_model(), batch_size=4)]
    for given in (x, {"x": x}, {"x": x.astype(np.float64)}):  # float64 cast as the file's would be
        got = [b["x"] for b in load_calibration(given, conv_model(), batch_size=4)]
        assert [g.shape for g in got] == [f.shape for f in from_file]
        np.testing.assert_array_equal(np.concatenate(got), x)
    feeds = [{"x": x[i:i + 5]} for i in (0, 5)]
    got = [b["x"] for b in load_calibration(feeds, conv_model())]
    assert [g.shape[0] for g in got] == [5, 5] and got[0].dtype == np.float32
    for bad, says in ((5, "type int is not one graphprune reads"), ([], "an empty list"), ({}, "an empty dict")):
        with pytest.raises(UsageError, match=says):
            load_calibration(bad, conv_model())
