"""The HTML report: one self-contained file, plots drawn here as inline SVG.

No scripts, fonts or stylesheets are fetched from anywhere (a report is opened from CI
artifacts, on planes, behind firewalls): the CSS is inline and every plot is SVG written
by this module from the results document (:mod:`.results`). Sections:

- the coherence heatmap, adapters × checks, coloured by verdict, with score and interval;
- the register map: each ``registers_unpack`` output projected on the plane of the
  register centroids (see :func:`.checks.registers.register_map`), one colour per adapter;
- the comparison with the baseline, when there is one;
- every check's details: the verdict in words, its per-sample scores as a strip, and
  the sample texts.

Pure: :func:`render_html` maps a document to a string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ..scoring.verdict import fmt_number
from .terminal import record_matrix, record_summary, worst_label

__all__ = ["render_html"]

STATUS_FILL = {"pass": "#2e9d5b", "fail": "#d1423f", "inconclusive": "#e0a52a"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
REGISTER_INK = "#222"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}
h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.summary{font-weight:600;margin:.6rem 0}.muted{color:#666}
table{border-collapse:collapse;margin:.6rem 0}td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}
.pass{color:#1e7a44}.fail{color:#b3261e}.inconclusive{color:#a06a00}.regressed{color:#b3261e;font-weight:600}
.improved{color:#1e7a44;font-weight:600}
details{border:1px solid #e4e4e4;border-radius:6px;margin:.5rem 0;padding:.3rem .8rem}
summary{cursor:pointer;font-weight:600}
pre{white-space:pre-wrap;background:#fafafa;padding:.5rem;border-radius:4px;margin:.4rem 0}
ol.samples{padding-left:2.4rem}ol.samples li{margin:.15rem 0}.worst{background:#fdecea}
.score{font-variant-numeric:tabular-nums;color:#555;margin-right:.5rem}
svg text{font-family:system-ui,sans-serif}
"""


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _adapter(record: Mapping[str, Any]) -> str:
    return str(record.get("adapter") or record["verdict"]["subject"])


# ---------------------------------------------------------------------------- heatmap


def heatmap_svg(records: Sequence[Mapping[str, Any]]) -> str:
    """Adapters × checks; each cell coloured by its verdict, with its score and interval."""
    adapters, columns, cells = record_matrix(records)
    label_w, cell_w, cell_h, head_h = 170, 150, 46, 64
    width = label_w + cell_w * len(columns) + 10
    height = head_h + cell_h * len(adapters) + 10
    out = [f'<svg id="heatmap" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="coherence heatmap, adapters by checks">']
    for j, column in enumerate(columns):
        x = label_w + j * cell_w + cell_w / 2
        out.append(f'<text x="{x:.1f}" y="{head_h - 10}" text-anchor="middle" font-size="12" '
                   f'font-weight="600">{escape(column)}</text>')
    for i, adapter in enumerate(adapters):
        y = head_h + i * cell_h
        out.append(f'<text x="{label_w - 8}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end" font-size="13" '
                   f'font-weight="600">{escape(adapter)}</text>')
        for j, column in enumerate(columns):
            x = label_w + j * cell_w
            record = cells.get((adapter, column))
            if record is None:
                out.append(f'<rect x="{x + 2}" y="{y + 2}" width="{cell_w - 4}" height="{cell_h - 4}" '
                           f'fill="#f0f0f0" rx="4"/>')
                continue
            v = record["verdict"]
            status = str(v.get("status", ""))
            change = (record.get("baseline") or {}).get("change")
            stroke = ' stroke="#000" stroke-width="3"' if change == "regressed" else ""
            tip = f"{record.get('id', '')}: {status}, score {fmt_number(v.get('score'))}"
            if v.get("ci_low") is not None and v.get("ci_high") is not None:
                tip += f", CI {fmt_number(v['ci_low'])}..{fmt_number(v['ci_high'])}"
            tip += f", threshold {fmt_number(v.get('threshold'))}"
            if change in ("regressed", "improved"):
                tip += f"; {record['baseline'].get('line', change)}"
            out.append(f'<g class="cell" data-status="{escape(status)}" data-adapter="{escape(adapter)}" '
                       f'data-check="{escape(column)}"><title>{escape(tip)}</title>'
                       f'<rect x="{x + 2}" y="{y + 2}" width="{cell_w - 4}" height="{cell_h - 4}" rx="4" '
                       f'fill="{STATUS_FILL.get(status, "#999")}"{stroke}/>')
            label = fmt_number(v.get("score"))
            if change == "regressed":
                label += " ▼"
            elif change == "improved":
                label += " ▲"
            out.append(f'<text x="{x + cell_w / 2:.1f}" y="{y + 20}" text-anchor="middle" fill="#fff" '
                       f'font-size="14" font-weight="700">{escape(label)}</text>')
            sub = status.upper()
            if v.get("ci_low") is not None and v.get("ci_high") is not None and \
                    (v.get("detail") or {}).get("statistic") != "max":
                sub = f"[{fmt_number(v['ci_low'])}, {fmt_number(v['ci_high'])}]"
            out.append(f'<text x="{x + cell_w / 2:.1f}" y="{y + 36}" text-anchor="middle" fill="#fff" '
                       f'font-size="11">{escape(sub)}</text></g>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------ register map


def register_maps(records: Sequence[Mapping[str, Any]]) -> list[tuple[dict, list[Mapping[str, Any]]]]:
    """Records with a register map, grouped by their centroids (one map per register space)."""
    groups: dict[str, tuple[dict, list]] = {}
    for record in records:
        rmap = (record["verdict"].get("detail") or {}).get("register_map")
        if not isinstance(rmap, dict) or not rmap.get("centroids"):
            continue
        key = repr(sorted(rmap["centroids"].items()))
        groups.setdefault(key, (rmap, []))[1].append(record)
    return list(groups.values())


def register_map_svg(rmap: Mapping[str, Any], records: Sequence[Mapping[str, Any]], index: int = 0) -> str:
    """Each output as a dot (one colour per adapter), each register centroid as a labelled
    diamond, on the plane of the centroids' principal axes."""
    size, pad, legend_w = 460, 36, 200
    coords = [c for c in rmap["centroids"].values()]
    for r in records:
        coords += [p for p in r["verdict"]["detail"]["register_map"].get("points", []) if p]
    extent = max([abs(v) for c in coords for v in c] + [0.1]) * 1.1

    def sx(x: float) -> float:
        return pad + (x + extent) / (2 * extent) * (size - 2 * pad)

    def sy(y: float) -> float:
        return size - pad - (y + extent) / (2 * extent) * (size - 2 * pad)

    width = size + legend_w
    out = [f'<svg id="register-map{"" if index == 0 else f"-{index}"}" class="plot register-map" '
           f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}" viewBox="0 0 {width} {size}" '
           f'role="img" aria-label="register map">',
           f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" fill="#fbfbfb" '
           f'stroke="#ddd"/>',
           f'<line x1="{sx(0):.1f}" y1="{pad}" x2="{sx(0):.1f}" y2="{size - pad}" stroke="#ddd"/>',
           f'<line x1="{pad}" y1="{sy(0):.1f}" x2="{size - pad}" y2="{sy(0):.1f}" stroke="#ddd"/>',
           f'<text x="{size / 2}" y="{size - 10}" text-anchor="middle" font-size="11" fill="#666">'
           f'axis 1 ({escape(str(rmap.get("axes", "")))}, {float(rmap.get("explained", 1)) * 100:.0f}% '
           f'of their spread)</text>']
    for k, record in enumerate(records):
        color = PALETTE[k % len(PALETTE)]
        detail = record["verdict"]["detail"]
        texts = detail.get("sample_texts") or []
        labels = detail["register_map"].get("labels") or []
        for i, point in enumerate(detail["register_map"].get("points", [])):
            if not point:
                continue
            tip = f"{_adapter(record)} #{i}"
            if i < len(labels):
                tip += f" (read as {labels[i]})"
            if i < len(texts) and texts[i]:
                tip += f": {' '.join(str(texts[i]).split())[:200]}"
            out.append(f'<circle class="sample" cx="{sx(point[0]):.1f}" cy="{sy(point[1]):.1f}" r="4" '
                       f'fill="{color}" fill-opacity="0.75"><title>{escape(tip)}</title></circle>')
        y = pad + 18 * k
        out.append(f'<circle cx="{size + 12}" cy="{y}" r="5" fill="{color}"/>'
                   f'<text x="{size + 22}" y="{y + 4}" font-size="12">{escape(_adapter(record))}</text>')
    for name, (x, y) in rmap["centroids"].items():
        cx, cy = sx(x), sy(y)
        out.append(f'<g class="centroid"><title>centroid of register {escape(str(name))}</title>'
                   f'<path d="M{cx:.1f},{cy - 8:.1f} L{cx + 8:.1f},{cy:.1f} L{cx:.1f},{cy + 8:.1f} '
                   f'L{cx - 8:.1f},{cy:.1f} Z" fill="#fff" stroke="{REGISTER_INK}" stroke-width="2"/>'
                   f'<text x="{cx + 11:.1f}" y="{cy - 8:.1f}" font-size="13" font-weight="700">'
                   f'{escape(str(name))}</text></g>')
    y = pad + 18 * len(records) + 10
    out.append(f'<path d="M{size + 12},{y - 6} L{size + 18},{y} L{size + 12},{y + 6} L{size + 6},{y} Z" '
               f'fill="#fff" stroke="{REGISTER_INK}" stroke-width="2"/>'
               f'<text x="{size + 22}" y="{y + 4}" font-size="12">register centroid</text>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------- per check


def strip_svg(verdict: Mapping[str, Any]) -> str:
    """Per-sample scores as dots on a line, with the interval and the threshold."""
    samples = [_num(s) for s in verdict.get("samples") or []]
    values = [s for s in samples if s is not None]
    marks = [m for m in (_num(verdict.get("threshold")), _num(verdict.get("ci_low")),
                         _num(verdict.get("ci_high"))) if m is not None]
    lo, hi = min(values + marks, default=0.0), max(values + marks, default=1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    width, height, margin = 520, 56, 12

    def sx(x: float) -> float:
        return margin + (x - lo) / (hi - lo) * (width - 2 * margin)

    status = str(verdict.get("status", ""))
    out = [f'<svg class="plot strip" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-sample scores">',
           f'<line x1="{margin}" y1="28" x2="{width - margin}" y2="28" stroke="#ccc"/>']
    low, high = _num(verdict.get("ci_low")), _num(verdict.get("ci_high"))
    if low is not None and high is not None:
        out.append(f'<rect x="{sx(low):.1f}" y="20" width="{max(sx(high) - sx(low), 2):.1f}" height="16" '
                   f'fill="{STATUS_FILL.get(status, "#999")}" fill-opacity="0.25"><title>'
                   f'{float(verdict.get("confidence", 0.95)) * 100:g}% interval {fmt_number(low)}..'
                   f'{fmt_number(high)}</title></rect>')
    for i, s in enumerate(samples):
        if s is None:
            continue
        jitter = ((i * 7) % 11 - 5) * 1.2
        out.append(f'<circle cx="{sx(s):.1f}" cy="{28 + jitter:.1f}" r="3" fill="#444" fill-opacity="0.6">'
                   f'<title>#{i}: {fmt_number(s)}</title></circle>')
    threshold = _num(verdict.get("threshold"))
    if threshold is not None:
        right = sx(threshold) > width / 2
        label_x = sx(threshold) + (-4 if right else 4)
        out.append(f'<line class="threshold" x1="{sx(threshold):.1f}" y1="10" x2="{sx(threshold):.1f}" '
                   f'y2="46" stroke="#1b4fd1" stroke-width="2"/><text x="{label_x:.1f}" '
                   f'y="12" font-size="10" fill="#1b4fd1" text-anchor="{"end" if right else "start"}">'
                   f'threshold {fmt_number(threshold)}</text>')
    score = _num(verdict.get("score"))
    if score is not None:
        out.append(f'<line x1="{sx(score):.1f}" y1="18" x2="{sx(score):.1f}" y2="38" stroke="#000" '
                   f'stroke-width="2"/>')
    out.append(f'<text x="{margin}" y="{height - 2}" font-size="10" fill="#666">{fmt_number(lo + pad)}</text>'
               f'<text x="{width - margin}" y="{height - 2}" font-size="10" fill="#666" text-anchor="end">'
               f'{fmt_number(hi - pad)}</text></svg>')
    return "".join(out)


def _explain(verdict: Mapping[str, Any]) -> str:
    from ..scoring.verdict import Verdict

    try:
        return Verdict.from_dict(verdict).explain()
    except (KeyError, TypeError, ValueError):
        return f"{verdict.get('check')}[{verdict.get('subject')}]: {verdict.get('status')}"


def check_details(record: Mapping[str, Any]) -> str:
    v = record["verdict"]
    status = str(v.get("status", ""))
    comparison = record.get("baseline") or {}
    head = (f'<span class="{escape(status)}">{escape(status.upper())}</span> '
            f'{escape(_adapter(record))} · {escape(str(record.get("name") or v.get("check")))} · '
            f'score {fmt_number(v.get("score"))}')
    if comparison.get("change") in ("regressed", "improved"):
        head += f' <span class="{comparison["change"]}">{escape(comparison["change"])}</span>'
    worst = worst_label(record, limit=60)
    if worst and status != "pass":
        head += f' <span class="muted">(worst: {escape(worst)})</span>'
    out = [f'<details class="check" id="{escape(str(record.get("id", "")), quote=True)}"'
           f'{" open" if status != "pass" or comparison.get("change") == "regressed" else ""}>',
           f"<summary>{head}</summary>",
           f'<p class="muted">{escape(str(record.get("suite", "")))}:{escape(str(record.get("line", "")))} · '
           f'<code>{escape(str(record.get("id", "")))}</code></p>',
           f"<pre>{escape(_explain(v))}</pre>"]
    if comparison.get("line"):
        out.append(f'<p class="{escape(str(comparison.get("change", "")))}">'
                   f'{escape(str(comparison["line"]))}</p>')
    out.append(strip_svg(v))
    detail = dict(v.get("detail") or {})
    texts = detail.pop("sample_texts", None) or []
    detail.pop("register_map", None)
    detail.pop("cluster_labels", None)  # one per sample; the count is in "clusters"
    worst_index = (v.get("worst") or {}).get("index")
    if texts:
        samples = v.get("samples") or []
        out.append(f"<p>{len(texts)} samples:</p><ol class=\"samples\" start=\"0\">")
        for i, text in enumerate(texts):
            score = fmt_number(samples[i]) if i < len(samples) else ""
            cls = ' class="worst"' if i == worst_index else ""
            shown = escape(str(text or "(empty)"))
            out.append(f'<li{cls}><span class="score">{escape(score)}</span>{shown}</li>')
        out.append("</ol>")
    elif v.get("worst"):
        w = v["worst"]
        context = ", ".join(f"{k}: {val}" for k, val in (w.get("context") or {}).items())
        out.append(f"<p>worst sample #{escape(str(w.get('index')))} (score {fmt_number(w.get('score'))}"
                   f"{', ' + escape(context) if context else ''})"
                   f"{': ' + escape(str(w['text'])) if w.get('text') else ''}</p>")
    facts = {k: val for k, val in detail.items() if k not in ("reason",)}
    if facts:
        out.append("<table class=\"facts\">" + "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(_short(val))}</td></tr>" for k, val in facts.items())
            + "</table>")
    out.append("</details>")
    return "".join(out)


def _short(value: Any, limit: int = 300) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------ page


def comparison_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = [r for r in records if r.get("baseline")]
    if not rows:
        return ""
    out = ["<table id=\"comparison\"><tr><th>adapter</th><th>check</th><th>baseline</th><th>this run</th>"
           "<th>change</th><th>result</th></tr>"]
    for r in rows:
        c = r["baseline"]
        from .baseline import signed

        out.append(f"<tr><td>{escape(_adapter(r))}</td><td>{escape(str(r.get('name')))}</td>"
                   f"<td>{fmt_number(c.get('baseline_score'))}</td><td>{fmt_number(c.get('score'))}</td>"
                   f"<td>{escape(signed(c.get('delta')))}</td>"
                   f"<td class=\"{escape(str(c.get('change', '')))}\">"
                   f"{escape(str(c.get('change', '')))}</td></tr>")
    out.append("</table>")
    return "".join(out)


def render_html(document: Mapping[str, Any], *, title: str = "scenelora coherence report") -> str:
    """The whole report as one HTML string (no external resources)."""
    records = list(document.get("results") or [])
    env = document.get("environment") or {}
    base = document.get("base") or {}
    baseline = document.get("baseline")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # belt and braces: even a stray reference could not fetch anything
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(str(document.get("created", "")))} · base '
        f'{escape(str(base.get("name") or base.get("model") or "?"))} '
        f'(fingerprint {escape(str(base.get("fingerprint") or "?")[:12])}) · '
        f'{escape(str(env.get("device") or "?"))}, {escape(str(env.get("dtype") or "?"))} · '
        f'seed {escape(str(env.get("seed")))}</p>',
        f'<p class="summary">{escape(record_summary(records, baseline=baseline))}</p>',
        "<h2>Coherence</h2>",
    ]
    if records:
        parts.append(heatmap_svg(records))
    else:
        parts.append("<p>No checks ran.</p>")
    maps = register_maps(records)
    parts.append("<h2>Register map</h2>")
    if maps:
        parts.append('<p class="muted">Each dot is one output of a <code>registers_unpack</code> check, '
                     "placed by its embedding on the plane that best separates the register centroids "
                     "(diamonds). A voice that holds its register clusters around its own diamond.</p>")
        parts += [register_map_svg(rmap, group, index=i) for i, (rmap, group) in enumerate(maps)]
    else:
        parts.append('<p class="muted">No <code>registers_unpack</code> check ran, so there is no map.</p>')
    if baseline or any(r.get("baseline") for r in records):
        parts.append("<h2>Against the baseline</h2>")
        if baseline:
            parts.append(f'<p class="muted">baseline {escape(str(baseline.get("path", "")))} of '
                         f'{escape(str(baseline.get("created", "")))}</p>')
        parts.append(comparison_table(records))
    parts.append("<h2>Checks</h2>")
    parts += [check_details(r) for r in records]
    adapters = document.get("adapters") or {}
    if adapters:
        parts.append("<h2>Adapters</h2><table><tr><th>adapter</th><th>scene</th><th>role</th>"
                     "<th>content sha256</th></tr>")
        for name, info in adapters.items():
            parts.append(f"<tr><td>{escape(str(name))}</td><td>{escape(str(info.get('scene')))}</td>"
                         f"<td>{escape(str(info.get('role')))}</td>"
                         f"<td><code>{escape(str(info.get('content_hash', ''))[:16])}</code></td></tr>")
        parts.append("</table>")
    parts.append("<h2>Environment</h2><table>")
    parts += [f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in env.items()]
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
