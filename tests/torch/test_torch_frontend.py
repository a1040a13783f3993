"""graphprune.prune_module: the torch frontend, acceptance cases with the numeric oracle.

Every case prunes a small module and checks (gp_torch_cases.check_result): pruned module
== masked original (torch side, by parameter name), == pruned ONNX (ONNX Runtime), the
ONNX oracle on the exported model, fewer parameters, and gradients after pruning.
"""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.errors import FrontendError  # noqa: E402
from gp_torch_cases import (  # noqa: E402
    Attention, ConcatChain, ConcatHeight, ConcatSplit, FlattenLinear, GroupedAfterConcat, GroupedUneven, LeNet,
    MultiIO, SelfAttention, SingleChannel, Split, StackedFC, Unused, check_result, masked_by_hand,
    random_importance, seeded,
)

pytestmark = pytest.mark.torch

IMG = (2, 3, 8, 8)

CASES = {
    "concat_chain": (ConcatChain, lambda: (torch.randn(IMG),)),
    "concat_split": (ConcatSplit, lambda: (torch.randn(IMG),)),
    "split": (Split, lambda: (torch.randn(IMG),)),
    "stacked_fc": (StackedFC, lambda: (torch.randn(4, 20),)),
    "multi_io": (MultiIO, lambda: (torch.randn(IMG), torch.randn(2, 2, 8, 8))),
    "concat_non_feature_axis": (ConcatHeight, lambda: (torch.randn(IMG),)),
    "reshape_flatten_linear": (FlattenLinear, lambda: (torch.randn(IMG),)),
    "single_channel": (SingleChannel, lambda: (torch.randn(IMG),)),
    "unused_parameters": (Unused, lambda: (torch.randn(IMG),)),
    "grouped_conv_after_concat": (GroupedAfterConcat, lambda: (torch.randn(IMG),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_equals_masked_original_and_pruned_onnx(name):
    factory, make_args = CASES[name]
    module, args = seeded(factory), make_args()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = gp.prune_module(module, args, ratio=0.4, importance=random_importance())
    check_result(module, args, result)
    assert result.kind == "module", result.notes  # these forwards have no literal widths
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items()), "input module was modified"
    # the magnitude path too, and a replay of its plan
    again = gp.prune_module(module, args, ratio=0.5)
    check_result(module, args, again)
    replay = gp.prune_module(module, args, plan=again.plan)
    assert replay.plan.tensors == again.plan.tensors


def test_attributes_follow_the_tensors():
    module = seeded(ConcatSplit)
    pruned, plan = gp.prune_module(module, torch.randn(IMG), ratio=0.5)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d):
            assert (m.out_channels, m.in_channels // m.groups) == tuple(m.weight.shape[:2])
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
    w = pruned.p[0].weight
    assert w.shape[0] < 6 and f"Conv2d({w.shape[1]}, {w.shape[0]}," in repr(pruned)  # repr tells the new width


def test_unused_parameters_are_kept_as_they_are():
    module = seeded(Unused)
    pruned, plan = gp.prune_module(module, torch.randn(IMG), ratio=0.5)
    assert pruned.spare.weight.shape == (7, 7) and pruned.extra.shape == (5,) and pruned.table.shape == (4,)
    assert not any(t["name"].startswith(("spare", "extra", "table")) for t in plan.tensors)


def test_single_channel_is_never_emptied():
    module = seeded(SingleChannel)
    result = gp.prune_module(module, torch.randn(IMG), ratio=0.9)
    check_result(module, (torch.randn(IMG),), result)
    assert result.module.gate.out_channels == 1 and result.module.out.out_channels == 1


def test_lenet_literal_view_sizes_give_a_graph_module_for_any_batch():
    module = seeded(LeNet)
    x = torch.randn(2, 1, 28, 28)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    assert result.kind == "graph" and isinstance(result.module, torch.fx.GraphModule), result.notes
    kept = result.module.conv2.weight.shape[0]
    assert kept < 16 and f"[-1, {kept * 16}]" in result.module.code and "256" not in result.module.code
    masked = gp.masked_module(module, result.plan)
    for batch in (1, 5):  # the dynamic-batch capture: not tied to the example's batch size
        xb = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            np.testing.assert_allclose(result.module(xb).numpy(), masked(xb).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [8, 4], ids=["depthwise", "grouped"])
def test_a_graph_module_rewrites_the_groups_of_a_pruned_grouped_conv(groups):
    """A literal view in forward makes the result a graph; a grouped conv in it kept its
    literal `groups` and the graph failed ('Given groups=8, expected weight to be at least 8
    at dimension 0'): nothing was returned. The groups now follow the channels left."""
    class DepthwiseView(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.d = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=groups)
            self.fc = nn.Linear(8 * 6 * 6, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.d(torch.relu(self.a(x)))).view(-1, 8 * 6 * 6))

    module = seeded(DepthwiseView)
    x = torch.randn(2, 3, 6, 6)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    assert result.kind == "graph"
    assert result.module.d.weight.shape[0] < 8 and f"[-1, {result.module.d.weight.shape[0] * 36}]" in result.module.code


@pytest.mark.parametrize("depthwise", [False, True], ids=["grouped", "depthwise"])
def test_grouped_conv_with_uneven_group_importance(depthwise):
    module = seeded(lambda: GroupedUneven(depthwise))
    x = torch.randn(IMG)
    result = gp.prune_module(module, x, ratio=0.25)
    check_result(module, (x,), result)
    g = result.module.g
    stem_removed = next(t["removed"] for t in result.plan.tensors if t["name"] == "stem.0.weight" and t["axis"] == 0)
    if depthwise:  # whole groups go, group count follows
        assert g.groups == g.in_channels == g.out_channels == 16 - len(stem_removed)
        assert set(stem_removed) >= {0, 1, 2, 3}  # the tiny channels were the ones to go
    else:  # the same positions leave every group, the groups stay equal
        assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0
        positions = {i % 4 for i in stem_removed}
        assert set(stem_removed) == {p + 4 * k for p in positions for k in range(4)}


@pytest.mark.parametrize("groups", [4, 16])
def test_group_norm_loses_whole_groups_and_its_group_count_follows(groups):
    """conv (16) -> GroupNorm(groups) -> conv: the analysis removes whole groups, but the module
    kept num_groups, so its forward normalised over other groups (error 0.1) or raised on
    divisibility: 'cannot build a pruned module ... please report this'."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gn, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(groups, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.gn(self.a(x))))

    module, x = seeded(Net), torch.randn(IMG)
    with torch.no_grad():  # uneven groups, so the criterion has a choice
        module.a.weight[: 16 // groups * 2] *= 0.01
    result = gp.prune_module(module, x, ratio=0.5, round_to=1)
    check_result(module, (x,), result)
    gn = result.module.gn
    assert result.kind == "module" and gn.num_channels < 16
    assert gn.num_groups == groups * gn.num_channels // 16 and gn.num_channels % gn.num_groups == 0


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_module_onnx_runtime_cannot_run_is_refused_before_any_work(dtype, monkeypatch):
    """float64 and bfloat16 modules ran the capture and the pruning, then failed inside ONNX
    Runtime with its own error class (no CPU Conv/Gemm for them)."""
    import graphprune.torchprune as tp
    from graphprune.errors import UsageError

    module = seeded(LeNet).to(getattr(torch, dtype))
    monkeypatch.setattr("graphprune.frontends.torch.capture", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(UsageError, match=f"does not run {dtype}") as e:
        tp.prune_module(module, torch.randn(2, 1, 28, 28, dtype=getattr(torch, dtype)), ratio=0.5)
    assert "module.float()" in e.value.hint
    assert f"result.module.to(torch.{dtype})" in e.value.hint  # the float64 hint said bfloat16


def test_a_per_head_mask_for_the_heads_before_pruning_selects_the_kept_ones():
    """nn.MultiheadAttention documents a 3-D attn_mask of N·num_heads rows; the pruned module
    (fewer heads, same embedding) crashed on the mask its caller already builds ('shape
    [2, 6, 10, 10] is invalid'). It now takes the kept heads' rows of such a mask."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.out = nn.MultiheadAttention(64, 8, batch_first=True), nn.Linear(64, 10)

        def forward(self, h, attn_mask=None):
            return self.out(self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0])

    model, h = seeded(M), torch.randn(2, 10, 64)
    result = gp.prune_module(model, (h,), ratio=0.3)
    attn = result.module.attn
    assert attn.num_heads < 8 and len(attn.kept_heads) == attn.num_heads
    mask = torch.randn(2 * 8, 10, 10)
    masked = gp.masked_module(model, result.plan)
    with torch.no_grad():
        np.testing.assert_allclose(result.module(h, mask).numpy(), masked(h, mask).numpy(), rtol=1e-4, atol=1e-5)
        rows = mask.reshape(2, 8, 10, 10)[:, attn.kept_heads].reshape(-1, 10, 10)
        np.testing.assert_allclose(result.module(h, rows).numpy(), masked(h, mask).numpy(), rtol=1e-4, atol=1e-5)
        with pytest.raises(RuntimeError, match="expected"):
            result.module(h, torch.randn(2 * 5, 10, 10))


def test_a_model_that_says_its_classifier_width_says_the_pruned_one():
    """timm's API: num_features (and head_hidden_size) is the classifier's input width, and
    reset_classifier(n) builds a head of that width; it kept the old width, so the new head
    could not read the pruned features (resnet10t: Linear(512, 10) after 359 features)."""
    class TimmLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_features = self.head_hidden_size = 32
            self.body = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(32, 5)

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, n):
            self.fc = nn.Linear(self.num_features, n)

        def forward(self, x):
            return self.fc(self.body(x))

    result = gp.prune_module(seeded(TimmLike), torch.randn(2, 3, 8, 8), ratio=0.5)
    pruned = result.module
    assert pruned.num_features == pruned.head_hidden_size == pruned.fc.in_features == 16
    pruned.reset_classifier(10)
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_prelu_says_its_new_parameter_count():
    m = seeded(lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.PReLU(16), nn.Conv2d(16, 4, 3)))
    result = gp.prune_module(m, torch.randn(2, 3, 8, 8), ratio=0.5)
    prelu = result.module[1]
    assert prelu.num_parameters == prelu.weight.numel() == 8


@pytest.mark.parametrize("ratio", ["0.3", 1.0, -0.1, True])
def test_a_ratio_that_is_not_a_fraction_is_a_usage_error(ratio):
    from graphprune.errors import UsageError

    with pytest.raises(UsageError, match="ratio must be a number in"):
        gp.prune_module(seeded(StackedFC), torch.randn(4, 20), ratio=ratio)


@pytest.mark.parametrize("criterion,said,hint", [
    ("wanda", "needs calibration data, which prune_module does not take", "gp.run_prune(path"),
    ("rev_score", "unknown criterion 'rev_score'", "graphprune.load_plugins()"),
])
def test_a_criterion_prune_module_cannot_use_says_what_to_do_from_python(criterion, said, hint):
    """wanda's hint was 'give --calib', an option prune_module has not; a plugin's criterion
    was 'unknown' with no word of gp.load_plugins()."""
    from graphprune.errors import UsageError

    with pytest.raises(UsageError, match=said) as e:
        gp.prune_module(seeded(StackedFC), torch.randn(4, 20), criterion=criterion)
    assert hint in e.value.hint and "--calib" not in e.value.hint


def test_a_float16_module_is_checked_at_its_resolution():
    """At the float32 tolerance (1e-4 of the scale) a float16 module's agreement with its ONNX
    export (~3e-4) was refused with 'please report this'."""
    module = seeded(LeNet).half()
    x = torch.randn(2, 1, 28, 28).half()
    result = gp.prune_module(module, x, ratio=0.5)
    assert result.module.conv1.weight.dtype == torch.float16
    masked = masked_by_hand(module, result.plan)
    with torch.no_grad():
        got, want = result.module(x).float(), masked(x).float()
    assert float((got - want).abs().max()) <= 1e-2 * float(want.abs().max())


# ---- custom layer with its own rule (a custom torch op exported as ONNX Shrink) ---------------

@torch.library.custom_op("graphprune_test::soft_shrink", mutates_args=())
def soft_shrink(x: torch.Tensor, lambd: float) -> torch.Tensor:
    return torch.where(x.abs() > lambd, x - torch.sign(x) * lambd, torch.zeros_like(x))


@soft_shrink.register_fake
def _(x, lambd):
    return torch.empty_like(x)


def _soft_shrink_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.lambd = inputs[1]


def _soft_shrink_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * (x.abs() > ctx.lambd), None


soft_shrink.register_autograd(_soft_shrink_backward, setup_context=_soft_shrink_setup)


def soft_shrink_onnx(x, lambd: float):
    from onnxscript import opset18 as op

    return op.Shrink(x, bias=lambd, lambd=lambd)


class ShrinkLayer(nn.Module):
    def forward(self, x):
        return soft_shrink(x, 0.1)


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s1, self.b, self.s2 = nn.Conv2d(3, 8, 3), ShrinkLayer(), nn.Conv2d(8, 8, 3), ShrinkLayer()
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.s2(self.b(self.s1(self.a(x)))))


def shrink_rule(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])  # elementwise; Shrink(0) == 0 keeps the oracle


@pytest.fixture
def no_shrink_rule():
    saved = [e for e in gp.RULES.entries() if e.domain == "" and e.op_type == "Shrink"]
    gp.RULES.remove("", "Shrink")
    yield
    gp.RULES.remove("", "Shrink")
    for e in saved:
        gp.RULES.add(e.domain, e.op_type, e.fn, since=e.since, until=e.until, family=e.family)


def test_custom_layer_needs_and_uses_its_own_rule(no_shrink_rule):
    module, x = seeded(CustomNet), torch.randn(2, 3, 10, 10)
    table = {torch.ops.graphprune_test.soft_shrink.default: soft_shrink_onnx}
    frozen = gp.prune_module(module, x, ratio=0.5, onnx_translations=table)
    assert not frozen.plan.tensors  # fail closed: no rule for Shrink, nothing through it is pruned
    from graphprune.frontends.torch import capture

    diags = gp.analyze(capture(module, x, onnx_translations=table).model).diagnostics
    assert any("Shrink" in d.message for d in diags)
    gp.RULES.add("", "Shrink", shrink_rule, family="custom")
    result = gp.prune_module(module, x, ratio=0.5, onnx_translations=table)
    check_result(module, (x,), result, min_removed_groups=2)


# ---- attention ----------------------------------------------------------------------------

def test_attention_embedding_channels():
    """Pruning the embedding feeding nn.MultiheadAttention narrows in_proj's input, which
    the class cannot express: the result is a graph module, still exact."""
    module, x = seeded(Attention), torch.randn(2, 5, 8)
    result = gp.prune_module(module, x, ratio=0.25)
    check_result(module, (x,), result)
    assert any(t["name"] == "mha.in_proj_weight" and t["axis"] == 1 for t in result.plan.tensors)


def test_attention_head_pruning_with_literal_head_sizes():
    """Whole heads go (q/k/v rows in blocks of head_dim); the forward's literal
    view(b, t, 4, 4) / reshape(b, t, 16) are rewritten in the returned graph."""
    module, x = seeded(SelfAttention), torch.randn(2, 5, 8)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    q_rows = next(t["removed"] for t in result.plan.tensors if t["name"] == "q.weight" and t["axis"] == 0)
    heads = sorted({i // 4 for i in q_rows})
    assert q_rows == [h * 4 + d for h in heads for d in range(4)] and len(heads) == 2  # whole heads
    assert result.kind == "graph" and ", 2, 4]" in result.module.code
    with torch.no_grad():  # any batch size
        xb = torch.randn(3, 5, 8)
        np.testing.assert_allclose(result.module(xb).numpy(), gp.masked_module(module, result.plan)(xb).numpy(),
                                   rtol=1e-4, atol=1e-5)
    # kept as the note says (torch.save of the graph itself fails): state_dict + plan, rebuilt by replay
    import io

    with torch.no_grad():  # as after fine-tuning: the rebuilt graph must take these weights, not the plan's
        for p in result.module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    saved = io.BytesIO()
    torch.save(result.module.state_dict(), saved)
    assert any("torch.save(result.module.state_dict())" in n for n in result.notes)
    rebuilt = gp.prune_module(module, x, plan=result.plan).module
    saved.seek(0)
    rebuilt.load_state_dict(torch.load(saved))
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(xb).numpy(), result.module(xb).numpy(), rtol=0, atol=0)
    # and only that: the note said 'any batch size' of a graph that fails at another sequence length
    assert "any batch size; its other dims stay those of the example inputs (N×5×8)" in " ".join(result.notes)
    with pytest.raises(RuntimeError):
        result.module(torch.randn(2, 6, 8))


def test_an_ignore_list_that_excludes_every_group_is_said_so():
    """ignore='.*' (a regular expression matching every tensor) was reported as 'no channel
    group can be pruned (... e.g. an op without a channel rule)'."""
    module, x = seeded(StackedFC), torch.randn(4, 20)
    result = gp.prune_module(module, x, ratio=0.5, ignore=".*")
    assert not result.plan.tensors
    assert any("prunable channel group(s) are excluded by ignore=['.*']" in n for n in result.notes), result.notes


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_round_to_counts_channels_of_linear_q_k_v(round_to):
    """torch exports nn.Linear as MatMul(x, Transpose(W)): W is still the weight, so round_to
    rounds the q/k/v width in channels, as on the ONNX path. It was applied to the head
    count (no slot was a weight): round_to 4 with 4 heads of 4 pruned no head at all."""
    module, x = seeded(SelfAttention), torch.randn(2, 5, 8)
    result = gp.prune_module(module, x, ratio=0.5, round_to=round_to)
    check_result(module, (x,), result)
    q_rows = next(t["removed"] for t in result.plan.tensors if t["name"] == "q.weight" and t["axis"] == 0)
    assert len({i // 4 for i in q_rows}) == 2 and (16 - len(q_rows)) % round_to == 0


def _whole_heads(rows, inner, head_dim):
    """The heads whose rows go, checked to be whole heads removed alike from q, k and v."""
    heads = sorted({(r % inner) // head_dim for r in rows})
    assert rows == [p * inner + h * head_dim + d for p in range(3) for h in heads for d in range(head_dim)], rows
    return heads


def test_attention_head_pruning():
    """nn.MultiheadAttention's export unflattens the packed in-projection into (3, E) and
    picks q/k/v by index: whole heads go from all three, and num_heads follows."""
    module, x = seeded(Attention), torch.randn(2, 5, 8)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    rows = next(t["removed"] for t in result.plan.tensors if t["name"] == "mha.in_proj_weight" and t["axis"] == 0)
    assert len(_whole_heads(rows, 16, 4)) == 2
    assert result.kind == "module" and result.module.mha.num_heads == 2


def test_attention_heads_pruned_while_the_embedding_keeps_its_width():
    """The usual case in a transformer: heads and FFN go, the residual width stays. The
    module keeps its class tree; its attention becomes PrunedMultiheadAttention, which
    runs at other batch and sequence sizes and with masks, like the masked original."""
    from graphprune.torchprune.mha import PrunedMultiheadAttention

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)

        def forward(self, x):
            return self.layer(x)

    module, x = seeded(Encoder), torch.randn(2, 5, 16)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    attn = result.module.layer.self_attn
    rows = next(t["removed"] for t in result.plan.tensors if t["name"] == "layer.self_attn.in_proj_weight")
    assert len(_whole_heads(rows, 16, 4)) == 2
    assert result.kind == "module" and isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 4, 16)
    masked = masked_by_hand(module, result.plan)
    xb = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        for kw in ({}, {"src_key_padding_mask": pad}, {"src_mask": causal}, {"src_mask": causal, "is_causal": True}):
            np.testing.assert_allclose(result.module.layer(xb, **kw).numpy(), masked.layer(xb, **kw).numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=str(kw))


def test_attention_narrowed_at_the_same_positions_of_every_head(tmp_path):
    """At d_model 64 with 4 heads, ratio 0.5 removes 8 of the 16 positions of every head
    (the export reshapes q/k/v to (..., heads, head_dim), coupling position i of all heads),
    not whole heads. The module took that for 2 whole heads of 16 and failed ('differs from
    the pruned ONNX'); it is now 4 heads of 8 with the original 1/sqrt(16) scale, equal to the
    masked original at other sizes, with masks, with and without attention weights."""
    from graphprune.torchprune.mha import PrunedMultiheadAttention

    torch.manual_seed(0)
    module = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    result = gp.prune_module(module, x, ratio=0.5)
    check_result(module, (x,), result)
    attn = result.module.self_attn
    assert result.kind == "module" and isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.qk_dim, attn.v_dim, attn.scale) == (4, 8, 8, 0.25)
    masked = masked_by_hand(module, result.plan)
    xb = torch.randn(3, 7, 64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        for kw in ({}, {"src_key_padding_mask": pad}):
            np.testing.assert_allclose(result.module(xb, **kw).numpy(), masked(xb, **kw).numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=str(kw))
        got, w = attn(xb, xb, xb, need_weights=True)
        want, w0 = masked.self_attn(xb, xb, xb, need_weights=True)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w.numpy(), w0.numpy(), rtol=1e-4, atol=1e-6)


def test_a_module_nothing_can_be_pruned_in_says_so():
    """prune_module returned an identical copy, an empty plan and no note (the prune verb
    says 'nothing pruned' for the same model). One Linear: its input and output are the
    module's, which keep their shapes."""
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 3)

        def forward(self, x):
            return self.a(x)

    result = gp.prune_module(seeded(G), torch.randn(2, 5, 8), ratio=0.4)
    assert not result.plan.tensors
    assert any(n.startswith("nothing pruned: no channel group of this module can be pruned") for n in result.notes)


@pytest.mark.parametrize("cell,kw", [(nn.LSTM, {}), (nn.GRU, {}), (nn.RNN, {}), (nn.LSTM, {"num_layers": 2}),
                                     (nn.LSTM, {"bidirectional": True})])
def test_recurrent_layers_prune_in_their_own_class(cell, kw):
    """torch.export's program lowers an nn.LSTM/GRU with W, R and B computed at run time from
    the parameters (gates reordered to ONNX's order by Slice and Concat): every group was
    frozen ('computed weights'). The hidden units and input features prune, and the layer
    stays an nn.LSTM/GRU/RNN with its sizes updated."""
    class R(nn.Module):
        def __init__(self):
            super().__init__()
            d = 2 if kw.get("bidirectional") else 1
            self.a, self.r, self.b = nn.Linear(8, 32), cell(32, 48, batch_first=True, **kw), nn.Linear(48 * d, 3)

        def forward(self, x):
            return self.b(self.r(torch.relu(self.a(x)))[0])

    model = seeded(R)
    x = torch.randn(2, 5, 8)
    result = gp.prune_module(model, x, ratio=0.4)
    assert result.kind == "module", result.notes
    assert isinstance(result.module.r, cell)
    assert result.module.r.hidden_size < 48 and result.module.r.input_size < 32
    assert result.module.r.hidden_size == result.module.r.weight_hh_l0.shape[1]
    from graphprune.torchprune import check_module

    assert check_module(model, result.module, result.plan, x) is None


@pytest.mark.parametrize("scores,says", [(lambda g: np.arange(3.0), r"shape \(3,\)"),
                                         (lambda g: np.full(g.num_atoms, np.nan), "NaN or infinite"),
                                         (lambda g: np.ones((g.num_atoms, 2)), "shape")])
def test_a_callable_importance_must_give_one_finite_score_per_atom(scores, says):
    """3 scores for 16 channels removed 3 channels, NaN scores removed the first ones, both
    without a word, and the plan's settings said criterion 'l2'."""
    from graphprune.errors import UsageError

    m = seeded(lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UsageError, match=says):
        gp.prune_module(m, x, importance=lambda dg, g: scores(g))

    def mine(dg, g):
        return np.arange(g.num_atoms, dtype=float)

    result = gp.prune_module(m, x, importance=mine)
    assert result.plan.settings["criterion"] == "callable mine"
    assert [t["removed"] for t in result.plan.tensors if t["name"] == "0.weight"] == [[0, 1, 2, 3]]


def test_gpt2_keeps_its_own_class_and_runs_at_any_length():
    """transformers' Conv1D shapes its output by an `nf` attribute, which stayed at the old
    width: the module's own forward failed, and the graph fallback it got instead ran only at
    the example's sequence length (no generate)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                                 n_positions=32, use_cache=False))
    model = seeded(lambda: model)
    x = torch.randint(0, 100, (2, 16))
    result = gp.prune_module(model, x, ratio=0.3)
    assert result.kind == "module", result.notes
    fc = result.module.transformer.h[0].mlp.c_fc
    assert fc.nf == fc.weight.shape[1] < 128
    masked = gp.masked_module(model, result.plan)
    with torch.no_grad():
        for xx in (x, torch.randint(0, 100, (3, 9))):
            np.testing.assert_allclose(result.module(xx).logits.numpy(), masked(xx).logits.numpy(), rtol=1e-4, atol=1e-5)


def test_export_failures_name_their_cause_without_terminal_colours():
    """A forward returning an int beside its tensor: the error was torch's first line
    ('... \\x1b[96mThis is step 3/3\\x1b[0m ... Next steps:') with a hint about missing operator
    translations; the cause was only in __cause__. Not a module at all: an AttributeError."""
    from graphprune.errors import FrontendError, UsageError

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 2)

        def forward(self, x):
            return {"y": self.a(x), "n": 3}

    with pytest.raises(FrontendError) as e:
        gp.prune_module(DictOut(), torch.randn(2, 8))
    assert "translating node return" in str(e.value) and "'int' object" in str(e.value)
    assert "\x1b" not in str(e.value) and "return tensors only" in e.value.hint
    with pytest.raises(UsageError, match="takes a torch.nn.Module, got function"):
        gp.prune_module(lambda z: z, torch.randn(2, 8))


def test_a_module_whose_export_does_not_run_says_so():
    """nn.LSTM with proj_size: torch.onnx writes an initial cell state of the projection's
    width, which ONNX Runtime refuses; the error named a graph node of the pruned fallback
    ('MatrixRef: ArrayRef size 5 not divisible by stride 4', adversarial probe)."""
    from graphprune.errors import FrontendError

    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.head = nn.Linear(6, 8), nn.LSTM(8, 12, proj_size=4), nn.Linear(4, 5)

        def forward(self, x):
            return self.head(self.rnn(self.inp(x))[0])

    with pytest.raises(FrontendError, match="does not run in ONNX Runtime, before any pruning"):
        gp.prune_module(seeded(Projected), torch.randn(7, 3, 6), ratio=0.3)


def test_a_plan_with_a_ratio_or_a_selection_is_refused():
    """plan= replays a plan: a ratio= beside it was ignored without a word (the CLI refuses
    --plan with --ratio)."""
    from graphprune.errors import UsageError

    m = seeded(lambda: nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)))
    x = torch.randn(2, 3, 8, 8)
    plan = gp.prune_module(m, x, ratio=0.3).plan
    with pytest.raises(UsageError, match="ratio= would be ignored"):
        gp.prune_module(m, x, ratio=0.75, plan=plan)
    with pytest.raises(UsageError, match="selection= would be ignored"):
        gp.prune_module(m, x, plan=plan, selection={0: [1]})
    assert gp.prune_module(m, x, plan=plan).plan.tensors == plan.tensors


def test_nothing_pruned_under_a_norm_says_the_hidden_size_is_kept_whole():
    """The only group is normalised by a LayerNorm: the note said 'ratio 0.3 removes no whole
    channel' of 32 channels, which is not why."""
    class Conv1dLN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.ln = nn.Conv1d(4, 32, 3, padding=1), nn.Conv1d(32, 6, 1), nn.LayerNorm(32)

        def forward(self, x):
            return self.c2(self.ln(torch.relu(self.c1(x)).transpose(1, 2)).transpose(1, 2))

    result = gp.prune_module(seeded(Conv1dLN), torch.randn(2, 4, 20), ratio=0.3)
    assert not result.plan.tensors
    assert any("a hidden size a LayerNorm/RMSNorm normalises over, which is kept whole" in n for n in result.notes), \
        result.notes


def test_a_module_whose_outputs_are_all_zero_is_not_called_checked():
    """A zero-initialised head (torchvision's ViT) makes every output 0: the check compared
    nothing, passed, and check_module accepted the unpruned module as its own pruned result."""
    from graphprune.errors import OracleMismatchError
    from graphprune.torchprune import NOTHING_COMPARED, check_module

    class Z(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = seeded(Z)
    with torch.no_grad():
        model.b.weight.zero_()
        model.b.bias.zero_()
    x = torch.randn(2, 8)
    with pytest.raises(OracleMismatchError, match="could not be checked: nothing compared"):
        gp.prune_module(model, x, ratio=0.5)
    result = gp.prune_module(model, x, ratio=0.5, check=False)
    assert check_module(model, model, result.plan, x).startswith(NOTHING_COMPARED)
    with torch.no_grad():
        model.b.bias.fill_(0.5)  # one output that is not zero: compared, and the result passes
    result = gp.prune_module(model, x, ratio=0.5)
    assert check_module(model, result.module, result.plan, x) is None


def test_head_layout_accepts_equal_heads_only():
    from graphprune.torchprune.mha import head_layout

    whole = {p: [4, 5, 6, 7] for p in "qkv"}  # head 1 of 3 heads of 4
    assert head_layout(4, 3, whole) == (2, 4, 4)
    same = {p: [0, 4, 8] for p in "qkv"}  # position 0 of every head
    assert head_layout(4, 3, same) == (3, 3, 3)
    assert head_layout(4, 3, {"q": [0, 4, 8], "k": [0, 4, 8], "v": [1, 5, 9, 2, 6, 10]}) == (3, 3, 2)
    assert head_layout(4, 3, {"q": [0, 4, 8], "k": [1, 5, 9], "v": []}) is None  # q and k at other positions
    assert head_layout(4, 3, {p: [0] for p in "qkv"}) is None  # heads of different widths
    assert head_layout(4, 3, {"q": [4, 5, 6, 7], "k": [4, 5, 6, 7], "v": []}) is None  # a value with no query
    assert head_layout(4, 3, None) == (3, 4, 4)


@pytest.mark.parametrize("batch_first", [False, True])
def test_pruned_multihead_attention_matches_masked_heads(batch_first):
    """PrunedMultiheadAttention on its own: slicing whole heads out of q/k/v and out_proj's
    input equals zeroing them, with and without attention weights and masks."""
    from graphprune.torchprune.mha import PrunedMultiheadAttention, adopt

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    keep = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # heads 0 and 2 of head_dim 4
    masked, pruned = copy.deepcopy(mha), copy.deepcopy(mha)
    gone = torch.tensor([i for i in range(12) if i not in keep])
    with torch.no_grad():
        for p in range(3):
            masked.in_proj_weight[p * 12 + gone] = 0
            masked.in_proj_bias[p * 12 + gone] = 0
        rows = torch.cat([p * 12 + keep for p in range(3)])
        pruned.in_proj_weight = nn.Parameter(mha.in_proj_weight[rows].clone())
        pruned.in_proj_bias = nn.Parameter(mha.in_proj_bias[rows].clone())
        pruned.out_proj.weight = nn.Parameter(mha.out_proj.weight[:, keep].clone())
    assert adopt(pruned) and isinstance(pruned, PrunedMultiheadAttention) and pruned.num_heads == 2
    q = torch.randn(2, 5, 12) if batch_first else torch.randn(5, 2, 12)
    kv = torch.randn(2, 6, 12) if batch_first else torch.randn(6, 2, 12)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    float_mask = torch.randn(5, 6)
    with torch.no_grad():
        for kw in ({}, {"need_weights": False}, {"key_padding_mask": pad}, {"attn_mask": float_mask},
                   {"attn_mask": float_mask > 1, "key_padding_mask": pad, "need_weights": False}):
            want, _ = masked(q, kv, kv, **kw)
            got, weights = pruned(q, kv, kv, **kw)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=str(kw))
        one = q[0] if batch_first else q[:, 0]   # unbatched (L, E) input
        np.testing.assert_allclose(pruned(one, one, one)[0].numpy(), masked(one, one, one)[0].numpy(),
                                   rtol=1e-5, atol=1e-6)
        _, w_full = mha(q, kv, kv, average_attn_weights=False)
        _, w_pruned = pruned(q, kv, kv, average_attn_weights=False)
        np.testing.assert_allclose(w_pruned.numpy(), w_full[:, [0, 2]].numpy(), rtol=1e-5, atol=1e-6)
    pruned.train()
    pruned(q, kv, kv)[0].sum().backward()
    assert pruned.in_proj_weight.grad is not None and pruned.out_proj.weight.grad is not None


# ---- errors ---------------------------------------------------------------------------------

class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: torch.export cannot capture it
            return self.a(x)
        return x


def test_uncapturable_module_is_a_frontend_error():
    with pytest.raises(FrontendError, match="torch.export cannot capture DataDependent") as e:
        gp.prune_module(DataDependent(), torch.randn(2, 4))
    assert e.value.hint and e.value.exit_code == 4


def test_plan_from_the_onnx_path_replays_on_the_module(tmp_path):
    """Plans are data: prune the exported ONNX with the CLI's path, replay on the module."""
    import onnx_ir as ir

    module, x = seeded(ConcatChain), torch.randn(IMG)
    first = gp.prune_module(module, x, ratio=0.0)
    model = gp.load(first.original_onnx)
    res = gp.prune(model, ratio=0.5, criterion="l1", round_to=1)  # a plan that slices the tiny chain
    res.plan.save(tmp_path / "p.json")
    replay = gp.prune_module(module, x, plan=tmp_path / "p.json")
    assert replay.plan.tensors == res.plan.tensors
    check_result(module, (x,), replay)
    assert isinstance(replay.onnx_model, ir.Model)


def test_modes_are_kept_and_training_behaviour_survives():
    module, x = seeded(StackedFC), torch.randn(4, 20)
    module.train()
    result = gp.prune_module(module, x, ratio=0.5)
    assert module.training and result.module.training  # captured in eval mode, modes given back
    check_result(module.eval(), (x,), result, trains=False)
    pruned = result.module.train()
    bn = pruned.net[1]
    before = bn.running_mean.clone()
    pruned(torch.randn(8, 20))  # train mode: BatchNorm statistics still update (own class kept)
    assert not torch.equal(before, bn.running_mean)


def test_graph_fallback_names_the_node_that_breaks():
    """If the literal sizes were not rewritten, the diagnostic names the first node whose
    shape is not the predicted one (what prune_module reports instead of a wrong module)."""
    from graphprune.frontends.torch import capture
    from graphprune.plan import removed_by_slot, selection_from_plan
    from graphprune.torchprune.graph import build_graph_module, first_mismatch

    module, x = seeded(LeNet), torch.randn(2, 1, 28, 28)
    plan = gp.prune_module(module, x, ratio=0.5).plan
    cap = capture(module, x)
    dg = gp.analyze(cap.model)
    removed = removed_by_slot(dg, selection_from_plan(dg, plan))
    forgot_view = {s: i for s, i in removed.items() if s.value != "view"}
    gm = build_graph_module(cap.program, plan, forgot_view)
    msg = first_mismatch(gm, cap.program, removed, (x,))
    assert msg and msg.startswith("node view"), msg
    assert first_mismatch(build_graph_module(cap.program, plan, removed), cap.program, removed, (x,)) is None


def test_the_hidden_size_stays_whole_in_a_module():
    """A LayerNorm's width can be pruned exactly only with statistics over the original width
    (Pad -> LayerNorm -> Slice in ONNX), which nn.LayerNorm cannot express: prune_module keeps
    it, as the ONNX path does by default, and prunes the FFN."""
    class PreNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.norm, self.up, self.down = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 32), \
                nn.Linear(32, 16)
            self.out_norm, self.head = nn.LayerNorm(16), nn.Linear(16, 3)

        def forward(self, x):
            h = self.emb(x)
            h = h + self.down(torch.relu(self.up(self.norm(h))))
            return self.head(self.out_norm(h))

    module, args = seeded(PreNorm), (torch.randn(2, 5, 8),)
    result = gp.prune_module(module, args, ratio=0.4)
    check_result(module, args, result)
    assert result.kind == "module", result.notes
    assert result.module.norm.normalized_shape == (16,) and result.module.up.out_features < 32
