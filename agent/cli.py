"""`mask-agent`: run the doorway agent and its tools.

Exit codes: 0 ok, 1 internal error, 2 usage, 65 bad input data (undecodable or too
large image), 66 input or source not found or not readable, 69 broker or download
unavailable, 74 the state directory could not be written (events were kept in memory only),
75 try again later: --until-eof ended with events undelivered (kept in the outbox), or
another agent runs with this state directory, 77 the broker refused events (--until-eof),
or root asked to write into another user's state directory (the service's), 78 invalid
configuration or model (systemd does not restart on 78), 3 `adapt` found neither a head
nor a detector threshold honestly better than the current ones (nothing changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import (
    EXIT_FAILURE,
    EXIT_NOT_ADAPTED,
    HIDDEN_FROM_THE_SERVICE,
    HIDDEN_NOTE,
    MaskwatchError,
    SourceError,
    UsageError,
    running_as,
)
from .vision.models import DETECTOR_FILES, OPTIONAL
from .vision.predict import annotate, detect_result, image_paths, read_image_file

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("maskwatch")


def load_config(args) -> Config:
    from .config import load

    return load(args.config, args.set)


def config_for_writing(args) -> Config:
    """The config of a command that writes into the state dir: refused (exit 77) when root
    would write into another user's (the service's) state dir."""
    from .statelock import check_owner

    cfg = load_config(args)
    check_owner(cfg.state_dir or ".")
    return cfg


def cmd_run(args) -> int:
    from .service import Agent
    from .statelock import StateDirLock
    from .systemd import setup_logging, stop_on_signals

    cfg = config_for_writing(args)
    setup_logging(cfg.log_level)
    with StateDirLock(cfg.state_dir or "."):  # one agent per state dir: before any work
        agent = Agent(cfg)
        stop_on_signals(agent.stop_event)
        return agent.run(args.source, until_eof=args.until_eof)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(load_config(args), args.source, publish=not args.no_broker)


def cmd_check_config(args) -> int:
    from .config import load, named_files, redacted

    cfg = load(args.file or args.config, args.set)
    source = args.file or args.config or "built-in defaults"
    print(json.dumps(redacted(cfg), indent=2) if args.print else f"{source}: ok")
    for key, path in named_files(cfg):
        if str(Path(path).resolve()).startswith(HIDDEN_FROM_THE_SERVICE):
            print(f"mask-agent: note: {key}: {path} is fine here, but {HIDDEN_NOTE}",
                  file=sys.stderr)
    return 0


def readable_images(paths: list[str], failures: list[int], max_pixels: int):
    """(path, BGR image) for each readable path; a bad one is a line on stderr and its
    exit code is collected in `failures`, and the others are still processed."""
    for path in listed_images(paths, failures):
        try:
            yield path, read_image_file(path, max_pixels)
        except MaskwatchError as exc:
            report(exc, failures)


def listed_images(paths: list[str], failures: list[int]):
    """Each path given, a folder standing for the photos in it."""
    for given in paths:
        try:
            yield from image_paths(given)
        except MaskwatchError as exc:
            report(exc, failures)


def report(exc: MaskwatchError, failures: list[int]) -> None:
    print(f"mask-agent: error: {exc}", file=sys.stderr)
    failures.append(exc.exit_code)


def annotate_dir(folder: str | None) -> Path | None:
    """The --annotate folder, created; a clear error when it is a file or unwritable."""
    if folder is None:
        return None
    out = Path(folder)
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--annotate {folder}: exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--annotate {folder}: cannot create: {exc.strerror} (running as "
                         f"{running_as()})") from None
    return out


def cmd_detect(args) -> int:
    import cv2

    from .factory import classifier_from, detector_from

    cfg = load_config(args)
    # --detector is detect.detector: a detect.model given beside it is that detector's file
    # (a file that does not fit it is an error, never a silent swap for the bundled one)
    settings = dataclasses.replace(cfg.detect, detector=args.detector) if args.detector \
        else cfg.detect
    out = annotate_dir(args.annotate)
    detector = detector_from(settings, cfg.state_dir)
    classifier = classifier_from(cfg.classify, cfg.state_dir)
    failures: list[int] = []
    written: set[str] = set()
    for path, image in readable_images(args.paths, failures, cfg.detect.max_image_pixels):
        result = {"image": path, **detect_result(image, detector, classifier)}
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            labels = ", ".join(f"{f['label']} ({f['confidence']:.2f})" for f in result["faces"])
            print(f"{path}: {len(result['faces'])} face(s){': ' + labels if labels else ''}")
        if out is not None:
            cv2.imwrite(str(out / unique_name(Path(path).stem, written)), annotate(image, result))
    return max(failures, default=0)


def unique_name(stem: str, written: set[str]) -> str:
    """`stem.jpg`, or `stem-2.jpg`, ... where photos of one name (in two folders) came
    before: one annotated photo never replaces another."""
    name, n = f"{stem}.jpg", 1
    while name in written:
        n += 1
        name = f"{stem}-{n}.jpg"
    written.add(name)
    return name


def cmd_classify(args) -> int:
    from .factory import classifier_from
    from .vision.preprocess import whole_image_box

    cfg = load_config(args)
    classifier = classifier_from(cfg.classify, cfg.state_dir)
    failures: list[int] = []
    for path, image in readable_images(args.crops, failures, cfg.detect.max_image_pixels):
        # a crop is classified whole, through the shared crop (edges repeated to a square)
        p = classifier.classify(image, [whole_image_box(image, classifier.crop)])[0]
        if args.json:
            print(json.dumps({"image": path, "label": p.label, "confidence": p.confidence,
                              "scores": p.scores}), flush=True)
        else:
            print(f"{path}: {p.label} ({p.confidence:.2f})")
    return max(failures, default=0)


def cmd_models_fetch(args) -> int:
    from .vision.models import fetch, models_dir

    cfg = load_config(args) if args.dest else config_for_writing(args)
    dest = Path(args.dest) if args.dest else models_dir(cfg.state_dir)
    paths = fetch(dest, Path(args.from_dir) if args.from_dir else None, args.base_url,
                  args.only or None)
    for path in paths:
        print(f"ok {path}")
    return 0


def share_group_arg(text: str) -> str:
    if not text or any(c in text for c in "/+#") or len(text) > 64:
        raise argparse.ArgumentTypeError("a group name without / + # (at most 64 characters)")
    return text


def cmd_watch(args) -> int:
    from .delivery.watch import watch

    cfg = load_config(args)
    return watch(cfg.mqtt, count=args.count, timeout=args.timeout, as_json=args.json,
                 share=args.share)


def bench_modes_arg(text: str) -> list[str]:
    """`--modes`, checked against the bench's own list (imported only when given: the
    running agent never loads the benches)."""
    from .bench.measure import MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {', '.join(unknown) or text!r} "
                                         f"(known: {', '.join(MODES)})")
    return modes


def cmd_bench(args) -> int:
    from .bench.measure import bench_pipeline

    cfg = load_config(args)
    return bench_pipeline(cfg, args.video, args.detectors.split(","), args.out,
                          max_frames=args.frames, size=args.size, modes=args.modes,
                          realtime_fps=args.realtime)


def cmd_bench_detect(args) -> int:
    from .bench.measure import bench_detectors

    cfg = load_config(args)
    return bench_detectors(cfg, Path(args.voc), args.detectors.split(","), args.out,
                           min_face=args.min_face, limit=args.limit)


def cmd_bench_near(args) -> int:
    from .bench.near import bench_near

    return bench_near(load_config(args), Path(args.train), Path(args.dev) if args.dev else None,
                      args.per_class, args.out)


def cmd_bench_track(args) -> int:
    from .bench.tracking import bench_tracking

    return bench_tracking(load_config(args), Path(args.voc), Path(args.video), args.out)


def cmd_bench_soak(args) -> int:
    from .bench.soak import bench_soak

    load_config(args)  # a bad config is exit 78 here, not in the child a minute later
    if args.every < 2:
        raise UsageError(f"--every {args.every:g}: at least 2 (the agent sends stats twice "
                         "a period, at most once a second)")
    if not Path(args.video).is_file():
        raise SourceError(f"{args.video}: no such video file")
    settings = (["--config", args.config] if args.config else []) + [
        arg for kv in args.set for arg in ("--set", kv)]
    return bench_soak(args.video, args.minutes, args.every, args.out, settings)


def cmd_bench_fleet(args) -> int:
    from .bench.fleet import bench_fleet

    return bench_fleet(args.scenario, args.devices, args.rate, args.seconds, args.outage,
                       args.out, per_process=args.per_process)


def cmd_bench_classify(args) -> int:
    from .bench.measure import bench_classifier

    cfg = load_config(args)
    return bench_classifier(cfg, args.bundles or [None], args.out, runs=args.runs)


def cmd_samples(args) -> int:
    from .site.doorway import open_store

    cfg = config_for_writing(args)  # even `list`: opening the store makes it, and prunes
    store = open_store(cfg.adapt, cfg.state_dir)
    if args.samples_command == "list":
        for sample in store.list(limit=args.limit):
            print(json.dumps(sample.to_json()) if args.json else
                  f"{sample.id:>6} {sample.predicted:<13} {sample.confidence:.2f} "
                  f"{sample.reason:<15} label={sample.label or '-'}")
        print(json.dumps(store.counts()) if args.json else
              "counts: " + ", ".join(f"{k} {v}" for k, v in store.counts().items()),
              file=sys.stderr)
    elif args.samples_command == "export":
        print(f"exported {store.export(Path(args.dest))} samples to {args.dest}")
    elif args.samples_command == "import":
        print_imported(store.import_labels(Path(args.export)), args.export)
    else:
        samples, asides = store.clear()
        print(f"deleted {samples} samples from {store.folder}" +
              (f" and {asides} damaged store(s) set aside beside it" if asides else ""))
    return 0


def print_imported(imported, export: str) -> None:
    """`samples import`'s line; UsageError when it labelled nothing."""
    left = (f"; {imported.strangers} files left alone (their samples are no longer stored, "
            "or another device's, or they lie in two folders)" if imported.strangers else "")
    if not sum(imported.labelled.values()):
        raise UsageError(f"no labelled crops of this store's samples in {export}: sort the "
                         f"crops of its unlabelled/ into with_mask/, without_mask/ or skip/{left}")
    print("labelled " + ", ".join(f"{n} {label}" for label, n in imported.labelled.items())
          + f"{left}; next: mask-agent adapt")


def cmd_adapt(args) -> int:
    import numpy as np

    from .factory import classifier_from, detector_from
    from .site.doorway import (
        adapt_site,
        detector_status,
        head_status,
        install_threshold,
        open_store,
        print_report,
        revert,
        threshold_in_use,
    )
    from .site.photos import label_folder_features

    cfg = load_config(args) if args.status else config_for_writing(args)
    if args.revert:
        print("reverted to the bundle's head and the configured detector threshold"
              if revert(cfg.state_dir) else "no site head or detector threshold: nothing to do")
        return 0
    classifier = classifier_from(cfg.classify, cfg.state_dir)
    if args.status:
        print(json.dumps({**head_status(cfg.state_dir, classifier),
                          "detector": detector_status(cfg.state_dir, cfg.detect)}, indent=2))
        return 0
    parts, photos, detector_changed = [], None, False
    if args.labels:
        detector = detector_from(cfg.detect, cfg.state_dir, site_tuning=False)
        photos = label_folder_features(Path(args.labels), classifier, detector,
                                       threshold_in_use(cfg.detect, cfg.state_dir),
                                       tune=cfg.detect.site_tuning)
        detector_changed = bool(photos.detector and photos.detector.accepted)
        if detector_changed and not args.dry_run:
            install_threshold(cfg.state_dir, cfg.detect.detector, photos.detector)
        if len(photos.y):
            parts.append((photos.x, photos.y))
        else:
            left = sum(len(v) for v in photos.left_out.values())
            raise UsageError(f"--labels {args.labels}: no face found in any photo ({left} "
                             "left out; see --json for their names)")
    if not args.labels or args.with_samples:
        x, y = open_store(cfg.adapt, cfg.state_dir).labelled_features()
        if len(y):
            parts.append((x, y))
    if not parts:
        raise UsageError("no labelled faces: label collected samples in the console, or "
                         "give --labels DIR with with_mask/ and without_mask/ folders")
    site_x = np.concatenate([x for x, _ in parts])
    site_y = np.concatenate([y for _, y in parts])
    report = adapt_site(cfg.state_dir, classifier, site_x, site_y, write=not args.dry_run)
    print_report(report, photos, args.json)
    return 0 if report.accepted or detector_changed else EXIT_NOT_ADAPTED


def count_arg(low: int, high: int):
    """An argparse type: a whole number from low to high, else a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}: from {low} to {high}")
        return value
    return parse


def positive_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


def frame_size_arg(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"{text}: sides from 16 to 8192 pixels")
    return w, h


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("MASKWATCH_CONFIG") or None,
                        help="YAML config file (default: $MASKWATCH_CONFIG, which the "
                        "installer's mask-agent sets to /etc/maskwatch/config.yaml; else "
                        "built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a setting, e.g. --set mqtt.port=1884 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"maskwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the agent (camera -> MQTT events)")
    common(p)
    p.add_argument("--source", help="override source.uri (camera index, file, URL)")
    p.add_argument("--until-eof", action="store_true",
                   help="stop when the source ends and its events are delivered (exit 75 "
                   "if some could not be delivered); a video file does so without it, unless "
                   "source.loop is on")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the real pipeline on the bundled street clip and "
                       "print each event (no camera, broker or download needed)")
    common(p)
    p.add_argument("--source", help="another video file instead of the bundled clip")
    p.add_argument("--no-broker", action="store_true",
                   help="do not try the MQTT broker (mqtt.host:mqtt.port) at all")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a config file (secrets are hidden)")
    common(p)
    p.add_argument("file", nargs="?", help="config file to check (or --config)")
    p.add_argument("--print", action="store_true", help="print the resolved config")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("detect", help="detect and classify faces in images")
    common(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, or folders of them")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("--annotate", metavar="DIR", help="write images with boxes to DIR")
    p.add_argument("--detector", choices=("yunet", "blazeface", "haar"))
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("classify", help="classify face crops with the bundled model")
    common(p)
    p.add_argument("crops", nargs="+", metavar="CROP", help="face crops, or folders of them")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(func=cmd_classify)

    models = sub.add_parser("models", help="detector model files")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("fetch", help="download (or copy) detector models, sha256-checked")
    common(p)
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="copy from this folder instead of downloading (offline devices)")
    p.add_argument("--dest", help="target folder (default: <state_dir>/models)")
    p.add_argument("--base-url", help="download from this mirror instead of the public sources")
    p.add_argument("--only", action="append", choices=list(DETECTOR_FILES),
                   help="fetch only this model (repeatable; default: the optional "
                   f"{', '.join(OPTIONAL)}; yunet ships in the package)")
    p.set_defaults(func=cmd_models_fetch)

    p = sub.add_parser("watch", help="print events from the broker and a live tally")
    common(p)
    p.add_argument("--count", type=int, default=0, help="exit after this many events")
    p.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    p.add_argument("--json", action="store_true", help="print raw event JSON")
    p.add_argument("--share", metavar="GROUP", type=share_group_arg,
                   help="join the shared subscription $share/GROUP (members split the "
                   "stream: each sees gaps by design)")
    p.set_defaults(func=cmd_watch)

    samples = sub.add_parser("samples", help="face crops collected for site adaptation "
                             "(adapt.collect)")
    ssub = samples.add_subparsers(dest="samples_command", required=True)
    p = ssub.add_parser("list", help="list collected samples (newest first) and counts")
    common(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_samples)
    p = ssub.add_parser("export", help="copy samples into class folders (+ index.csv)")
    common(p)
    p.add_argument("dest", help="folder to write")
    p.set_defaults(func=cmd_samples)
    p = ssub.add_parser("import", help="put the labels of an export, sorted by hand into "
                        "with_mask/, without_mask/ and skip/, on the stored samples")
    common(p)
    p.add_argument("export", help="the folder `samples export` wrote")
    p.set_defaults(func=cmd_samples)
    p = ssub.add_parser("clear", help="delete every collected sample (crops and index)")
    common(p)
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("adapt", help="fit a site head (and, from labelled photos, a detector "
                       "threshold) for this site (exit "
                       f"{EXIT_NOT_ADAPTED} when neither is better: nothing changes)")
    common(p)
    p.add_argument("--labels", metavar="DIR", help="with_mask/ and without_mask/ folders of "
                   "crops or photos, one person each (instead of the labelled collected "
                   "samples); photos the detector finds no single face in are left out")
    p.add_argument("--with-samples", action="store_true",
                   help="with --labels: also use the labelled collected samples")
    p.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    p.add_argument("--revert", action="store_true", help="go back to the bundle's own head and "
                   "the configured detector threshold")
    p.add_argument("--status", action="store_true", help="print the head and detector "
                   "threshold in use and their provenance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("bench", help="pipeline benchmark on a video (work per frame, fps, CPU, "
                       "RSS) for the defaults, detection on every frame and an empty scene")
    common(p)
    p.add_argument("video")
    p.add_argument("--detectors", default="yunet", help="comma-separated (yunet,blazeface,haar)")
    p.add_argument("--modes", type=bench_modes_arg, default=None,
                   help="comma-separated, of defaults, every-frame, empty, doorway (default: all)")
    p.add_argument("--size", type=frame_size_arg, metavar="WxH", help="resize frames first")
    p.add_argument("--realtime", type=float, default=0.0, metavar="FPS",
                   help="pace frames like a camera at FPS and report CPU %% of one core")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames")
    p.add_argument("--out", default="bench/pipeline.json", help="JSON results file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-detect", help="detector recall, speed and false faces on a VOC "
                       "scene set (the detectors run with the config's detect.* settings)")
    common(p)
    p.add_argument("voc", help="Pascal VOC folder (images/, annotations/)")
    p.add_argument("--detectors", default="haar,yunet,blazeface")
    p.add_argument("--min-face", type=int, default=40, help="recall counts annotated faces "
                   "this large or larger (px at a 640 px frame); the detectors' own size "
                   "filter is detect.min_face")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.add_argument("--out", default="bench/detectors.json")
    p.set_defaults(func=cmd_bench_detect)

    p = sub.add_parser("bench-near", help="faces near the lens: face crops placed in 640x480 "
                       "frames at 30-90 %% of their height, centred or cut by the edge, as "
                       "photographed, dark or backlit; found-rate by size, class and light")
    common(p)
    p.add_argument("train", help="the training folder holding jolignier/ (../shared/data/train)")
    p.add_argument("--dev", help="also the dev scenes' faces >= 48 px (a Pascal VOC folder)")
    p.add_argument("--per-class", type=int, default=60, help="faces per class and source")
    p.add_argument("--out", default="bench/near.json")
    p.set_defaults(func=cmd_bench_near)

    p = sub.add_parser("bench-track", help="tracking against ground truth (synthetic sequences "
                       "of real faces) and people counts by detection rate")
    common(p)
    p.add_argument("voc", help="Pascal VOC folder whose faces are pasted into the sequences")
    p.add_argument("video", help="a street clip: the background, and the people counts")
    p.add_argument("--out", default="bench/tracking.json")
    p.set_defaults(func=cmd_bench_track)

    p = sub.add_parser("bench-soak", help="the agent's memory over a long run: the real agent "
                       "on a looped clip, delivering to a Mosquitto on loopback; RSS "
                       "(anonymous and file-backed), frames, people and outbox depth over time, "
                       "and the slope of anonymous memory in MB an hour")
    common(p)
    p.add_argument("video", help="a clip, looped as a camera never ends")
    p.add_argument("--minutes", type=positive_arg, default=30.0)
    p.add_argument("--every", type=positive_arg, default=30.0, metavar="SECONDS",
                   help="sample every this many seconds (at least 2)")
    p.add_argument("--out", default="bench/soak.json")
    p.set_defaults(func=cmd_bench_soak)

    p = sub.add_parser("bench-fleet", help="simulated devices (the agent's own outbox and "
                       "publisher) on a real broker through a fault: node-kill (3-node NATS "
                       "cluster, the devices' node SIGKILLed), consumer-outage (Mosquitto) "
                       "or tls-storm (Mosquitto on TLS restarted: all reconnect at once)")
    p.add_argument("--scenario", choices=("node-kill", "consumer-outage", "tls-storm"),
                   default="node-kill")
    p.add_argument("--devices", type=count_arg(1, 100_000), default=100)
    p.add_argument("--rate", type=positive_arg, default=1.0,
                   help="events per second per device")
    p.add_argument("--seconds", type=float, default=30.0, help="how long the devices publish")
    p.add_argument("--outage", type=float, default=10.0, help="seconds the node or consumer "
                   "is away")
    p.add_argument("--per-process", type=count_arg(1, 100), default=100,
                   help="devices simulated in one "
                   "process (at most 100: paho's select() cannot watch more descriptors)")
    p.add_argument("--out", default="bench/fleet.json")
    p.set_defaults(func=cmd_bench_fleet)

    p = sub.add_parser("bench-classify", help="per-face int8 latency of model bundles")
    common(p)
    p.add_argument("bundles", nargs="*", help="bundle folders (default: the bundled model)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--out", default="bench/classifier.json")
    p.set_defaults(func=cmd_bench_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MaskwatchError as exc:
        print(f"mask-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: one line plus where, not a wall of traceback
        log.debug("internal error", exc_info=True)
        print(f"mask-agent: internal error: {type(exc).__name__}: {exc} (please report)",
              file=sys.stderr)
        return EXIT_FAILURE



if __name__ == "__main__":
    sys.exit(main())
