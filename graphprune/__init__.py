"""graphprune: a pruning compiler for neural networks.

    import graphprune as gp
    model = gp.load("model.onnx")
    groups = gp.analyze(model).groups
    result = gp.prune(model, ratio=0.3)
    gp.save(result.model, "small.onnx"); result.plan.save("small.plan.json")

    # what `graphprune prune` runs: search with calibration data, repair, oracle, quality gate
    out = gp.run_prune("model.onnx", gp.PruneOptions(calib="calib.npz", allocation={"target_macs": 0.7}),
                       out="small.onnx")

Heavy modules load on first use so `graphprune --help` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load": "graphprune.api", "save": "graphprune.api", "analyze": "graphprune.api",
    "prune": "graphprune.api", "check": "graphprune.api", "PruneResult": "graphprune.api",
    "compile": "graphprune.api",
    "run_prune": "graphprune.workflow", "PruneOptions": "graphprune.workflow",
    "sparsify": "graphprune.api", "SparsifyResult": "graphprune.api",
    "read_sparsity": "graphprune.sparsity_meta", "write_sparsity": "graphprune.sparsity_meta",
    "Plan": "graphprune.plan", "PassManager": "graphprune.passes", "Pass": "graphprune.passes",
    "PassContext": "graphprune.passes", "register_pass": "graphprune.passes",
    "rule": "graphprune.analysis.dependency", "RULES": "graphprune.analysis.dependency",
    "DependencyGraph": "graphprune.analysis.dependency",
    "prune_module": "graphprune.torchprune", "masked_module": "graphprune.torchprune",
    "finetune": "graphprune.finetuning", "load_plugins": "graphprune.plugins",
}

__all__ = sorted(_API) + ["__version__"]


def __dir__() -> list[str]:
    # the names load lazily, so without this dir(graphprune) would miss most of the API
    return list(__all__)


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")
