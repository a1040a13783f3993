"""Built-in passes (importing this package registers them)."""
from graphprune.passes._infra import PASSES, Pass, PassContext, PassManager, register_pass
from graphprune.passes.cleanup import dce as _dce  # noqa: F401
from graphprune.passes.pruning import plan_channels as _plan  # noqa: F401
from graphprune.passes.pruning import apply_plan as _apply  # noqa: F401
from graphprune.passes.pruning import prune_channels as _prune  # noqa: F401
from graphprune.passes.pruning import prune_blocks as _blocks  # noqa: F401
from graphprune.passes.pruning import prune_experts as _experts  # noqa: F401
from graphprune.passes.pruning import slice_hidden as _hidden  # noqa: F401
from graphprune.passes import reconstruction as _repair  # noqa: F401
from graphprune.passes import sparsity as _sparsity  # noqa: F401

__all__ = ["PASSES", "Pass", "PassContext", "PassManager", "register_pass"]
