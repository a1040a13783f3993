"""Three views of one plan agree (issue 17): `prune --dry-run`, `inspect` (of the input and
of the pruned model) and the prune report show the same group widths under --round-to 16,
and they are the widths of the written model. A concat part too narrow for the multiple is
kept whole, and every view says why the concat width is not a multiple."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

import graphprune as gp
from graphprune.cli.main import main
from graphprune.ir.shapes import dims_of
from tests.helpers import make_model, w


def _dry_rows(capsys, *argv) -> dict[str, list[str]]:
    assert main(["prune", *argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[1].isdigit():
            rows[cells[0]] = cells[1:]
    return rows, out


def _inspect_widths(capsys, path) -> dict[str, int]:
    assert main(["inspect", str(path), "--json"]) == 0
    return {g["name"]: g["width"] for g in json.loads(capsys.readouterr().out)["groups"]}


def _concat_width(path) -> int:
    model = gp.load(str(path))
    (cat,) = [n for n in model.graph if n.op_type == "Concat"]
    return dims_of(cat.outputs[0])[1]


def _views(capsys, tmp_path, src, *flags):
    dry, dry_text = _dry_rows(capsys, str(src), *flags)
    before = _inspect_widths(capsys, src)
    out = tmp_path / "small.onnx"
    assert main(["prune", str(src), "-o", str(out), "--no-bench", *flags]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "small.report.json").read_text())
    after = _inspect_widths(capsys, out)
    return dry, dry_text, before, after, {g["name"]: g for g in report["groups"]}, out


def test_dry_run_inspect_and_report_agree_on_a_concat_group_at_round_to_16(samples_dir, tmp_path, capsys):
    dry, _, before, after, rep, out = _views(capsys, tmp_path, samples_dir / "tiny_resnet.onnx", "--round-to", "16")
    assert rep and set(dry) == set(rep)
    for name, g in rep.items():
        channels, removed, kept = (int(c) for c in dry[name][:3])
        assert (channels, removed, kept) == (g["channels"], g["removed"], g["kept"]) == (before[name], removed,
                                                                                          after[name])
        assert kept % 16 == 0, name
    (cat,) = [g for g in rep.values() if len(g["parts"]) > 1]  # the concat group: one part per concat input
    assert cat["channels"] == 96 and cat["kept"] == _concat_width(out)  # the written model's concat width
    assert sum(p["before"] for p in cat["parts"]) == 96 and all(p["after"] % 16 == 0 for p in cat["parts"])


def _narrow_part_concat(path):
    """A 64-channel and an 8-channel conv concatenated (72), then a conv: at --round-to 16
    the 8-channel part cannot reach a multiple and is kept whole."""
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Concat", ["ar", "br"], ["c"], axis=1),
             helper.make_node("Conv", ["c", "wc"], ["y"])]
    inits = {"wa": w(64, 3, 3, 3, seed=1), "ba": w(64, seed=2), "wb": w(8, 3, 3, 3, seed=3), "bb": w(8, seed=4),
             "wc": w(16, 72, 1, 1, seed=5)}
    onnx.save(make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 16, 8, 8])], inits), str(path))
    return path


def test_a_width_that_is_not_a_multiple_says_why_in_every_view(tmp_path, capsys):
    src = _narrow_part_concat(tmp_path / "cat.onnx")
    dry, dry_text, before, after, rep, out = _views(capsys, tmp_path, src, "--round-to", "16", "--ratio", "0.4")
    (g,) = rep.values()
    assert g["channels"] == before[g["name"]] == 72 and g["kept"] == after[g["name"]] == _concat_width(out)
    assert g["kept"] % 16 != 0 and {"before": 8, "after": 8} in g["parts"]
    assert all(p["after"] % 16 == 0 for p in g["parts"] if p["before"] != p["after"])
    assert "kept whole" in g["not_multiple"] and "kept whole" in dry_text
    md = (tmp_path / "small.report.md").read_text()
    assert "kept whole" in md and "8→8" in md
    np.testing.assert_array_equal([int(c) for c in dry[g["name"]][:3]], [g["channels"], g["removed"], g["kept"]])
