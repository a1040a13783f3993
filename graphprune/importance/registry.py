"""The criteria registry: name → criterion, open to other frontends (e.g. torch's Taylor).

A registry entry is either a plain callable ``fn(dg, group, **kw) -> scores per atom``
(how ``l1``/``l2``/``random`` were always called), or a `Criterion`: per-slot
contributions reduced over the group with a selectable reduction and normalisation,
optionally preceded by a ``prepare`` step run once for all groups (calibration data).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.errors import UsageError
from graphprune.importance import criteria as C
from graphprune.importance.magnitude import magnitude_contributions, random_scores
from graphprune.importance.reduce import reduce_group


@dataclass
class Criterion:
    name: str
    contributions: Callable[..., list]
    prepare: Callable[..., object] | None = None
    normalize: str = "mean"
    reduction: str = "sum"
    needs_calibration: bool = False
    prepare_options: dict | None = None

    def __call__(self, dg: DependencyGraph, group: Group, *, reduction: str | None = None,
                 normalize: str | None = None, state=None, **kw) -> np.ndarray:
        if self.prepare is not None and state is None:
            state = self.prepare(dg, [group], **(self.prepare_options or {}), **kw)
        contribs = self.contributions(dg, group, state=state, **kw)
        return reduce_group(group, contribs, reduction or self.reduction, normalize or self.normalize)


CRITERIA: dict[str, Callable] = {}


def register_criterion(name: str, fn: Callable | None = None, **kw):
    """Register a criterion (a `Criterion`, a contributions function with keyword options
    for `Criterion`, or a plain scoring callable). Usable as a decorator."""
    def add(f):
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered")
        CRITERIA[name] = f if (isinstance(f, Criterion) or not kw) else Criterion(name, f, **kw)
        return f

    return add(fn) if fn is not None else add


register_criterion("l1", Criterion("l1", lambda dg, g, **kw: magnitude_contributions(dg, g, p=1)))
register_criterion("l2", Criterion("l2", lambda dg, g, **kw: magnitude_contributions(dg, g, p=2)))
register_criterion("random", lambda dg, g, seed=0, **kw: random_scores(dg, g, seed))
register_criterion("bn_scale", Criterion("bn_scale", C.bn_scale_contributions))
register_criterion("fpgm", Criterion("fpgm", C.fpgm_contributions))
register_criterion("lamp", Criterion("lamp", C.lamp_contributions, normalize="lamp"))
register_criterion("taylor", Criterion("taylor", C.taylor_contributions))
register_criterion("activation", Criterion("activation", C.activation_contributions, C.prepare_activations,
                                           needs_calibration=True))
register_criterion("apoz", Criterion("apoz", C.apoz_contributions, C.prepare_activations, needs_calibration=True))
register_criterion("wanda", Criterion("wanda", C.wanda_contributions, C.prepare_activations,
                                      needs_calibration=True))
register_criterion("obs", Criterion("obs", C.obs_contributions, C.prepare_activations, needs_calibration=True,
                                    prepare_options={"gram": True}))


def group_scores(dg: DependencyGraph, criterion: str = "l2", groups=None, *, calibration=None,
                 reduction: str | None = None, normalize: str | None = None, **kw) -> dict[int, np.ndarray]:
    """Scores per atom for every (prunable) group. Data-aware criteria collect their
    statistics once, for all groups, from `calibration`."""
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}",
                         hint=f"choose one of {sorted(CRITERIA)}; from Python, an installed plugin's criteria are "
                              "registered by graphprune.load_plugins() (the CLI loads them itself)")
    fn = CRITERIA[criterion]
    groups = list(groups if groups is not None else dg.prunable_groups)
    if not isinstance(fn, Criterion):
        return {g.id: fn(dg, g, **kw) for g in groups}
    state = None
    if fn.prepare is not None:
        state = fn.prepare(dg, groups, calibration=calibration, **(fn.prepare_options or {}))
    return {g.id: fn(dg, g, reduction=reduction, normalize=normalize, state=state, **kw) for g in groups}
