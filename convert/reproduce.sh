#!/usr/bin/env bash
# Reproduce the default model and every number in agent/default_model/MODEL_CARD.md.
# Needs the [convert] extra and ../shared (or SHARED=...). About 1 hour on 2 CPU cores.
#   bash convert/reproduce.sh            # all candidates, then export + evaluate + bench
#   ONLY=default bash convert/reproduce.sh   # just the shipped configuration
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
PY=${PY:-.venv/bin/python}
W=$SHARED/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels
YUNET=$SHARED/models/face_detection_yunet_2023mar.onnx
DEV=$SHARED/data/dev/andrewmvd
TRAIN=("$SHARED"/data/train/*)
TWO=(--classes with_mask,without_mask)
COMMON=(--detector-model "$YUNET" --cache .cache/train --copies 2 --seed 1)

# name | alpha | size | extra options
CANDIDATES=(
  "a0.35_s128|0.35|128|"
  "a0.35_s160|0.35|160|"
  "a1.0_s224|1.0|224|"
  "a0.35_s128_ft|0.35|128|--fine-tune 100 --fine-tune-epochs 5"
  "a0.35_s128_ft_2c|0.35|128|--fine-tune 100 --fine-tune-epochs 5 ${TWO[*]}"
  "default|0.35|128|--fine-tune 100 --fine-tune-epochs 10 --fine-tune-lr 5e-5 --no-mask-recall 0.99 ${TWO[*]}"
)

mkdir -p runs bench
for row in "${CANDIDATES[@]}"; do
  IFS='|' read -r name alpha size extra <<<"$row"
  if [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ]; then continue; fi
  echo "== $name"
  # shellcheck disable=SC2086
  [ -f "runs/$name/model.keras" ] || $PY -m convert train "${TRAIN[@]}" --out "runs/$name" \
      --alpha "$alpha" --size "$size" --weights "${W}_${alpha}_224_no_top.h5" "${COMMON[@]}" $extra
  $PY -m convert export "runs/$name" --out "runs/$name/bundle" --name "maskwatch-$name" \
      --max-drop 100
  $PY -m convert evaluate "runs/$name/bundle" "$DEV" --min-face 32 \
      --json "runs/$name/dev_annotated_boxes.json"
  $PY -m convert evaluate "runs/$name/bundle" "$DEV" --min-face 32 --detector-model "$YUNET" \
      --json "runs/$name/dev_detector_boxes.json"
done
$PY -m agent bench-classify runs/*/bundle --out bench/classifier.json
$PY -m convert.summary runs/*/ | tee bench/model_table.md
echo "ship it with: cp runs/default/bundle/{classifier.tflite,model.json} agent/default_model/"
