"""graphprune.ir.einsum: an equation as labels per axis."""
from __future__ import annotations

import pytest

from graphprune.ir.einsum import einsum_labels


@pytest.mark.parametrize("eq, ranks, expected", [
    ("bsd,df->bsf", [3, 2], ([list("bsd"), list("df")], list("bsf"))),
    ("ij,jk", [2, 2], ([list("ij"), list("jk")], list("ik"))),  # implicit: letters used once, sorted
    ("ba,ac", [2, 2], ([list("ba"), list("ac")], list("bc"))),
    ("...d,de->...e", [4, 2], ([[".0", ".1", ".2", "d"], list("de")], [".0", ".1", ".2", "e"])),
    ("...d,...d->...", [3, 2], ([[".0", ".1", "d"], [".1", "d"]], [".0", ".1"])),  # right-aligned
    ("b i , b j -> b i j", [2, 2], ([list("bi"), list("bj")], list("bij"))),
    ("ii->i", [2], ([list("ii")], ["i"])),
])
def test_labels(eq, ranks, expected):
    assert einsum_labels(eq, ranks) == expected


@pytest.mark.parametrize("eq, ranks", [("ij,jk->ik", [2]), ("ij->i", [3]), ("i...j...->i", [4]),
                                       ("i1->i", [2]), ("ij->i", [1])])
def test_equations_that_do_not_fit_are_none(eq, ranks):
    assert einsum_labels(eq, ranks) is None
