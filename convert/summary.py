"""Markdown comparison table of training runs (for the model card).

python -m convert.summary runs/NAME... [--latency bench/classifier.json]
Reads each run's report.json, bundle/model.json, dev_annotated_boxes.json and
dev_detector_boxes.json as written by convert/reproduce.sh.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskwatch.agent.vision.decision import NO_MASK


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _binary(evaluation: dict | None, bucket: str | None = None) -> tuple[str, str]:
    if evaluation is None:
        return "–", "–"
    data = evaluation["datasets"][0]
    report = data["all"] if bucket is None else data["by_face_size"].get(bucket)
    binary = report and report.get("mask_vs_no_mask")
    if not binary:
        return "–", "–"
    recall = binary["per_class"][NO_MASK]["recall"]
    return f"{100 * binary['balanced_accuracy']:.1f}", f"{100 * recall:.1f}"


def row(run: Path, latency: dict[str, float]) -> str:
    report = _load(run / "report.json") or {}
    meta = _load(run / "bundle" / "model.json") or {}
    parity = meta.get("metrics", {}).get("parity", {})
    annotated = _load(run / "dev_annotated_boxes.json")
    detected = _load(run / "dev_detector_boxes.json")
    val = report.get("validation", {}).get("mask_vs_no_mask") or {}
    ms = latency.get(str(run / "bundle"))
    cells = [
        run.name, str(report.get("alpha")), str(report.get("crop", {}).get("size")),
        str(len(report.get("labels", []))),
        f"{100 * val.get('balanced_accuracy', 0):.1f}",
        f"{parity.get('drop_points', float('nan')):.2f}",
        *_binary(annotated), *_binary(detected), _binary(detected, "32-64")[0],
        _binary(detected, ">=64")[0], f"{ms:.2f}" if ms is not None else "–",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| run | alpha | size | classes | val bal. acc (float) | int8 drop (pts) | "
          "dev bal. acc, annotated boxes | dev no-mask recall, annotated | "
          "dev bal. acc, detector boxes | dev no-mask recall, detector | "
          "dev det. 32–64 px | dev det. ≥64 px | int8 ms/face |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--latency", type=Path, default=Path("bench/classifier.json"))
    args = parser.parse_args()
    bench = _load(args.latency) or {"results": []}
    latency = {r["bundle"]: r["ms_median"] for r in bench["results"]}
    print(HEADER)
    for run in args.runs:
        print(row(run, latency))


if __name__ == "__main__":
    main()
