"""The hidden size of a transformer: the axis a LayerNorm or RMSNorm normalises over.

Removing channels there is exact when the removed channels are zero at the norm's input in
the masked original (every writer of the residual stream has its weights masked) and the
statistics are taken over the original width: LayerNormalization gets the zeros padded back
(Pad -> LayerNormalization -> Slice), an RMSNorm's ReduceMean is multiplied by kept / original
(in float16: Pad -> ReduceMean).
Allocation keeps these groups whole unless asked (`prune_hidden`).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import graphprune as gp
from helpers import make_model, prune_and_check, w

WIDTH = 12


def residual_stream(norm: str = "ln", layers: int = 2, post: bool = False, before_norm: str | None = None):
    """x:[B,S,16] -> h0 = x·we (WIDTH wide) -> `layers` blocks h + relu(norm(h)·w1)·w2 -> norm -> ·wo.
    norm "ln": LayerNormalization; "rms_op": RMSNormalization (opset 23); "rms": Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul gamma;
    "rms_mul": x*x instead of Pow; "ln_written": a LayerNorm written out (mean subtracted, then as "rms"); "rms_nogamma": no Mul by gamma; "rms_ts": TorchScript's form,
    gamma * Cast(x * Div(1, Sqrt(...))). post: h = norm(h + f(h)) (BERT) instead of h + f(norm(h)).
    before_norm: an op applied to every norm's input ("Sigmoid": not zero where masked)."""
    nodes = [helper.make_node("MatMul", ["x", "we"], ["h0"])]
    inits = {"we": w(16, WIDTH, seed=1), "two": np.array(2.0, np.float32), "axes": np.array([-1], np.int64),
             "eps": np.array(1e-6, np.float32), "one": np.array(1.0, np.float32)}

    def normed(src, i):
        if before_norm:
            nodes.append(helper.make_node(before_norm, [src], [f"pre{i}"]))
            src = f"pre{i}"
        inits[f"g{i}"] = w(WIDTH, seed=100 + i)
        if norm == "ln":
            inits[f"b{i}"] = w(WIDTH, seed=200 + i)
            nodes.append(helper.make_node("LayerNormalization", [src, f"g{i}", f"b{i}"], [f"n{i}"], epsilon=1e-5))
            return f"n{i}"
        if norm == "rms_op":
            nodes.append(helper.make_node("RMSNormalization", [src, f"g{i}"], [f"n{i}"], epsilon=1e-5))
            return f"n{i}"
        if norm == "ln_written":  # as the TorchScript exporter writes a LayerNorm below opset 17
            nodes.extend([helper.make_node("ReduceMean", [src, "axes"], [f"mu{i}"], keepdims=1),
                          helper.make_node("Sub", [src, f"mu{i}"], [f"c{i}"])])
            src = f"c{i}"
        square = helper.make_node("Pow", [src, "two"], [f"sq{i}"]) if norm in ("rms", "ln_written") else \
            helper.make_node("Mul", [src, src], [f"sq{i}"])
        nodes.extend([square, helper.make_node("ReduceMean", [f"sq{i}", "axes"], [f"ms{i}"], keepdims=1),
                      helper.make_node("Add", [f"ms{i}", "eps"], [f"mse{i}"]),
                      helper.make_node("Sqrt", [f"mse{i}"], [f"rms{i}"])])
        if norm == "rms_ts":
            nodes.extend([helper.make_node("Div", ["one", f"rms{i}"], [f"inv{i}"]),
                          helper.make_node("Mul", [src, f"inv{i}"], [f"nx{i}"]),
                          helper.make_node("Cast", [f"nx{i}"], [f"nn{i}"], to=1)])
        else:
            nodes.append(helper.make_node("Div", [src, f"rms{i}"], [f"nn{i}"]))
        if norm == "rms_nogamma":
            return f"nn{i}"
        nodes.append(helper.make_node("Mul", [f"g{i}", f"nn{i}"], [f"n{i}"]))
        return f"n{i}"

    h = "h0"
    for i in range(layers):
        inits[f"w1_{i}"], inits[f"w2_{i}"] = w(WIDTH, 20, seed=10 + i), w(20, WIDTH, seed=20 + i)
        src = h if post else normed(h, i)
        nodes += [helper.make_node("MatMul", [src, f"w1_{i}"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"f{i}"]),
                  helper.make_node("Add", [h, f"f{i}"], [f"s{i}"])]
        h = normed(f"s{i}", i) if post else f"s{i}"
    out = h if post else normed(h, layers)
    nodes.append(helper.make_node("MatMul", [out, "wo"], ["y"]))
    inits["wo"] = w(WIDTH, 5, seed=3)
    return make_model(nodes, [("x", ["B", "S", 16])], [("y", ["B", "S", 5])], inits,
                      opset=23 if norm == "rms_op" else 18)


def hidden_groups(m):
    return [g for g in gp.analyze(gp.load(m.SerializeToString())).prunable_groups if g.normalised]


@pytest.mark.parametrize("norm", ["ln", "rms_op", "ln_written", "rms", "rms_mul", "rms_ts", "rms_nogamma"])
@pytest.mark.parametrize("post", [False, True], ids=["pre_norm", "post_norm"])
def test_the_hidden_size_prunes_exactly(norm, post):
    """Random removals from every group, the hidden size included: the oracle holds."""
    m = residual_stream(norm, post=post)
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    for seed in range(3):
        pruned, plan, _ = prune_and_check(m, seed=seed, min_groups=3)
    ops = [n.op_type for n in pruned.graph]
    after_mean = [u.node.op_type for n in pruned.graph if n.op_type == "ReduceMean" for u in n.outputs[0].uses()]
    if norm in ("ln", "rms_op"):  # the zeros padded back for each LayerNormalization, sliced off after it
        norms = 2 if post else 3
        op = "LayerNormalization" if norm == "ln" else "RMSNormalization"
        assert ops.count("Pad") == ops.count(op) == ops.count("Slice") == norms
    elif norm == "ln_written":  # each mean times kept / original; each variance gets r / original · mean² back
        norms = 2 if post else 3
        assert after_mean == ["Mul", "Add"] * norms and ops.count("Pad") == 0
    elif norm == "rms_nogamma":  # each mean multiplied by kept / original
        assert after_mean and set(after_mean) == {"Mul"}
    else:  # kept / original folded into eps and gamma: the ops ONNX Runtime fuses stay as they were
        assert after_mean and set(after_mean) == {"Add"} and ops == [n.op_type for n in gp.load(m.SerializeToString()).graph]


@pytest.mark.parametrize("norm", ["ln", "rms_op", "ln_written", "rms"])
def test_a_norm_whose_input_is_not_zero_at_removed_channels_freezes_the_hidden_size(norm):
    """sigmoid(0) = 0.5: the masked original's statistics see 0.5 at a removed channel, which
    the pruned model cannot reproduce: the hidden size stays frozen."""
    m = residual_stream(norm, before_norm="Sigmoid")
    dg = gp.analyze(gp.load(m.SerializeToString()))
    assert not [g for g in dg.prunable_groups if g.normalised]
    assert any("reduces over this axis" in r or "its input is not known to be zero at a removed channel" in r
               for f in dg.frozen_groups for r in f.reasons)
    prune_and_check(m, min_groups=2)  # the FFN widths still prune


def test_a_written_out_layernorm_says_so_where_it_keeps_the_hidden_size():
    """Below opset 17 exporters write LayerNorm as ReduceMean, Sub, Pow, ReduceMean, Add,
    Sqrt, Div: where its hidden size cannot prune, the reason names that form (it said only
    "ReduceMean reduces over this axis and its input is not known to be zero")."""
    m = residual_stream("ln_written", before_norm="Sigmoid")
    said = [r for f in gp.analyze(gp.load(m.SerializeToString())).frozen_groups for r in f.reasons
            if "LayerNorm written out" in r]
    assert said and "its input is not known to be zero at a removed channel" in said[0]


def test_a_stream_deeper_than_the_zero_tracing_depth_still_prunes():
    """Each norm asks whether the stream is zero at removed channels, which goes back through
    every block: 70 blocks are 70 Adds deep, past zero_channels.MAX_DEPTH (64), and answered
    only because each layer finds the one before it answered (the memo)."""
    m = residual_stream("rms", layers=70)
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    prune_and_check(m, seed=0, min_groups=71)


def test_allocation_keeps_the_hidden_size_unless_asked():
    m = residual_stream("ln")
    hidden = hidden_groups(m)[0]
    slots = {(s.value, s.axis) for s in hidden.const_slots}

    kept = gp.prune(gp.load(m.SerializeToString()), 0.3, round_to=1)
    assert kept.plan.tensors and not slots & {(t["name"], t["axis"]) for t in kept.plan.tensors}
    assert kept.plan.settings["allocation_result"]["hidden_kept"] == [hidden.name]

    pruned = gp.prune(gp.load(m.SerializeToString()), 0.3, round_to=1, prune_hidden=True)
    assert slots <= {(t["name"], t["axis"]) for t in pruned.plan.tensors}
    assert pruned.model.graph.inputs[0].shape[-1] == 16  # the graph's input keeps its width
    from graphprune.runtime import oracle
    import onnx_ir as ir

    res = oracle.check(ir.serde.deserialize_model(m), pruned.model, pruned.plan, n_random=2)
    assert res.ok, res.diffs


def test_an_l2_normalisation_over_channels_sums_zeros():
    """x / sqrt(ReduceSum(x*x)) over the channels of a projection (CLIP's embeddings before a
    head): a sum of the masked original's zeros is unchanged, no rewrite needed."""
    nodes = [helper.make_node("MatMul", ["x", "wp"], ["p"]), helper.make_node("Mul", ["p", "p"], ["pp"]),
             helper.make_node("ReduceSum", ["pp", "axes"], ["ss"], keepdims=1),
             helper.make_node("Sqrt", ["ss"], ["norm"]), helper.make_node("Div", ["p", "norm"], ["u"]),
             helper.make_node("MatMul", ["u", "wo"], ["y"])]
    m = make_model(nodes, [("x", ["B", 16])], [("y", ["B", 5])],
                   {"wp": w(16, WIDTH, seed=1), "axes": np.array([-1], np.int64), "wo": w(WIDTH, 5, seed=2)})
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    for seed in range(3):
        pruned, _, _ = prune_and_check(m, seed=seed)
    assert [n.op_type for n in pruned.graph].count("Mul") == 1  # no rewrite of the sum


def test_a_plan_that_prunes_the_hidden_size_replays_to_the_same_model():
    """The plan lists only the sliced tensors; replay analyses the input again and so makes
    the same Pad/LayerNormalization/Slice rewrite."""

    from graphprune.runtime.ort import session

    m = residual_stream("ln", post=True)
    first = gp.prune(gp.load(m.SerializeToString()), 0.3, round_to=1, prune_hidden=True)
    again = gp.prune(gp.load(m.SerializeToString()), plan=first.plan)
    assert again.plan.tensors == first.plan.tensors
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)}
    a, b = (session(r.model).run(None, x)[0] for r in (first, again))
    np.testing.assert_array_equal(a, b)


def _norm_chain(kinds: list[str]):
    """x -> x·we (12) -> each of `kinds` in turn ("ln": LayerNormalization; "rms": an RMSNorm
    written out; "mean_mul": x times its own mean over the hidden size; "pow_per_channel":
    x ** p with p > 0 varying per channel) -> ·wo."""
    nodes = [helper.make_node("MatMul", ["x", "we"], ["h0"])]
    inits = {"we": w(16, WIDTH, seed=1), "wo": w(WIDTH, 5, seed=2), "two": np.array(2.0, np.float32),
             "axes": np.array([-1], np.int64), "eps": np.array(1e-6, np.float32),
             "p": np.tile(np.array([1.0, 2.0, 3.0], np.float32), WIDTH // 3)}  # integers: defined for x < 0
    for i, kind in enumerate(kinds):
        src, out = f"h{i}", f"h{i + 1}"
        inits[f"g{i}"], inits[f"b{i}"] = w(WIDTH, seed=10 + i), w(WIDTH, seed=20 + i)
        if kind == "ln":
            nodes.append(helper.make_node("LayerNormalization", [src, f"g{i}", f"b{i}"], [out]))
        elif kind == "pow_per_channel":
            nodes.append(helper.make_node("Pow", [src, "p"], [out]))
        elif kind == "mean_mul":
            nodes += [helper.make_node("ReduceMean", [src, "axes"], [f"m{i}"]),
                      helper.make_node("Mul", [src, f"m{i}"], [out])]
        else:
            nodes += [helper.make_node("Pow", [src, "two"], [f"sq{i}"]),
                      helper.make_node("ReduceMean", [f"sq{i}", "axes"], [f"ms{i}"]),
                      helper.make_node("Add", [f"ms{i}", "eps"], [f"me{i}"]), helper.make_node("Sqrt", [f"me{i}"], [f"r{i}"]),
                      helper.make_node("Div", [src, f"r{i}"], [f"d{i}"]), helper.make_node("Mul", [f"d{i}", f"g{i}"], [out])]
    nodes.append(helper.make_node("MatMul", [f"h{len(kinds)}", "wo"], ["y"]))
    return make_model(nodes, [("x", ["B", "S", 16])], [("y", ["B", "S", 5])], inits, opset=18)


@pytest.mark.parametrize("kinds", [["ln", "ln"], ["ln", "ln", "ln"], ["ln", "mean_mul"], ["ln", "rms"], ["rms", "ln"],
                                   ["rms", "rms"]])
def test_a_norm_reading_a_pruned_norm_uses_the_analysed_width(kinds):
    """The first norm's rewrite gives its output the pruned width; the next norm's rewrite
    took that as the original and removed the channels again (a LayerNorm after a LayerNorm
    kept 6 of 9 channels: ONNX Runtime refused the model; a mean after a LayerNorm was
    scaled by 1 - 3/9 instead of 1 - 3/12: oracle FAIL)."""
    m = _norm_chain(kinds)
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    for seed in range(3):
        prune_and_check(m, seed=seed, fraction=0.3)


def test_a_per_channel_exponent_does_not_keep_zeros():
    """x ** p with p varying per channel: p is sliced with the channel, so masked to 0, and
    0 ** 0 = 1 in the masked original: the norm after it must not count on zeros (it did:
    oracle FAIL), so the hidden size freezes."""
    m = _norm_chain(["pow_per_channel", "ln"])
    assert not hidden_groups(m)
    prune_and_check(m, min_groups=0)


def test_an_rms_norm_cast_to_float16_takes_its_factor_after_the_mean():
    """Folding kept/original into eps and gamma across a Cast to float16 rounds the values
    there differently (1e-3 of the output: oracle FAIL); the mean is multiplied instead."""
    nodes = [helper.make_node("MatMul", ["x", "we"], ["h"]), helper.make_node("Pow", ["h", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]), helper.make_node("Add", ["ms", "eps"], ["me"]),
             helper.make_node("Sqrt", ["me"], ["r"]), helper.make_node("Div", ["h", "r"], ["d"]),
             helper.make_node("Cast", ["d"], ["d16"], to=10), helper.make_node("Mul", ["d16", "g"], ["n16"]),
             helper.make_node("Cast", ["n16"], ["n"], to=1), helper.make_node("MatMul", ["n", "wo"], ["y"])]
    inits = {"we": w(16, WIDTH, seed=1), "wo": w(WIDTH, 5, seed=2), "two": np.array(2.0, np.float32),
             "axes": np.array([-1], np.int64), "eps": np.array(1e-6, np.float32),
             "g": w(WIDTH, seed=3).astype(np.float16)}
    m = make_model(nodes, [("x", ["B", "S", 16])], [("y", ["B", "S", 5])], inits, opset=18)
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    pruned, _, _ = prune_and_check(m, fraction=0.3)
    mean = next(n for n in pruned.graph if n.op_type == "ReduceMean")
    assert [u.node.op_type for u in mean.outputs[0].uses()] == ["Mul"]


def test_prune_hidden_on_a_model_without_one_says_why(tmp_path, capsys):
    """--prune-hidden where the hidden size stays frozen: said, with the frozen group's reason
    (it pruned the other groups and said nothing about the flag)."""
    from graphprune.cli.main import main

    src = tmp_path / "sig.onnx"
    src.write_bytes(residual_stream("ln", before_norm="Sigmoid").SerializeToString())
    assert main(["prune", str(src), "--prune-hidden", "--round-to", "1", "--no-bench", "-o", str(tmp_path / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "--prune-hidden: no hidden size to prune in this model: its group" in out
    assert "its input is not known to be zero at a removed channel" in out


def test_inspect_marks_the_hidden_size(tmp_path, capsys):
    import json

    from graphprune.cli.main import main

    src = tmp_path / "ln.onnx"
    src.write_bytes(residual_stream("ln").SerializeToString())
    assert main(["inspect", str(src), "--report", str(tmp_path / "i")]) == 0
    assert "hidden size (--prune-hidden)" in capsys.readouterr().out
    groups = json.loads((tmp_path / "i.report.json").read_text())["groups"]
    assert [g["channels"] for g in groups if g["hidden"]] == [WIDTH] and all(g["prunable"] for g in groups)


def _in_float16(m):
    """The same model computed in float16: x cast on the way in, y on the way out, every float
    constant float16."""
    import onnx
    from onnx import numpy_helper

    g = m.graph
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))
    for n in g.node:
        n.input[:] = ["x16" if i == "x" else i for i in n.input]
        n.output[:] = ["y16" if o == "y" else o for o in n.output]
    g.node.insert(0, helper.make_node("Cast", ["x"], ["x16"], to=onnx.TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", ["y16"], ["y"], to=onnx.TensorProto.FLOAT))
    return m


@pytest.mark.parametrize("norm", ["rms", "rms_nogamma"])
def test_a_float16_rms_norm_averages_its_zeros_put_back(norm):
    """kept/original rounds in float16 (folded into eps and gamma or multiplied after the
    mean: 4e-4 to 7e-4 of the output, oracle FAIL, adversarial probe); the removed channels'
    zeros are padded back before the mean instead, which averages what the original did."""
    m = _in_float16(residual_stream(norm))
    assert [g.num_atoms for g in hidden_groups(m)] == [WIDTH]
    for seed in range(3):
        pruned, _, _ = prune_and_check(m, seed=seed, fraction=0.3)
        means = [n for n in pruned.graph if n.op_type == "ReduceMean"]
        assert means and all(n.inputs[0].producer().op_type == "Pad" for n in means)


def test_a_float16_written_out_layernorm_keeps_the_hidden_size():
    """The variance's correction (kept/original and r/original · mean²) rounds in float16, as
    kept/original did for an RMSNorm (oracle FAIL there): the hidden size stays whole, said why."""
    m = _in_float16(residual_stream("ln_written"))
    assert not hidden_groups(m)
    said = [r for f in gp.analyze(gp.load(m.SerializeToString())).frozen_groups for r in f.reasons
            if "LayerNorm written out" in r]
    assert said and "in float16" in said[0] and "over the original width in float32 only" in said[0]
    prune_and_check(m, min_groups=2)  # the FFN widths still prune


@pytest.mark.torch
def test_a_gpt2_exported_below_opset_17_prunes_its_hidden_size(tmp_path):
    """transformers' GPT-2 LM exported by TorchScript at opset 14: every LayerNorm written out
    (ReduceMean, Sub, Pow, ...). Its hidden size prunes, the written form stays (no
    LayerNormalization appears), and the oracle holds."""
    pytest.importorskip("transformers")
    from zoo.hf_models import export_hf

    from graphprune.runtime import oracle

    path = export_hf("gpt2_lm", str(tmp_path / "gpt2_14.onnx"), False, opset=14)
    model = gp.load(path)
    assert [g.num_atoms for g in gp.analyze(model).prunable_groups if g.normalised] == [32]
    res = gp.prune(model, 0.3, round_to=1, prune_hidden=True)
    hidden = [g for g in res.plan.groups if "wte" in g["name"]]
    assert hidden and hidden[0]["removed_atoms"]
    assert not any(n.op_type == "LayerNormalization" for n in res.model.graph)
    check = oracle.check(gp.load(path), res.model, res.plan, n_random=2)
    assert check.ok, check.summary()
