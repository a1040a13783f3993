"""A self-contained report.html: tables plus matplotlib figures embedded as PNG data.

Without matplotlib the report still renders, with a note where the figures would be.
"""
from __future__ import annotations

import base64
import html
import io
import json


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


FIGURE_ROWS = 60  # bars per per-layer figure: more are unreadable, and cost seconds to draw (LLMs: 200+ layers)


def _largest(rows: list[dict], key: str) -> tuple[list[dict], str]:
    """At most FIGURE_ROWS rows, the largest by `key`, in their own order; and the title's
    note when some were left out (the tables list every layer)."""
    if len(rows) <= FIGURE_ROWS:
        return rows, ""
    keep = set(sorted(range(len(rows)), key=lambda i: -(rows[i].get(key) or 0))[:FIGURE_ROWS])
    return [r for i, r in enumerate(rows) if i in keep], f" ({FIGURE_ROWS} largest of {len(rows)}; all in the tables)"


def _figures(report: dict) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    all_layers = report.get("layers") or []
    if all_layers:
        for key, title in (("width", "output width per layer"), ("macs", "MACs per layer")):
            layers, note = _largest(all_layers, "macs_before")
            fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(layers) + 1)))
            y = range(len(layers))
            ax.barh(list(y), [r[f"{key}_before"] or 0 for r in layers], color="#c8d3e6", label="before")
            ax.barh(list(y), [r[f"{key}_after"] or 0 for r in layers], color="#2f5fa7", label="after")
            ax.set_yticks(list(y), [r["name"][-28:] for r in layers], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(title + note)
            ax.legend(loc="lower right")
            out.append((title, _fig_png(fig)))
            plt.close(fig)
    out += _latency_figure(plt, all_layers)
    out += _sensitivity_figure(plt, report.get("sensitivity") or {})
    out += _candidates_figure(plt, report.get("search") or {})
    sparsity = report.get("sparsity") or {}
    if len(sparsity) > FIGURE_ROWS:  # the most sparse ones: the table has them all
        sparsity = dict(sorted(sparsity.items(), key=lambda kv: -kv[1])[:FIGURE_ROWS])
    if sparsity:
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(sparsity) + 1)))
        ax.barh(list(range(len(sparsity))), list(sparsity.values()), color="#2f5fa7")
        ax.set_yticks(list(range(len(sparsity))), [k[-28:] for k in sparsity], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title("sparsity per layer")
        out.append(("sparsity per layer", _fig_png(fig)))
        plt.close(fig)
    return out


def _latency_figure(plt, layers: list[dict]) -> list[tuple[str, str]]:
    rows = [r for r in layers if r.get("latency_ms_before") is not None]
    if not rows:
        return []
    rows, note = _largest(rows, "latency_ms_before")
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(rows) + 1)))
    y = list(range(len(rows)))
    ax.barh(y, [r["latency_ms_before"] for r in rows], color="#e6cfc8", label="before")
    ax.barh(y, [r.get("latency_ms_after") or 0 for r in rows], color="#a7452f", label="after")
    ax.set_yticks(y, [r["name"][-28:] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms (ONNX Runtime profiler, median)")
    ax.set_title("latency per layer" + note)
    ax.legend(loc="lower right")
    src = _fig_png(fig)
    plt.close(fig)
    return [("latency per layer", src)]


def _sensitivity_figure(plt, sens: dict) -> list[tuple[str, str]]:
    if not sens:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in list(sens.items())[:30]:
        ax.plot([p[0] for p in curve], [p[1] for p in curve], marker=".", linewidth=1, label=name[-20:])
    ax.set_xlabel("fraction of the group removed")
    ax.set_ylabel("output error on calibration data")
    ax.set_title("sensitivity per group")
    if len(sens) <= 12:
        ax.legend(fontsize=6)
    src = _fig_png(fig)
    plt.close(fig)
    return [("sensitivity curves", src)]


def _candidates_figure(plt, search: dict) -> list[tuple[str, str]]:
    """Score against latency of each candidate (score against MACs, or alone, without latency)."""
    cands = [c for c in search.get("candidates") or [] if isinstance(c.get("score"), (int, float))]
    if not cands:
        return []
    xkey = next((k for k in ("latency_ms", "macs", "kept_macs") if all(isinstance(c.get(k), (int, float)) for c in cands)), None)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [c[xkey] if xkey else i for i, c in enumerate(cands)]
    chosen = [c.get("name") == search.get("chosen") for c in cands]
    ax.scatter(xs, [c["score"] for c in cands], c=["#a7452f" if ch else "#2f5fa7" for ch in chosen])
    for x, c in zip(xs, cands, strict=True):
        ax.annotate(str(c.get("name"))[:24], (x, c["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel({"latency_ms": "latency (ms)", "macs": "MACs", "kept_macs": "kept MACs (fraction)"}.get(
        xkey, "candidate"))
    ax.set_ylabel("score")
    ax.set_title("candidates: score vs " + ({"latency_ms": "latency", "macs": "MACs", "kept_macs": "kept MACs"}.get(
        xkey) or "order"))
    src = _fig_png(fig)
    plt.close(fig)
    return [("candidate trade-off", src)]


def _cell(c) -> str:
    if isinstance(c, float) and c.is_integer() and abs(c) >= 1000:
        c = int(c)
    if isinstance(c, int) and not isinstance(c, bool):
        return f"{c:,}"
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)


def _table(rows: list[list], header: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _verdicts(report: dict) -> list[str]:
    lat = report.get("latency") or {}
    line = lat.get("line")
    lines = [line if line.startswith("latency: ") else "latency: " + line] if line else []
    if lat.get("widths_line"):
        lines.append(lat["widths_line"])
    q = report.get("quality") or report.get("accuracy")
    return lines + ([q] if q else [])


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#1d2430}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccd;padding:3px 8px;font-size:13px;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:1em;vertical-align:top}
img{max-width:520px}.note{color:#666}h1{font-size:1.4em}.red{color:#b00020;font-weight:bold}
.meta{color:#444;font-size:13px}"""


def _before_after(report: dict) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    rows = []
    for key, label in (("params", "params"), ("macs", "MACs"), ("bytes", "model bytes"),
                       ("latency_ms", "latency (ms, median)"), ("fidelity", "output fidelity")):
        bv, av = b.get(key), a.get(key)
        if bv is None and av is None:
            continue
        ratio = f"{av / bv:.3f}" if isinstance(bv, (int, float)) and isinstance(av, (int, float)) and bv else ""
        rows.append([label, bv if bv is not None else "", av if av is not None else a.get(f"{key}_note", ""), ratio])
    return _table(rows, ["", "before", "after", "ratio"])


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{body}" if body else ""


def _checks(report: dict) -> str:
    rows = [[k, "PASS" if v.get("ok") else "FAIL" if v.get("ok") is False else "skipped",
             v.get("summary", "") + (f" — inputs: {v['inputs']}" if v.get("inputs") else "")]
            for k, v in (report.get("checks") or {}).items()]
    return _table(rows, ["check", "result", "detail"]) if rows else ""


def _groups(report: dict) -> str:
    rows = [[g["name"], g["channels"], g["removed"], g["kept"],
             " + ".join(f"{p['before']}→{p['after']}" for p in g["parts"]) if len(g.get("parts", [])) > 1 else "",
             g.get("not_multiple", "")] for g in report.get("groups") or []]
    return _table(rows, ["group", "channels", "removed", "kept", "parts", "note"]) if rows else ""


def _candidates(report: dict) -> str:
    search = report.get("search") or {}
    rows = [[c.get("name", ""), c.get("score", ""), c.get("latency_ms", ""),
             ", ".join(f"{k}={v}" for k, v in (c.get("options") or {}).items()),
             "chosen" if c.get("name") == search.get("chosen") else ""] for c in search.get("candidates") or []]
    return _table(rows, ["candidate", "score", "latency (ms)", "options", ""]) if rows else ""


def _layers(report: dict) -> str:
    rows = [[r["name"], r["op"], r["width_before"], "removed" if r.get("removed") else r["width_after"],
             r["macs_before"], r["macs_after"], _opt(r.get("latency_ms_before")), _opt(r.get("latency_ms_after"))]
            for r in report.get("layers") or []]
    if not rows:
        return ""
    from graphprune.report.profile import PROFILE_NOTE

    timed = any(r.get("latency_ms_before") is not None for r in report.get("layers") or [])
    note = f"<p><em>{html.escape(PROFILE_NOTE)}.</em></p>" if timed else ""
    return note + _table(rows, ["layer", "op", "width before", "width after", "MACs before", "MACs after",
                                "ms before", "ms after"])


def _opt(v):
    return "" if v is None else v


def _meta(report: dict) -> str:
    from graphprune.input_shapes import InputShapes

    env = report.get("environment") or {}
    pk = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    items = [f"command: <code>{html.escape(' '.join(report.get('command') or []))}</code>"]
    if report.get("input_shapes"):
        items.append(html.escape(InputShapes.from_json(report["input_shapes"]).measured_at()))
    budget = report.get("budget")
    if budget and budget["met"]:  # one not met is a red line
        items.append(html.escape(budget["line"]))
    backend = report.get("backend")
    if backend:
        items.append(f"backend: <b>{html.escape(str(backend.get('chosen', '')))}</b> — "
                     f"{html.escape(str(backend.get('reason', '')))}")
    items.append(html.escape(f"versions: graphprune {env.get('graphprune')}, python {env.get('python')}, {pk}; "
                             f"schema {report.get('schema', '')}"))
    return "".join(f"<p class='meta'>{i}</p>" for i in items)


def render_html(report: dict) -> str:
    figs = _figures(report)
    fig_html = "".join(f"<figure><img alt='{html.escape(t)}' src='{src}'><figcaption>{html.escape(t)}</figcaption>"
                       "</figure>" for t, src in figs) or \
        "<p class='note'>Figures need matplotlib (pip install 'graphprune[report]').</p>"
    per_layer_backend = (report.get("backend") or {}).get("per_layer") or {}
    name = (report.get("input") or {}).get("path", "")
    target = (report.get("target") or {}).get("name")
    title = f"graphprune report — {name}" + (f" → {target}" if target else "") + f" ({report.get('verb', 'compile')})"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("notes", []))
    red = "".join(f"<p class='red'>{html.escape(r)}</p>" for r in report.get("red") or [])
    raw = {k: v for k, v in report.items() if k != "layers"}
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="generator" content="{html.escape(str(report.get('schema', 'graphprune.report/')))}">
<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>{_meta(report)}{red}
<h2>Before / after</h2>{_before_after(report)}
{''.join(f"<p><b>{html.escape(line)}</b></p>" for line in _verdicts(report))}
{_section('Checks', _checks(report))}
{_section('Groups the plan changes', _groups(report))}
{_section('Candidates', _candidates(report))}
<h2>Figures</h2>{fig_html}
{_section('Ops', _table([[r['op'], r['before'], r['after']] for r in report.get('ops') or []], ['op', 'before', 'after'])
              if report.get('ops') else '')}
{_section('Backend per layer', _table([[k, v] for k, v in per_layer_backend.items()], ['layer', 'kernel'])
          if per_layer_backend else '')}
{_section('Layers', _layers(report))}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<details><summary>report.json</summary><pre>{html.escape(json.dumps(raw, indent=1, default=str))}</pre></details>
</body></html>"""
