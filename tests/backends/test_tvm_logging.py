"""Tuning must survive any handlers on MetaSchedule's logger.

MetaSchedule rebuilds its loggers on every tuning call from the *names* of the handlers
already on ``tvm.s_tir.meta_schedule``. pytest >= 9.1 attaches unnamed capture handlers
there (and a user's logging set-up may attach anything); without graphprune's guard the
next tuning call fails with ``'NoneType' object has no attribute 'format'``.
"""
from __future__ import annotations

import logging

import pytest

pytest.importorskip("tvm")

from graphprune.backends.tvm import adapter  # noqa: E402

ok, why = adapter.available()
if not ok:
    pytest.skip(why, allow_module_level=True)


@pytest.fixture
def foreign_handlers():
    """An unnamed handler (what pytest >= 9.1 attaches) and a named one of a user's."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = logging.NullHandler()
    named = logging.NullHandler()
    named.set_name("my-app-handler")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    yield logger, [unnamed, named]
    logger.removeHandler(unnamed)
    logger.removeHandler(named)


def test_meta_schedule_loggers_fail_with_foreign_handlers_unguarded(foreign_handlers, tmp_path):
    """The failure the guard exists for (if TVM fixes it, this test says so)."""
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    with pytest.raises((AttributeError, ValueError)):
        get_loggers_from_work_dir(str(tmp_path), ["task"])


def test_tuning_entry_survives_foreign_handlers_and_restores_them(foreign_handlers, tmp_path):
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    logger, handlers = foreign_handlers
    level = logger.level
    with adapter._quiet_meta_schedule():
        loggers = get_loggers_from_work_dir(str(tmp_path), ["task"])  # what tune_relax calls
        assert loggers and not any(h in logger.handlers for h in handlers)
    for h in handlers:
        assert h in logger.handlers
    assert logger.level == level
    # MetaSchedule's own handlers, left by the call above, do not break the next call.
    with adapter._quiet_meta_schedule():
        get_loggers_from_work_dir(str(tmp_path), ["task"])


def test_what_the_importer_prints_on_a_failed_attempt_is_captured(capfd):
    """TVM's ONNX importer prints Relax IR fragments (Python print and C++ logs, fd 1 and 2)
    when its first attempt fails; the capture keeps them out of the terminal, gives them to
    the caller, and puts both descriptors back."""
    import os
    import sys

    with adapter._captured_output() as said:
        print("from python")
        os.write(2, b"from C++\n")
    print("after")
    sys.stdout.flush()
    out, err = capfd.readouterr()
    assert said.text.splitlines() == ["from python", "from C++"]
    assert out == "after\n" and err == ""
