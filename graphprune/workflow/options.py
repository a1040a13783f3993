"""PruneOptions: every option of the prune sequence, with its default written once. The
CLI builds it from argparse, the API from keyword arguments, compile from CompileOptions,
the Olive pass from its config, so the four cannot drift."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


# The quality gate with calibration data, whichever way the workflow is called (CLI, Python,
# configs, the Olive pass, compile), so a destroyed model is never written silently:
# 1 - mean output cosine of pruned vs dense on the calibration data.
DEFAULT_MAX_DROP = 0.1


def check_max_drop(value) -> None:
    from graphprune.errors import UsageError

    if not (value is None or value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                 and value >= 0)):
        raise UsageError(f"max_drop must be a number >= 0, 'auto' or None, not {value!r}")


def max_drop_of(opts) -> float | None:
    """The gate's threshold for options with `max_drop` and `calib` (PruneOptions,
    CompileOptions): as given, or for "auto" DEFAULT_MAX_DROP when there is calibration data."""
    if opts.max_drop == "auto":
        return DEFAULT_MAX_DROP if opts.calib is not None else None
    return opts.max_drop


def name_list(v) -> list:
    """A list of names or patterns: one string is one (list("Gemm137") would be seven of a
    character each, which protected everything without a word); None is none."""
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


@dataclass
class PruneOptions:
    # choosing channels (prune-channels; allocation.driver)
    ratio: float = 0.3
    criterion: str = "auto"  # auto: searched with calibration data (workflow.search), l2 without
    # a width multiple; "auto" (resolved at construction): this machine's float32 SIMD lanes,
    # the widths ONNX Runtime runs at the dense model's speed (benchmarks/bench_widths.py)
    round_to: int | str = "auto"
    # round_to was "auto": when the lanes' steps leave a MAC/params target far under (a small
    # model whose 32 channels can keep 16 or 32), the allocation uses the coarsest finer
    # multiple that meets it (allocation.driver, FINER_TOLERANCE) and the summary says so
    round_to_auto: bool = False
    ignore: list[str] = field(default_factory=list)
    seed: int = 0
    allocation: dict = field(default_factory=dict)  # allocation.driver options given: allocation, target_*, ...
    prune: bool = True  # False: no channel pruning (compile --no-prune); a --plan is still replayed
    plan: Any = None  # a Plan, or the path of a plan.json to replay exactly
    selection: dict | None = None  # group id -> atom ids to remove exactly (api)
    pipeline: str | None = None  # textual pass pipeline instead of the options above
    # depth pruning (prune-blocks)
    remove_blocks: int = 0
    block_criterion: str = "influence"
    blocks: list[str] = field(default_factory=list)
    # mixture-of-experts layers (prune-experts, first): experts kept per com.microsoft MoE layer (0: all)
    keep_experts: int = 0
    # hidden size (slice-hidden: rotate the residual stream, drop this fraction of its directions)
    slice_hidden: float | None = None
    # vocabulary (slice-vocab; applied last, after repair and sparsity): the token ids to keep
    keep_tokens: Any = None  # a list of ids, or a file of them (slice_vocab.read_token_list)
    token_input: str | None = None  # the input of token ids (default: the one indexing the largest table)
    # calibration data (criteria, repair, sparsity, the quality gate)
    calib: Any = None  # .npz, image folder, module:function, arrays or feed dicts in memory, or a Calibration
    calib_preprocess: str | None = None
    calib_batch: int = 8
    calib_samples: int | None = None
    # the oracle
    input_shapes: dict | None = None  # {input: dims}: makes dynamic inputs static
    check: bool = True
    check_unchanged: bool = True  # also run the oracle when the plan slices nothing
    inputs: list[dict] | None = None  # feed dicts used by the oracle besides random ones
    # the before/after cost figures (MACs, params at the representative shapes) and the budget
    # verdict: False for a caller that shows none (api.prune). Taking them at concrete shapes
    # normalises a copy of the model twice: over half of gp.load + gp.prune on a 30-layer LLaMA
    figures: bool = True
    # after the oracle
    repair: str | None = "auto"  # comma list of bias, bn, lsq, all, none; auto: searched with calibration data
    search_budget: int = 3  # candidates the search may evaluate (1: take the first, no evaluation)
    score: str | None = None  # module:function(session) -> float scoring candidates (default: output cosine)
    sparsity: dict | None = None  # `sparsify` pass options; None: no sparsity
    # quality gate: max 1 - mean output cosine on calibration data; "auto": DEFAULT_MAX_DROP with
    # calibration data, none without (max_drop_of); None: no gate
    max_drop: float | str | None = "auto"

    def __post_init__(self):
        from graphprune.backends.targets import resolve_round_to

        self.ignore, self.blocks = name_list(self.ignore), name_list(self.blocks)
        check_max_drop(self.max_drop)
        if self.round_to == "auto":
            self.round_to_auto = True
        self.round_to = resolve_round_to(self.round_to)

    def channel_options(self) -> dict:
        """prune-channels options (only those that differ from nothing: the plan records them)."""
        opts = {"ratio": self.ratio, "criterion": self.criterion, "round_to": self.round_to, "seed": self.seed}
        if self.ignore:
            opts["ignore"] = list(self.ignore)
        if self.round_to_auto and self.round_to > 1:
            opts["round_to_auto"] = True
        opts.update(self.allocation)
        return opts

    def block_options(self) -> dict:
        opts: dict = {"n": self.remove_blocks, "criterion": self.block_criterion}
        if self.blocks:
            opts["blocks"] = list(self.blocks)
        return opts

    def sparsity_line(self) -> str:
        return "sparsify{" + ",".join(f"{k}={v}" for k, v in (self.sparsity or {}).items()) + "}"


DEFAULTS = PruneOptions()
# DEFAULTS.round_to is this machine's lanes; the default as written, for the CLI, the API and configs:
ROUND_TO_DEFAULT = next(f.default for f in fields(PruneOptions) if f.name == "round_to")
