#!/usr/bin/env bash
# Site-adaptation benchmark on sites the model never saw (issue 13): for each of four
# training sources, train a model WITHOUT it (frozen ImageNet backbone + head, the same
# `mask-convert train` code; fine-tuning is left out to fit a CPU budget), export it as an
# int8 bundle with features + an anchor set from the other sources, then let
# `mask-convert bench-adapt` label k faces per class of the held-out source, adapt, and
# score the rest. The shipped model on the dev scenes is one more site.
# Needs the [convert] extra and ../shared. About 25 minutes on 2 CPU cores (15 once the
# bundles exist). Arguments go to bench-adapt, e.g. `--min-net-fixed 1 --out bench/x.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
PY=${PY:-.venv/bin/python}
W=$SHARED/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5
YUNET=$SHARED/models/face_detection_yunet_2023mar.onnx
SITES=(${SITES:-chandrikadeb7 jolignier karysutariya peng})
mkdir -p runs/heldout bench
args=()
for site in "${SITES[@]}"; do
  others=()
  for d in "$SHARED"/data/train/*; do [ "$(basename "$d")" = "$site" ] || others+=("$d"); done
  run=runs/heldout/without_$site
  echo "== without $site"
  [ -f "$run/model.keras" ] || $PY -m maskwatch.convert train "${others[@]}" --out "$run" \
      --alpha 0.35 --size 128 --weights "$W" --classes with_mask,without_mask \
      --detector-model "$YUNET" --cache .cache/train --copies 2 --seed 1 --small-face-p 0.85
  [ -f "$run/bundle/model.json" ] || $PY -m maskwatch.convert export "$run" --out "$run/bundle" \
      --name "maskwatch-without-$site" --max-drop 100
  [ -f "$run/bundle/anchors.npz" ] || $PY -m maskwatch.convert anchors "$run/bundle" \
      "${others[@]}" --detector-model "$YUNET"
  args+=(--site "$site=$run/bundle:$SHARED/data/train/$site")
done
$PY -m maskwatch.convert bench-adapt "${args[@]}" \
    --site "dev-scenes=agent/vision/default_model:$SHARED/data/dev/andrewmvd" \
    --detector-model "$YUNET" --out bench/adapt.json "$@"
