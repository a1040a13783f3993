"""Writing a pruned model and its plan as one result (`graphprune prune -o`): the model is
written to a temporary file, then the plan, then the model is renamed, so a run
interrupted anywhere leaves either the old pair, or a mismatch that the plan digest in the
model exposes, and never a half file under the final names."""
from __future__ import annotations

import os
from pathlib import Path


def remove_model(path: Path | None) -> None:
    if path is None:
        return
    for p in [path, *path.parent.glob(path.name + "*.data")]:
        p.unlink(missing_ok=True)


def model_size(path: Path) -> int:
    """An .onnx file with its external data files: the ones its tensors name (any file name:
    `rb.onnx` + `rb.data` counted 6.6 KB of 392 KB) and graphprune's own `<name>*.data`."""
    from graphprune.frontends.onnx import model_files

    return sum(p.stat().st_size for p in dict.fromkeys(f.resolve() for f in model_files(path)) if p.is_file())


def move_model(staged: Path, out: Path) -> None:
    """Give a staged .onnx (+ .data) its final name; the data file name is in the proto."""
    import onnx

    if not (staged.parent / (staged.name + ".data")).exists():
        os.replace(staged, out)
        return
    proto = onnx.load(str(staged), load_external_data=False)
    data_old, data_new = staged.name + ".data", out.name + ".data"
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value == data_old:
                e.value = data_new
    os.replace(staged.parent / data_old, out.parent / data_new)
    onnx.save(proto, str(staged))
    os.replace(staged, out)


def set_metadata(path: Path, key: str, value: str) -> None:
    """Record key=value in a staged .onnx file's metadata (its tensors stay where they are)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            break
    else:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def staging_path(out: Path, what: str) -> Path:
    from graphprune import outputs

    return out.with_name(f"{outputs.temp_prefix(out.name)}{what}.onnx")


def plan_path_for(output: Path) -> Path:
    name = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(name + ".plan.json")


def check_sidecars(out: Path, *, vocab: bool = False) -> None:
    """The files written beside a model the user named `out`: its plan and (with `vocab`)
    its token id map replace only graphprune's own files of those names."""
    from graphprune import outputs

    outputs.refuse_foreign(plan_path_for(out), "the plan written with the model", outputs.is_graphprune_plan)
    if vocab:
        from graphprune.passes.pruning.slice_vocab import vocab_path_for

        outputs.refuse_foreign(vocab_path_for(out), "the token id map written with the model",
                               outputs.is_graphprune_id_map)


def write_pair(model, plan, out: Path, *, staged: Path | None, rewritten: bool, temps: list) -> Path:
    """Write `model` (or the already `staged` file of a large model, when nothing changed it
    since) to `out` and the plan beside it; returns the plan's path."""
    from graphprune import outputs
    from graphprune.frontends.onnx import save_onnx

    digest = outputs.plan_digest(plan)  # the model records its plan: check and --plan refuse other pairs
    plan_out = plan_path_for(out)
    outputs.clean_stale_temps(out.parent)
    try:
        if staged is None or rewritten:
            lazy_backing = staged  # a large model's tensors are still read from this file
            staged = staging_path(out, "final")
            temps.append(staged)
            model.metadata_props[outputs.PLAN_KEY] = digest
            save_onnx(model, staged)
            remove_model(lazy_backing)
        else:
            set_metadata(staged, outputs.PLAN_KEY, digest)
        plan.save(plan_out)
        move_model(staged, out)
    except BaseException:
        remove_model(staged)
        raise
    return plan_out
