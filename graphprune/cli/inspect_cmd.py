"""graphprune inspect model.onnx"""
from __future__ import annotations

from collections import Counter


def add_arguments(p):
    from graphprune.cli import argtypes as T

    p.add_argument("model", help="ONNX model")
    p.add_argument("--groups", type=T.COUNT, default=30, help="show at most N groups (default 30)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", type=T.regex,
                   help="node/tensor names whose groups are never pruned (repeatable)")
    p.add_argument("--graph", action="store_true", help="also print the graph, one node a line")
    p.add_argument("--blocks", action="store_true", help="list residual blocks (depth pruning candidates)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="count MACs with this input at this shape (repeatable); default: the --calib data's "
                        "shapes, else static dims, else a default the model runs")
    p.add_argument("--calib", metavar="SPEC", help="calibration data (.npz, image folder, module:function) "
                   "whose shapes the MACs are counted at")
    p.add_argument("--layers", type=T.COUNT, default=30, metavar="N",
                   help="show the MACs of at most N layers (default 30)")
    p.add_argument("--report", metavar="PATH", help="also write PATH.report.{json,md,html} (graphprune.report/1)")


def _shapes(args, model):
    """The representative shapes inspect counts MACs at (None: the model cannot be run to
    check a default, MACs then count symbolic dims as 1)."""
    from graphprune.cli.common import parse_shapes
    from graphprune.errors import FrontendError
    from graphprune.runtime import ort
    from graphprune.runtime.calibration import load_calibration

    calib = load_calibration(args.calib, model) if args.calib else None
    try:
        return ort.resolve_shapes(model, args.model, user=parse_shapes(args.input_shape),
                                  calib=calib.first() if calib is not None else None)
    except (FrontendError, ImportError):
        return None


def inspect_data(model, dg, shapes=None) -> dict:
    """What inspect shows; MACs at `shapes` (InputShapes) when given."""
    from graphprune.analysis.cost import layer_macs, model_cost
    from graphprune.ir.shapes import dims_of
    from graphprune.report.widths import group_width

    at = shapes.shapes if shapes is not None else None
    cost = model_cost(model, at)
    by_name = {n.name: n.op_type for n in model.graph}
    ops = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in model.graph)
    return {
        "inputs": [{"name": v.name, "shape": dims_of(v), "dtype": str(v.dtype)} for v in model.graph.inputs],
        "outputs": [{"name": v.name, "shape": dims_of(v), "dtype": str(v.dtype)} for v in model.graph.outputs],
        "opset": dict(model.opset_imports),
        "ops": dict(ops.most_common()),
        "params": cost.params,
        "macs": cost.macs,
        "macs_uncounted": cost.uncounted or [],
        "measured_at": None if shapes is None else {n: {"shape": list(s), "source": shapes.sources[n]}
                                                    for n, s in shapes.shapes.items()},
        "layers": [{"node": k, "op": by_name[k], "macs": v} for k, v in layer_macs(model, at).items()],
        "groups": [{"id": g.id, "name": g.name, "width": group_width(g).channels, "atoms": g.num_atoms,  # report.widths
                    "tensors": len(g.slots),
                    "constants": len(g.const_slots), "ignored": g.ignored, "hidden": g.normalised} for g in dg.groups],
        "frozen": [{"name": f.name, "tensors": len(f.slots), "reasons": f.reasons} for f in dg.frozen_groups],
        "diagnostics": [{"node": d.node, "op": d.op, "message": d.message} for d in dg.diagnostics],
        "sparsity": sparsity_data(model),
        "untied": untied_data(model),
        "vocab": vocab_data(model),
        "experts": experts_data(model),
        "stream": stream_data(model),
    }


def experts_data(model) -> dict:
    """The MoE layers --keep-experts would prune: {"layers": [{"moe", "experts", "k", "router"}]},
    or {"refused": why} when one has a router prune-experts cannot slice, or {} without MoE."""
    from graphprune.errors import UsageError
    from graphprune.ir.moe import is_moe
    from graphprune.passes.pruning.prune_experts import find_moe_layers

    if not any(is_moe(n) for n in model.graph):
        return {}
    try:
        layers = find_moe_layers(model)
    except UsageError as exc:
        return {"refused": str(exc)}
    return {"layers": [{"moe": la.name, "experts": la.experts, "k": la.k, "router": la.router_weight.name}
                       for la in layers]}


def vocab_data(model) -> dict:
    """The token vocabulary --keep-tokens would slice: {"input", "size", "tables", "heads"},
    or {"refused": why} for a model with integer inputs that slice_vocab cannot keep exact,
    or {} for a model without integer inputs."""
    from graphprune.passes.pruning.slice_vocab import NotAVocabulary, find_vocab

    if not any(v.dtype is not None and not v.dtype.is_floating_point() for v in model.graph.inputs):
        return {}
    try:
        sites = find_vocab(model)
    except NotAVocabulary as exc:
        return {"refused": str(exc)}
    return {"input": sites.ids.name, "size": sites.vocab, "tables": [t.name for t in sites.tables],
            "heads": [h.node.name for h in sites.heads]}


def stream_data(model) -> dict:
    """The residual stream --slice-hidden would rotate and slice: {"hidden", "norms", "writers",
    "readers"}, or {"refused": why} for a model with norms it cannot rotate, or {} for a model
    without norms (a CNN without LayerNorm). The norms are what freeze the hidden size for
    channel pruning, so a frozen stream is explained here by the one pass that can reach it."""
    from graphprune.analysis.residual_stream import NotAStream, find_stream, has_norms
    from graphprune.ir.serialize import clone
    from graphprune.passes.pruning.layernorm_stream import prepare_stream

    if not has_norms(model):
        return {}
    try:
        model = clone(model)  # prepare_stream rewrites the graph: on a copy (loaded weights are shared, not copied)
        prepare_stream(model)
        stream = find_stream(model)
    except NotAStream as exc:
        return {"refused": str(exc)}
    return {"hidden": stream.hidden, "norms": len(stream.norms), "writers": len(stream.writers),
            "readers": len(stream.readers)}


def untied_data(model) -> dict:
    """Shared all-zero constants copied per consumer for the analysis (graphprune.ir.untie):
    input-model name → the copies' names."""
    from graphprune.ir.untie import untied_copies

    out: dict[str, list[str]] = {}
    for copy, orig in sorted(untied_copies(model).items()):
        out.setdefault(orig, []).append(copy)
    return out


def sparsity_data(model) -> dict:
    """The model's sparsity record (metadata "graphprune.sparsity") with the fraction of
    zeros measured in each tensor next to the recorded one."""
    from graphprune.sparsity_meta import measured_sparsity, read_sparsity

    rec = read_sparsity(model)["tensors"]
    meas = measured_sparsity(model, rec)
    return {name: {**r, "measured": meas.get(name)} for name, r in rec.items()}


def _sparsity_format(r: dict) -> str:
    f = r.get("format", "?")
    if f == "n:m":
        return f"{r.get('n')}:{r.get('m')}"
    if f == "block":
        return "block {}x{}".format(*r.get("block", ["?", "?"]))
    if f == "pattern":
        return f"pattern k={r.get('pattern_k')} ({len(r.get('patterns', []))} shapes, " \
               f"connectivity {r.get('connectivity', 0):g})"
    return f


def _print_overview(args, model, data: dict) -> None:
    """Inputs, outputs, size, ops and the group table."""
    from graphprune.analysis.cost import uncounted_line
    from graphprune.cli.common import human, table

    fmt = lambda s: "x".join("?" if d is None else str(d) for d in s) if s is not None else "?"  # noqa: E731
    print(f"model {args.model}  opset {data['opset']}")
    for kind in ("inputs", "outputs"):
        for v in data[kind]:
            print(f"  {kind[:-1]:6} {v['name']}: {fmt(v['shape'])} {v['dtype']}")
    print(f"params {human(data['params'])}  MACs {human(data['macs'])}  nodes {len(model.graph)}")
    print(args.shapes.measured_at() if args.shapes is not None else "MACs with symbolic dims counted as 1")
    if line := uncounted_line(data["macs_uncounted"]):
        print(line)
    print("ops: " + ", ".join(f"{k} {v}" for k, v in data["ops"].items()))
    prunable = [g for g in data["groups"] if g["atoms"] > 1 and not g["ignored"]]
    print(f"\n{len(prunable)} prunable groups ({len(data['groups'])} in all)")
    rows = [[g["id"], g["name"], g["width"], g["tensors"], g["constants"],
             "ignored" if g["ignored"] else "hidden size (--prune-hidden)" if g["hidden"] else ""]
            for g in data["groups"][: args.groups]]
    print(table(rows, ["id", "group", "width", "tensors", "consts", ""]))
    if len(data["groups"]) > args.groups:
        print(f"... {len(data['groups']) - args.groups} more (--groups N)")
    _print_layers(args, data["layers"])


def _print_layers(args, layers: list[dict]) -> None:
    from graphprune.cli.common import human, table

    where = args.shapes.short() if args.shapes is not None else "symbolic dims as 1"
    print(f"\nMACs per layer at {where}:")
    print(table([[r["node"], r["op"], human(r["macs"])] for r in layers[: args.layers]], ["layer", "op", "MACs"]))
    if len(layers) > args.layers:
        print(f"... {len(layers) - args.layers} more (--layers N)")


def _print_untied_and_frozen(data: dict) -> None:
    if data["untied"]:
        print(f"\n{len(data['untied'])} shared all-zero constants untied (one copy per consumer, so they "
              "couple no layers; not listed in plans, zeroing them changes nothing):")
        for orig, copies in data["untied"].items():
            print(f"  {orig}: {len(copies) + 1} consumers")
    if data["frozen"]:
        print(f"\n{len(data['frozen'])} frozen groups (not pruned):")
        for f in data["frozen"]:
            print(f"  {f['name']}: " + "; ".join(f["reasons"][:3]) + (" ..." if len(f["reasons"]) > 3 else ""))


def _print_sparsity(sp: dict) -> None:
    from graphprune.cli.common import table

    pct = lambda v: "missing" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    print(f"\n{len(sp)} sparse tensors (metadata graphprune.sparsity):")
    print(table([[k, r.get("op", "?"), _sparsity_format(r), r.get("criterion", ""), pct(r.get("sparsity")),
                  pct(r.get("measured"))] for k, r in sp.items()],
                ["tensor", "op", "format", "criterion", "recorded", "measured zeros"]))


def _print_vocab(v: dict) -> None:
    if v.get("size"):
        print(f"\nvocabulary: {v['size']} tokens of input {v['input']!r} (tables {', '.join(v['tables'])}; "
              + (f"heads {', '.join(v['heads'])}" if v["heads"] else "no output head") + "): --keep-tokens can slice it")
    elif v.get("refused"):
        print(f"\nvocabulary: --keep-tokens would be refused: {v['refused']}")


def _print_experts(e: dict) -> None:
    if e.get("layers"):
        sizes = sorted({f"{la['experts']} experts, top {la['k']}" for la in e["layers"]})
        print(f"\nmixture of experts: {len(e['layers'])} MoE layer(s) ({'; '.join(sizes)}): --keep-experts N can "
              "remove the least routed-to experts")
    elif e.get("refused"):
        print(f"\nmixture of experts: --keep-experts would be refused: {e['refused']}")


def _print_stream(s: dict) -> None:
    if s.get("hidden"):
        print(f"\nresidual stream: hidden size {s['hidden']} ({s['norms']} norms, {s['writers']} layers writing it, "
              f"{s['readers']} reading it); channel pruning leaves it whole (the norms freeze it): "
              "--slice-hidden R --calib DATA can rotate and slice it")
    elif s.get("refused"):
        print(f"\nresidual stream: --slice-hidden would be refused: {s['refused']}")


def _print_blocks(model) -> None:
    from graphprune.analysis.blocks import find_residual_blocks
    from graphprune.cli.common import human, table

    blocks = find_residual_blocks(model)
    print(f"\n{len(blocks)} removable residual blocks (remove with --blocks ADD_NODE or --remove-blocks K):")
    print(table([[b.add, b.skip, len(b.nodes), human(b.params)] for b in blocks],
                ["add node", "residual stream", "nodes", "params"]))


def run(args) -> int:
    import graphprune as gp
    from graphprune.cli.report import check_inspect_report, write_inspect_report

    check_inspect_report(args)  # before any work
    model = gp.load(args.model)
    dg = gp.analyze(model, ignore=args.ignore or None)
    args.shapes = _shapes(args, model)
    data = inspect_data(model, dg, args.shapes)
    write_inspect_report(args, model, dg)
    if args.json:
        from graphprune.cli.results import emit, schema

        return emit(args, {"schema": schema("inspect"), **data})
    _print_overview(args, model, data)
    _print_untied_and_frozen(data)
    if data["sparsity"]:
        _print_sparsity(data["sparsity"])
    _print_vocab(data["vocab"])
    _print_experts(data["experts"])
    _print_stream(data["stream"])
    if args.blocks:
        _print_blocks(model)
    if args.graph:
        from graphprune.ir import format_graph

        print("\n" + format_graph(model))
    if data["diagnostics"]:
        print(f"\n{len(data['diagnostics'])} ops without a usable channel rule:")
        for d in data["diagnostics"][:50]:
            print(f"  {d['node']} ({d['op']}): {d['message']}")
    return 0
