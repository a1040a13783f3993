"""Typed pass options: declared by each pass's constructor, bound and converted when a
pipeline is parsed (or a pass is built from Python), listed by `graphprune passes`."""
from __future__ import annotations

import pytest

from graphprune.cli.main import main
from graphprune.errors import UsageError
from graphprune.passes import PASSES, Pass, PassManager, register_pass


@pytest.mark.parametrize("pipeline,unknown,listed", [
    ("dce{foo=1}", "foo", "valid options of dce: none"),
    ("sparsify{sparsity=0.5,skip_frist=false}", "skip_frist", "skip_first (bool)"),
    ("prune-channels{ratio=0.5,rato=0.2}", "rato", "ratio (float)"),
    ("prune-blocks{k=2}", "k", "n (int)"),
    ("lsq-reconstruct{dmp=0.1}", "dmp", "damp (float | str)"),
])
def test_unknown_option_fails_at_parse_with_valid_options_listed(pipeline, unknown, listed):
    with pytest.raises(UsageError, match=f"unknown option {unknown}") as e:
        PassManager.parse(pipeline)  # parse only: nothing runs
    assert listed in e.value.hint


@pytest.mark.parametrize("pipeline,says", [
    ("prune-channels{ratio=abc}", "ratio=abc is not a valid float"),
    ("prune-channels{round_to=2.5}", "round_to=2.5 is not a valid int"),
    ("prune-channels{ratio=nan}", "ratio=nan"),
    ("sparsify{sparsity=0.5,skip_first=maybe}", "skip_first=maybe is not a valid bool"),
    ("prune-channels{sens_ratios=[0.5,x]}", "sens_ratios=[0.5,x]"),
    ("prune-channels{round_to=0}", "round_to must be >= 1"),
    ("prune-channels{ratio=1.5}", "ratio must be in [0, 1)"),
    ("prune-channels{ignore=[(]}", "not a valid regular expression"),
    ("bn-reestimate{match=dens}", "match=dens"),
])
def test_wrong_type_or_value_fails_at_parse(pipeline, says):
    with pytest.raises(UsageError) as e:
        PassManager.parse(pipeline)
    assert says in str(e.value)


def test_values_are_converted_to_the_declared_types():
    pm = PassManager.parse("prune-channels{ratio=1e-1,round_to=8,ignore=[Gemm,Conv1],seed=3},"
                           "sparsify{format=2:4,skip_first=false,min_params=0,block=8x1}")
    pc, sp = pm.passes
    assert pc.options == {"ratio": 0.1, "round_to": 8, "ignore": ["Gemm", "Conv1"], "seed": 3}
    assert type(pc.options["round_to"]) is int and type(pc.options["ignore"][0]) is str
    assert sp.options == {"format": "2:4", "skip_first": False, "min_params": 0, "block": "8x1"}
    assert sp.resolved_options()["skip_last"] is True  # a default


def test_python_construction_is_checked_too():
    import graphprune as gp
    from graphprune.passes.sparsity.sparsify import Sparsify

    with pytest.raises(UsageError, match="skip_frist"):
        Sparsify(sparsity=0.5, skip_frist=False)
    with pytest.raises(UsageError, match="skip_frist"):
        gp.sparsify(_tiny(), 0.5, skip_frist=False)


def _tiny():
    from samples.make_samples import Builder
    import graphprune as gp

    b = Builder(0)
    m = b.model([1, 3, 8, 8], b.conv(b.conv("input", 3, 8), 8, 4, k=1), [1, 4, 8, 8], "tiny")
    return gp.load(m.SerializeToString())


def test_plugin_pass_with_a_typed_constructor_is_checked_legacy_one_is_not():
    seen = {}

    @register_pass
    class Typed(Pass):
        name = "typed-options-test"

        def __init__(self, *, tag: str = "x", xs: list[int] | None = None, on: bool = False):
            super().__init__()
            seen["typed"] = (tag, xs, on)

        def run(self, model, ctx):
            return False

    @register_pass
    class Legacy(Pass):  # no constructor: takes **options, nothing declared
        name = "legacy-options-test"

        def run(self, model, ctx):
            return False

    try:
        p = PassManager.parse("typed-options-test{tag=a,xs=[1,2],on=true}").passes[0]
        assert seen["typed"] == ("a", [1, 2], True) and p.options == {"tag": "a", "xs": [1, 2], "on": True}
        with pytest.raises(UsageError, match="xs=\\[1,b\\]"):
            PassManager.parse("typed-options-test{xs=[1,b]}")
        with pytest.raises(UsageError, match="unknown option nope") as e:
            PassManager.parse("typed-options-test{nope=1}")
        assert "tag (str), xs (list[int] | none), on (bool)" in e.value.hint
        # documented: a pass that declares nothing gets any key, values guessed from the text
        legacy = PassManager.parse("legacy-options-test{anything=1,flag=false,xs=[1,a]}").passes[0]
        assert legacy.options == {"anything": 1, "flag": False, "xs": [1, "a"]}
    finally:
        PASSES.pop("typed-options-test")
        PASSES.pop("legacy-options-test")


def test_passes_command_lists_typed_options_and_defaults(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "  dce: none" in out
    assert "ratio: float = 0.3" in out and "round_to: int = 1" in out
    assert "skip_first: bool = true" in out and "sparsity: float | none = none" in out
    assert "batches: int | none = none" in out  # repair passes
