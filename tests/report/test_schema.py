"""report.json follows docs/report-schema.md (a JSON-schema-like check of keys and types),
and the sections that only some runs have (search candidates, red lines) are rendered."""
from __future__ import annotations

import json

import pytest

from graphprune.cli.main import main
from graphprune.report.html import render_html
from graphprune.report.writer import REPORT_SCHEMA, markdown

NUM = (int, float)
OPT_NUM = (int, float, type(None))
SCHEMA = {"schema": str, "verb": str, "command": list, "environment": dict, "input": dict,
          "input_shapes": (dict, type(None)), "before": dict, "after": dict, "latency": dict, "ops": list,
          "layers": list, "profile": dict, "plan": dict, "groups": list, "sensitivity": dict,
          "search": (dict, type(None)), "budget": (dict, type(None)), "oracle": (dict, type(None)), "checks": dict, "fidelity": (dict, type(None)),
          "quality": (str, type(None)), "accuracy": (str, type(None)), "red": list, "outputs": list}
ROWS = {"ops": {"op": str, "before": int, "after": int},
        "layers": {"name": str, "op": str, "width_before": OPT_NUM, "width_after": OPT_NUM, "macs_before": NUM,
                   "macs_after": NUM, "removed": bool, "latency_ms_before": OPT_NUM, "latency_ms_after": OPT_NUM},
        "groups": {"name": str, "channels": int, "removed": int, "kept": int, "atoms": int, "removed_atoms": int,
                   "parts": list},
        "outputs": {"path": str, "bytes": int, "sha256": str}}
FIGURES = {"params": int, "macs": int, "bytes": int, "latency_ms": OPT_NUM}


def check_report(rep: dict) -> None:
    assert rep["schema"] == REPORT_SCHEMA
    for key, types in SCHEMA.items():
        assert key in rep, key
        assert isinstance(rep[key], types), (key, type(rep[key]))
    for key, cols in ROWS.items():
        for row in rep[key]:
            for col, types in cols.items():
                assert isinstance(row.get(col), types), (key, col, row)
    for side in ("before", "after"):
        for key, types in FIGURES.items():
            assert isinstance(rep[side].get(key), types), (side, key)
    for name, v in rep["input_shapes"].items():
        assert all(isinstance(d, int) for d in v["shape"]) and isinstance(v["source"], str), name


def test_prune_report_matches_the_schema(samples_dir, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(out), "--round-to", "8"]) == 0
    assert f"report: {tmp_path / 'p.report.html'}" in capsys.readouterr().out
    rep = json.loads((tmp_path / "p.report.json").read_text())
    check_report(rep)
    assert rep["verb"] == "prune" and rep["oracle"]["ok"] and "1×3×16×16" in rep["oracle"]["inputs"]
    assert rep["latency"]["deployed_ms"] > 0 and rep["profile"]["before"] and rep["profile"]["after"]
    assert {r["op"] for r in rep["ops"]} >= {"Conv", "Concat", "Gemm"}
    assert [o["path"] for o in rep["outputs"]] == ["p.onnx", "p.plan.json"]
    assert (tmp_path / "p.report.md").read_text().startswith("# graphprune report: tiny_resnet.onnx (prune)")
    # the per-layer times say how they were taken (1 thread, basic optimisations): they do not
    # add up to the end-to-end latency, and nothing said so
    from graphprune.report.profile import PROFILE_NOTE

    assert PROFILE_NOTE in (tmp_path / "p.report.md").read_text()
    assert PROFILE_NOTE.replace("'", "&#x27;") in (tmp_path / "p.report.html").read_text()


def test_no_bench_measures_nothing_and_keeps_the_schema(samples_dir, tmp_path, capsys):
    """--no-bench: no latency in the summary and no per-layer profile in the report."""
    out = tmp_path / "p.onnx"
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(out), "--no-bench"]) == 0
    capsys.readouterr()
    rep = json.loads((tmp_path / "p.report.json").read_text())
    check_report(rep)
    assert rep["profile"] == {} and all(r.get("latency_ms_before") is None for r in rep["layers"])
    assert "per-layer latency" not in (tmp_path / "p.report.md").read_text()  # no times, no note


def test_figures_of_many_layers_show_the_largest(tmp_path):
    """A report of an LLM has hundreds of layers: each per-layer figure draws the 60 with the
    most MACs and says so (drawing them all took seconds per figure); the tables keep all."""
    pytest.importorskip("matplotlib")
    from graphprune.report.html import FIGURE_ROWS, _figures

    layers = [{"name": f"layer{i}", "op": "MatMul", "width_before": 8, "width_after": 4, "macs_before": i,
               "macs_after": i // 2, "removed": False, "latency_ms_before": None, "latency_ms_after": None}
              for i in range(200)]
    figs = _figures({"layers": layers})
    assert [t for t, _ in figs] == ["output width per layer", "MACs per layer"]
    from graphprune.report.html import _largest

    kept, note = _largest(layers, "macs_before")
    assert len(kept) == FIGURE_ROWS and kept[0]["name"] == f"layer{200 - FIGURE_ROWS}"
    assert note == f" ({FIGURE_ROWS} largest of 200; all in the tables)"


def test_a_user_file_where_the_report_goes_is_never_replaced(samples_dir, tmp_path, capsys):
    mine = tmp_path / "p.report.md"
    mine.write_text("my notes\n")
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(tmp_path / "p.onnx")]) == 2
    assert mine.read_text() == "my notes\n" and not (tmp_path / "p.onnx").exists()
    capsys.readouterr()


def _report(**extra) -> dict:
    return {"schema": REPORT_SCHEMA, "verb": "prune", "input": {"path": "m.onnx"}, "command": ["graphprune"],
            "before": {"params": 10}, "after": {"params": 5}, **extra}


def test_search_candidates_and_red_lines_are_rendered():
    pytest.importorskip("matplotlib")
    search = {"candidates": [{"name": "wanda+lsq", "options": {"criterion": "wanda"}, "score": 0.98,
                              "latency_ms": 1.5},
                             {"name": "l2", "options": {"criterion": "l2"}, "score": 0.71, "latency_ms": 1.4}],
              "chosen": "wanda+lsq"}
    rep = _report(search=search, red=["NOT FASTER: the pruned model is 1.2x the latency of the input"])
    page, md = render_html(rep), markdown(rep)
    assert "<img alt='candidate trade-off'" in page and "class='red'>NOT FASTER" in page
    assert "| wanda+lsq | 0.98 | 1.5 | criterion=wanda | chosen |" in md and "- **NOT FASTER" in md


def test_no_search_no_candidate_section():
    page, md = render_html(_report()), markdown(_report())
    assert "candidate" not in page.lower() and "Candidates" not in md


def test_inspect_report_matches_the_schema_and_shows_inspect_widths(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    assert main(["inspect", str(src), "--report", str(tmp_path / "i")]) == 0
    shown = capsys.readouterr().out
    assert f"report: {tmp_path / 'i.report.html'}" in shown
    rep = json.loads((tmp_path / "i.report.json").read_text())
    check_report(rep)
    assert rep["verb"] == "inspect" and rep["before"]["macs"] == rep["after"]["macs"] > 0
    for g in rep["groups"]:  # the width column inspect printed
        assert any(line.split()[1:3] == [g["name"], str(g["channels"])] for line in shown.splitlines()
                   if len(line.split()) > 2), g["name"]
    assert main(["inspect", str(src), "--report", str(tmp_path / "i"), "--input-shape", "input:1,3,16,16"]) == 0


def test_check_report_matches_the_schema_with_the_oracle_inputs(samples_dir, tmp_path, capsys):
    src, out = samples_dir / "tiny_resnet.onnx", tmp_path / "p.onnx"
    assert main(["prune", str(src), "-o", str(out), "--no-bench", "--round-to", "16"]) == 0
    pruned = json.loads((tmp_path / "p.report.json").read_text())
    assert main(["check", str(src), str(out), "--plan", str(tmp_path / "p.plan.json"),
                 "--report", str(tmp_path / "c")]) == 0
    assert f"report: {tmp_path / 'c.report.html'}" in capsys.readouterr().out
    rep = json.loads((tmp_path / "c.report.json").read_text())
    check_report(rep)
    assert rep["verb"] == "check" and rep["oracle"]["ok"] and "1×3×16×16" in rep["oracle"]["inputs"]
    assert rep["groups"] == pruned["groups"] and rep["after"]["macs"] == pruned["after"]["macs"]
