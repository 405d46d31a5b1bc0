"""`mask-convert bench-seed`: the agent against the project's seed design, in one run.

The seed design was OpenCV's Haar cascade on every frame and a float Keras MobileNetV2
(alpha 1.0, 224 px) on every face. This runs it (ImageNet backbone from a local weights
file and an untrained two-class head: the speed, not the accuracy, is what is compared)
alternately with the agent's defaults on the same frames, each round in a fresh process,
one thread each, and prints the median fps of each and their ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from maskwatch.agent.bench.measure import machine, peak_rss_mb, write_json

THREADS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "2"}


def frames(video: str, size: tuple[int, int], count: int):
    import cv2

    from maskwatch.agent.vision.camera import FileSource

    source, out = FileSource(video), []
    while len(out) < count and (frame := source.read()) is not None:
        out.append(cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA))
    return out


def run_seed(video: str, size: tuple[int, int], count: int, weights: str) -> dict:
    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    from maskwatch.agent.vision.detect import HaarDetector
    from maskwatch.agent.vision.preprocess import CropSpec, face_input

    started = time.time()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    backbone = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0,
                                              include_top=False, pooling="avg",
                                              weights=weights)
    model = keras.Sequential([backbone, keras.layers.Dense(2, activation="softmax")])
    detector, spec = HaarDetector(max_side=640, min_face=20), CropSpec(size=224)
    images = frames(video, size, count)
    startup = time.time() - started
    t0 = time.perf_counter()
    faces = 0
    for image in images:
        boxes = [f.box for f in detector.detect(image)]
        if boxes:
            crops = np.stack([face_input(image, b, spec) for b in boxes]).astype(np.float32)
            model(crops / 127.5 - 1.0, training=False)
            faces += len(boxes)
    wall = time.perf_counter() - t0
    return {"fps": len(images) / wall, "faces": faces, "peak_rss_mb": peak_rss_mb(),
            "startup_s": startup}


def run_agent(video: str, size: tuple[int, int], count: int) -> dict:
    import cv2

    from maskwatch.agent.config import load
    from maskwatch.agent.factory import pipeline_from
    from maskwatch.agent.vision.camera import Frame

    started = time.time()
    cv2.setNumThreads(1)
    pipeline = pipeline_from(load(None, []))
    images = frames(video, size, count)
    startup = time.time() - started
    t0 = time.perf_counter()
    for i, image in enumerate(images):
        pipeline.process(Frame(image, i / 24.5, i))
    wall = time.perf_counter() - t0
    return {"fps": len(images) / wall, "faces": pipeline.stats.faces,
            "peak_rss_mb": peak_rss_mb(), "startup_s": startup}


def _child(which: str, video: str, size: tuple[int, int], count: int, weights: str) -> dict:
    code = ("import json, sys; from maskwatch.convert import seedbench as s; "
            f"print(json.dumps(s.run_{which}(*json.loads(sys.argv[1]))))")
    args = [video, list(size), count] + ([weights] if which == "seed" else [])
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, env={**os.environ, **THREADS_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"{which} run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_seed(video: str, weights: str, size: tuple[int, int] = (640, 480),
               count: int = 150, rounds: int = 3, out: str = "bench/seed.json") -> int:
    runs: dict[str, list[dict]] = {"seed": [], "agent": []}
    for r in range(rounds):
        for which in ("seed", "agent"):
            print(f"round {r + 1}/{rounds}: {which} ...", file=sys.stderr, flush=True)
            runs[which].append(_child(which, video, size, count, weights))
    med = {k: {m: statistics.median(run[m] for run in v) for m in v[0]} for k, v in runs.items()}
    ratio = med["agent"]["fps"] / med["seed"]["fps"]
    print(f"seed design vs agent defaults on {count} frames of {video} at {size[0]}x{size[1]} "
          f"(1 thread, median of {rounds} alternating fresh processes; {machine()['cpu']})")
    for name in ("seed", "agent"):
        m = med[name]
        print(f"{name:<6} {m['fps']:>8.1f} fps  peak RSS {m['peak_rss_mb']:>6.0f} MB  "
              f"start-up {m['startup_s']:.2f} s")
    print(f"agent / seed: {ratio:.0f}x")
    write_json(out, {"video": video, "size": list(size), "frames": count, "rounds": rounds,
                     "machine": machine(), "median": med, "runs": runs, "ratio": ratio})
    return 0
