"""The drift report of a batch job: its rows against the training data, per feature and for the
predictions, as OUTPUT.report.json (the keys below are stable) and OUTPUT.report.html.

The numbers come from the handler (handler/profile.py): every answer of the job counted its
scored rows into the training baseline's bins, and the job added them up (pipeline.Totals). This
module only compares: nothing here reads the input again.

The drift measure is the population stability index over the baseline's bins (numeric: the
training deciles, plus a bin for missing values; categorical: each category with an input of
its own, OTHER (rare and unseen categories), missing; predictions: the classes, or the deciles
of the training predictions):

    PSI = sum over bins of (batch share - training share) * ln(batch share / training share)

with half a row added to every bin of both sides (so an empty bin is finite; bins empty on
both sides are left out). Thresholds, the usual ones of credit-risk model monitoring where
PSI comes from: under 0.1 no real change, 0.1 to 0.25 a moderate shift, 0.25 and over a high
one. A small batch has a large PSI by chance alone (about (bins - 1) x (1/rows + 1/training
rows)), so a feature is flagged only when its PSI is also beyond what chance gives at 1 in
1,000: n x PSI, with 1/n = 1/rows + 1/training rows, is about chi-squared with bins - 1
degrees of freedom when both sides come from one distribution.

Beside PSI, three shares are checked that a small batch can show beyond doubt where PSI
cannot: values outside the training range, unseen categories, missing values. Each is
flagged when it is 5 points (high: 25) over what data like the training data gives and
chance gives it less than 1 in 1,000 times. A feature's level is the worst of its checks.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .results import OTHER_KINDS

REPORT_VERSION = 1
PSI_MODERATE = 0.1
PSI_HIGH = 0.25
# The chance of a false flag in a report of data like the training data: each check is made
# at SIGNIFICANCE / (features + 1) (Bonferroni over the features and the predictions), so that
# a 30-feature model is not flagged more often than a 4-feature one.
SIGNIFICANCE = 0.001
SMOOTHING = 0.5  # rows added to every bin of both sides
SHOWN_KINDS = 50  # kinds of row errors in a report, the most frequent; the rest summed
# Exit code of `tabserve score --fail-on-drift` when a feature or the predictions drifted.
DRIFT_EXIT = 3
DIGITS = 6  # significant digits of means and spreads (sums of floats: the last bits depend on
# how the rows were cut into batches, so each engine would write other last digits)


# Shares that no chance can explain: values outside the training range, unseen categories,
# missing values. Flagged when the batch's share is at least EXCESS_MODERATE (EXCESS_HIGH:
# "high") over what data like the training data gives, and beyond chance at SIGNIFICANCE.
EXCESS_MODERATE = 0.05
EXCESS_HIGH = 0.25
LEVELS = (None, "none", "moderate", "high")


def psi(batch: list[int], training: list[int]) -> tuple[float, int]:
    """(PSI, bins used) of two histograms over the same bins."""
    pairs = [(b, t) for b, t in zip(batch, training) if b or t]
    if len(pairs) < 2:
        return 0.0, len(pairs)
    n = sum(b for b, _ in pairs) + SMOOTHING * len(pairs)
    m = sum(t for _, t in pairs) + SMOOTHING * len(pairs)
    total = 0.0
    for b, t in pairs:
        p, q = (b + SMOOTHING) / n, (t + SMOOTHING) / m
        total += (p - q) * math.log(p / q)
    return total, len(pairs)


def _z(alpha: float) -> float:
    """The standard normal's 1 - alpha quantile."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha)


def chance_limit(bins: int, alpha: float = SIGNIFICANCE) -> float:
    """The chi-squared value with bins - 1 degrees of freedom exceeded by chance with
    probability alpha (Wilson and Hilferty's approximation, within 1% here)."""
    k = max(bins - 1, 1)
    return k * (1 - 2 / (9 * k) + _z(alpha) * math.sqrt(2 / (9 * k))) ** 3


def flagged_from(rows: int, training_rows: int, bins: int, alpha: float = SIGNIFICANCE) -> float | None:
    """The smallest PSI flagged for these row counts: PSI_MODERATE, or more where chance alone
    gives a larger one (None when either side has no rows)."""
    if rows == 0 or training_rows == 0:
        return None
    n = 1 / (1 / rows + 1 / training_rows)
    return max(PSI_MODERATE, chance_limit(bins, alpha) / n)


def level(
    value: float | None, rows: int, training_rows: int, bins: int, alpha: float = SIGNIFICANCE
) -> str | None:
    """ "high", "moderate", "none", or None when there is no PSI."""
    if value is None:
        return None
    least = flagged_from(rows, training_rows, bins, alpha)
    if least is None or value < least:
        return "none"
    return "high" if value >= PSI_HIGH else "moderate"


def _kl(a: float, p: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(a) from Bernoulli(p), 0 < p < 1."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / p)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - p))
    return out


def excess(k: int, n: int, t: float, m: int, alpha: float = SIGNIFICANCE) -> str | None:
    """The level of `k` of `n` batch values having a property that `t` of `m` training values
    had (an estimate: t need not be whole): "none" unless the batch's share is EXCESS_MODERATE
    over training's and chance gives it less than SIGNIFICANCE of the time even if the property's
    true rate were as high as training's rate allows (Wilson's upper bound on t/m at
    SIGNIFICANCE; then Chernoff's bound on the binomial tail, exp(-n KL(k/n || rate))). None
    without rows on either side. The training side's own uncertainty matters: a training
    range of 120 values can be narrow by chance."""
    if n == 0 or m == 0:
        return None
    share, rate = k / n, t / m
    z = _z(alpha)
    z2 = z * z
    upper = (rate + z2 / (2 * m) + z * math.sqrt(rate * (1 - rate) / m + z2 / (4 * m * m))) / (1 + z2 / m)
    upper = min(max(upper, 1e-12), 1 - 1e-12)
    if share - rate < EXCESS_MODERATE or share <= upper or n * _kl(share, upper) < math.log(1 / alpha):
        return "none"
    return "high" if share - rate >= EXCESS_HIGH else "moderate"


def worst(levels: Any) -> str | None:
    """The highest of some levels (None < "none" < "moderate" < "high")."""
    return max(levels, key=LEVELS.index, default=None)


def _round(x: float | None) -> float | None:
    """DIGITS significant digits; None for none, or for a sum that overflowed."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{DIGITS}g}")


def _share(k: int, n: int) -> float:
    return round(k / n, 6) if n else 0.0


def _moments(counts: dict[str, Any]) -> tuple[float | None, float | None]:
    """The present values' mean and (population) standard deviation."""
    n = counts.get("present", 0)
    if not n:
        return None, None
    return _round(counts["mean"]), _round(math.sqrt(max(counts["m2"], 0.0) / n))


def _compare(
    batch_bins: list[int] | None, train_bins: list[int] | None, labels: list[str], alpha: float = SIGNIFICANCE
) -> dict[str, Any]:
    """PSI, its level and the smallest PSI flagged at these row counts, and the bins; PSI
    None without training bins or without a row in the batch (nothing to compare)."""
    if batch_bins is None or train_bins is None or not sum(batch_bins):
        bins = None
        if batch_bins is not None and train_bins is not None:
            bins = {"labels": labels, "training": list(train_bins), "batch": list(batch_bins)}
        return {"psi": None, "psi_level": None, "psi_flagged_from": None, "bins": bins}
    value, used = psi(batch_bins, train_bins)
    least = flagged_from(sum(batch_bins), sum(train_bins), used, alpha)
    return {
        "psi": round(value, 4),
        "psi_level": level(value, sum(batch_bins), sum(train_bins), used, alpha),
        "psi_flagged_from": None if least is None else round(least, 4),
        "bins": {"labels": labels, "training": list(train_bins), "batch": list(batch_bins)},
    }


def _training(train: dict[str, Any]) -> dict[str, Any]:
    return {k: _round(train.get(k)) for k in ("min", "max", "mean", "std")}


def _flags(out: dict[str, Any], **checks: str | None) -> None:
    """The feature's checks (`flags`: psi and the shares' levels) and its `level`, the worst."""
    out["flags"] = {"psi": out["psi_level"], **checks}
    out["level"] = worst(out["flags"].values())


def _edge_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    text = [f"{e:.4g}" for e in edges]
    return [f"< {text[0]}"] + [f"{a} to {b}" for a, b in zip(text, text[1:])] + [f">= {text[-1]}"]


def _rows(
    role: str, present: int, missing: int, t_counts: list[int] | None, t_missing: int
) -> dict[str, Any]:
    """A feature's role, rows counted and missing values, beside training's missing share
    (None without training counts)."""
    rows = present + missing
    t_rows = sum(t_counts) + t_missing if t_counts is not None else 0
    return {
        "role": role,
        "rows": rows,
        "missing": missing,
        "missing_share": _share(missing, rows),
        "training_missing_share": _share(t_missing, t_rows) if t_rows else None,
    }


def _numeric(name: str, spec: dict[str, Any], counts: dict[str, Any], alpha: float) -> dict[str, Any]:
    train = spec["train"]
    present, missing = counts["present"], counts.get("missing", 0)
    t_missing = train.get("missing", 0)
    mean, std = _moments(counts)
    out: dict[str, Any] = {
        **_rows("numeric", present, missing, train.get("bins"), t_missing),
        "below_min": counts["below"],
        "above_max": counts["above"],
        "below_min_share": _share(counts["below"], present),
        "above_max_share": _share(counts["above"], present),
        "min": counts["min"],
        "max": counts["max"],
        "mean": mean,
        "std": std,
        "training": _training(train),
    }
    t_std = train.get("std")
    shift = None
    if mean is not None and train.get("mean") is not None and t_std:
        shift = _round((mean - train["mean"]) / t_std)
    out["mean_shift_in_training_stds"] = shift
    if "bins" in counts and "bins" in train:
        labels = [*_edge_labels(spec["edges"]), "missing"]
        out.update(_compare([*counts["bins"], missing], [*train["bins"], t_missing], labels, alpha))
    else:
        out.update(_compare(None, None, []))
    t_present = sum(train["bins"]) if "bins" in train else 0
    # A new value from the training distribution falls outside its n values' range with
    # probability 2 / (n + 1).
    outside = counts["below"] + counts["above"]
    range_level = (
        excess(outside, present, 2 * t_present / (t_present + 1), t_present, alpha) if t_present else None
    )
    _flags(out, range=range_level, missing=_missing_level(missing, out["rows"], t_missing, t_present, alpha))
    return out


def _missing_level(missing: int, rows: int, t_missing: int, t_present: int, alpha: float) -> str | None:
    """More missing values than training had (Laplace's estimate of its missing share)."""
    if not t_present and not t_missing:
        return None
    return excess(missing, rows, t_missing + 1, t_missing + t_present + 2, alpha)


def _categorical(name: str, spec: dict[str, Any], counts: dict[str, Any], alpha: float) -> dict[str, Any]:
    train = spec["train"]
    present, missing = counts["present"], counts["missing"]
    t_slots = train.get("slots")
    t_missing = train.get("missing", 0)
    out: dict[str, Any] = {
        **_rows("categorical", present, missing, t_slots, t_missing),
        "unseen": counts["unseen"],
        "unseen_share": _share(counts["unseen"], present),
        "unseen_values": counts.get("values"),
    }
    labels = [*spec["slots"], "missing"]
    if t_slots is not None:
        out.update(_compare([*counts["slots"], missing], [*t_slots, t_missing], labels, alpha))
    else:
        out.update(_compare(None, None, []))
    t_present = sum(t_slots) if t_slots is not None else 0
    # A new category turns up in data like the training data about as often as training saw
    # a category once (Good and Turing), plus one.
    unseen_level = None
    if t_present:
        singles = train.get("singletons", 0)
        rate = (singles + 1) * t_present / (t_present + 1)
        unseen_level = excess(counts["unseen"], present, rate, t_present, alpha)
    _flags(
        out, unseen=unseen_level, missing=_missing_level(missing, out["rows"], t_missing, t_present, alpha)
    )
    return out


def _predictions(spec: dict[str, Any], counts: dict[str, Any], alpha: float) -> dict[str, Any]:
    train = spec["train"]
    if spec["kind"] == "classes":
        out: dict[str, Any] = {"kind": "classes", "counts": dict(zip(spec["classes"], counts["counts"]))}
        t = train.get("counts")
        if t is not None:
            out["training_counts"] = dict(zip(spec["classes"], t))
        out.update(_compare(counts["counts"], t, list(spec["classes"]), alpha))
        out["level"] = out["psi_level"]
        return out
    mean, std = _moments(counts)
    out = {
        "kind": "values",
        "rows": counts["present"],
        "min": counts["min"],
        "max": counts["max"],
        "mean": mean,
        "std": std,
        "below_min": counts["below"],
        "above_max": counts["above"],
        "training": _training(train),
    }
    if "bins" in counts and "bins" in train:
        out.update(_compare(counts["bins"], train["bins"], _edge_labels(spec["edges"]), alpha))
    else:
        out.update(_compare(None, None, []))
    out["level"] = out["psi_level"]
    return out


def build(
    baseline: dict[str, Any] | None,
    totals: Any,
    job: dict[str, Any],
) -> dict[str, Any]:
    """The report of a job: `totals` (pipeline.Totals or alike: rows, errors, blank_lines,
    profile, unprofiled, error_kinds) against `baseline` (handler/profile.py; None when the
    archive's handler predates the report). `job`: input, output, engine, model."""
    ranked = sorted(totals.error_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    kinds = dict(ranked[:SHOWN_KINDS])
    if len(ranked) > SHOWN_KINDS:
        kinds[OTHER_KINDS] = kinds.get(OTHER_KINDS, 0) + sum(n for _, n in ranked[SHOWN_KINDS:])
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "job": {
            **job,
            "rows": totals.rows,
            "ok": totals.rows - totals.errors,
            "errors": totals.errors,
            "blank_lines": totals.blank_lines,
            "profiled_rows": 0,
            "unprofiled_rows": totals.unprofiled,
        },
        "thresholds": {
            "psi_moderate": PSI_MODERATE,
            "psi_high": PSI_HIGH,
            "share_moderate": EXCESS_MODERATE,
            "share_high": EXCESS_HIGH,
            "significance": SIGNIFICANCE,
            "smoothing": SMOOTHING,
        },
        "errors": {"rows": totals.errors, "kinds": kinds},
        "features": {},
        "predictions": None,
        "drifted": [],
        "lacks": [],
    }
    if baseline is None or totals.profile is None:
        report["lacks"].append(
            "the handler's counts: the archive was made before tabserve's drift report (archive "
            "it again with this tabserve)"
            if baseline is None
            else "the counts of this job (it was started with --no-report)"
        )
        return report
    profile = totals.profile
    report["model"] = {"name": baseline.get("model"), "task": baseline.get("task")}
    report["job"]["profiled_rows"] = profile["rows"]
    report["lacks"] = list(baseline.get("lacks", []))
    if totals.unprofiled:
        report["lacks"].append(
            f"the counts of {totals.unprofiled:,} scored rows (scored with --no-report before "
            "--resume, or answered without counts this tabserve can add: archive the model again)"
        )
    if profile["rows"] == 0:
        report["lacks"].append("scored rows: no row was predicted, so nothing was compared")
    alpha = SIGNIFICANCE / (len(baseline["features"]) + 1)  # Bonferroni: see SIGNIFICANCE
    report["thresholds"]["per_check"] = alpha
    for name, spec in baseline["features"].items():
        counts = profile["features"][name]
        if spec["role"] == "numeric":
            report["features"][name] = _numeric(name, spec, counts, alpha)
        else:
            report["features"][name] = _categorical(name, spec, counts, alpha)
    report["predictions"] = _predictions(baseline["predictions"], profile["predictions"], alpha)
    report["drifted"] = [n for n, f in report["features"].items() if f["level"] in ("moderate", "high")]
    return report


def drifted(report: dict[str, Any]) -> bool:
    """Whether a feature or the predictions crossed a threshold."""
    pred = report.get("predictions") or {}
    return bool(report.get("drifted")) or pred.get("level") in ("moderate", "high")


def _pct(share: float) -> str:
    pct = share * 100
    return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"


def drift_lines(report: dict[str, Any]) -> list[str]:
    """One line per feature that crossed a threshold (then the predictions'), e.g.
    "drift: petal_length_cm PSI 0.41 (high), 12% above the training maximum"."""
    lines = []
    for name, f in report.get("features", {}).items():
        if f.get("level") not in ("moderate", "high"):
            continue
        flags = f.get("flags", {})
        parts = [] if f["psi"] is None else [f"PSI {f['psi']:.2f} ({f['psi_level']})"]
        if f["role"] == "numeric":
            outside = (
                f"{_pct(f['above_max_share'])} above the training maximum"
                if f["above_max_share"] >= 0.01
                else ""
            )
            below = (
                f"{_pct(f['below_min_share'])} below the training minimum"
                if f["below_min_share"] >= 0.01
                else ""
            )
            both = ", ".join(x for x in (outside, below) if x)
            if both:
                parts.append(both + _flagged(flags.get("range")))
            t = f["training"]
            if f["mean"] is not None and t.get("mean") is not None:
                parts.append(f"mean {f['mean']:.4g} (training {t['mean']:.4g})")
        elif f["unseen_share"] >= 0.01:
            parts.append(
                f"{_pct(f['unseen_share'])} unseen categories{_listed(f)}" + _flagged(flags.get("unseen"))
            )
        t_missing = f.get("training_missing_share") or 0.0
        if f["missing_share"] - t_missing >= 0.01:
            parts.append(
                f"{_pct(f['missing_share'])} missing (training {_pct(t_missing)})"
                + _flagged(flags.get("missing"))
            )
        lines.append(f"drift: {printable(name)} " + ", ".join(parts))
    pred = report.get("predictions") or {}
    if pred.get("level") in ("moderate", "high"):
        more = ""
        if (
            pred.get("kind") == "values"
            and pred.get("mean") is not None
            and pred["training"].get("mean") is not None
        ):
            more = f", mean {pred['mean']:.4g} (training {pred['training']['mean']:.4g})"
        lines.append(f"drift: predictions PSI {pred['psi']:.2f} ({pred['level']}){more}")
    for lack in report.get("lacks", []):
        lines.append(f"report: lacks {printable(lack)}")
    return lines


def printable(text: str) -> str:
    """Text for a terminal line: control characters (a line break in a feature's name, an
    escape sequence) written as Python escapes, so one drift is one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _flagged(level: str | None) -> str:
    """ " (high)" after a share that is itself flagged."""
    return f" ({level})" if level in ("moderate", "high") else ""


def _listed(f: dict[str, Any], shown: int = 5) -> str:
    """ " (Nord 40, Sud 2)": the most frequent unseen categories."""
    values = f.get("unseen_values")
    if not values:
        return ""
    top = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:shown]
    more = ", ..." if len(values) > shown else ""
    return " (" + ", ".join(f"{k!r} {v:,}" for k, v in top) + more + ")"


def paths(output: str) -> tuple[str, str]:
    """OUTPUT.report.json and OUTPUT.report.html (beside a file, or beside a Spark folder)."""
    base = output.rstrip("/")
    return base + ".report.json", base + ".report.html"


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write(report: dict[str, Any], output: str) -> tuple[str, str]:
    """Write OUTPUT.report.json and OUTPUT.report.html, each beside its name and renamed into
    place (a reader never sees half of one). The caller does this before the output itself
    is renamed into place: a finished output always has its report."""
    from .report_html import render

    json_path, html_path = paths(output)
    for path, text in ((json_path, to_json(report)), (html_path, render(report))):
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        # Created as any new file is (0666 less the umask): readable as the output beside it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return json_path, html_path


def stamp() -> str:
    """The report's time: when the job finished, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class ReportError(ValueError):
    """A file that is not a drift report this tabserve reads."""


def load(path: str | Path) -> dict[str, Any]:
    """A report written by `write` (for `tabserve report`); ReportError when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise ReportError(f"{path} is not JSON: {str(exc)[:200]}") from exc
    if (
        not isinstance(data, dict)
        or type(data.get("report_version")) is not int
        or data["report_version"] != REPORT_VERSION
    ):
        raise ReportError(f"{path} is not a tabserve drift report (report_version {REPORT_VERSION})")
    try:  # what `tabserve report` prints must be there
        summary(data)
        drift_lines(data)
    except Exception as exc:
        raise ReportError(
            f"{path} is not a tabserve drift report: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    return data


def summary(report: dict[str, Any]) -> str:
    """The job's line for `tabserve report`."""
    job = report["job"]
    if not all(type(job[k]) is int for k in ("rows", "ok", "errors")):
        raise ValueError("the job's rows are not counts")
    return (
        f"{job.get('input')} -> {job.get('output')}: {job['rows']:,} rows, {job['ok']:,} ok, "
        f"{job['errors']:,} errors; {len(report.get('drifted', []))} of "
        f"{len(report.get('features', {}))} features drifted"
    )
