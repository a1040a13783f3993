"""Python's cyclic garbage collector paused while graphprune builds, analyses or rewrites a
model's IR.

Those steps allocate hundreds of thousands of long-lived objects (nodes, values, shapes,
slots), and the collector's automatic full passes then walk the whole growing IR again and
again while finding almost nothing to free: on a 30-layer LLaMA (5,000 nodes) 0.3-0.4 s of
`gp.load`'s CPU and 0.2-0.3 s of `gp.prune`'s went to collections. Paused per step, not
per run: the garbage a step leaves (its dropped nodes and values, which reference each
other) is collected by the next automatic pass after it, so a long run with large
temporary arrays (the oracle, repair) does not keep them. The switch is process-wide:
another thread's cyclic garbage also waits, for the length of one step.
"""
from __future__ import annotations

import functools
import gc


def gc_paused(fn):
    """`fn` runs with automatic collection off, and it is restored as it was (a caller that
    had turned it off keeps it off). Not across threads: another thread that turns it off
    while `fn` runs finds it on again when `fn` returns (the switch is the process's)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper
