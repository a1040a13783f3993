"""Fuzz: damaged and malformed models through the CLI. Never a traceback, never an
internal error, never a partial output; exit 0 (model fine), 2, 3 or 4 with one line.

CI runs FUZZ_EXAMPLES (default 300) cases; the slow mode 3000.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz_models import mutate
from graphprune.cli.main import main

N_CI = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _one(seed: int, verb: str, tmp) -> None:
    data, what = mutate(np.random.default_rng(seed))
    d = tmp / f"case{seed}_{verb}"
    d.mkdir()
    src = d / "in.onnx"
    src.write_bytes(data)
    out = d / "out.onnx"
    err, so = io.StringIO(), io.StringIO()
    args = {"prune": ["prune", str(src), "-o", str(out), "--no-bench"],
            "inspect": ["inspect", str(src)],
            "check": ["check", str(src), str(src), "--plan", str(d / "missing.plan.json")]}[verb]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        rc = main(args)
    e = err.getvalue()
    ctx = f"seed {seed} ({what}), {verb}: rc={rc} stderr={e[-500:]!r}"
    assert rc in (0, 2, 3, 4), ctx
    assert "Traceback" not in e, ctx
    assert src.read_bytes() == data, ctx  # the input is never modified
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert not leftovers, ctx
    if verb == "prune":
        if rc == 0:
            assert out.exists() and (d / "out.plan.json").exists(), ctx
        else:
            assert not out.exists() and not (d / "out.plan.json").exists(), ctx
            assert len([ln for ln in e.strip().splitlines() if not ln.startswith("  hint:")]) <= 3, ctx


@settings(max_examples=N_CI, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), verb=st.sampled_from(["prune", "prune", "inspect", "check"]))
@example(seed=163, verb="prune")  # a removed node: onnx_ir's reader warning used to precede our error
def test_fuzz_cli(seed, verb, tmp_path_factory):
    _one(seed, verb, tmp_path_factory.mktemp("fz"))


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(seed=st.integers(0, 10**9), verb=st.sampled_from(["prune", "inspect", "check"]))
def test_fuzz_cli_slow(seed, verb, tmp_path_factory):
    _one(seed, verb, tmp_path_factory.mktemp("fz"))


# ---- user and model errors: the documented exit code (2 usage, 4 model) and one line ----

def _exit_code_inputs(folder, samples_dir):
    """The inputs the exit-code cases point at (all hashed before and after each case)."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir()
    shutil.copy(samples_dir / "tiny_resnet.onnx", folder / "model.onnx")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "cfgdir").mkdir()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    opset = [helper.make_opsetid("", 17)]
    onnx.save(helper.make_model(helper.make_graph([mm], "g", [x], [], [w]), opset_imports=opset),
              str(folder / "noout.onnx"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = helper.make_model(helper.make_graph([mm], "g", [x], [y], [w]), opset_imports=opset)
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../outside.bin"), ("offset", "0"), ("length", "64")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (folder / "ext").mkdir()
    np.ones((4, 4), np.float32).tofile(folder / "outside.bin")
    (folder / "ext" / "model.onnx").write_bytes(m.SerializeToString())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["prune", str(folder / "model.onnx"), "-o", str(folder / "pruned.onnx"), "--no-bench"]) == 0
    return folder


@pytest.fixture(scope="module")
def exit_code_inputs(tmp_path_factory, samples_dir):
    return _exit_code_inputs(tmp_path_factory.mktemp("exitcodes") / "in", samples_dir)


def _hashes(folder) -> dict:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


PRUNE = ["prune", "{model}", "-o", "{out}", "--no-bench"]
EXIT_CODE_CASES = [
    # (argv with {model}, {empty}, ... placeholders, exit code, text the message must contain)
    (PRUNE + ["--ignore", "("], 2, "regular expression"),
    (PRUNE + ["--protect", "("], 2, "regular expression"),
    (PRUNE + ["--pipeline", "prune-channels{ratio=abc}"], 2, "ratio=abc"),
    (PRUNE + ["--pipeline", "prune-channels,dce{foo=1}"], 2, "unknown option foo"),
    (PRUNE + ["--pipeline", "sparsify{sparsity=0.5,skip_frist=false}"], 2, "skip_frist"),
    (PRUNE + ["--pipeline", "prune-channels{round_to=0}"], 2, "round_to"),
    (PRUNE + ["--config", "{cfgdir}"], 2, "not a file"),
    (["inspect", "{noout}"], 4, "no graph outputs"),
    (["prune", "{noout}", "-o", "{out}", "--no-bench"], 4, "no graph outputs"),
    (["prune", "{ext}", "-o", "{out}", "--no-bench", "--no-check"], 4, "outside the model's folder"),
    (["inspect", "{ext}"], 4, "outside the model's folder"),
    (["--log-file", "/no/such/dir/x.log", "inspect", "{model}"], 2, "log file"),
    (["inspect", "{empty}"], 4, "not an ONNX model"),
    (["prune", "{empty}", "-o", "{out}", "--no-bench"], 4, "not an ONNX model"),
    (PRUNE + ["--round-to", "0"], 2, "--round-to"),
    (PRUNE + ["--round-to", "-4"], 2, "--round-to"),
    (["compile", "{model}", "--round-to", "0", "--dry-run"], 2, "--round-to"),
    (["check", "{model}", "{pruned}", "--plan", "{plan}", "--rtol", "-1"], 2, "--rtol"),
    (["check", "{model}", "{pruned}", "--plan", "{plan}", "--rtol", "nan"], 2, "--rtol"),
    # the same kind of numeric option on every verb
    (PRUNE + ["--max-ratio", "1.5"], 2, "--max-ratio"),
    (PRUNE + ["--layer-ratio", "Conv=1.5"], 2, "--layer-ratio"),
    (PRUNE + ["--calib-batch", "0"], 2, "--calib-batch"),
    (PRUNE + ["--seed", "-1"], 2, "--seed"),
    (PRUNE + ["--remove-blocks", "-1"], 2, "--remove-blocks"),
    (PRUNE + ["--sparsity", "0.5", "--sparsity-min-params", "-1"], 2, "--sparsity-min-params"),
    (["compile", "{model}", "--tune-time", "-5", "--dry-run"], 2, "--tune-time"),
    (["compile", "{model}", "--tune-trials", "-1", "--dry-run"], 2, "--tune-trials"),
    (["bench", "{model}", "--repeats", "0"], 2, "--repeats"),
    (["inspect", "{model}", "--groups", "-1"], 2, "--groups"),
]


@pytest.mark.parametrize("argv,code,says", EXIT_CODE_CASES, ids=[
    " ".join(a for a in c[0] if a not in ("-o", "{out}", "--no-bench")) for c in EXIT_CODE_CASES])
def test_user_and_model_errors_exit_codes(argv, code, says, exit_code_inputs, tmp_path):
    f = exit_code_inputs
    names = {"model": f / "model.onnx", "empty": f / "empty.onnx", "noout": f / "noout.onnx",
             "ext": f / "ext" / "model.onnx", "cfgdir": f / "cfgdir", "pruned": f / "pruned.onnx",
             "plan": f / "pruned.plan.json", "out": tmp_path / "out.onnx"}
    args = [str(names[a[1:-1]]) if a[1:-1] in names and a[0] == "{" else a for a in argv]
    before = _hashes(f)
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        try:
            rc = main(args)
        except SystemExit as exc:  # argparse's own exit: not how graphprune reports errors
            rc = ("SystemExit", exc.code)
    e = err.getvalue()
    ctx = f"{args}: rc={rc} stderr={e[-600:]!r}"
    assert rc == code, ctx
    assert "Traceback" not in e, ctx
    lines = [ln for ln in e.strip().splitlines() if not ln.startswith("  hint:")]
    assert len(lines) == 1, ctx  # one line (and a hint)
    assert "internal error" not in e and says in lines[0], ctx
    assert _hashes(f) == before, ctx  # inputs untouched
    assert not (tmp_path / "out.onnx").exists(), ctx


# ---- every path-like option pointed at the input model (issue 12 §3) --------------------
# Each case names an input as something graphprune would write. Expected: exit 2 before
# any work, one line, no traceback, every input byte-identical, no file added or removed.

def _path_option_inputs(d, samples_dir):
    import shutil

    import onnx

    shutil.copy(samples_dir / "tiny_resnet.onnx", d / "in.onnx")
    shutil.copy(samples_dir / "tiny_resnet.onnx", d / "x.plan.json")  # a model whose name is x.onnx's plan path
    (d / "link.onnx").symlink_to(d / "in.onnx")
    os.link(d / "in.onnx", d / "hard.onnx")
    (d / "ext").mkdir()
    proto = onnx.load(str(samples_dir / "tiny_resnet.onnx"))
    onnx.save_model(proto, str(d / "ext" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (d / "notes.txt").write_text("the user's")


PATH_OPTION_CASES = [
    ["prune", "{in}", "-o", "{in}", "--no-bench"],
    ["prune", "{link}", "-o", "{in}", "--no-bench"],
    ["prune", "{in}", "-o", "{hard}", "--no-bench"],
    ["prune", "{in}", "-o", "{d}/out.onnx", "--save-config", "{in}", "--no-bench"],
    ["prune", "{in}", "--save-config", "{link}", "--dry-run"],
    ["--log-file", "{in}", "prune", "{in}", "-o", "{d}/out.onnx", "--no-bench"],
    ["--log-file", "{in}", "inspect", "{in}"],
    ["--log-file", "{in}", "inspect", "{in}", "--json"],
    ["--log-file", "{in}", "check", "{in}", "{hard}", "--plan", "{d}/none.plan.json"],
    ["prune", "{x}", "-o", "{d}/x.onnx", "--no-bench"],  # the plan path is the input
    ["prune", "{in}", "--plan", "{in}", "-o", "{d}/out.onnx", "--no-bench"],
    ["prune", "{ext}", "-o", "{d}/out.onnx", "--save-config", "{d}/ext/weights.bin", "--no-bench"],
    ["prune", "{in}", "-o", "{d}/notes.txt.onnx", "--save-config", "{d}/notes.txt", "--no-bench",
     "--inputs", "{d}/notes.txt"],
    ["compile", "{in}", "--target", "x86", "-o", "{d}"],
    ["compile", "{in}", "--target", "x86", "-o", "{d}", "--force"],
    ["compile", "{ext}", "--target", "x86", "-o", "{d}/ext"],
    ["compile", "{in}", "--target", "x86", "-o", "{in}"],
    ["compile", "{in}", "--target", "x86", "-o", "{d}/c", "--save-config", "{in}"],
    ["--log-file", "{in}", "compile", "{in}", "--target", "x86", "-o", "{d}/c"],
    ["bench", "{in}", "--json-out", "{in}"],
    ["bench", "{in}", "{hard}", "--json-out", "{link}"],
]


def _tree_hashes(d) -> dict:
    import hashlib

    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("argv", PATH_OPTION_CASES, ids=[" ".join(c) for c in PATH_OPTION_CASES])
def test_path_options_pointed_at_the_input(argv, samples_dir, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    _path_option_inputs(d, samples_dir)
    names = {"in": d / "in.onnx", "link": d / "link.onnx", "hard": d / "hard.onnx", "x": d / "x.plan.json",
             "ext": d / "ext" / "model.onnx", "d": d}
    args = [a.format(**names) for a in argv]
    before = _tree_hashes(d)
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        rc = main(args)
    e = err.getvalue()
    ctx = f"{args}: rc={rc} stderr={e[-600:]!r}"
    assert rc == 2, ctx
    assert "Traceback" not in e and "internal error" not in e, ctx
    assert len([ln for ln in e.strip().splitlines() if not ln.startswith("  hint:")]) == 1, ctx
    assert _tree_hashes(d) == before, ctx  # inputs byte-identical, no stray or missing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], ctx
