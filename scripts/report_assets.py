"""Figures and tables for the Snakemake report of one experiment (standard library only).

    python scripts/report_assets.py --exp demo --eval E.json --retrain-eval R.json \
        --prune-report P.json --train-dir results/demo/train --retrain-dir results/demo/retrain \
        --html summary.html --svg training_curves.svg

summary.html: the COCO metrics of the trained and the retrained model side by side, per-class AP,
and the prune report. training_curves.svg: the DVCLive curves (dvclive/plots/metrics/**.tsv)
of both trainings: total loss per step and validation AP.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
from pathlib import Path

COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
             "ARl"]
CURVES = [("train/total_loss", "total loss"), ("eval/AP", "validation AP")]
COLOURS = {"trained": "#1f77b4", "retrained (pruned)": "#d62728"}


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def metrics_table(runs: dict[str, dict]) -> str:
    names = list(runs)
    rows = [f"<tr><th>metric</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>"]
    for key in COCO_KEYS:
        rows.append(f"<tr><td>{key}</td>"
                    + "".join(f"<td>{fmt(runs[n].get(key))}</td>" for n in names) + "</tr>")
    classes = sorted({c for run in runs.values() for c in run.get("per_class_AP", {})})
    for name in classes:
        rows.append(f"<tr><td>AP {html.escape(name)}</td>"
                    + "".join(f"<td>{fmt(runs[n].get('per_class_AP', {}).get(name))}</td>"
                              for n in names) + "</tr>")
    for key in ("num_images", "epoch", "model_path"):
        rows.append(f"<tr><td>{key}</td>"
                    + "".join(f"<td>{fmt(runs[n].get(key))}</td>" for n in names) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def value_html(value: object, depth: int = 0) -> str:
    """JSON as nested tables (lists of records as one table), truncated past 200 rows."""
    if isinstance(value, dict):
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{value_html(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{fmt(v.get(k))}</td>" for k in keys) + "</tr>"
                       for v in value[:200])
        more = f"<p>… {len(value) - 200} more rows</p>" if len(value) > 200 else ""
        return f"<table><tr>{head}</tr>{body}</table>{more}"
    if isinstance(value, list):
        return html.escape(", ".join(str(v) for v in value))
    return fmt(value)


def read_curve(train_dir: Path, name: str) -> list[tuple[float, float]]:
    path = train_dir / "dvclive" / "plots" / "metrics" / f"{name}.tsv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return [(float(r[0]), float(r[1])) for r in rows[1:] if len(r) >= 2 and r[1] not in ("", "nan")]


def curves_svg(runs: dict[str, Path], title: str) -> str:
    """One panel per curve in CURVES, one line per run; the retrain's steps start at 0 too."""
    width, height, pad = 420, 260, 48
    panels = []
    for index, (name, label) in enumerate(CURVES):
        series = {run: read_curve(path, name) for run, path in runs.items()}
        points = [p for s in series.values() for p in s]
        x0 = index * (width + 20)
        parts = [f'<g transform="translate({x0},0)">',
                 (f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
                 f"{html.escape(label)}</text>"),
                 (f'<rect x="{pad}" y="{pad / 2}" width="{width - 1.5 * pad}" '
                 f'height="{height - 1.5 * pad}" fill="none" stroke="#888"/>')]
        if points:
            xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
            ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
            xmax, ymax = (xmax if xmax > xmin else xmin + 1), (ymax if ymax > ymin else ymin + 1)

            def sx(x: float, xmin: float = xmin, xmax: float = xmax) -> float:
                return pad + (x - xmin) / (xmax - xmin) * (width - 1.5 * pad)

            def sy(y: float, ymin: float = ymin, ymax: float = ymax) -> float:
                return height - pad + (ymin - y) / (ymax - ymin) * (height - 1.5 * pad)

            for run, line in series.items():
                colour = COLOURS.get(run, "#2ca02c")
                coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
                if len(line) > 1:
                    parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                                 f'stroke-width="2"><title>{html.escape(run)}</title></polyline>')
                for x, y in line:
                    parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" '
                                 f'fill="{colour}"/>')
            parts += [(f'<text x="{pad - 4}" y="{sy(ymax) + 4:.1f}" text-anchor="end" '
                      f'font-size="10">{ymax:.3g}</text>'),
                      (f'<text x="{pad - 4}" y="{sy(ymin):.1f}" text-anchor="end" '
                      f'font-size="10">{ymin:.3g}</text>'),
                      f'<text x="{pad}" y="{height - pad + 14}" font-size="10">{xmin:g}</text>',
                      (f'<text x="{width - pad / 2}" y="{height - pad + 14}" text-anchor="end" '
                      f'font-size="10">step {xmax:g}</text>')]
        else:
            parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                         'font-size="12">no data</text>')
        parts.append("</g>")
        panels.append("\n".join(parts))
    legend = "".join(
        f'<text x="{pad + i * 200}" y="{height + 6}" font-size="12" '
        f'fill="{COLOURS.get(r, "#2ca02c")}">■ {html.escape(r)}</text>' for i, r in enumerate(runs))
    total = len(CURVES) * (width + 20)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height + 16}" '
            f'viewBox="0 0 {total} {height + 16}" font-family="sans-serif">\n'
            f"<title>{html.escape(title)}</title>\n" + "\n".join(panels) + legend + "\n</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--retrain-eval", type=Path, required=True)
    parser.add_argument("--prune-report", type=Path, required=True)
    parser.add_argument("--train-dir", type=Path, required=True)
    parser.add_argument("--retrain-dir", type=Path, required=True)
    parser.add_argument("--html", type=Path, required=True)
    parser.add_argument("--svg", type=Path, required=True)
    args = parser.parse_args()

    runs = {"trained": json.loads(args.eval.read_text()),
            "retrained (pruned)": json.loads(args.retrain_eval.read_text())}
    prune = json.loads(args.prune_report.read_text())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>effdet {html.escape(args.exp)}: summary</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse;margin:4px 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}}</style>
</head><body>
<h1>Experiment {html.escape(args.exp)}</h1>
<h2>COCO metrics (evaluate)</h2>
<p>{html.escape(str(args.eval))} and {html.escape(str(args.retrain_eval))}</p>
{metrics_table(runs)}
<h2>Prune report</h2>
<p>{html.escape(str(args.prune_report))}</p>
{value_html(prune)}
</body></html>
"""
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(page, encoding="utf-8")
    curves = curves_svg({"trained": args.train_dir, "retrained (pruned)": args.retrain_dir},
                        f"effdet {args.exp}: training curves")
    args.svg.write_text(curves, encoding="utf-8")
    print(f"wrote {args.html} and {args.svg}")


if __name__ == "__main__":
    main()
