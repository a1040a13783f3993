"""Streaming activation statistics over calibration data.

Activations are observed with ONNX Runtime on a *copy* of the model in which the wanted
intermediate tensors are extra graph outputs (`graphprune.runtime.ort.Runner`). Batches
are streamed: every batch updates running statistics (`ChannelStats`, `GramStats`) and is
then dropped, so memory is bounded by one batch of activations, never by the data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphprune.runtime.calibration import Calibration, progress
from graphprune.runtime.ort import Runner
from graphprune.runtime.positions import padding_mask, real_rows


def channels_first(a: np.ndarray, axis: int) -> np.ndarray:
    """(C, everything else) view of `a` along channel `axis`, in float64."""
    return np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0).reshape(a.shape[axis], -1)


@dataclass
class ChannelStats:
    """Running per-channel statistics of one tensor along one axis."""

    axis: int
    count: int = 0
    sum: np.ndarray | None = None
    sum_abs: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    zeros: np.ndarray | None = None
    finite: np.ndarray | None = None  # per channel: the values the means are over

    def update(self, a: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add a batch's tensor; `mask`: its real (batch, position) pairs (positions.py).
        Non-finite values (an attention mask's -inf added to the scores) are left out of
        the statistics: one made a channel's mean infinite, and the group's normalised
        scores NaN (GPT-2, activation criterion)."""
        x = channels_first(*real_rows(a, self.axis, mask))
        if self.sum is None:
            c = x.shape[0]
            self.sum, self.sum_abs, self.sum_sq, self.zeros, self.finite = (np.zeros(c) for _ in range(5))
        self.count += x.shape[1]
        fin = np.isfinite(x)
        if fin.all():
            self.finite += x.shape[1]
        else:
            x = np.where(fin, x, 0)
            self.finite += fin.sum(1)
            self.zeros -= (~fin).sum(1)  # those zeros stand for left-out values
        x = x.astype(np.float64, copy=False)  # squares of large float32 values overflow in float32
        self.sum += x.sum(1)
        self.sum_abs += np.abs(x).sum(1)
        self.sum_sq += (x * x).sum(1)
        self.zeros += (x == 0).sum(1)

    def _n(self) -> np.ndarray | int:
        return np.maximum(self.finite, 1) if self.finite is not None else 1

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self._n()

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / self._n()

    @property
    def mean_sq(self) -> np.ndarray:
        return self.sum_sq / self._n()

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.mean_sq - self.mean ** 2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.mean_sq)

    @property
    def apoz(self) -> np.ndarray:
        """Average percentage of zeros per channel."""
        return self.zeros / self._n()


@dataclass
class GramStats:
    """Running channel Gram matrix E[x_c x_c'] of one tensor along one axis."""

    axis: int
    count: int = 0
    gram: np.ndarray | None = None

    def update(self, a: np.ndarray, mask: np.ndarray | None = None) -> None:
        x = channels_first(*real_rows(a, self.axis, mask))
        g = x @ x.T
        self.gram = g if self.gram is None else self.gram + g
        self.count += x.shape[1]

    @property
    def matrix(self) -> np.ndarray:
        return self.gram / max(self.count, 1)


@dataclass
class StatsRequest:
    channel: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    gram: dict[tuple[str, int], GramStats] = field(default_factory=dict)

    def want_channel(self, name: str, axis: int) -> None:
        self.channel.setdefault((name, axis), ChannelStats(axis))

    def want_gram(self, name: str, axis: int) -> None:
        self.gram.setdefault((name, axis), GramStats(axis))

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([n for n, _ in self.channel] + [n for n, _ in self.gram]))


def collect(model: ir.Model, request: StatsRequest, calib: Calibration, *, max_batches: int | None = None,
            desc: str = "calibration") -> StatsRequest:
    """Stream the calibration batches through `model`, updating every requested statistic
    (padded positions of text batches left out)."""
    if not request.names:
        return request
    run = Runner(model, request.names)
    for feeds in progress(calib.batches(max_batches), calib.total(max_batches), desc):
        out = run(feeds)
        mask = padding_mask(feeds)
        for (name, _), st in request.channel.items():
            st.update(out[name], mask)
        for (name, _), st in request.gram.items():
            st.update(out[name], mask)
        del out
    return request
