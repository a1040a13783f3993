"""Where graphprune caches things between runs (TVM tuning databases, the aarch64 TVM
runtime): ``$XDG_CACHE_HOME/graphprune`` (the XDG base directory spec), else
``~/.cache/graphprune``. A relative XDG_CACHE_HOME is ignored, as the spec says."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``<XDG cache home>/graphprune/<parts...>`` (not created)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root.joinpath("graphprune", *parts)


def tvm_db_root() -> Path:
    """The default TVM tuning database root (one database per target key below it)."""
    return cache_dir("tvm-db")
