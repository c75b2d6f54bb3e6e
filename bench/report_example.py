"""The README's drift report: examples/iris_sample.csv with petal_length_cm in millimetres
(x 10, the other columns as they are) written to examples/iris_shifted.csv, scored with
--engine local, and the report's charts of the drifted feature and of the predictions copied
to docs/drift_petal_length_cm.svg and docs/drift_predictions.svg (the images the report's
HTML page holds). Prints the job's lines, as the README shows them.

    .venv/bin/python bench/report_example.py
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, ensure_model

FEATURE = "petal_length_cm"


def shifted(src: Path, dst: Path) -> Path:
    with open(src, newline="") as f:
        header, *rows = list(csv.reader(f))
    j = header.index(FEATURE)
    for r in rows:
        if len(r) == len(header):
            try:
                r[j] = f"{float(r[j]) * 10:g}"
            except ValueError:
                pass  # the sample's bad values stay bad
    with open(dst, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return dst


def main() -> None:
    store = ensure_model()
    inp = shifted(ROOT / "examples" / "iris_sample.csv", ROOT / "examples" / "iris_shifted.csv")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "iris_shifted_scored.csv"
        cmd = [sys.executable, "-m", "tabserve", "score", str(inp), "-o", str(out), "--engine", "local"]
        run = subprocess.run([*cmd, "--model-store", str(store)], capture_output=True, text=True)
        print(run.stdout.replace(tmp, "out"), end="")
        page = Path(f"{out}.report.html").read_text()
    charts = re.findall(r'<figure class="chart" data-name="([^"]+)">(<svg .*?</svg>)</figure>', page, re.S)
    for name, svg in charts:
        if name in (FEATURE, "predictions"):
            target = ROOT / "docs" / f"drift_{name}.svg"
            target.write_text(svg + "\n")
            print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
