"""An Einsum equation as one label per axis of each operand and of the output.

Letters label themselves; the axes an ellipsis stands for are labelled ".0", ".1", ...
aligned from the right across operands, as numpy broadcasts them. Without "->" the output
is the ellipsis axes, then the letters used once, in alphabetical order (ONNX and numpy).
"""
from __future__ import annotations


def einsum_labels(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """(labels of each operand's axes, labels of the output's axes), or None when the
    equation does not fit operands of these ranks."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or any(t.count("...") > 1 for t in terms) or rhs.count("...") > 1:
        return None
    ell = [rank - len(t.replace("...", "")) if "..." in t else 0 for t, rank in zip(terms, ranks, strict=True)]
    if any(e < 0 for e in ell) or any("..." not in t and len(t) != rank for t, rank in zip(terms, ranks, strict=True)):
        return None
    width = max(ell, default=0)
    inputs = [_expand(t, e, width) for t, e in zip(terms, ell, strict=True)]
    if not all(c.isalpha() for t in terms for c in t.replace("...", "")):
        return None
    if arrow:
        if not all(c.isalpha() for c in rhs.replace("...", "")):
            return None
        return inputs, _expand(rhs, width, width)
    letters = [c for t in terms for c in t.replace("...", "")]
    once = sorted(c for c in set(letters) if letters.count(c) == 1)
    return inputs, [f".{k}" for k in range(width)] + once


def _expand(term: str, n: int, width: int) -> list[str]:
    """A term's labels with its ellipsis as its n axes, right-aligned among `width`."""
    head, dots, tail = term.partition("...")
    return list(head) + ([f".{width - n + k}" for k in range(n)] if dots else []) + list(tail)


def label_sizes(node, dims: list) -> dict[str, tuple[int, int, int]] | None:
    """{label: (operand index, axis, size)} of an Einsum node whose operands have `dims`: each
    label's first axis of a known size other than 1 (labels only of size 1 or symbolic are
    left out: they count as 1). None without an equation or when it does not fit the ranks.
    One MAC per combination of these sizes is the Einsum's count (analysis.cost), and the
    allocation's cost scales with these axes (allocation.cost)."""
    eq = node.attributes.get("equation")
    labels = einsum_labels(str(eq.value), [len(d) for d in dims]) if eq is not None else None
    if labels is None:
        return None
    out: dict[str, tuple[int, int, int]] = {}
    for i, (d, ls) in enumerate(zip(dims, labels[0], strict=True)):
        for ax, (label, n) in enumerate(zip(ls, d, strict=True)):
            if isinstance(n, int) and n != 1 and label not in out:
                out[label] = (i, ax, n)
    return out

