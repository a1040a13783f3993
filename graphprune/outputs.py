"""What graphprune writes, and the rules that keep it off everything the user owns.

* Every path a run writes (-o, the plan, --save-config, --log-file, --json, report
  folders) is checked against every path it reads (the model and its external data, the
  plan, --inputs, --calib, --config) before any work: the same file after resolving
  links, or an output folder that holds an input, is a UsageError (exit 2).
* A folder is written only when it is new, empty, or carries graphprune's marker
  (`.graphprune-output`, a small JSON listing the files graphprune put there). Replacing a
  marked folder removes only the files the marker lists; every other file stays. `force`
  lets an unmarked folder be used, replacing only the files this run writes again (and
  compile's top-level files); nothing else in it is removed.
* Files are written atomically through temporary files named `.graphprune-tmp.<pid>.*`,
  removed on any exception (and on SIGTERM, which the CLI turns into an exception); the
  ones a killed run leaves behind are recognisable, and the next run in that folder
  removes them once their process is gone.
* A model and its plan are one result: the model's metadata carries the digest of its
  plan (`graphprune.plan_sha256`), and `check` / `--plan` refuse a pair that differs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from graphprune.errors import PlanError, UsageError

log = logging.getLogger(__name__)

MARKER = ".graphprune-output"
TMP_PREFIX = ".graphprune-tmp."
PLAN_KEY = "graphprune.plan_sha256"
# What `compile` writes at the top of its folder: with --force, an unmarked folder's
# entries of these names are taken as graphprune's own.
COMPILE_NAMES = ("model.pruned.onnx", "plan.json", "report.json", "report.md", "report.html", "onnxruntime", "tvm")


# ---- atomic files --------------------------------------------------------------------

def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder for `name`: recognisable, and naming the
    process that owns it so a later run can tell a leftover from a live one."""
    return f"{TMP_PREFIX}{os.getpid()}.{name}."


def mkstemp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())
    return fd, tmp


def mkdtemp_beside(path: str | os.PathLike) -> Path:
    path = Path(path)
    stage = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
    os.chmod(stage, 0o777 & ~current_umask())
    return stage


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    if path.is_dir():  # os.replace onto a folder fails with EBUSY/EISDIR, not in words
        raise UsageError(f"{path} is a directory", hint="name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of graphprune runs in `folder` whose process is gone
    (a run killed with SIGKILL cannot clean up after itself)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(TMP_PREFIX):
            continue
        pid = p.name[len(TMP_PREFIX):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
            log.info("removed %s, left by an interrupted graphprune run", p)
        except OSError:
            pass
    return removed


_SIGNALLED: list[int] = []  # the signals _raise_on_sigterm turned into SystemExit, in order


def _raise_on_sigterm(signum, frame):
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)


def terminated_by() -> int | None:
    """The signal that ended this run, when _raise_on_sigterm raised for it: inside a C++
    callback (TVM's tuning loop) the SystemExit comes back as another exception (a
    RuntimeError '143'), which must not read as an internal error."""
    return _SIGNALLED[-1] if _SIGNALLED else None


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM ends the process without unwinding, which would leave temporary files:
    turn it into SystemExit so every cleanup (`except BaseException`, `finally`) runs."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_on_sigterm)


# ---- inputs vs outputs ----------------------------------------------------------------

def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser())).resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def _inside(child: Path, folder: Path) -> bool:
    c, f = _resolved(child), _resolved(folder)
    return c == f or f in c.parents


def check_paths(inputs: list[tuple[str, str | os.PathLike]], files: list[tuple[str, str | os.PathLike]] = (),
                folders: list[tuple[str, str | os.PathLike]] = ()) -> None:
    """Refuse (UsageError, exit 2) any output that would write over an input: the same
    file after resolving links, an existing file inside an input folder, or an output
    folder holding an input. Also: an output file that is a folder, and two outputs on one
    path. `inputs`, `files`, `folders`: (what, path) pairs."""
    inputs = [(w, Path(p)) for w, p in inputs if p]
    files = [(w, Path(p)) for w, p in files if p]
    folders = [(w, Path(p)) for w, p in folders if p]
    for what, out in files:
        _check_output_file(what, out, inputs)
    for what, out in folders:
        _check_output_folder(what, out, inputs)
    _check_outputs_apart(files, folders)


_HINT_NOT_OVER_INPUTS = "choose another path: graphprune never writes over its inputs"


def _check_output_file(what: str, out: Path, inputs: list[tuple[str, Path]]) -> None:
    if out.is_dir():
        raise UsageError(f"{what} {out} is a directory", hint="name a file to write")
    for iwhat, inp in inputs:
        if same_path(out, inp):
            raise UsageError(f"{what} {out} would overwrite the {iwhat} {inp}", hint=_HINT_NOT_OVER_INPUTS)
        if inp.is_dir() and (out.exists() or out.is_symlink()) and _inside(out, inp):
            raise UsageError(f"{what} {out} would overwrite a file in the {iwhat} folder {inp}",
                             hint=_HINT_NOT_OVER_INPUTS)


def _check_output_folder(what: str, out: Path, inputs: list[tuple[str, Path]]) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} {out} exists and is not a folder", hint="choose a new or empty folder")
    for iwhat, inp in inputs:
        if _inside(inp, out):
            raise UsageError(f"{what} {out} holds the {iwhat} {inp}; graphprune never writes into a "
                             "folder that holds its inputs", hint="choose a new or empty folder")
        if inp.is_dir() and _inside(out, inp):
            raise UsageError(f"{what} {out} is inside the {iwhat} folder {inp}",
                             hint="choose a folder outside the inputs")


def _check_outputs_apart(files: list[tuple[str, Path]], folders: list[tuple[str, Path]]) -> None:
    """No two outputs on one path, and no output file inside an output folder."""
    outs = files + folders
    for i, (wa, a) in enumerate(outs):
        for wb, b in outs[i + 1:]:
            if same_path(a, b):
                raise UsageError(f"{wa} {a} and {wb} {b} are the same path", hint="give each output its own path")
            for (wf, f), (wd, d) in (((wa, a), (wb, b)), ((wb, b), (wa, a))):
                if (wf, f) in files and (wd, d) in folders and _inside(f, d):
                    raise UsageError(f"{wf} {f} is inside the {wd} {d}, which graphprune writes as a whole",
                                     hint="write it outside that folder")


# ---- output folders --------------------------------------------------------------------

def _rel_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            out.append((Path(dirpath) / n).relative_to(root).as_posix())
    return sorted(out)


def read_marker(folder: Path) -> set[str] | None:
    """The files graphprune wrote in `folder` (None: no marker, not graphprune's folder)."""
    try:
        data = json.loads((folder / MARKER).read_text())
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    own = set()
    for rel in files if isinstance(files, list) else []:
        # a marker is a file anyone can edit: only plain relative paths inside the folder
        if isinstance(rel, str) and rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts \
                and _inside(folder / rel, folder) and rel != MARKER:
            own.add(rel)
    return own


def _marker_text(files) -> str:
    from importlib import metadata

    try:
        version = metadata.version("graphprune")
    except metadata.PackageNotFoundError:
        version = None
    return json.dumps({"written_by": "graphprune", "version": version,
                       "note": "graphprune may replace the files listed here (and only these) when it "
                               "writes to this folder again", "files": sorted(files)}, indent=1) + "\n"


def _owned(folder: Path, force: bool, new: set[str] | None = None) -> set[str] | None:
    """The files of `folder` graphprune may replace or remove: those its marker lists; in an
    unmarked folder with `force`, only the top-level files of the names compile writes and
    the files this run writes again (`new`), never anything else under those names (a
    user's file in `onnxruntime/` was removed as if graphprune had written it)."""
    own = read_marker(folder)
    if own is None and force:
        own = {rel for rel in _rel_files(folder) if rel in COMPILE_NAMES or (new is not None and rel in new)}
    return own


def check_output_dir(folder: str | os.PathLike, *, force: bool = False) -> None:
    """Before any work: `folder` may be written only when new, empty, or graphprune's
    (its marker), or with `force` (then only files with graphprune's names are replaced)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} exists and is not a folder", hint="choose a new or empty folder")
    entries = [e for e in folder.iterdir() if not e.name.startswith(TMP_PREFIX)]
    if not entries:
        return
    own = _owned(folder, force)
    if own is None:
        raise UsageError(f"output folder {folder} is not empty and was not written by graphprune (no {MARKER} "
                         "file); refusing to replace anything in it",
                         hint="choose a new or empty folder, or --force to replace only the files graphprune "
                              "writes there (every other file is kept)")
    clash = [n for n in COMPILE_NAMES if (folder / n).is_file() and n not in own]
    if clash:
        raise UsageError(f"output folder {folder} has {', '.join(clash)}, which graphprune did not write "
                         "there; refusing to replace it", hint="choose a new or empty folder")


def install_output_dir(stage: Path, folder: Path, *, force: bool = False) -> None:
    """Move a finished staging folder's files into `folder` (see check_output_dir). A new
    or empty folder is replaced in one rename; otherwise only graphprune's own files go,
    and the marker lists old and new ones while the files move."""
    new = _rel_files(stage)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        (stage / MARKER).write_text(_marker_text(new))
        os.replace(stage, folder)  # rename(2) replaces an empty folder
        return
    check_output_dir(folder, force=force)  # the folder may have changed during the run
    own = _owned(folder, force, set(new)) or set()
    clash = []
    for rel in new:
        dst = folder / rel
        if (dst.exists() or dst.is_symlink()) and rel not in own:
            clash.append(rel)
        for parent in list(Path(rel).parents)[:-1]:
            if (folder / parent).exists() and not (folder / parent).is_dir():
                clash.append(parent.as_posix())
    if clash:
        raise UsageError(f"output folder {folder}: {', '.join(sorted(set(clash))[:5])} were not written by "
                         "graphprune; refusing to replace them", hint="choose a new or empty folder")
    write_text_atomic(folder / MARKER, _marker_text(own | set(new)))
    for rel in sorted(own - set(new)):
        (folder / rel).unlink(missing_ok=True)
    for rel in new:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, folder / rel)
    dirs = {p for rel in own for p in Path(rel).parents if p != Path(".")}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            (folder / d).rmdir()  # only when empty: a user's file keeps its folder
        except OSError:
            pass
    write_text_atomic(folder / MARKER, _marker_text(new))
    shutil.rmtree(stage, ignore_errors=True)


# ---- files a run writes beside the one the user named ----------------------------------------

def _json_of(path: Path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(1 << 26))
    except (OSError, ValueError):
        return None


def is_graphprune_plan(path: Path) -> bool:
    d = _json_of(path)
    return isinstance(d, dict) and {"version", "tensors", "groups"} <= set(d)


def is_graphprune_id_map(path: Path) -> bool:
    d = _json_of(path)
    return isinstance(d, dict) and str(d.get("format", "")).startswith("graphprune.vocab/")


def is_graphprune_model(path: Path) -> bool:
    """An ONNX model graphprune wrote: it records its plan's digest (PLAN_KEY)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable model: not graphprune's
        return False
    return any(p.key == PLAN_KEY for p in proto.metadata_props)


def refuse_foreign(path: Path, what: str, ours) -> None:
    """Before any work: `path`, which graphprune would write though the user did not name it
    (a plan beside the model, the default output name), may replace only a file graphprune
    wrote (`ours(path)`); anyone else's is never overwritten."""
    if (path.exists() or path.is_symlink()) and not (path.is_file() and ours(path)):
        raise UsageError(f"{path} ({what}) exists and was not written by graphprune; it is never replaced",
                         hint="move it away, or choose another -o")


# ---- a model and its plan ----------------------------------------------------------------

def plan_digest(plan) -> str:
    """sha256 of a plan's JSON written canonically (sorted keys, no spaces), so a plan
    file re-indented by hand still matches its model."""
    data = plan.to_json() if hasattr(plan, "to_json") else plan
    canon = json.dumps(json.loads(json.dumps(data)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def verify_pair(model, plan, *, model_name: str = "the pruned model", plan_name: str = "the plan") -> str:
    """Refuse (PlanError, exit 2) a pruned model whose recorded plan digest is not this
    plan's. Returns a note for a model that records none (older or other tools)."""
    recorded = model.metadata_props.get(PLAN_KEY)
    if not recorded:
        return f"note: {model_name} records no plan digest (written by another tool or an older graphprune); " \
               f"pairing with {plan_name} not verified"
    if recorded != plan_digest(plan):
        raise PlanError(f"plan {plan_name} does not belong to model {model_name} (written by another run)",
                        hint="use the .plan.json written together with the model")
    return ""


def recorded_digest(path: str | os.PathLike) -> str | None:
    """The plan digest a model file records (PLAN_KEY), read without its weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == PLAN_KEY), None)


def plan_beside(pruned: str | os.PathLike) -> Path:
    """The plan written together with a pruned model file: `<name>.plan.json` beside it
    (prune), `plan.json` in its folder or, for a deployment inside a compile folder, in the
    folder above, else any `*.plan.json` beside it (the Olive pass names its plan after the
    input model, Olive names the model). Only a plan whose digest the model records is
    taken; otherwise a UsageError asks for --plan."""
    pruned = Path(pruned)
    stem = pruned.name[:-5] if pruned.name.endswith(".onnx") else pruned.name
    looked = [pruned.parent / f"{stem}.plan.json", pruned.parent / "plan.json"]
    if (pruned.parent.parent / MARKER).exists():
        looked.append(pruned.parent.parent / "plan.json")
    looked += sorted(p for p in pruned.parent.glob("*.plan.json") if p not in looked)[:50]
    if not pruned.is_file():
        from graphprune.errors import FrontendError

        raise FrontendError(f"{pruned}: no such file")
    recorded = recorded_digest(pruned)
    if recorded is None:
        raise UsageError(f"{pruned} records no plan digest (not written by graphprune prune/compile or gp.save of "
                         "a prune result): give its plan (--plan; plan= in Python)",
                         hint="check needs the plan.json the pruned model was made with")
    for cand in looked:
        try:  # the digest is of the plan's JSON, so the file is compared as written
            if cand.is_file() and plan_digest(json.loads(cand.read_text())) == recorded:
                return cand
        except (OSError, ValueError):  # unreadable or not JSON: not the plan
            continue
    raise UsageError(f"no plan of {pruned} beside it (looked for {', '.join(str(c) for c in looked[:3])}"
                     f"{' and the other *.plan.json there' if len(looked) > 3 else ''}): give --plan",
                     hint="check needs the plan.json written together with the pruned model")


def refuse_replay_on_own_product(model, plan, *, model_name: str, plan_name: str) -> None:
    """`--plan P` on the model P produced would prune it twice."""
    if model.metadata_props.get(PLAN_KEY) == plan_digest(plan):
        raise PlanError(f"{model_name} is the model plan {plan_name} produced (already pruned); a plan is "
                        "replayed on the input model it was made for",
                        hint=f"replay it on {plan.model.get('path', 'the original model')}")
