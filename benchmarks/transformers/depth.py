"""Part 3: depth pruning (remove whole residual blocks) — MACs and ONNX Runtime latency
of dense and pruned models measured side by side, for a ResNet-34-shaped CNN (random
weights, torch, TorchScript export) and for SmolLM2-135M (the part 2 export, cached).

    python benchmarks/transformers/depth.py [--workdir DIR] [--quick]

Latency: one ONNX Runtime session per model (CPU provider, all graph optimisations,
intra-op threads 1 and 2), warmed up, then R rounds in which every model runs once in a
rotating order; the median per model is reported. `other_busy` is the share of the
machine's CPU time that other processes used during the measurement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402


def resnet34_like():
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), basic blocks [3, 4, 6, 3] with widths
    64-512 (the first block of stages 2-4 downsamples with a 1x1 projection), global
    average pool, 1000-way linear. Random weights with randomised BatchNorm statistics."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.proj is None else self.proj(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for n, w, s in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
                for k in range(n):
                    layers.append(Basic(cin, w, s if k == 0 else 1))
                    cin = w
            self.body = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            return self.fc(self.body(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return net


def export_cnn(path: Path) -> None:
    import warnings

    import torch

    x = torch.randn(2, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet34_like(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def bench(paths: dict[str, Path], feeds: dict, repeats: int) -> dict:
    out = {}
    for threads in (1, 2):
        sessions = {n: C.ort_session(p, threads=threads) for n, p in paths.items()}
        out[f"threads={threads}"] = C.interleaved_latency(sessions, feeds, repeats=repeats)
        del sessions
    return out


def check(dense: Path, out: Path, feeds=None) -> tuple[str, bool]:
    import graphprune as gp

    try:
        r = gp.check(str(dense), str(out), str(out.with_suffix(".plan.json")), inputs=[feeds] if feeds else None)
        return f"{'PASS' if r.ok else 'FAIL'} ({r.worst_relative:.1e})", bool(r.ok)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        return f"ERROR {type(exc).__name__}: {str(exc)[:200]}", False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where models go (outside the repo); default $TMPDIR/graphprune-transformers")
    ap.add_argument("--quick", action="store_true", help="CNN only, few repeats (checks the script)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    t_start = time.time()
    wd = C.workdir(args.workdir) / "depth"
    wd.mkdir(exist_ok=True)
    repeats = 5 if args.quick else args.repeats

    import graphprune as gp
    from graphprune.analysis.blocks import find_residual_blocks

    # ---- CNN -------------------------------------------------------------------------------
    dense = wd / "resnet34_like.onnx"
    export_cnn(dense)
    base = gp.load(dense)
    blocks = find_residual_blocks(base)
    dense_cost = C.cost(base)
    C.log(f"ResNet-34-like: {len(blocks)} removable residual blocks, {dense_cost['macs'] / 1e9:.2f} GMACs")
    paths, rows = {"dense": dense}, [{"config": "dense", **dense_cost, "oracle": "-", "removed": []}]
    for k in (2, 4, 6):
        res, gp_error = C.prune_blocks_default(dense, k)  # graphprune's default: influence on random inputs
        out = wd / f"resnet_k{k}.onnx"
        gp.save(res.model, out)
        res.plan.save(str(out.with_suffix(".plan.json")))
        c = C.cost(res.model)
        oracle_txt, ok = check(dense, out)
        order = {b.id: i for i, b in enumerate(blocks)}
        rows.append({"config": f"remove {k} blocks", **c, "oracle": oracle_txt, "oracle_ok": ok,
                     "graphprune_error": gp_error,
                     "removed": sorted(order.get(b["add"], -1) for b in res.plan.blocks),
                     "mac_reduction_pct": C.pct(dense_cost["macs"], c["macs"]),
                     "params_reduction_pct": C.pct(dense_cost["params"], c["params"])})
        paths[rows[-1]["config"]] = out
        C.log(f"CNN k={k}: MACs -{rows[-1]['mac_reduction_pct']:.1f}%  oracle {oracle_txt}  "
              f"blocks {rows[-1]['removed']}")
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    lat = bench(paths, feeds, repeats)
    for r in rows:
        r["latency"] = {t: v["median_ms"][r["config"]] for t, v in lat.items()}
    cnn = {"model": "ResNet-34-shaped CNN, random weights, TorchScript export opset 17, input 1x3x224x224",
           "removable_blocks": len(blocks), "criterion": "remove_blocks=k (graphprune default: influence on "
           "random inputs)", "rows": rows, "latency_meta": {t: {"repeats": v["repeats"], "other_busy": v["other_busy"]}
                                                              for t, v in lat.items()}}
    for r in rows:
        C.log(f"CNN {r['config']:16s} " + "  ".join(f"{t}: {ms:.1f} ms" for t, ms in r["latency"].items()))

    data = {"cnn": cnn}
    # ---- SmolLM2 -------------------------------------------------------------------------------
    if not args.quick:
        import smollm as S
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
        ev, cal = S.text_chunks(tok)
        lm_dense, info = S.get_onnx(C.workdir(args.workdir))
        ds = S.depth_scores(lm_dense, cal)
        base = gp.load(lm_dense)
        d_cost = C.cost(base)
        del base
        configs = [("sub-blocks k=8", ds["blocks_by_influence"][:8]), ("sub-blocks k=16", ds["blocks_by_influence"][:16]),
                   ("layers k=4", S.layer_blocks(ds, 4)), ("layers k=8", S.layer_blocks(ds, 8))]
        lm_paths = {"dense": lm_dense}
        lm_rows = [{"config": "dense", **d_cost, "oracle": "-", "removed": []}]
        for name, blist in configs:
            m = gp.load(lm_dense)
            res = gp.prune(m, ratio=0.0, blocks=C.reverse_graph_order(m, blist))
            out = wd / f"smollm_{name.replace(' ', '_').replace('=', '')}.onnx"
            gp.save(res.model, out)
            res.plan.save(str(out.with_suffix(".plan.json")))
            c = C.cost(res.model)
            del res, m
            oracle_txt, ok = check(lm_dense, out, {"input_ids": ev[:1, :64]})
            lm_rows.append({"config": name, **c, "oracle": oracle_txt, "oracle_ok": ok,
                            "removed": [ds["labels"][b] for b in blist],
                            "mac_reduction_pct": C.pct(d_cost["macs"], c["macs"]),
                            "params_reduction_pct": C.pct(d_cost["params"], c["params"])})
            lm_paths[name] = out
            C.log(f"SmolLM2 {name}: MACs -{lm_rows[-1]['mac_reduction_pct']:.1f}%  oracle {oracle_txt}")
        feeds = {"input_ids": ev[:1, :128]}
        lat = bench(lm_paths, feeds, max(5, repeats // 2))
        for r in lm_rows:
            r["latency"] = {t: v["median_ms"][r["config"]] for t, v in lat.items()}
            C.log(f"SmolLM2 {r['config']:16s} " + "  ".join(f"{t}: {ms:.1f} ms" for t, ms in r["latency"].items()))
        data["smollm"] = {"model": "SmolLM2-135M-Instruct causal LM (part 2 export), input 1x128 tokens, no KV cache",
                          "criterion": "sub-blocks: influence on text; layers: 1 - cos(layer in, layer out) on text",
                          "rows": lm_rows, "latency_meta": {t: {"repeats": v["repeats"], "other_busy": v["other_busy"]}
                                                            for t, v in lat.items()}}
        for p in wd.glob("smollm_*"):
            p.unlink()
    data.update({"runtime_s": time.time() - t_start, "versions": C.versions()})
    if not args.quick:
        C.update_results("depth", data)
    C.log(f"depth part done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
