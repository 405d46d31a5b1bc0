"""Benchmarks that print numbers and write them to JSON (never asserted in tests).

- `mask-agent bench VIDEO`: the whole pipeline per detector and mode (the config's
  defaults, detection on every frame, an empty generated scene), each in a fresh process
  with the config's thread count: detector runs and faces classified per frame, fps, CPU
  seconds per frame and CPU % of one core (`--realtime 30` paces it like a camera),
  per-stage milliseconds, peak RSS (and after imports, models, opening the source and the
  first frame), start-up time, and the machine it ran on.
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
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from ..config import Config, as_dict
from ..errors import SourceError
from ..vision.decision import MASK, NO_MASK


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"machine": platform.machine(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "opencv": cv2.__version__}


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {path}")


def timings(call, runs: int, warmup: int = 20) -> list[float]:
    """Seconds per call of `call()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def proc_status_mb(*keys: str, pid: int | str = "self") -> dict[str, float] | None:
    """Memory fields of /proc/<pid>/status in MB (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rows = [line.split() for line in f if line.split(":")[0] in keys]
    except OSError:
        return None
    return {row[0].rstrip(":"): round(int(row[1]) / 1024.0, 1) for row in rows} or None


def peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM on Linux: ru_maxrss of a child started by
    subprocess (vfork + exec) also holds the parent's peak up to the exec, which would
    charge the bench's own process (or TensorFlow in it) to the agent's figures."""
    status = proc_status_mb("VmHWM")
    if status:
        return status["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_split_mb() -> dict[str, float] | None:
    """RSS now, split into anonymous memory (the process's own: heap, buffers, tensors) and
    pages mapped from files (library code and data, the mmapped model): the latter are
    clean, shared with the page cache and dropped by the kernel under memory pressure,
    which matters on a 512 MB Pi. Linux only (None elsewhere)."""
    status = proc_status_mb("RssAnon", "RssFile")
    return {"anon": status["RssAnon"], "file": status["RssFile"]} if status else None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- pipeline -----------------------------------------------------------------------------
MODES = ("defaults", "every-frame", "empty", "doorway")
GENERATED = ("empty", "doorway")  # scenes made in the child, sized like the video
EMPTY_SCENE_FPS = 30.0


@dataclass(frozen=True)
class PipelineBench:
    """What one child process measures."""

    video: str
    mode: str = "defaults"  # defaults | every-frame (no detection cap) | empty (static
    # scene) | doorway (the static scene, one real face from the video walking across)
    size: tuple[int, int] | None = None  # frames resized to (w, h)
    realtime_fps: float = 0.0  # > 0: paced like a camera; CPU % of one core is what counts
    max_frames: int = 0
    person: str = ""  # doorway: the walker's picture (PNG), cut from the video by the parent


class EmptyScene:
    """A doorway with nobody in it: a fixed generated scene, sensor noise, lighting drift.

    Cheap to make (about what decoding a camera frame costs), so the bench measures the
    agent, not the generator."""

    live = False

    def __init__(self, size: tuple[int, int], frames: int, seed: int = 0) -> None:
        w, h = size
        scene = np.repeat(np.linspace(60, 170, w, dtype=np.float32)[None, :], h, axis=0)
        scene[h // 6:, w // 3:2 * w // 3] *= 0.55  # a door
        scene[h - h // 8:, :] = 95  # the floor
        grey = cv2.GaussianBlur(scene, (0, 0), 3).astype(np.int16)
        base = cv2.merge([grey, grey, grey])  # one grey channel made: little memory
        del scene, grey
        cv2.setRNGSeed(seed)
        texture = np.empty_like(base)
        cv2.randn(texture, 0, 6)
        base = cv2.add(base, texture)
        # a few frames of sensor noise (sigma 2), cycled: frame-to-frame flicker for free
        self.noisy = []
        for _ in range(4):
            cv2.randn(texture, 0, 2)
            self.noisy.append(cv2.convertScaleAbs(cv2.add(base, texture)))
        self.frames, self.index = frames, 0

    def read(self):
        from ..vision.camera import Frame

        if self.index >= self.frames:
            return None
        drift = 1.0 + 0.08 * np.sin(self.index / EMPTY_SCENE_FPS / 10.0 * 2 * np.pi)
        image = cv2.convertScaleAbs(self.noisy[self.index % len(self.noisy)], alpha=drift)
        self.index += 1
        return Frame(image, (self.index - 1) / EMPTY_SCENE_FPS, self.index - 1)

    def close(self) -> None:
        pass


class DoorwayScene(EmptyScene):
    """The empty doorway with one person crossing it now and then: a real face (the
    surest the detector finds in the video's first frames, with its head around it)
    walks across in CROSSING_S, a fifth of the frame high, then the doorway is empty for
    PAUSE_S. What a doorway camera sees most of a busy day; each crossing is one person."""

    CROSSING_S, PAUSE_S = 3.0, 2.0

    def __init__(self, size: tuple[int, int], frames: int, person: np.ndarray) -> None:
        super().__init__(size, frames)
        side = size[1] // 5 * 2  # the head patch: twice the face, a fifth of the frame
        self.person = cv2.resize(person, (side, side), interpolation=cv2.INTER_LINEAR)

    def read(self):
        frame = super().read()
        if frame is None:
            return None
        cycle = self.CROSSING_S + self.PAUSE_S
        walked = (frame.ts % cycle) / self.CROSSING_S
        if walked < 1.0:
            h, w = frame.image.shape[:2]
            side = self.person.shape[0]
            x, y = int(walked * (w - side)), (h - side) // 3
            frame.image[y:y + side, x:x + side] = self.person
        return frame


def person_from(video: str, detector, frames: int = 100, min_side: int = 32) -> np.ndarray:
    """The surest face (highest score, at least min_side) the detector finds in the
    video's first frames, with as much again around it (the head, some background)."""
    from ..vision.camera import FileSource
    from ..vision.preprocess import cut_padded, square_region

    source, best = FileSource(video), None
    try:
        while frames and (frame := source.read()) is not None:
            frames -= 1
            for face in detector.detect(frame.image):
                if min(face.box[2:]) >= min_side and (best is None or face.score > best[2]):
                    best = (frame.image, face.box, face.score)
    finally:
        source.close()
    if best is None:
        raise SourceError(f"{video}: no face in its first frames for the doorway scene")
    return cut_padded(best[0], square_region(best[1], 2.0))


def _bench_source(job: PipelineBench):
    """The video, or for the generated modes the scene alone: its size and length were
    read from the video by the parent (`_sized_like_video`), and the doorway's walker cut
    from it there, so the child never holds a decoder it does not use and its RSS is the
    agent's on a quiet camera."""
    from ..vision.camera import FileSource

    if job.mode == "empty":
        return EmptyScene(job.size, job.max_frames)
    if job.mode == "doorway":
        return DoorwayScene(job.size, job.max_frames, cv2.imread(job.person))
    return FileSource(job.video)


def _sized_like_video(job: PipelineBench) -> PipelineBench:
    """The empty mode's job with the video's frame size (unless --size) and length."""
    from ..vision.camera import FileSource

    source = FileSource(job.video)
    try:
        first = source.read()
        if first is None:
            raise SourceError(f"{job.video}: no frame could be decoded")
        size = job.size or (first.image.shape[1], first.image.shape[0])
        frames = job.max_frames or source.frame_count or 600
    finally:
        source.close()
    return replace(job, size=size, max_frames=frames)


def _pipeline_child(cfg: Config, job: PipelineBench, spawned_at: float) -> dict:
    """Runs inside a fresh process: one detector, one mode, over the whole video."""
    cv2.setNumThreads(cfg.classify.threads)
    import paho.mqtt.client  # noqa: F401  (not used here, but `run` holds it: count it)

    from ..delivery.outbox import Outbox
    from ..factory import pipeline_from
    from ..people.events import EventContext, build_event, encode

    if job.mode == "every-frame":
        cfg = cfg.replace(detect=replace(cfg.detect, fps=120.0))
    stages = {"imports": peak_rss_mb()}
    pipeline = pipeline_from(cfg)
    stages["models"] = peak_rss_mb()
    source = _bench_source(job)
    stages["source open"] = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite3")
        startup = time.time() - spawned_at
        decode = publish = 0.0
        events = people = 0
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        context = None
        while not job.max_frames or pipeline.stats.frames < job.max_frames:
            t0 = time.perf_counter()
            frame = source.read()
            if frame is not None and job.size and job.mode not in GENERATED:
                frame = replace(frame, image=cv2.resize(frame.image, job.size,
                                                        interpolation=cv2.INTER_AREA))
            decode += time.perf_counter() - t0
            if frame is None:
                break
            if job.realtime_fps:
                _pace(wall0, pipeline.stats.frames, job.realtime_fps)
            if context is None:
                context = EventContext("bench", pipeline.classifier.info.summary(),
                                       (frame.image.shape[1], frame.image.shape[0]))
            transitions = pipeline.process(frame)
            if pipeline.stats.frames == 1:
                stages["first frame"] = peak_rss_mb()
            t1 = time.perf_counter()
            for transition in transitions:
                outbox.put("bench/events", encode(build_event(transition, context, 0.0, 0.0)))
                events += 1
                people += transition.kind == "new"
            publish += time.perf_counter() - t1
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        outbox.close()
    s = pipeline.stats
    frames = max(1, s.frames)
    seconds = {"decode": decode, **s.seconds, "publish": publish}
    return {
        "detector": cfg.detect.detector, "mode": job.mode,
        "size": list(frame_size(context)), "realtime_fps": job.realtime_fps,
        "threads": cfg.classify.threads,
        "frames": s.frames, "detections": s.detections, "faces": s.faces,
        "classified": s.classified, "events": events, "people": people,
        "detector_runs_per_frame": round(s.detections / frames, 3),
        "faces_classified_per_frame": round(s.classified / frames, 3),
        "frame_share_searched_per_frame": round(s.searched / frames, 3),
        "fps": round(frames / wall, 1),
        "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        "ms_per_frame": {k: round(1000 * v / frames, 3) for k, v in seconds.items()},
        "cpu_s_per_frame": round(cpu / frames, 5),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_mb_after": {k: round(v, 1) for k, v in stages.items()},
        "rss_mb_at_end": rss_split_mb(),
        "startup_s": round(startup, 3),
    }


def frame_size(context) -> tuple[int, int]:
    return tuple(context.frame_size) if context is not None else (0, 0)


def _pace(wall0: float, index: int, fps: float) -> None:
    """Sleep until frame `index` is due, as a camera at `fps` would deliver it."""
    delay = wall0 + index / fps - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def bench_pipeline(cfg: Config, video: str, detectors: list[str], out: str,
                   max_frames: int = 0, size: tuple[int, int] | None = None,
                   modes: list[str] | None = None, realtime_fps: float = 0.0) -> int:
    if "://" not in video and not Path(video).is_file():
        raise SourceError(f"{video}: no such video file")
    results = []
    with tempfile.TemporaryDirectory(prefix="maskwatch-bench-") as work:
        for name in detectors:
            child_cfg = as_dict(cfg.replace(detect=cfg.detect.using(name)))
            for mode in modes or list(MODES):
                job = PipelineBench(video, mode, size, realtime_fps, max_frames)
                if mode in GENERATED:
                    job = _sized_like_video(job)
                if mode == "doorway":
                    job = replace(job, person=_walker_file(cfg, video, Path(work)))
                print(f"{name} {mode}: running ...", file=sys.stderr, flush=True)
                result = _run_child(child_cfg, job)
                if result is not None:
                    results.append(result)
    print_pipeline_table(video, cfg.classify.threads, realtime_fps, results)
    write_json(out, {"video": video, "machine": machine(), "threads": cfg.classify.threads,
                     "realtime_fps": realtime_fps, "results": results})
    return 0 if results else 1


def _walker_file(cfg: Config, video: str, work: Path) -> str:
    """The doorway's walker, cut from the video with the YuNet defaults (the same person
    for every detector benched), as a PNG for the child."""
    from ..factory import detector_from

    path = work / "walker.png"
    if not path.exists():
        cv2.imwrite(str(path), person_from(video, detector_from(cfg.detect.using("yunet"))))
    return str(path)


def _run_child(child_cfg: dict, job: PipelineBench) -> dict | None:
    threads = str(child_cfg["classify"]["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    spawned = time.time()
    proc = subprocess.run([sys.executable, "-m", "maskwatch.agent.bench.measure", "_pipeline",
                           json.dumps(asdict(job)), str(spawned)],
                          input=json.dumps(child_cfg), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{job.mode}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_pipeline_table(video: str, threads: int, realtime_fps: float, results: list) -> None:
    pace = f"paced at {realtime_fps:g} fps" if realtime_fps else "as fast as it goes"
    print(f"pipeline on {video} ({threads} thread(s), {pace}; {machine()['cpu']})")
    print(f"{'detector':<9} {'mode':<11} {'size':>9} {'fps':>6} {'det/f':>6} {'area/f':>6} "
          f"{'cls/f':>6} "
          f"{'CPU %':>6} {'cpu s/f':>8} {'detect':>7} {'classify':>8} {'RSS MB':>7} "
          f"{'start s':>7} {'people':>6}")
    for r in results:
        ms = r["ms_per_frame"]
        print(f"{r['detector']:<9} {r['mode']:<11} {'x'.join(map(str, r['size'])):>9} "
              f"{r['fps']:>6.0f} {r['detector_runs_per_frame']:>6.2f} "
              f"{r['frame_share_searched_per_frame']:>6.2f} "
              f"{r['faces_classified_per_frame']:>6.2f} {r['cpu_percent_of_one_core']:>6.1f} "
              f"{r['cpu_s_per_frame']:>8.4f} {ms['detect']:>7.2f} {ms['classify']:>8.2f} "
              f"{r['peak_rss_mb']:>7.1f} {r['startup_s']:>7.2f} {r['people']:>6}")
    for r in results:
        split = r.get("rss_mb_at_end")
        at_end = f"; RSS at the end: {split['anon']:.0f} anonymous + {split['file']:.0f} " \
                 "mapped from files" if split else ""
        print(f"peak RSS MB after {r['detector']} {r['mode']}: " + ", ".join(
            f"{k} {v:.0f}" for k, v in r["peak_rss_mb_after"].items()) + at_end)
    print("det/f: detector runs per frame; area/f: frames' worth of pixels searched per "
          "frame; cls/f: faces classified per frame; detect and classify in ms per frame; "
          "people: `new` events")


# --- detectors ----------------------------------------------------------------------------
def scene_at(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """A dev scene scaled to `long_side` as `bench-detect` measures it, and the scale (its
    annotated boxes scale by it too)."""
    scale = long_side / max(image.shape[:2])
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
                      if scale < 1 else cv2.INTER_LINEAR), scale


def bench_detectors(cfg: Config, voc: Path, detectors: list[str], out: str,
                    min_face: int = 40, limit: int = 0, long_side: int = 640) -> int:
    """Recall (IoU >= 0.3) on annotated faces >= min_face px at a 640 px frame, ms per
    frame, and boxes on no annotated face.

    The detectors run with the agent's own settings (detect.*: scale, score threshold and
    its size filter, detect.min_face), so "other boxes" counts the false faces the agent
    would act on."""
    from ..factory import detector_from
    from ..people.track import best_match
    from ..vision.voc import read_voc_images

    cv2.setNumThreads(1)
    items = read_voc_images(voc, limit)
    results = []
    for name in detectors:
        detector = detector_from(cfg.detect.using(name), cfg.state_dir)
        found = {MASK: [0, 0], NO_MASK: [0, 0]}
        times, false_pos = [], 0
        for image_path, faces in progress(items, f"{name}"):
            image, scale = scene_at(cv2.imread(str(image_path)), long_side)
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
          f"px, IoU >= 0.3, 1 thread; detect.max_side {cfg.detect.max_side}, score >= "
          f"{cfg.detect.score_threshold}, boxes >= {cfg.detect.min_face} px)")
    print(f"{'detector':<10} {'masked found':>13} {'unmasked found':>15} {'ms/frame':>9} "
          f"{'other boxes':>11}")
    for r in results:
        print(f"{r['detector']:<10} {r['masked_recall']:>12.1%} {r['unmasked_recall']:>15.1%} "
              f"{r['ms_per_frame_median']:>9.1f} {r['boxes_on_no_annotated_face']:>11}")
    write_json(out, {"voc": str(voc), "min_face": min_face, "long_side": long_side,
                     "detect": asdict(cfg.detect),
                     "machine": machine(), "results": results})
    return 0


# --- classifier ---------------------------------------------------------------------------
def bench_classifier(cfg: Config, bundles: list[str | None], out: str, runs: int = 300) -> int:
    from ..factory import classifier_from

    results = []
    for bundle in bundles:
        classifier = classifier_from(replace(cfg.classify, model=bundle or cfg.classify.model,
                                             threads=1))
        size = classifier.crop.size
        crop = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), np.uint8)
        times = timings(partial(classifier.scores, crop), runs)
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


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_pipeline":
    from ..config import validate

    spec = json.loads(sys.argv[2])
    spec["size"] = tuple(spec["size"]) if spec["size"] else None
    result = _pipeline_child(validate(json.loads(sys.stdin.read())), PipelineBench(**spec),
                             float(sys.argv[3]))
    print(json.dumps(result))
