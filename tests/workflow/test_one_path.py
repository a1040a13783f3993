"""One prune sequence (graphprune.workflow.run_prune) behind every caller: the CLI, the
Python API, compile, and the Olive pass produce the same plan for the same options.
The Olive pass is exercised through its real class, built on a stand-in `olive` package
(the few names the adapter imports) when olive-ai is not installed."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.cli.main import main
from graphprune.outputs import PLAN_KEY, plan_digest
from graphprune.plan import Plan


def _cli_plan(src: Path, out: Path, *flags) -> Plan:
    assert main(["prune", str(src), "-o", str(out), "--no-bench", *flags]) == 0
    return Plan.load(out.with_name(out.name.removesuffix(".onnx") + ".plan.json"))


def _fake_olive(monkeypatch) -> None:
    """The names graphprune.integrations.olive imports from olive-ai, and no more."""

    class Pass:
        pass

    class ONNXModelHandler:
        def __init__(self, model_path, model_attributes=None):
            self.model_path, self.model_attributes = str(model_path), model_attributes

    class PassConfigParam:
        def __init__(self, type_, default_value=None, description=""):
            self.type_, self.default_value, self.description = type_, default_value, description

    def resolve_onnx_path(path, name):
        p = Path(path)
        return str(p if p.suffix == ".onnx" else p / name)

    def model_proto_to_olive_model(proto, out, config):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out))
        return ONNXModelHandler(out)

    names = {"olive": {}, "olive.passes": {"Pass": Pass}, "olive.model": {"ONNXModelHandler": ONNXModelHandler},
             "olive.model.utils": {"resolve_onnx_path": resolve_onnx_path},
             "olive.passes.onnx": {},
             "olive.passes.onnx.common": {"get_external_data_config": dict,
                                          "model_proto_to_olive_model": model_proto_to_olive_model},
             "olive.passes.pass_config": {"PassConfigParam": PassConfigParam}}
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package: submodules resolve from sys.modules
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)


def _olive_pass_class(monkeypatch):
    import graphprune.integrations.olive as adapter

    try:
        import olive.passes  # noqa: F401
    except ImportError:
        _fake_olive(monkeypatch)
    monkeypatch.setattr(adapter, "_CLASS", None)
    return adapter.GraphprunePrune


def _run_olive_pass(cls, src: Path, out_dir: Path, **config):
    from olive.model import ONNXModelHandler

    defaults = {k: v.default_value for k, v in cls._default_config(None).items()}
    cfg = types.SimpleNamespace(**{**defaults, **config})
    handler = cls._run_for_config(cls.__new__(cls), ONNXModelHandler(str(src)), cfg, str(out_dir))
    return Path(handler.model_path), out_dir / handler.model_attributes["graphprune_plan"]


@pytest.mark.parametrize("flags,config", [
    ([], {}),
    (["--ratio", "0.5", "--round-to", "2", "--criterion", "l1"], {"ratio": 0.5, "round_to": 2, "criterion": "l1"}),
    (["--pipeline", "prune-channels{ratio=0.4},dce"], {"pipeline": "prune-channels{ratio=0.4},dce"}),
], ids=["defaults", "options", "pipeline"])
def test_olive_pass_and_cli_make_the_same_plan(samples_dir, tmp_path, monkeypatch, flags, config):
    src = samples_dir / "tiny_resnet.onnx"
    cli_plan = _cli_plan(src, tmp_path / "cli.onnx", *flags)
    cls = _olive_pass_class(monkeypatch)
    model_path, plan_path = _run_olive_pass(cls, src, tmp_path / "olive", **config)
    olive_plan = Plan.load(plan_path)
    assert olive_plan.groups and olive_plan.groups == cli_plan.groups
    assert olive_plan.tensors == cli_plan.tensors and olive_plan.settings == cli_plan.settings
    assert plan_digest(olive_plan) == plan_digest(cli_plan)
    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    assert meta[PLAN_KEY] == plan_digest(olive_plan)  # the model and its plan are one result
    assert gp.check(src, model_path, plan_path).ok


def test_api_compile_and_cli_make_the_same_plan(samples_dir, tmp_path):
    from graphprune.workflow.compile import CompileOptions, compile_model

    src = samples_dir / "tiny_resnet.onnx"
    cli_plan = _cli_plan(src, tmp_path / "cli.onnx", "--ratio", "0.5", "--round-to", "4")
    api_plan = gp.prune(src, 0.5, round_to=4).plan
    assert api_plan.groups == cli_plan.groups and api_plan.tensors == cli_plan.tensors
    compile_model(src, CompileOptions(target="arm", ratio=0.5, out=str(tmp_path / "c")), log_fn=lambda *a: None)
    compiled = Plan.load(tmp_path / "c" / "plan.json")  # arm: round_to 4, the target's SIMD lanes
    assert compiled.groups == cli_plan.groups and compiled.tensors == cli_plan.tensors


def test_options_defaults_are_written_once():
    import argparse

    from graphprune.cli import compile_cmd, prune_cmd
    from graphprune.workflow import PruneOptions

    d = PruneOptions()
    for mod in (prune_cmd, compile_cmd):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        ns = p.parse_args(["m.onnx"])
        assert (ns.ratio, ns.criterion, ns.seed) == (d.ratio, d.criterion, d.seed)
    from graphprune.workflow.options import ROUND_TO_DEFAULT

    p = argparse.ArgumentParser()
    prune_cmd.add_arguments(p)
    assert p.parse_args(["m.onnx"]).round_to == ROUND_TO_DEFAULT == "auto"  # resolved per machine, not frozen
    import inspect

    sig = inspect.signature(gp.prune)
    assert sig.parameters["ratio"].default == d.ratio and sig.parameters["round_to"].default == ROUND_TO_DEFAULT


def test_pipeline_state_is_a_typed_view_of_the_pass_context():
    from graphprune.workflow import PipelineState

    st = PipelineState()
    st.selection = {0: [1]}
    assert st.ctx.results["selection"] == {0: [1]}
    st.selection = None  # passes test `key in results`: None removes the key
    assert "selection" not in st.ctx.results
    assert set(st.fields()) == {"plan_in", "selection", "scores", "planned_options", "planned_graph",
                                "calibration", "input_shapes", "dense_model", "plan", "allocation",
                                "removed_blocks", "repair", "sparsity", "hidden"}


VERB_MODULES = ["graphprune/workflow", "graphprune/cli", "graphprune/api.py"]


def test_the_verbs_and_the_workflow_stay_simple():
    """Cyclomatic complexity <= 10 where the sequence and the verbs live (the package: <= 15)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "C901", "--config",
                           "lint.mccabe.max-complexity=10", "--output-format", "concise", *VERB_MODULES],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("repair", ["none", "bias"])
def test_a_large_model_written_by_run_prune_stays_readable(samples_dir, tmp_path, monkeypatch, repair):
    """Above BIG_MODEL_BYTES the result is staged to disk and moved to `out`: the returned
    model reads its tensors from the written file (it read them from the staging file,
    gone once moved), with or without a repair rewriting it after the stage."""
    import numpy as np

    from graphprune.ir import serialize
    from graphprune.ir.constants import const_array
    from graphprune.workflow import PruneOptions, run_prune

    monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
    src = samples_dir / "tiny_resnet.onnx"
    x = onnx.load(src).graph.input[0]
    shape = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
    calib = tmp_path / "c.npz"
    np.savez(calib, **{x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
    out = tmp_path / "m.onnx"
    # max_drop=None: one random calibration sample, a repair fit to it; writing is the point
    res = run_prune(src, PruneOptions(ratio=0.3, round_to=1, repair=repair, calib=str(calib), max_drop=None,
                                      criterion="l2", allocation={"allocation": "uniform"}),
                    out=out)
    assert out.exists() and not list(tmp_path.glob(".graphprune-tmp*"))
    arrays = [const_array(v) for v in res.model.graph.initializers.values()]
    assert arrays and all(a is not None for a in arrays)
    assert res.after.params < res.before.params


def test_an_in_memory_model_is_checked_against_itself_before_pruning(samples_dir, monkeypatch):
    """run_prune on an ir.Model with check=True runs the oracle (it was skipped in silence
    for anything but a path): against a copy of the input taken before the pruning, so a
    wrong weight written by the pruning is caught."""
    import numpy as np

    from graphprune.errors import OracleMismatchError
    from graphprune.ir.constants import const_array
    from graphprune.workflow import PruneOptions, run_prune
    from graphprune.workflow import prune as prune_module

    src = samples_dir / "tiny_resnet.onnx"
    opts = PruneOptions(ratio=0.3, round_to=1, criterion="l2")
    res = run_prune(gp.load(src), opts)
    assert res.oracle is not None and res.oracle.ok and res.plan.removes

    apply = prune_module._Run.apply

    def wrong_apply(self, outcome, pm):  # the pruning, then one weight made wrong
        apply(self, outcome, pm)
        conv = next(n for n in self.model.graph if n.op_type == "Conv")
        w = conv.inputs[1]
        w.const_value = ir.tensor(const_array(w) + np.float32(1.0), name=w.name)

    monkeypatch.setattr(prune_module._Run, "apply", wrong_apply)
    with pytest.raises(OracleMismatchError):
        run_prune(gp.load(src), opts)


@pytest.mark.parametrize("pipeline,says", [
    ("prune-channels{ratio=0.3},prune-channels{ratio=0.3}", "prunes channels 2 times"),
    ("prune-channels{ratio=0.3},dce,plan-channels{ratio=0.2},apply-plan", "prunes channels 2 times"),
    ("plan-channels{ratio=0.5}", "nothing applies it"),
    ("plan-channels{ratio=0.5},dce", "nothing applies it"),
])
def test_a_pipeline_the_run_s_one_plan_cannot_describe_is_refused(samples_dir, tmp_path, capsys, pipeline, says):
    """A run writes one plan and the oracle checks against the input masked by it: two
    channel prunings ended in an oracle FAIL asking to report the model, and plan-channels
    alone wrote the input unchanged as 'nothing pruned'. Both are usage errors before any
    work; one pruning with other passes around it runs as before."""
    out = tmp_path / "p.onnx"
    src = str(samples_dir / "tiny_resnet.onnx")
    assert main(["prune", src, "-o", str(out), "--no-bench", "--pipeline", pipeline]) == 2
    assert says in capsys.readouterr().err and not out.exists()
    assert main(["prune", src, "-o", str(out), "--no-bench", "--pipeline",
                 "plan-channels{ratio=0.5},apply-plan,dce"]) == 0


def test_pruning_flags_a_pipeline_would_ignore_are_refused(samples_dir, tmp_path, capsys):
    """--ratio/--criterion next to --pipeline had no effect and no word said so."""
    src = str(samples_dir / "tiny_resnet.onnx")
    out = tmp_path / "p.onnx"
    assert main(["prune", src, "-o", str(out), "--no-bench", "--pipeline", "prune-channels{ratio=0.5}",
                 "--ratio", "0.5", "--criterion", "random"]) == 2
    assert "--ratio, --criterion: not used with --pipeline" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("verb", ["prune", "compile"])
def test_channel_flags_a_plan_would_ignore_are_refused(samples_dir, tmp_path, capsys, verb):
    """--plan with --target-macs 0.5 wrote the plan's 0.93 of the MACs, said nothing about
    the target and exited 0 (probe); refused before any work, in both verbs."""
    src = str(samples_dir / "tiny_resnet.onnx")
    first = tmp_path / "first.onnx"
    assert main(["prune", src, "-o", str(first), "--no-bench", "--ratio", "0.3"]) == 0
    out = tmp_path / ("again.onnx" if verb == "prune" else "again")
    plan = str(tmp_path / "first.plan.json")
    for flags, says in ((["--target-macs", "0.5"], "--target-macs: not used with --plan"),
                        (["--ratio", "0.5"], "--ratio: not used with --plan")):
        extra = ["--target", "x86", "--backend", "onnxruntime"] if verb == "compile" else ["--no-bench"]
        assert main([verb, src, "-o", str(out), "--plan", plan, *extra, *flags]) == 2
        assert says in capsys.readouterr().err and not out.exists()


def test_replaying_a_repaired_run_s_plan_says_what_it_did_not_repeat(samples_dir, tmp_path, capsys):
    """`--plan` replays the pruning; the first run's repairs changed the weights too, and the
    replayed model differed from it by a third of the output scale without a word. The replay
    now names the repairs it did not repeat and how to; with them it is the same model."""
    import numpy as np
    import onnxruntime as ort

    src = str(samples_dir / "tiny_resnet.onnx")
    np.savez(tmp_path / "c.npz", input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    calib = ["--calib", str(tmp_path / "c.npz"), "--max-drop", "1", "--no-bench"]
    assert main(["prune", src, "-o", str(tmp_path / "a.onnx"), "--criterion", "l2", "--repair", "bias,lsq",
                 "--allocation", "uniform", "--ratio", "0.5", "--round-to", "1", *calib]) == 0
    capsys.readouterr()
    assert main(["prune", src, "--plan", str(tmp_path / "a.plan.json"), "-o", str(tmp_path / "b.onnx"),
                 "--no-bench"]) == 0
    out = capsys.readouterr().out
    assert "the plan's run also repaired the weights (bias-compensate, lsq-reconstruct)" in out
    assert "--repair bias-compensate,lsq-reconstruct --calib DATA" in out
    assert main(["prune", src, "--plan", str(tmp_path / "a.plan.json"), "-o", str(tmp_path / "c.onnx"),
                 "--repair", "bias-compensate,lsq-reconstruct", *calib]) == 0
    assert "also repaired" not in capsys.readouterr().out
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    first, again = (ort.InferenceSession(str(tmp_path / n)).run(None, x)[0] for n in ("a.onnx", "c.onnx"))
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)
