"""`tabserve describe`: what a model takes and how well it did, from its schema alone."""

from __future__ import annotations

from pathlib import Path

from .archive import read_schema
from .errors import TabserveError
from .handler.columns import NUMERIC, OTHER
from .handler.schema import REGRESSION, Schema

SHOWN_CATEGORIES = 8


def _show(category: str) -> str:
    """A category as it reads in one line of the table (quoted when it holds a comma, a quote
    or a line break)."""
    odd = any(ch in category for ch in ",\"'\n\r") or category != category.strip()
    return repr(category) if odd else category


def load(path: Path) -> Schema:
    if path.is_dir():
        return Schema.load(path)
    if path.is_file():
        return read_schema(path)
    raise TabserveError(f"{path} is neither an artifacts folder nor a .mar archive")


def describe(path: Path) -> str:
    schema = load(path)
    lines = []
    if schema.task == REGRESSION:
        what = f"regression of {schema.target or 'the target'!r}"
    else:
        classes = ", ".join(schema.classes)
        what = f"classification{f' of {schema.target!r}' if schema.target else ''} into {classes}"
    lines.append(f"model:   {schema.name} ({what})")
    t = schema.training
    if t:
        lines.append(f"trained: {t.get('source', '?')}, {t.get('rows', '?')} rows, seed {t.get('seed', '?')}")
    if not schema.columns:
        lines.append("columns: numbers only, every value required (an archive from before column roles)")
    else:
        lines.append(
            "missing: "
            + (
                f"filled (numbers: the training median; categories: their own input or {OTHER})"
                if schema.missing == "impute"
                else "a row error (--missing error)"
            )
        )
    lines.append("")
    rows = [("column", "role", "missing in training", "encoding")]
    stats = schema.feature_stats
    columns = schema.columns or schema.encoder().columns
    for c in columns:
        missing = stats.get(c.name, {}).get("missing", "")
        if c.role == NUMERIC:
            if c.fill is None:
                encoding = "the value"
            else:
                encoding = f"the value, missing -> {c.fill:g}" + (
                    " + missing indicator" if c.indicator else ""
                )
        else:
            cats = ", ".join(map(_show, c.categories[:SHOWN_CATEGORIES]))
            more = (
                f" and {len(c.categories) - SHOWN_CATEGORIES} more"
                if len(c.categories) > SHOWN_CATEGORIES
                else ""
            )
            encoding = f"one-hot: {cats}{more}, {OTHER} (rare or unseen)"
            encoding += ", <missing>" if c.missing_slot else " (missing -> <other>)"
        rows.append((c.name, c.role, str(missing), encoding))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + "  " + r[3])
    lines.append("")
    arch = schema.architecture
    layers = " -> ".join(map(str, (f"{arch.inputs} inputs", *arch.hidden, arch.outputs)))
    lines.append(f"network: {layers}")
    if schema.metrics:
        lines.append("metrics:")
        for key, value in schema.metrics.items():
            if isinstance(value, float):
                lines.append(f"  {key}: {value:.4g}")
            elif isinstance(value, int):
                lines.append(f"  {key}: {value}")
            elif isinstance(value, dict):
                inner = ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
                )
                lines.append(f"  {key}: {inner}")
    return "\n".join(lines) + "\n"
