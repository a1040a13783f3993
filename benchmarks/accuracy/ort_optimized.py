"""The same model before and after ONNX Runtime's transformer optimizer, pruned by the same
one command: does a user who ships the optimized file (fused SkipLayerNormalization,
BiasGelu, Attention ...) get what a user of the plain export gets?

    python benchmarks/accuracy/ort_optimized.py [--target 0.7] [--workdir DIR]

all-MiniLM-L6-v2 (the accuracy benchmark's export, text_tasks.MiniLMTask) is optimized with
`onnxruntime.transformers.optimizer.optimize_model(model_type="bert", opt_level=0)`; each
file is pruned with `run_prune(path, PruneOptions(allocation={"target_macs": T},
calib=<the defaults row's 32 sentences>))` — `graphprune prune M --target-macs T --calib
calib.npz` with no other flag — and evaluated against the *plain* dense model's embeddings on
the held-out sentences (text_tasks.MiniLMTask.goal_metrics). Writes ort_optimized.json here.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def optimized_copy(path: Path) -> tuple[Path, dict]:
    """The ORT-optimized file beside `path` (made once) and its fused ops."""
    import onnx
    from onnxruntime.transformers import optimizer

    out = path.with_name(path.stem + "_ort_optimized.onnx")
    if not out.exists():
        optimizer.optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=384,
                                 opt_level=0).save_model_to_file(str(out))
    fused = collections.Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node
                                if n.domain == "com.microsoft")
    return out, dict(fused)


def row(task, path: Path, target: float) -> dict:
    import graphprune as gp
    from graphprune.workflow import PruneOptions, run_prune

    dense = task.goal_metrics(path)
    analysis = gp.analyze(gp.load(path))
    t0 = time.perf_counter()
    out = run_prune(str(path), PruneOptions(allocation={"target_macs": target}, calib=task.goal_calibration()))
    st = out.plan.settings or {}
    return {"file": path.name, "dense": dense, "prunable_groups": len(analysis.prunable_groups),
            "macs_before": out.before.macs, "macs_kept": round(out.after.macs / max(out.before.macs, 1), 4),
            "criterion": st.get("criterion"), "allocation": st.get("allocation"),
            "oracle": None if out.oracle is None else bool(out.oracle.ok),
            "repair": [{k: r.get(k) for k in ("pass", "error_before", "error_after", "reverted")} for r in out.repair],
            "seconds": round(time.perf_counter() - t0, 1), "pruned": task.goal_metrics(out.model)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--workdir")
    args = ap.parse_args(argv)
    import importlib.util

    import text_tasks as T

    spec = importlib.util.spec_from_file_location("accuracy_run", HERE / "run.py")  # not transformers/run.py
    accuracy_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy_run)

    task = T.MiniLMTask(T.workdir(args.workdir))
    optimized, fused = optimized_copy(task.path)
    res = {"graphprune": accuracy_run._revision(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "target_macs": args.target, "calibration": task.calib.description,
           "evaluation": task.goal_description(), "fused_ops": fused,
           "rows": [row(task, task.path, args.target), row(task, optimized, args.target)]}
    (HERE / "ort_optimized.json").write_text(json.dumps(res, indent=1) + "\n")
    for r in res["rows"]:
        m, d = r["pruned"], r["dense"]
        print(f"{r['file']:40s} groups {r['prunable_groups']:3d}  MACs {r['macs_before']:.3g} kept {r['macs_kept']}"
              f"  {r['criterion']}/{r['allocation']}  oracle {r['oracle']}  dense cosine {d['cosine']:.4f}"
              f"  pruned cosine {m['cosine']:.4f} R@1 {m['R@1']:.3f} R@1 labeled {m['R@1 labeled']:.3f}"
              f"  ({r['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
