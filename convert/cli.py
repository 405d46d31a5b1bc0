"""`mask-convert`: train, evaluate and export the mask classifier (workstation only)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConvertError


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a classifier from class-folder datasets")
    p.add_argument("data", nargs="+", help="dataset roots, each with one folder per class")
    p.add_argument("--out", required=True, type=Path, help="run folder to create")
    p.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width (0.35 or 1.0)")
    p.add_argument("--size", type=int, default=128, help="input side: 96, 128, 160, 192, 224")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras downloads it; offline, exit 69), a no-top .h5 "
                   "file, or 'none'")
    p.add_argument("--epochs", type=int, default=40, help="head epochs (early stopping)")
    p.add_argument("--fine-tune", type=int, default=0, metavar="LAYERS",
                   help="stage two: unfreeze the top LAYERS backbone layers (0: off)")
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--fine-tune-lr", type=float, default=3e-5)
    p.add_argument("--classes", help="comma-separated class folders to use (default: all)")
    p.add_argument("--copies", type=int, default=2, help="augmented copies per photo")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--detector-model", help="YuNet ONNX to crop faces as the agent does "
                   "(default: the YuNet bundled with the agent; 'none' uses whole photos)")
    p.add_argument("--cache", type=Path, help="folder caching face boxes between runs")
    p.add_argument("--no-mask-recall", type=float, default=0.98,
                   help="no-mask recall the operating threshold keeps on validation")
    p.add_argument("--threshold-on", choices=("hard", "clean"), default="hard",
                   help="choose the threshold on augmented ('hard') or clean validation crops")
    p.add_argument("--limit", type=int, default=0, help="at most this many photos per class")
    p.add_argument("--small-face-p", type=float, default=0.35,
                   help="share of augmented crops shrunk to a small (14-48 px) face")


def run_train(args) -> int:
    from .train import TrainOptions, train

    detector_model = args.detector_model
    if detector_model is None:
        from maskwatch.agent.vision.models import bundled_model_path

        detector_model = str(bundled_model_path("yunet"))  # the agent's own
    elif detector_model == "none":
        detector_model = None
    elif not Path(detector_model).is_file():
        raise ConvertError(f"detector model not found: {detector_model}")
    opts = TrainOptions(data=args.data, out=args.out, alpha=args.alpha, size=args.size,
                        weights=args.weights, epochs=args.epochs, fine_tune=args.fine_tune,
                        fine_tune_epochs=args.fine_tune_epochs,
                        fine_tune_lr=args.fine_tune_lr, copies=args.copies,
                        classes=args.classes.split(",") if args.classes else None,
                        val_fraction=args.val_fraction, seed=args.seed,
                        detector_model=detector_model, cache_dir=args.cache,
                        no_mask_recall=args.no_mask_recall, limit=args.limit,
                        small_face_p=args.small_face_p, threshold_on=args.threshold_on)
    report = train(opts)
    print(f"run folder: {args.out} (validation balanced accuracy "
          f"{report['validation']['balanced_accuracy']:.4f})")
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a Keras model or .tflite bundle")
    p.add_argument("model", help="run folder / .keras file, or bundle folder / .tflite file")
    p.add_argument("data", nargs="+", help="class-folder dataset or Pascal VOC scene set")
    p.add_argument("--json", type=Path, help="write all metrics to this JSON file")
    p.add_argument("--plots", type=Path, help="folder for confusion-matrix PNGs")
    p.add_argument("--margin", type=float, default=1.2,
                   help="VOC: square crop side as a multiple of the face box (device: 1.2)")
    p.add_argument("--min-face", type=int, default=0, help="VOC: skip faces smaller than this")
    p.add_argument("--threshold", type=float, help="override the no-mask threshold")
    p.add_argument("--argmax", action="store_true", help="ignore the no-mask threshold")
    p.add_argument("--detector-model", help="crop around YuNet's boxes, what the device "
                   "classifies ('bundled' for the agent's own): VOC scenes around the box "
                   "matching each annotated face, class-folder photos around their one face "
                   "(as train crops them); without it, annotated boxes and whole photos")
    p.add_argument("--light", choices=("normal", "dark", "backlit"), default="normal",
                   help="VOC: classify each face relit: dark (the whole image at "
                   "--brightness) or backlit (the face at --brightness, the rest near white)")
    p.add_argument("--brightness", type=float, default=0.35,
                   help="with --light: the face's brightness, a share of as photographed "
                   "(0.35: an unlit entrance; 0.08: a face at ~12/255 against a window)")


def run_evaluate(args) -> int:
    from .evaluate import evaluate

    if not 0.0 < args.brightness <= 1.0:  # also refuses nan
        raise ConvertError(f"--brightness {args.brightness:g}: a share of the face's "
                           "brightness, above 0 and at most 1")
    detector_model = args.detector_model
    if detector_model == "bundled":
        from maskwatch.agent.vision.models import bundled_model_path

        detector_model = str(bundled_model_path("yunet"))
    evaluate(args.model, args.data, json_path=args.json, plots=args.plots, scale=args.margin,
             min_face=args.min_face, threshold=args.threshold, use_argmax=args.argmax,
             detector_model=detector_model, light=args.light, brightness=args.brightness)
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="int8 TFLite bundle (.tflite + model.json)")
    p.add_argument("run", type=Path, help="run folder from 'mask-convert train'")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    p.add_argument("--name", default="maskwatch-mobilenetv2", help="model name in model.json")
    p.add_argument("--io", choices=("uint8", "int8"), default="uint8",
                   help="input/output tensor type")
    p.add_argument("--calibration", type=int, default=400,
                   help="representative crops drawn from the training data")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="fail when int8 accuracy is more than this many points below float")
    p.add_argument("--float-ops", default="",
                   help="comma-separated TFLite op types kept in float, e.g. ADD,MEAN")


def run_export(args) -> int:
    from .export import export

    export(args.run, args.out, name=args.name, io_type=args.io, calibration=args.calibration,
           max_drop=args.max_drop,
           float_ops=[s.strip().upper() for s in args.float_ops.split(",") if s.strip()])
    return 0


def add_features(sub) -> None:
    p = sub.add_parser("features", help="add the pooled-features output to a bundle in place "
                       "(scores unchanged; needed by site adaptation and re-identification)")
    p.add_argument("bundle", type=Path)
    p = sub.add_parser("anchors", help="write the bundle's anchor set: features of training "
                       "faces per class, so a site refit never forgets the general case")
    p.add_argument("bundle", type=Path)
    p.add_argument("data", nargs="+", help="class-folder training sets")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--detector-model", help="YuNet ONNX (default: the agent's bundled one)")


def run_features(args) -> int:
    from .features import add_features

    meta = add_features(args.bundle)
    print(f"{args.bundle}: features output of {meta['features']['size']} values added")
    return 0


def run_anchors(args) -> int:
    from .features import add_anchors

    meta = add_anchors(args.bundle, args.data, args.per_class, args.seed, args.detector_model)
    print(f"{args.bundle}: anchor set {meta['anchors']['per_class']}")
    return 0


def add_bench_adapt(sub) -> None:
    p = sub.add_parser("bench-adapt", help="site adaptation on sites a bundle never saw: "
                       "label k faces per class, adapt, score the rest (before/after)")
    p.add_argument("--site", action="append", required=True, metavar="NAME=BUNDLE:DATA",
                   help="a bundle and a site it never saw (class folders or a VOC scene set)")
    p.add_argument("--detector-model", help="YuNet ONNX for photos (default: bundled)")
    p.add_argument("--detector-sample", type=int, default=600, help="photos per site searched "
                   "at every detector threshold")
    p.add_argument("--repeats", type=int, default=20, help="random draws per k")
    p.add_argument("--min-face", type=int, default=20, help="VOC: smallest face used")
    p.add_argument("--min-net-fixed", type=int, help="adapt's acceptance rule with another "
                   "least number of labelled faces set right net (default: adapt's own)")
    p.add_argument("--out", type=Path, default=Path("bench/adapt.json"))


def run_bench_adapt(args) -> int:
    from maskwatch.agent.site.adapt import FitOptions

    from .adaptbench import bench_adapt, parse_site

    options = FitOptions() if args.min_net_fixed is None else FitOptions(
        min_net_fixed=args.min_net_fixed)
    return bench_adapt([parse_site(s) for s in args.site], args.detector_model, args.out,
                       repeats=args.repeats, min_face=args.min_face,
                       detector_sample=args.detector_sample, options=options)


def add_bench_seed(sub) -> None:
    p = sub.add_parser("bench-seed", help="the agent's defaults against the seed design "
                       "(Haar + float Keras MobileNetV2 1.0), fps side by side")
    p.add_argument("video")
    p.add_argument("--weights", required=True,
                   help="MobileNetV2 1.0 no-top .h5 (ImageNet) for the seed's backbone")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/seed.json")


def run_bench_seed(args) -> int:
    from .seedbench import bench_seed

    if not Path(args.weights).is_file():
        raise ConvertError(f"weights file not found: {args.weights}")
    return bench_seed(args.video, args.weights, count=args.frames, rounds=args.rounds,
                      out=args.out)


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "export": run_export,
            "bench-seed": run_bench_seed, "features": run_features, "anchors": run_anchors,
            "bench-adapt": run_bench_adapt}


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="mask-convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_evaluate(sub)
    add_export(sub)
    add_bench_seed(sub)
    add_features(sub)
    add_bench_adapt(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConvertError as exc:
        print(f"mask-convert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mask-convert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
