"""Benchmarks that print numbers and write them to JSON (never asserted in tests).

- `mask-agent bench VIDEO`: the whole pipeline per detector, each in a fresh single-threaded
  process: per-stage milliseconds per frame (decode, detect, classify, track, publish),
  frames per second, CPU seconds per frame, peak RSS and start-up time.
- `mask-agent bench-detect VOC`: detector recall on masked and unmasked faces, ms/frame.
- `mask-agent bench-classify [BUNDLE...]`: per-face int8 latency (1 thread, median).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from .config import Config, as_dict
from .decision import MASK, NO_MASK

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1"}


def machine() -> dict:
    return {"machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "opencv": cv2.__version__}


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {path}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- pipeline -----------------------------------------------------------------------------
def _pipeline_child(cfg: Config, video: str, max_frames: int, spawned_at: float) -> dict:
    """Runs inside a fresh process: one detector over the whole video."""
    cv2.setNumThreads(1)
    from .camera import FileSource
    from .events import EventContext, build_event, encode
    from .factory import pipeline_from
    from .outbox import Outbox

    pipeline = pipeline_from(cfg)
    source = FileSource(video)
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite3")
        startup = time.time() - spawned_at
        decode = publish = 0.0
        events = 0
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        context = None
        while not max_frames or pipeline.stats.frames < max_frames:
            t0 = time.perf_counter()
            frame = source.read()
            decode += time.perf_counter() - t0
            if frame is None:
                break
            if context is None:
                context = EventContext("bench", pipeline.classifier.info.summary(),
                                       (frame.image.shape[1], frame.image.shape[0]))
            transitions = pipeline.process(frame)
            t1 = time.perf_counter()
            for transition in transitions:
                outbox.put("bench/events", encode(build_event(transition, context, 0.0, 0.0)))
                events += 1
            publish += time.perf_counter() - t1
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        outbox.close()
    frames = max(1, pipeline.stats.frames)
    seconds = {"decode": decode, **pipeline.stats.seconds, "publish": publish}
    return {
        "detector": cfg.detect.detector,
        "frames": pipeline.stats.frames,
        "detections": pipeline.stats.detections,
        "faces": pipeline.stats.faces,
        "classified": pipeline.stats.classified,
        "events": events,
        "fps": round(frames / wall, 1),
        "ms_per_frame": {k: round(1000 * v / frames, 3) for k, v in seconds.items()},
        "cpu_s_per_frame": round(cpu / frames, 5),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "startup_s": round(startup, 3),
    }


def bench_pipeline(cfg: Config, video: str, detectors: list[str], out: str,
                   max_frames: int = 0) -> int:
    results = []
    for name in detectors:
        detect = replace(cfg.detect, detector=name,
                         model=cfg.detect.model if name == cfg.detect.detector else None)
        child_cfg = as_dict(cfg.replace(detect=detect))
        env = {**os.environ, **SINGLE_THREAD_ENV}
        spawned = time.time()
        print(f"{name}: running over {video} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "maskwatch.agent.bench", "_pipeline",
                               video, str(max_frames), str(spawned)],
                              input=json.dumps(child_cfg), capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    header = (f"{'detector':<10} {'fps':>7} {'decode':>7} {'detect':>7} {'classify':>8} "
              f"{'track':>6} {'publish':>7} {'cpu s/f':>8} {'RSS MB':>7} {'start s':>7}")
    print(f"pipeline on {video} (1 thread; ms per frame by stage)")
    print(header)
    for r in results:
        ms = r["ms_per_frame"]
        print(f"{r['detector']:<10} {r['fps']:>7.1f} {ms['decode']:>7.2f} {ms['detect']:>7.2f} "
              f"{ms['classify']:>8.2f} {ms['track']:>6.2f} {ms['publish']:>7.2f} "
              f"{r['cpu_s_per_frame']:>8.4f} {r['peak_rss_mb']:>7.1f} {r['startup_s']:>7.2f}")
    write_json(out, {"video": video, "machine": machine(), "results": results})
    return 0 if results else 1


# --- detectors ----------------------------------------------------------------------------
def bench_detectors(cfg: Config, voc: Path, detectors: list[str], out: str,
                    min_face: int = 40, limit: int = 0, long_side: int = 640) -> int:
    """Recall (IoU >= 0.3) on faces >= min_face px at a 640 px frame, and ms per frame.

    The detectors keep every face they find (min_face 8) so that recall is measured on the
    annotated faces >= `min_face`, not on what the agent's own size filter leaves."""
    from .factory import detector_from
    from .track import best_match
    from .voc import read_voc_images

    cv2.setNumThreads(1)
    items = read_voc_images(voc, limit)
    results = []
    for name in detectors:
        settings = replace(cfg.detect, detector=name, min_face=8,
                           model=cfg.detect.model if name == cfg.detect.detector else None)
        detector = detector_from(settings, cfg.state_dir)
        found = {MASK: [0, 0], NO_MASK: [0, 0]}
        times, false_pos = [], 0
        for image_path, faces in progress(items, f"{name}"):
            image = cv2.imread(str(image_path))
            scale = long_side / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
                               if scale < 1 else cv2.INTER_LINEAR)
            t0 = time.perf_counter()
            boxes = [f.box for f in detector.detect(image)]
            times.append(time.perf_counter() - t0)
            scaled = [(f.label, tuple(int(round(v * scale)) for v in f.box)) for f in faces]
            for label, box in scaled:
                if label not in found or max(box[2], box[3]) < min_face:
                    continue
                found[label][1] += 1
                if best_match(box, boxes) is not None:
                    found[label][0] += 1
            annotated = [g for _, g in scaled]
            false_pos += sum(1 for b in boxes if best_match(b, annotated) is None)
        results.append({
            "detector": name,
            "masked_recall": round(found[MASK][0] / max(1, found[MASK][1]), 4),
            "unmasked_recall": round(found[NO_MASK][0] / max(1, found[NO_MASK][1]), 4),
            "masked_faces": found[MASK][1],
            "unmasked_faces": found[NO_MASK][1],
            "ms_per_frame_median": round(1000 * statistics.median(times), 2),
            "boxes_on_no_annotated_face": false_pos,
        })
    print(f"detectors on {voc} ({len(items)} images, long side {long_side}, faces >= {min_face} "
          "px, IoU >= 0.3, 1 thread)")
    print(f"{'detector':<10} {'masked found':>13} {'unmasked found':>15} {'ms/frame':>9} "
          f"{'other boxes':>11}")
    for r in results:
        print(f"{r['detector']:<10} {r['masked_recall']:>12.1%} {r['unmasked_recall']:>15.1%} "
              f"{r['ms_per_frame_median']:>9.1f} {r['boxes_on_no_annotated_face']:>11}")
    write_json(out, {"voc": str(voc), "min_face": min_face, "long_side": long_side,
                     "machine": machine(), "results": results})
    return 0


# --- classifier ---------------------------------------------------------------------------
def bench_classifier(cfg: Config, bundles: list[str | None], out: str, runs: int = 300) -> int:
    from .factory import classifier_from

    results = []
    for bundle in bundles:
        classifier = classifier_from(replace(cfg.classify, model=bundle or cfg.classify.model,
                                             threads=1))
        size = classifier.crop.size
        crop = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), np.uint8)
        for _ in range(20):
            classifier.scores(crop)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            classifier.scores(crop)
            times.append(time.perf_counter() - t0)
        meta = classifier.info.meta
        results.append({
            "bundle": str(classifier.info.path.parent),
            "name": classifier.info.name,
            "alpha": meta.get("architecture", {}).get("alpha"),
            "size": size,
            "bytes": classifier.info.path.stat().st_size,
            "ms_median": round(1000 * statistics.median(times), 3),
            "ms_p90": round(1000 * float(np.percentile(times, 90)), 3),
        })
    print(f"int8 classifier latency per face (1 thread, batch 1, median of {runs})")
    print(f"{'name':<40} {'alpha':>5} {'size':>5} {'KiB':>6} {'median ms':>10} {'p90 ms':>7}")
    for r in results:
        print(f"{r['name']:<40} {r['alpha']!s:>5} {r['size']:>5} {r['bytes'] // 1024:>6} "
              f"{r['ms_median']:>10.3f} {r['ms_p90']:>7.3f}")
    write_json(out, {"machine": machine(), "results": results})
    return 0


def progress(items: list, what: str):
    """Yield the items, with a one-line ticker on stderr (a terminal only)."""
    tty = sys.stderr.isatty()
    for i, item in enumerate(items, 1):
        if tty and (i % 10 == 0 or i == len(items)):
            print(f"\r{what}: {i}/{len(items)}", end="" if i < len(items) else "\n",
                  file=sys.stderr, flush=True)
        yield item


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "_pipeline":
    from .config import validate

    result = _pipeline_child(validate(json.loads(sys.stdin.read())), sys.argv[2],
                             int(sys.argv[3]), float(sys.argv[4]))
    print(json.dumps(result))
