"""Plugins through entry points, used from the CLI; configs through --save-config/--config;
--dry-run on prune and compile. (No torch needed; kept beside the other integration tests.)"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune as gp
from graphprune import plugins
from graphprune.cli.main import main
from helpers import make_model, w

PLUGIN = '''
import numpy as np
from graphprune.passes import Pass


class MarkModel(Pass):
    name = "gp-demo-mark"
    description = "test plugin: stamp the model's doc string"

    def run(self, model, ctx):
        model.doc_string = "stamped by gp-demo-mark"
        return True


def shrink_rule(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])


def reverse(dg, group, **kw):
    return np.arange(group.num_atoms, dtype=float)  # low ids are "least important"


BOARD = {"name": "board-own-name", "description": "test plugin board", "tvm": {"kind": "llvm"}, "arch": "aarch64",
         "simd_lanes": 4}
'''

ENTRY_POINTS = '''
[graphprune.passes]
gp-demo-mark = gp_demo_plugin:MarkModel
[graphprune.rules]
Shrink = gp_demo_plugin:shrink_rule
[graphprune.importance]
gp_demo_reverse = gp_demo_plugin:reverse
[graphprune.targets]
gp-demo-board = gp_demo_plugin:BOARD
'''


def _dist(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A plugin package and a broken one, installed as dist-infos on sys.path; every
    registration is undone afterwards."""
    from graphprune.analysis.dependency import RULES
    from graphprune.backends.targets import TABLE
    from graphprune.importance import CRITERIA
    from graphprune.passes import PASSES

    root = tmp_path / "site"
    root.mkdir()
    (root / "gp_demo_plugin.py").write_text(PLUGIN)
    _dist(root, "gp_demo_plugin", ENTRY_POINTS)
    _dist(root, "gp_broken_plugin", "[graphprune.passes]\nbroken = gp_no_such_module:Thing\n")
    saved_rules = [e for e in RULES.entries() if e.domain == "" and e.op_type == "Shrink"]
    RULES.remove("", "Shrink")
    monkeypatch.syspath_prepend(str(root))
    yield root
    PASSES.pop("gp-demo-mark", None)
    CRITERIA.pop("gp_demo_reverse", None)
    TABLE.pop("gp-demo-board", None)
    RULES.remove("", "Shrink")
    for e in saved_rules:
        RULES.add(e.domain, e.op_type, e.fn, since=e.since, until=e.until, family=e.family)
    for key in [k for k in plugins._LOADED if k[2].startswith(("gp_demo_plugin", "gp_no_such_module"))]:
        del plugins._LOADED[key]
    sys.modules.pop("gp_demo_plugin", None)


def shrink_model(path: Path) -> Path:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Shrink", ["c1"], ["s1"], lambd=0.1, bias=0.1),
             helper.make_node("Conv", ["s1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["y"])]
    inits = {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(8, 8, 3, 3, seed=3), "b2": w(8, seed=4),
             "w3": w(2, 8, 1, 1, seed=5)}
    onnx.save(make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])], inits), path)
    return path


def test_plugin_pass_rule_criterion_target_from_the_cli(plugin_dir, tmp_path, capsys):
    src = shrink_model(tmp_path / "m.onnx")
    out = tmp_path / "small.onnx"
    rc = main(["prune", str(src), "-o", str(out), "--no-bench",
               "--pipeline", "gp-demo-mark,prune-channels{ratio=0.5,criterion=gp_demo_reverse}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "not loaded" in line]
    assert len(warnings) == 1 and "gp_no_such_module" in warnings[0], err  # one line, run goes on
    assert onnx.load(out).doc_string == "stamped by gp-demo-mark"  # the plugin pass ran
    plan = json.loads((tmp_path / "small.plan.json").read_text())
    removed = {t["name"]: t["removed"] for t in plan["tensors"] if t["axis"] == 0}
    assert removed["w1"] == [0, 1, 2, 3]  # through Shrink (plugin rule), lowest ids (plugin criterion)
    assert main(["passes", "--rules"]) == 0
    listing = capsys.readouterr().out
    assert "gp-demo-mark" in listing and any("plugin" in ln and "Shrink" in ln for ln in listing.splitlines())
    assert main(["targets"]) == 0
    listing = capsys.readouterr().out  # listed by the name --target takes (the dict's own name won)
    assert "gp-demo-board" in listing and "board-own-name" not in listing


def test_without_the_plugin_shrink_stays_frozen(tmp_path, capsys):
    from graphprune.analysis.dependency import RULES

    if RULES.lookup("", "Shrink", 17) is not None:
        pytest.skip("a built-in Shrink rule exists")
    src = shrink_model(tmp_path / "m.onnx")
    assert main(["prune", str(src), "-o", str(tmp_path / "s.onnx"), "--no-bench", "--ratio", "0.5"]) == 0
    plan = json.loads((tmp_path / "s.plan.json").read_text())
    assert not any(t["name"] == "w1" for t in plan["tensors"])  # fail closed


def test_plugins_load_once_and_never_crash(plugin_dir):
    first = plugins.load_plugins()
    again = plugins.load_plugins()
    assert [s.name for s in first] == [s.name for s in again]
    bad = [s for s in again if not s.ok]
    assert [s.name for s in bad] == ["broken"] and "ModuleNotFoundError" in bad[0].error
    from graphprune.importance import CRITERIA

    assert "gp_demo_reverse" in CRITERIA


# ---- config -------------------------------------------------------------------------------

def test_config_round_trip_and_precedence(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    cfg = tmp_path / "run.toml"
    a = tmp_path / "a.onnx"
    assert main(["prune", str(src), "-o", str(a), "--ratio", "0.45", "--round-to", "2", "--criterion", "l1",
                 "--ignore", "Conv4", "--no-bench", "--save-config", str(cfg)]) == 0
    text = cfg.read_text()
    import tomllib

    data = tomllib.loads(text)
    assert data["version"] == 1
    assert data["prune"]["ratio"] == 0.45 and data["prune"]["round_to"] == 2 and data["prune"]["ignore"] == ["Conv4"]
    b = tmp_path / "b.onnx"
    assert main(["prune", str(src), "-o", str(b), "--no-bench", "--config", str(cfg)]) == 0
    plan_a = json.loads((tmp_path / "a.plan.json").read_text())
    plan_b = json.loads((tmp_path / "b.plan.json").read_text())
    assert plan_a["tensors"] == plan_b["tensors"] and plan_a["settings"] == plan_b["settings"]
    # the command line wins over the file, even when it gives the option's default value
    c = tmp_path / "c.onnx"
    assert main(["prune", str(src), "-o", str(c), "--no-bench", "--config", str(cfg), "--ratio", "0.3"]) == 0
    settings = json.loads((tmp_path / "c.plan.json").read_text())["settings"]
    assert settings["ratio"] == 0.3 and settings["round_to"] == 2 and settings["criterion"] == "l1"
    # saving the config read from a file gives the same file back
    cfg2 = tmp_path / "again.toml"
    assert main(["prune", str(src), "--config", str(cfg), "--save-config", str(cfg2), "--dry-run"]) == 0
    assert tomllib.loads(cfg2.read_text()) == data


def test_config_errors(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune]\nratoi = 0.3\n")
    assert main(["prune", str(src), "--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key prune.ratoi" in err and "ratio" in err
    bad.write_text("[prune]\nratio = 'lots'\n")
    assert main(["prune", str(src), "--config", str(bad), "--dry-run"]) == 2
    bad.write_text("[deploy]\n")
    assert main(["prune", str(src), "--config", str(bad), "--dry-run"]) == 2
    assert main(["prune", str(src), "--config", str(tmp_path / "missing.toml")]) == 2


def test_dry_run_prune_writes_nothing(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    before = sorted(p.name for p in src.parent.iterdir())
    out = tmp_path / "never.onnx"
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "group" in text and "removed" in text and "dry run: nothing written" in text
    assert not out.exists() and not list(tmp_path.iterdir())
    assert sorted(p.name for p in src.parent.iterdir()) == before
    # the table's numbers are the real plan's: compare with an actual prune
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("Conv") or ln.startswith("Gemm")]
    res = gp.prune(gp.load(src), ratio=0.5)
    assert len(rows) == len(res.plan.groups)
    assert all(int(r[1]) == int(r[2]) + int(r[3]) for r in rows)


def test_compile_config_and_dry_run(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    cfg = tmp_path / "deploy.toml"
    cfg.write_text('version = 1\n[prune]\nratio = 0.25\n[compile]\ntarget = "arm"\nbackend = "onnxruntime"\n'
                   "[compile.tuning]\ntrials = 16\n")
    out = tmp_path / "deploy"
    assert main(["compile", str(src), "--config", str(cfg), "-o", str(out), "--dry-run",
                 "--save-config", str(tmp_path / "resolved.toml")]) == 0
    text = capsys.readouterr().out
    assert "target:  arm" in text and "round_to 4" in text
    # the one file a dry run writes is the config it was asked for, and it says so
    assert f"dry run: nothing written but the config {tmp_path / 'resolved.toml'} (--save-config)" in text
    assert not out.exists()
    import tomllib

    resolved = tomllib.loads((tmp_path / "resolved.toml").read_text())
    assert resolved["prune"]["ratio"] == 0.25 and resolved["compile"]["target"] == "arm"
    assert resolved["compile"]["tuning"]["trials"] == 16 and resolved["compile"]["backend"] == "onnxruntime"


def test_config_sections_apply_to_their_verbs(samples_dir, tmp_path, capsys):
    """[prune] is how to prune (both verbs), [compile] where to deploy: a ratio under
    [compile] drove `prune` too, over its own [prune] one; and a compile option under
    [prune] was dropped without a word. Now prune reads [prune] only, compile's [compile]
    keys win for compile, and a compile option under [prune] is warned about."""
    import tomllib

    src = samples_dir / "tiny_resnet.onnx"
    cfg = tmp_path / "both.toml"
    cfg.write_text('version = 1\n[prune]\nratio = 0.2\ntarget = "arm"\n[compile]\nratio = 0.6\n')
    assert main(["prune", str(src), "--config", str(cfg), "--dry-run", "--save-config", str(tmp_path / "p.toml")]) == 0
    assert tomllib.loads((tmp_path / "p.toml").read_text())["prune"]["ratio"] == 0.2
    assert "prune.target is a compile option: it belongs in [compile]; prune ignores it" in capsys.readouterr().err
    assert main(["compile", str(src), "--config", str(cfg), "-o", str(tmp_path / "c"), "--dry-run",
                 "--save-config", str(tmp_path / "c.toml")]) == 0
    resolved = tomllib.loads((tmp_path / "c.toml").read_text())
    assert resolved["prune"]["ratio"] == 0.6 and resolved["compile"]["target"] == "arm"


def test_a_saved_config_names_its_input_files_so_it_runs_from_any_folder(samples_dir, tmp_path, monkeypatch):
    """--save-config wrote `plan = "a.plan.json"` relative to where the run was started, so
    the config failed ('no such plan file') from another folder. Files a run reads are
    written as absolute paths."""
    import tomllib

    src = samples_dir / "tiny_resnet.onnx"
    monkeypatch.chdir(tmp_path)
    assert main(["prune", str(src), "-o", "a.onnx", "--no-bench"]) == 0
    (tmp_path / "sub").mkdir()
    assert main(["prune", str(src), "-o", "b.onnx", "--plan", "a.plan.json", "--no-bench",
                 "--save-config", "sub/replay.toml"]) == 0
    saved = tomllib.loads((tmp_path / "sub" / "replay.toml").read_text())["prune"]
    assert saved["plan"] == str(tmp_path / "a.plan.json")
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["prune", str(src), "-o", "c.onnx", "--config", "replay.toml", "--no-bench"]) == 0


def test_toml_writer_round_trips_values():
    import tomllib

    from graphprune.config import dumps_toml

    data = {"version": 1, "prune": {"ratio": 0.1, "ignore": ["a\"b", "c\\d"], "flag": True, "n": 3, "none": None},
            "compile": {"target": "x86", "tuning": {"trials": 2}, "input_shape": ["x:1,3,8,8"]}}
    back = tomllib.loads(dumps_toml(data))
    del data["prune"]["none"]
    assert back == data
    assert np.isinf(tomllib.loads(dumps_toml({"a": {"x": float("inf")}}))["a"]["x"])


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_config_files_round_trip(tmp_path, suffix):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    from graphprune.config import load_config, save_config

    data = {"version": 1, "prune": {"ratio": 0.2, "ignore": ["x"], "no_check": False},
            "compile": {"target": "rpi4", "tuning": {"trials": 8}}}
    save_config(tmp_path / f"c{suffix}", data)
    assert load_config(tmp_path / f"c{suffix}") == data
