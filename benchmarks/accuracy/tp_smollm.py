"""SmolLM2 half of torch_pruning_compare.py: FFN channels only, 30% fewer MACs per token.

Torch-Pruning 1.6.1 prunes the transformers model (GroupMagnitudeImportance(p=2); every
layer that is not a gate/up projection is ignored, so only the FFN width changes),
local and global; graphprune prunes the ONNX export with the attention groups protected.
Every pruned model is exported / saved as ONNX, its MACs per token counted at sequence 256
and its perplexity computed with ONNX Runtime (benchmarks/transformers/smollm.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import text_tasks as T

C = T.C
PROTECT_ATTENTION = ["self_attn"]  # graphprune: keep every attention (KV-group) group whole


def tp_prune(hf, ratio: float, global_pruning: bool):
    import copy

    import torch
    import torch_pruning as tp

    m = copy.deepcopy(hf).eval()
    ignored = [m.lm_head]
    for layer in m.model.layers:
        a = layer.self_attn
        ignored += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.mlp.down_proj]
    ex = torch.randint(100, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    pruner = tp.pruner.MetaPruner(m, ex, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=global_pruning, pruning_ratio=ratio, ignored_layers=ignored,
                                  output_transform=lambda out: out.logits.sum())
    pruner.step()
    m.config.intermediate_size = m.model.layers[0].mlp.gate_proj.out_features  # informative only
    return m


def export_lm(m, path: Path) -> str:
    import smollm as S  # benchmarks/transformers/smollm.py

    return S.export_onnx(m, path)


def smollm(wd: Path, target: float, log) -> list[dict]:
    import torch

    import graphprune as gp
    from torch_pruning_compare import accuracy_run, graphprune_pruned, partial

    R = accuracy_run()

    task = T.SmolLMTask(wd)
    d = wd / "tp_smollm"
    d.mkdir(exist_ok=True)
    dense_macs = C.macs_per_token_at(task.path, 256)
    dense_ppl = task.evaluate(task.path)
    hf, _ = C.load_smollm()
    cfg = hf.config
    # FFN MACs per token per channel and layer: 3 x hidden; the ratio that meets the target
    ffn_ratio = (1 - target) * dense_macs / (3 * cfg.hidden_size * cfg.intermediate_size * cfg.num_hidden_layers)
    log(f"SmolLM2: dense {dense_macs / 1e6:.1f} MMACs/token @256, ppl {dense_ppl:.3f}; FFN ratio {ffn_ratio:.4f}")
    rows = []

    def row(tool, config, path, extra=None):
        macs = C.macs_per_token_at(path, 256)
        ppl = task.evaluate(path)
        r = {"model": "SmolLM2-135M", "tool": tool, "config": config, "macs_per_token": macs, "seq": 256,
             "mac_reduction_pct": C.pct(dense_macs, macs), "metric_name": "perplexity", "metric": ppl,
             "dense": dense_ppl, "ran": "yes", **(extra or {})}
        log(f"{tool:12s} {config:50s} MACs -{r['mac_reduction_pct']:.1f}% ppl {ppl:.3f}")
        rows.append(r)
        partial(wd, rows)

    for glob in (False, True):
        t = time.time()
        m = tp_prune(hf, ffn_ratio, glob)
        widths = sorted({layer.mlp.gate_proj.out_features for layer in m.model.layers})
        x = torch.tensor(task.ev[:1, :64])
        with torch.no_grad():
            lt = m(input_ids=x, use_cache=False).logits.numpy()
        p = d / f"tp_{'global' if glob else 'local'}.onnx"
        exporter = export_lm(m, p)
        lo = C.ort_session(p).run(None, {"input_ids": task.ev[:1, :64]})[0]
        row("Torch-Pruning", f"L2 group magnitude, {'global' if glob else 'local'}, FFN ratio {ffn_ratio:.3f}", p,
            {"ffn_widths": widths, "exporter": exporter, "torch_vs_onnx_max_abs": float(np.abs(lt - lo).max()),
             "seconds": time.time() - t})
        del m
        for f in d.glob("tp_*.onnx*"):
            f.unlink()

    best = R.BEST["smollm"]
    for label, cfg in (("L2 uniform, FFN only (same criterion)", {"criterion": "l2", "allocation": "uniform"}),
                       (f"best: {best['criterion']} / {best['allocation']}, FFN only"
                        + (f" + {best['repair']}" if best.get("repair") else ""), best)):
        cfg = {**cfg, "options": {**cfg.get("options", {}), "protect": PROTECT_ATTENTION}}  # FFN groups only
        model = graphprune_pruned(task, cfg, target)
        p = d / "gp.onnx"
        gp.save(model, p)
        del model
        row("graphprune", label, p)
        for f in d.glob("gp.onnx*"):
            f.unlink()
    return rows
