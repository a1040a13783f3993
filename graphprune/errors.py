"""Typed errors. Each carries what it concerns so the CLI can print one useful line."""
from __future__ import annotations


class GraphpruneError(Exception):
    """Base class. `hint` is a short suggestion the CLI prints after the message."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, node: str | None = None):
        super().__init__(message)
        self.hint = hint
        self.node = node


class UsageError(GraphpruneError):
    exit_code = 2


class ArgumentTypeError(UsageError, TypeError):
    """A Python API function got an argument of the wrong kind (e.g. None for a model)."""


class FrontendError(GraphpruneError):
    """The input model cannot be read or normalised."""

    exit_code = 4


class PlanError(GraphpruneError):
    """A plan does not fit the model it is applied to, or breaks a structural constraint."""

    exit_code = 2


class StaleAnalysisError(PlanError):
    """An analysis (e.g. a DependencyGraph) is used on a model that changed since it ran."""


class PassError(GraphpruneError):
    """A pass failed or left an invalid IR. Names the pass, the pipeline it ran in and the
    passes that ran before it; `violations` lists what the verifier found, if anything."""

    def __init__(self, message: str, *, pass_name: str | None = None, pipeline: str | None = None,
                 ran_before: tuple[str, ...] = (), violations: list | tuple = (), **kw):
        super().__init__(message, **kw)
        self.pass_name = pass_name
        self.pipeline = pipeline
        self.ran_before = tuple(ran_before)
        self.violations = list(violations)


class VerificationError(GraphpruneError):
    """The IR breaks a structural invariant. `violations` lists every one the verifier found
    (`graphprune.ir.verifier.Violation`), not only the first."""

    def __init__(self, message: str, *, violations: list | tuple = (), **kw):
        super().__init__(message, **kw)
        self.violations = list(violations)


class OracleMismatchError(GraphpruneError):
    """The pruned model differs from the masked original: a correctness gate failed."""

    exit_code = 3


class NotCheckableError(GraphpruneError):
    """`check` of a model whose weights a repair or sparsity changed after pruning: it is not
    the masked original by design, so the oracle cannot judge it. Not a mismatch (exit 3):
    a script told them apart by nothing; the run that wrote it verified the pruning."""

    exit_code = 6


class QualityGateError(GraphpruneError):
    """The pruned model is exact but too far from the dense one on the user's data."""

    exit_code = 3


class BackendUnavailableError(GraphpruneError):
    exit_code = 4


class SlowerThanAskedError(GraphpruneError):
    """`compile --min-speedup F`: the deployed pruned model is less than F times faster than
    the input model in ONNX Runtime, measured side by side at the representative shape."""

    exit_code = 5
