"""Without calibration data (issue 13 §2): `prune` and `compile` say in the summary and in
the report that accuracy was not measured, and a data-free repair (`--repair bn-fold`)
says what it folded, in both verbs' summaries and compile's report."""
from __future__ import annotations

import json

import graphprune.workflow.compile as compile_mod
from graphprune.cli.main import main
from graphprune.workflow.verdicts import NO_CALIB


def test_prune_report_says_accuracy_not_measured(samples_dir, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(out), "--no-bench"]) == 0
    text = capsys.readouterr().out
    assert NO_CALIB in text and "repair" not in text  # the default without data repairs nothing
    assert NO_CALIB in (tmp_path / "p.report.md").read_text()
    assert json.loads((tmp_path / "p.report.json").read_text())["accuracy"] == NO_CALIB


def test_compile_with_bn_fold_names_the_repair(samples_dir, tmp_path, monkeypatch, capsys):
    def fake(runners):  # the latency measurement is not what this test is about
        return {**{k: 1.0 for k in runners}, "dense": 2.0}

    monkeypatch.setattr(compile_mod, "_latencies", fake)
    out = tmp_path / "c"
    assert main(["compile", str(samples_dir / "tiny_mobilenet.onnx"), "--target", "x86", "-o", str(out),
                 "--repair", "bn-fold"]) == 0
    text = capsys.readouterr().out
    assert NO_CALIB in text and "folded the BatchNorm means of" in text
    md = (out / "report.md").read_text()
    assert NO_CALIB in md and "folded the BatchNorm means of" in md
    rep = json.loads((out / "report.json").read_text())
    check = rep["checks"]["repair_bn-fold-compensate"]
    assert check["summary"].startswith("folded the BatchNorm means of")
