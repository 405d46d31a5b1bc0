#!/usr/bin/env bash
# Reproduce the default model and every number in agent/vision/default_model/MODEL_CARD.md.
# Needs the [convert] extra and ../shared (or SHARED=...). About 1 hour on 2 CPU cores.
#   bash convert/reproduce.sh            # all candidates, then export + evaluate + bench
#   ONLY=a0.35_s128_ft_2c_small85 bash convert/reproduce.sh   # one configuration
#   SHIP=1 ...   also copies the DEFAULT run's bundle into agent/vision/default_model/
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

# name | alpha | size | extra options   (all: augmented copies 2, seed 1, YuNet crops)
OLD=(--threshold-on clean)   # runs made before the threshold moved to hard validation
CANDIDATES=(
  "a0.35_s128|0.35|128|${OLD[*]}"
  "a0.35_s160|0.35|160|${OLD[*]}"
  "a1.0_s224|1.0|224|${OLD[*]}"
  "a0.35_s128_ft|0.35|128|--fine-tune 100 --fine-tune-epochs 5 ${OLD[*]}"
  "a0.35_s128_ft_2c|0.35|128|--fine-tune 100 --fine-tune-epochs 5 ${TWO[*]} ${OLD[*]}"
  "a0.35_s128_ft10_2c|0.35|128|--fine-tune 100 --fine-tune-epochs 10 --fine-tune-lr 5e-5 --no-mask-recall 0.99 ${TWO[*]} ${OLD[*]}"
  "a0.35_s128_ft_2c_small|0.35|128|--fine-tune 100 --fine-tune-epochs 5 --small-face-p 0.6 ${TWO[*]} ${OLD[*]}"
  "a0.35_s128_ft_2c_small85|0.35|128|--fine-tune 100 --fine-tune-epochs 5 --small-face-p 0.85 ${TWO[*]} ${OLD[*]}"
  "a0.35_s128_ft_3c_small85|0.35|128|--fine-tune 100 --fine-tune-epochs 5 --small-face-p 0.85 ${OLD[*]}"
  "a0.35_s128_ft_2c_small85_hard|0.35|128|--fine-tune 100 --fine-tune-epochs 5 --small-face-p 0.85 ${TWO[*]}"
)
DEFAULT=${DEFAULT:-a0.35_s128_ft_2c_small85_hard}

mkdir -p runs bench
for row in "${CANDIDATES[@]}"; do
  IFS='|' read -r name alpha size extra <<<"$row"
  if [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ]; then continue; fi
  echo "== $name"
  # shellcheck disable=SC2086
  [ -f "runs/$name/model.keras" ] || $PY -m maskwatch.convert train "${TRAIN[@]}" --out "runs/$name" \
      --alpha "$alpha" --size "$size" --weights "${W}_${alpha}_224_no_top.h5" "${COMMON[@]}" $extra
  $PY -m maskwatch.convert export "runs/$name" --out "runs/$name/bundle" --name "maskwatch-$name" \
      --max-drop 100
  $PY -m maskwatch.convert evaluate "runs/$name/bundle" "$DEV" --min-face 32 \
      --json "runs/$name/dev_annotated_boxes.json"
  $PY -m maskwatch.convert evaluate "runs/$name/bundle" "$DEV" --min-face 32 --detector-model "$YUNET" \
      --json "runs/$name/dev_detector_boxes.json"
done
$PY -m maskwatch.agent bench-classify runs/*/bundle --out bench/classifier.json
$PY -m maskwatch.convert.summary runs/*/ | tee bench/model_table.md
if [ "${SHIP:-0}" = 1 ]; then
  $PY -m maskwatch.convert anchors "runs/$DEFAULT/bundle" "${TRAIN[@]}" --detector-model "$YUNET"
  cp "runs/$DEFAULT/bundle/classifier.tflite" "runs/$DEFAULT/bundle/model.json" \
     "runs/$DEFAULT/bundle/anchors.npz" agent/vision/default_model/
  echo "shipped runs/$DEFAULT as agent/vision/default_model"
else
  echo "ship it with: SHIP=1 ONLY=$DEFAULT bash convert/reproduce.sh"
fi
