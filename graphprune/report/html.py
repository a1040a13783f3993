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


def _figures(report: dict) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    layers = report.get("layers") or []
    if layers:
        names = [r["name"][-28:] for r in layers]
        h = max(3.0, 0.22 * len(layers) + 1)
        for key, title in (("width", "output width per layer"), ("macs", "MACs per layer")):
            fig, ax = plt.subplots(figsize=(8, h))
            y = range(len(layers))
            ax.barh(list(y), [r[f"{key}_before"] or 0 for r in layers], color="#c8d3e6", label="before")
            ax.barh(list(y), [r[f"{key}_after"] or 0 for r in layers], color="#2f5fa7", label="after")
            ax.set_yticks(list(y), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(title)
            ax.legend(loc="lower right")
            out.append((title, _fig_png(fig)))
            plt.close(fig)
    sens = report.get("sensitivity") or {}
    if sens:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, curve in list(sens.items())[:30]:
            ratios = [p[0] for p in curve]
            vals = [p[1] for p in curve]
            ax.plot(ratios, vals, marker=".", linewidth=1, label=name[-20:])
        ax.set_xlabel("ratio removed")
        ax.set_ylabel("output fidelity")
        ax.set_title("sensitivity per group")
        if len(sens) <= 12:
            ax.legend(fontsize=6)
        out.append(("sensitivity curves", _fig_png(fig)))
        plt.close(fig)
    sparsity = report.get("sparsity") or {}
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
    return lines + ([report["accuracy"]] if report.get("accuracy") else [])


def render_html(report: dict) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    rows = []
    for key, label in (("params", "params"), ("macs", "MACs"), ("bytes", "model bytes"),
                       ("latency_ms", "latency (ms, median)"), ("fidelity", "output fidelity")):
        bv, av = b.get(key), a.get(key)
        if bv is None and av is None:
            continue
        ratio = f"{av / bv:.3f}" if isinstance(bv, (int, float)) and isinstance(av, (int, float)) and bv else ""
        rows.append([label, bv if bv is not None else "", av if av is not None else a.get(f"{key}_note", ""), ratio])
    backend = report.get("backend", {})
    checks = [[k, "PASS" if v.get("ok") else "FAIL" if v.get("ok") is False else "skipped", v.get("summary", "")]
              for k, v in report.get("checks", {}).items()]
    per_layer_backend = backend.get("per_layer") or {}
    figs = _figures(report)
    fig_html = "".join(f"<figure><img alt='{html.escape(t)}' src='{src}'><figcaption>{html.escape(t)}</figcaption>"
                       "</figure>" for t, src in figs) or \
        "<p class='note'>Figures need matplotlib (pip install matplotlib).</p>"
    layer_rows = [[r["name"], r["op"], r["width_before"], "removed" if r.get("removed") else r["width_after"],
                   r["macs_before"], r["macs_after"]] for r in report.get("layers", [])]
    title = f"graphprune report — {report.get('input', {}).get('path', '')} → {report.get('target', {}).get('name', '')}"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("notes", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#1d2430}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccd;padding:3px 8px;font-size:13px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:1em}}img{{max-width:520px}}
.note{{color:#666}}h1{{font-size:1.4em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>backend: <b>{html.escape(str(backend.get('chosen', '')))}</b> — {html.escape(str(backend.get('reason', '')))}</p>
<h2>Before / after</h2>{_table(rows, ['', 'before', 'after', 'ratio'])}
{''.join(f"<p><b>{html.escape(line)}</b></p>" for line in _verdicts(report))}
<h2>Checks</h2>{_table(checks, ['check', 'result', 'detail'])}
<h2>Figures</h2>{fig_html}
{'<h2>Backend per layer</h2>' + _table([[k, v] for k, v in per_layer_backend.items()], ['layer', 'kernel']) if per_layer_backend else ''}
<h2>Layers</h2>{_table(layer_rows, ['layer', 'op', 'width before', 'width after', 'MACs before', 'MACs after'])}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<details><summary>report.json</summary><pre>{html.escape(json.dumps({k: v for k, v in report.items() if k != 'layers'}, indent=1, default=str))}</pre></details>
</body></html>"""
