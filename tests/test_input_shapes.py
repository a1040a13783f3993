"""The label of a defaulted shape says what was defaulted (graphprune/input_shapes.py)."""
from graphprune.input_shapes import InputSpec, resolve


def test_a_defaulted_batch_alone_is_not_called_a_sequence():
    """A [N, 64] feature input read 'x: 1×64 (default for sequence inputs)': only its batch
    was chosen."""
    res = resolve([InputSpec("x", ["N", 64])])
    assert list(res.shapes["x"]) == [1, 64]
    assert "default batch" in res.describe() and "sequence" not in res.describe()
    tokens = resolve([InputSpec("ids", ["N", "T"], floating=False)])
    assert list(tokens.shapes["ids"]) == [1, 32] and "default for sequence inputs" in tokens.describe()
    image = resolve([InputSpec("img", ["N", 3, "H", "W"])])
    assert "default for image inputs" in image.describe()
