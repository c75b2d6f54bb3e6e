"""OUTPUT.report.html: the drift report as one self-contained page (no script, no network):
a table of the features, the row errors by kind, and per feature a small bar chart of the
training and batch shares of each bin side by side, drifted features first. The charts are
SVG drawn here (no plotting library), inline in the page, so a bar's tooltip gives its share."""

from __future__ import annotations

import html
from typing import Any

TRAIN_COLOUR = "#8da0cb"
BATCH_COLOUR = "#fc8d62"
MAX_PLOTS = 100  # charts on one page; every feature is in the table


def _text(value: str) -> str:
    """Text for the page: control characters (which XML cannot hold) as U+FFFD, escaped."""
    return html.escape("".join(c if c.isprintable() or c in "\t " else "\ufffd" for c in value))


def chart(title: str, labels: list[str], training: list[int], batch: list[int], width: int = 420) -> str:
    """An SVG bar chart: per bin, the training share and the batch share side by side."""
    t_total, b_total = sum(training) or 1, sum(batch) or 1
    t_share = [t / t_total for t in training]
    b_share = [b / b_total for b in batch]
    top = max([*t_share, *b_share, 0.01])
    n = len(labels)
    left, right, head, plot_h, foot = 36, 8, 26, 110, 64
    slot = (width - left - right) / max(n, 1)
    bar = max(slot * 0.38, 1.0)
    height = head + plot_h + foot
    e = _text
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{e(title)}</text>',
        f'<rect x="{width - 150}" y="5" width="9" height="9" fill="{TRAIN_COLOUR}"/>'
        f'<text x="{width - 138}" y="13">training</text>'
        f'<rect x="{width - 85}" y="5" width="9" height="9" fill="{BATCH_COLOUR}"/>'
        f'<text x="{width - 73}" y="13">this job</text>',
        f'<line x1="{left}" y1="{head + plot_h}" x2="{width - right}" y2="{head + plot_h}" stroke="#444"/>',
        f'<text x="{left - 4}" y="{head + 8}" text-anchor="end">{top * 100:.0f}%</text>',
        f'<text x="{left - 4}" y="{head + plot_h}" text-anchor="end">0</text>',
    ]
    for k in range(n):
        x0 = left + k * slot + (slot - 2 * bar) / 2
        for i, (share, colour) in enumerate(((t_share[k], TRAIN_COLOUR), (b_share[k], BATCH_COLOUR))):
            h = plot_h * share / top
            parts.append(
                f'<rect class="bar" x="{x0 + i * bar:.1f}" y="{head + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{e(labels[k])}: {share * 100:.1f}%</title></rect>'
            )
        label = labels[k] if len(labels[k]) <= 14 else labels[k][:13] + "\u2026"
        x = left + (k + 0.5) * slot
        y = head + plot_h + 8
        turn = f"rotate(-45 {x:.1f} {y})"
        parts.append(f'<text x="{x:.1f}" y="{y}" text-anchor="end" transform="{turn}">{e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _figure(svg: str, name: str) -> str:
    return f'<figure class="chart" data-name="{_text(name)}">{svg}</figure>'


def _psi_text(f: dict[str, Any]) -> str:
    return "no PSI" if f.get("psi") is None else f"PSI {f['psi']:.2f}, {f.get('psi_level')}"


def _flags(f: dict[str, Any]) -> str:
    """The checks that flagged a feature: "psi high, range high"."""
    found = [f"{k} {v}" for k, v in (f.get("flags") or {}).items() if v in ("moderate", "high")]
    return ", ".join(found) or "-"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return f"{x:,}" if isinstance(x, int) else _text(str(x))


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def render(report: dict[str, Any]) -> str:
    """The page of a report (report.build)."""
    e = _text
    job = report["job"]
    features = report.get("features", {})
    rows = []
    for name, f in features.items():
        level = f.get("level") or "-"
        numeric = f["role"] == "numeric"
        t = f.get("training") or {}
        mean = f"{_num(f.get('mean'))} ({_num(t.get('mean'))})" if numeric else "-"
        std = f"{_num(f.get('std'))} ({_num(t.get('std'))})" if numeric else "-"
        unseen = "-"
        if not numeric:
            listed = f.get("unseen_values")
            top = sorted((listed or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            unseen = _pct(f["unseen_share"]) + "".join(f"<br>{e(k)}: {v:,}" for k, v in top)
        rows.append(
            f'<tr class="{e(level)}"><td>{e(name)}</td><td>{e(str(f["role"]))}</td><td>{_num(f["rows"])}</td>'
            f"<td>{_pct(f['missing_share'])} ({_pct(f.get('training_missing_share'))})</td>"
            f"<td>{_pct(f['below_min_share']) if numeric else '-'}</td>"
            f"<td>{_pct(f['above_max_share']) if numeric else '-'}</td>"
            f"<td>{unseen}</td><td>{mean}</td><td>{std}</td>"
            f"<td>{_num(f.get('psi'))}</td><td>{_num(f.get('psi_flagged_from'))}</td>"
            f"<td>{e(level)}</td><td>{e(_flags(f))}</td></tr>"
        )
    order = sorted(
        features,
        key=lambda n: (features[n].get("level") not in ("high", "moderate"), -(features[n].get("psi") or 0)),
    )
    charts = []
    pred = report.get("predictions") or {}
    if pred.get("bins"):
        b = pred["bins"]
        title = f"predictions ({_psi_text(pred)})"
        charts.append(_figure(chart(title, b["labels"], b["training"], b["batch"]), "predictions"))
    for name in order[:MAX_PLOTS]:
        f = features[name]
        if f.get("bins"):
            b = f["bins"]
            title = f"{name} ({_psi_text(f)}; {f['level']})"
            charts.append(_figure(chart(title, b["labels"], b["training"], b["batch"]), name))
    kinds = "".join(f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in report["errors"]["kinds"].items())
    drifted = report.get("drifted", [])
    if job.get("profiled_rows", 0) == 0:
        verdict = "nothing compared: no row was scored with the handler's counts"
    elif drifted:
        verdict = f"{len(drifted)} of {len(features)} features drifted: {', '.join(drifted)}"
    else:
        verdict = f"no feature drifted ({len(features)} compared)"
    if pred.get("level") in ("moderate", "high"):
        verdict += f"; the predictions drifted (PSI {pred['psi']:.2f})"
    lacks = "".join(f"<li>{e(x)}</li>" for x in report.get("lacks", []))
    th = report["thresholds"]
    model = str((report.get("model") or {}).get("name"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>tabserve drift report: {e(str(job.get("output")))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.high {{ background: #fdd; }} tr.moderate {{ background: #ffe9c7; }}
.chart {{ margin: 4px; border: 1px solid #eee; }}
</style></head><body>
<h1>Drift report</h1>
<p>{e(str(job.get("input")))} &rarr; {e(str(job.get("output")))} with model {e(model)}
({e(str(job.get("engine")))}, {e(str(job.get("finished")))}): {job["rows"]:,} rows, {job["ok"]:,} ok,
{job["errors"]:,} errors, {job["blank_lines"]:,} blank lines skipped.</p>
<p><strong>{e(verdict)}</strong>.</p>
{f"<p>This report lacks:</p><ul>{lacks}</ul>" if lacks else ""}
<h2>Features</h2>
<table><tr><th>feature</th><th>role</th><th>rows</th><th>missing (training)</th>
<th>below min</th><th>above max</th><th>unseen</th>
<th>mean (training)</th><th>std (training)</th><th>PSI</th><th>PSI flagged from</th>
<th>drift</th><th>flagged by</th></tr>
{"".join(rows)}</table>
<p>PSI: population stability index over the training bins (deciles, or categories, and missing
values); moderate from {th["psi_moderate"]}, high from {th["psi_high"]}, and only when chance alone
would give it less than {th["significance"]} of the time at these row counts: "PSI flagged from" is
the smallest PSI flagged for this feature's rows. A share of values outside the training range, of
unseen categories or of missing values is flagged on its own when it is {th["share_moderate"]:.0%}
(high: {th["share_high"]:.0%}) over what data like the training data has, beyond chance.</p>
<h2>Distributions</h2>
{"".join(charts)}
<h2>Row errors by kind</h2>
<table><tr><th>kind</th><th>rows</th></tr>{kinds or '<tr><td colspan="2">none</td></tr>'}</table>
</body></html>
"""
