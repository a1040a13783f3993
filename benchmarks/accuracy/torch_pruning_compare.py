"""graphprune vs Torch-Pruning (1.6.1) on the torch versions of MiniLM-L6 and SmolLM2-135M,
at the same MAC budget (30% fewer MACs per token), same criterion family.

    pip install torch-pruning==1.6.1
    python benchmarks/accuracy/torch_pruning_compare.py [--workdir DIR] [--models minilm,smollm]

* MiniLM: attention heads + FFN channels. Torch-Pruning: MetaPruner with
  GroupMagnitudeImportance(p=2) (L2 group magnitude), whole heads (`num_heads`,
  `prune_num_heads=True`, `prune_head_dims=False`) and FFN channels, the hidden size kept
  (the layers writing it are ignored); local (same ratio per layer) and global ranking,
  the ratio searched until the exported model has ≤ 70% of the dense MACs.
  graphprune: `prune-channels` on the ONNX export, L2 uniform (the same criterion and
  allocation) and its best configuration (run.py's BEST).
* SmolLM2: FFN channels (gate/up outputs = down inputs). Torch-Pruning's GQA handling is
  not used: KV groups are left alone on both sides. Torch-Pruning L2 local and global;
  graphprune L2 uniform on the same groups (`layer_ratios` on FFN only) and its best
  configuration restricted to FFN groups.

Both tools' pruned models are exported to ONNX (benchmarks/transformers/common.export)
and run in ONNX Runtime: MiniLM metric = mean cosine of the 200 sentence embeddings vs
the dense model; SmolLM2 = perplexity on 16×256 tokens. MACs per token are counted the
same way on both tools' ONNX files: graphprune.analysis.cost at batch 1, sequence 128
(MiniLM) / 256 (SmolLM2), via common.macs_per_token_at. Results go into results.json /
results.md under "torch_pruning".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import text_tasks as T  # noqa: E402

C = T.C
TARGET = 0.7  # fraction of the dense MACs kept


def accuracy_run():
    """benchmarks/accuracy/run.py as a module (by path: benchmarks/transformers has a run.py
    too, and its directory goes first on sys.path once its modules are imported)."""
    import importlib.util

    if "accuracy_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("accuracy_run", HERE / "run.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["accuracy_run"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["accuracy_run"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tp_prune_minilm(hf, enc, head_ratio: float, ffn_ratio: float, global_pruning: bool):
    import copy

    import torch
    import torch_pruning as tp

    m = copy.deepcopy(hf).eval()
    num_heads, ignored = {}, [m.embeddings] + ([m.pooler] if getattr(m, "pooler", None) is not None else [])
    for layer in m.encoder.layer:
        sa = layer.attention.self
        for lin in (sa.query, sa.key, sa.value):
            num_heads[lin] = sa.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]  # they write the hidden size
    ex = {"input_ids": torch.tensor(enc["input_ids"][:2, :16]), "attention_mask": torch.tensor(enc["attention_mask"][:2, :16])}
    pruner = tp.pruner.MetaPruner(
        m, ex, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=global_pruning,
        pruning_ratio=ffn_ratio, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=head_ratio,
        output_transform=lambda out: out.last_hidden_state.sum())
    pruner.step()
    for layer in m.encoder.layer:  # keep the module attributes consistent with the new widths
        sa = layer.attention.self
        sa.num_attention_heads = sa.query.out_features // sa.attention_head_size
        sa.all_head_size = sa.query.out_features
    return m


def minilm_macs(m, seq: int = 128) -> float:
    """MACs per token of the encoder at sequence `seq` from the module widths (q/k/v/o and
    FFN linears, attention score and context matmuls); used only to steer the ratio search."""
    total = 0.0
    for layer in m.encoder.layer:
        sa = layer.attention.self
        hidden, width = sa.query.in_features, sa.query.out_features
        total += 4 * hidden * width + 2 * seq * width
        total += 2 * hidden * layer.intermediate.dense.out_features
    return total


def partial(wd: Path, rows: list[dict]) -> None:
    """Rows so far, in the work directory (a crash late in a long run keeps them)."""
    (wd / f"tp_rows_{rows[-1]['model']}.json").write_text(json.dumps(rows, indent=1, default=float))


def graphprune_pruned(task, cfg: dict, target: float):
    """The task's ONNX model pruned by graphprune with a run.py-style configuration."""
    import graphprune as gp
    from graphprune.passes import PASSES, PassContext, PassManager

    model = gp.load(task.path)
    ctx = PassContext()
    from run import best_calibration  # the same calibration set as the run.py row

    ctx.results["calibration"] = best_calibration(task, cfg) or task.calib
    PassManager([PASSES["prune-channels"](criterion=cfg["criterion"], allocation=cfg["allocation"],
                                          target_macs=target, sens_ratios=task.sens_ratios, sens_batches=1,
                                          **cfg.get("options", {}))]).run(model, ctx)
    if cfg.get("repair"):
        PassManager.parse(cfg["repair"]).run(model, ctx)
    return model


def export_minilm(m, enc, path: Path) -> str:
    import minilm as ML  # benchmarks/transformers/minilm.py

    return ML.export_onnx(m, enc, path)


def minilm(wd: Path) -> list[dict]:
    import torch
    from transformers import AutoModel

    import graphprune as gp

    R = accuracy_run()
    task = T.MiniLMTask(wd)
    d = wd / "tp_minilm"
    d.mkdir(exist_ok=True)
    dense_macs = C.macs_per_token_at(task.path, 128)
    hf = AutoModel.from_pretrained(C.minilm_dir(), attn_implementation="eager").eval()
    rows = []

    def row(tool, config, path, extra=None):
        macs = C.macs_per_token_at(path, 128)
        cos = task.evaluate(gp.load(path))
        r = {"model": "MiniLM-L6", "tool": tool, "config": config, "macs_per_token": macs, "seq": 128,
             "mac_reduction_pct": C.pct(dense_macs, macs), "metric_name": "cos", "metric": cos, "dense": 1.0,
             "ran": "yes", **(extra or {})}
        log(f"{tool:12s} {config:50s} MACs -{r['mac_reduction_pct']:.1f}% cos {cos:.4f}")
        rows.append(r)
        partial(wd, rows)

    # Torch-Pruning: one ratio for heads and FFN, searched so the MACs meet the target; the
    # search counts MACs from the module widths (minilm_macs), the final model's on its ONNX export
    dense_formula = minilm_macs(hf)
    for glob in (False, True):
        lo, hi, best = 0.0, 0.6, None
        for _ in range(7):
            r = (lo + hi) / 2
            kept = minilm_macs(tp_prune_minilm(hf, task.enc, r, r, glob)) / dense_formula
            if kept <= TARGET:
                hi, best = r, (r, kept)
            else:
                lo = r
        r = best[0]
        m = tp_prune_minilm(hf, task.enc, r, r, glob)
        p = d / f"tp_{'global' if glob else 'local'}.onnx"
        export_minilm(m, task.enc, p)
        with torch.no_grad():  # the pruned torch model itself runs and matches its export
            ht = m(input_ids=torch.tensor(task.enc["input_ids"][:8]),
                   attention_mask=torch.tensor(task.enc["attention_mask"][:8])).last_hidden_state.numpy()
        ho = C.ort_session(p).run(None, {k: v[:8] for k, v in task.enc.items()})[0]
        row("Torch-Pruning", f"L2 group magnitude, {'global' if glob else 'local'}, heads+FFN ratio {r:.3f}", p,
            {"torch_vs_onnx_max_abs": float(np.abs(ht - ho).max())})

    # graphprune on the ONNX export: same criterion/allocation, and its best configuration
    for label, cfg in (("L2 uniform, heads+FFN (same criterion)", {"criterion": "l2", "allocation": "uniform",
                                                                   "repair": ""}),
                       ("best: " + R.BEST["minilm"]["criterion"] + " / " + R.BEST["minilm"]["allocation"]
                        + (" + " + R.BEST["minilm"]["repair"] if R.BEST["minilm"].get("repair") else "")
                        + (f", {R.BEST['minilm']['calib_size']} calibration sentences"
                           if R.BEST["minilm"].get("calib_size") else ""),
                        R.BEST["minilm"])):
        model = graphprune_pruned(task, cfg, TARGET)
        p = d / ("gp_" + cfg["criterion"] + ".onnx")
        gp.save(model, p)
        row("graphprune", label, p)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir")
    ap.add_argument("--models", default="minilm,smollm")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    wd = T.workdir(args.workdir)
    t0 = time.time()
    rows = []
    if "minilm" in args.models:
        rows += minilm(wd)
    if "smollm" in args.models:
        import tp_smollm

        rows += tp_smollm.smollm(wd, TARGET, log)
    out = Path(args.out) / "results.json"
    res = json.loads(out.read_text()) if out.exists() else {"models": {}, "date": "", "machine": "", "command": ""}
    prev = res.get("torch_pruning", {}).get("rows", [])
    models = {r["model"] for r in rows}
    rows = [r for r in prev if r["model"] not in models] + rows
    res["torch_pruning"] = {"method": METHOD, "rows": rows, "verdict": verdict(rows), "seconds": time.time() - t0,
                            "command": "python benchmarks/accuracy/torch_pruning_compare.py"}
    out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    import accuracy_report

    (Path(args.out) / "results.md").write_text(accuracy_report.markdown(res))
    log(res["torch_pruning"]["verdict"])
    return 0


METHOD = ("Command: `python benchmarks/accuracy/torch_pruning_compare.py`. Torch-Pruning 1.6.1 MetaPruner with "
          "GroupMagnitudeImportance(p=2) on the transformers (torch) model, local and global; graphprune on the ONNX "
          "export of the same model, L2 uniform and its best configuration. Every pruned model (both tools) is "
          "exported to ONNX and evaluated in ONNX Runtime; MACs per token are counted on those ONNX files with "
          "graphprune.analysis.cost at batch 1 and a fixed sequence length (attention matmuls included).")


def verdict(rows: list[dict]) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        higher = rs[0]["metric_name"] == "cos"
        pick = max if higher else min
        tp = pick((r for r in rs if r["tool"] == "Torch-Pruning"), key=lambda r: r["metric"], default=None)
        g = pick((r for r in rs if r["tool"] == "graphprune"), key=lambda r: r["metric"], default=None)
        if tp is None or g is None:
            continue
        beats = g["metric"] > tp["metric"] if higher else g["metric"] < tp["metric"]
        out.append(f"{model}: graphprune best {rs[0]['metric_name']} {g['metric']:.4g} at -{g['mac_reduction_pct']:.1f}% "
                   f"MACs vs Torch-Pruning best {tp['metric']:.4g} at -{tp['mac_reduction_pct']:.1f}% → "
                   f"graphprune {'beats' if beats else 'does NOT beat'} Torch-Pruning")
    return "; ".join(out)


if __name__ == "__main__":
    sys.exit(main())
