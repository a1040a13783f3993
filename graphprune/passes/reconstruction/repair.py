"""Choosing and running the repair passes (after the oracle), for the verbs, the compile
workflow and config runs: ``--repair bias,bn,lsq,bn-fold|all`` and pipelines that contain repair
passes."""
from __future__ import annotations

REPAIR_ORDER = ("bias", "bn", "lsq")


def repair_passes(spec: str | list | None) -> list[str]:
    from graphprune.errors import UsageError
    from graphprune.passes.reconstruction import REPAIR_PASSES

    if not spec:
        return []
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if items == ["all"]:
        items = list(REPAIR_ORDER)
    if items == ["none"]:
        return []
    out = []
    for it in items:
        name = REPAIR_PASSES.get(it, it)
        if name not in REPAIR_PASSES.values():
            raise UsageError(f"unknown repair {it!r}", hint="choose from bias, bn, lsq, bn-fold, all, none")
        out.append(name)
    return out


def keep_dense(ctx, spec, pm=None) -> None:
    """Before the pruning: a repair will run, so apply-plan keeps the dense model (with
    calibration data it always does; data-free repairs need it too)."""
    if repair_passes(spec) or pm is not None:
        ctx.results["keep_dense"] = True


def split_repair(pm):
    """Split a pipeline at its first repair pass: pruning (checked by the oracle) first,
    repair after — repair changes weights beyond zeroing, which the oracle would reject."""
    from graphprune.passes import PassManager
    from graphprune.passes.reconstruction import REPAIR_PASSES

    names = set(REPAIR_PASSES.values())
    k = next((i for i, p in enumerate(pm.passes) if p.name in names), len(pm.passes))
    return PassManager(pm.passes[:k]), (PassManager(pm.passes[k:]) if k < len(pm.passes) else None)


def run_repair(model, ctx, spec, pm=None) -> list[dict]:
    """Run the repair passes (after the oracle); their reports land in the plan settings."""
    from graphprune.errors import UsageError
    from graphprune.passes import PASSES, PassManager
    from graphprune.passes.reconstruction import DATA_FREE

    names = repair_passes(spec)
    if not names and pm is None:
        return []
    wanted = names if pm is None else [p.name for p in pm.passes]
    if ctx.results.get("calibration") is None and not set(wanted) <= DATA_FREE:
        raise UsageError("--repair needs calibration data", hint="give --calib (or --repair bn-fold, which needs none)")
    if "dense_model" not in ctx.results:
        return []  # nothing was pruned
    pm = pm or PassManager([PASSES[n]() for n in names])
    pm.run(model, ctx)
    reports = ctx.results.get("repair", [])
    plan = ctx.results.get("plan")
    if plan is not None:
        plan.settings["repair"] = [{k: v for k, v in r.items() if k not in ("layers", "nodes")} for r in reports]
    return reports
