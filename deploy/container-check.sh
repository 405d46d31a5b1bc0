#!/usr/bin/env bash
# Proof of the container: build deploy/Dockerfile with buildah on a local Debian bookworm
# base (no image registry is needed), report what the image adds above its base, then run
# three things inside it: `mask-agent demo`, `mask-agent run` on the bundled clip against a
# Mosquitto on this host (the events must arrive), and the image's own command serving
# POST /v1/predict with a token (a photo must come back with a face).
#
#   sudo deploy/container-check.sh [--keep]          (root: debootstrap, buildah)
#
# Needs: apt packages buildah podman debootstrap mosquitto mosquitto-clients (installed
# when missing), the Debian mirror and PyPI. The base image (minbase + python3, about 4
# minutes) is built once and kept as localhost/maskwatch-base:bookworm; the check's own
# image and containers are removed at the end unless --keep. Writes the image's size to
# bench/container.json. Exit 0 passed, 1 a check failed, 2 usage, 69 a tool or mirror missing.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/deploy/checkout.sh"
BASE=localhost/maskwatch-base:bookworm
IMAGE=localhost/maskwatch:check
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
check_options container-check "$@"

WORK="$SRC/.cache/container"
started=$(date +%s)
CONTAINERS=()
BROKER_PID=
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  if [ "$KEEP" = 0 ]; then
    buildah rmi "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
fail() { echo "container-check: $*" >&2; exit 1; }

step "tools"
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || \
   ! command -v debootstrap >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman debootstrap \
    mosquitto mosquitto-clients >/dev/null || { echo "container-check: apt failed" >&2; exit 69; }
fi
checkout_dir "$SRC/.cache"
rm -rf "$WORK" && mkdir -p "$WORK"

if ! podman image exists "$BASE"; then
  step "base image: debootstrap bookworm minbase + python3 (once)"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/root" \
    "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 69; }
  rm -rf "$WORK/root/var/cache/apt/archives"/*.deb "$WORK/root/var/lib/apt/lists"/*
  tar -C "$WORK/root" -c . | podman import -q - "$BASE" >/dev/null
  rm -rf "$WORK/root"
fi

step "buildah bud deploy/Dockerfile on $BASE"
# pip inside the build reaches PyPI only with this machine's CA bundle (and its pip.conf)
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
[ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
buildah bud -q --isolation chroot "${mounts[@]}" --build-arg BASE="$BASE" \
  -f "$SRC/deploy/Dockerfile" -t "$IMAGE" "$SRC" >"$WORK/build.log" 2>&1 || {
  tail -30 "$WORK/build.log" >&2; fail "the image did not build"; }

base_bytes=$(podman image inspect --format '{{.Size}}' "$BASE")
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
added_mb=$(( (image_bytes - base_bytes) / 1000000 ))
step "image: $(( image_bytes / 1000000 )) MB, of which $added_mb MB above its base"
checkout_dir "$SRC/bench"
printf '{"base_mb": %d, "image_mb": %d, "added_mb": %d}\n' "$(( base_bytes / 1000000 ))" \
  "$(( image_bytes / 1000000 ))" "$added_mb" > "$SRC/bench/container.json"
owned_like_checkout "$SRC/bench/container.json"

container() {  # a fresh working container of the image; its name on stdout
  local c
  c=$(buildah from -q "$IMAGE")
  CONTAINERS+=("$c")
  echo "$c"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
inside() {  # inside CONTAINER ARGS...: run in the container as its user, on the host's network
  local c=$1; shift
  buildah run --isolation chroot --network host --user maskwatch "$c" -- "$@"
}

step "no TensorFlow in the image"
c=$(container)
if inside "$c" python -c "import tensorflow" 2>/dev/null; then fail "TensorFlow is in the image"; fi

step "mask-agent demo inside"
inside "$c" mask-agent demo --no-broker > "$WORK/demo.txt" || fail "demo failed"
events=$(grep -c ' person #' "$WORK/demo.txt" || true)
grep -q '^people: ' "$WORK/demo.txt" || fail "demo printed no people line"
step "demo: $events event lines; $(grep '^people: ' "$WORK/demo.txt")"
[ "$events" -gt 0 ] || fail "demo printed no events"

step "mask-agent run on the bundled clip -> Mosquitto on the host"
port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
  mosquitto_pub -h 127.0.0.1 -p "$port" -t ready -m 1 2>/dev/null && break
  sleep 0.1
done
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'maskwatch/+/events' -q 1 -v > "$WORK/events.txt" &
sub=$!
# the subscription is acknowledged once a retained probe comes back to it
mosquitto_pub -h 127.0.0.1 -p "$port" -t 'maskwatch/probe/events' -r -q 1 -m probe
for _ in $(seq 300); do grep -q probe "$WORK/events.txt" && break; sleep 0.1; done
mosquitto_pub -h 127.0.0.1 -p "$port" -t 'maskwatch/probe/events' -r -n
clip=$(inside "$c" python -c 'from maskwatch.agent.demo import DEMO_CLIP; print(DEMO_CLIP)')
inside "$c" mask-agent run --until-eof --source "$clip" --set mqtt.port="$port" \
  --set device_id=container-check --set homeassistant.enabled=false \
  > "$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log" >&2; fail "run --until-eof failed"; }
for _ in $(seq 100); do
  [ "$(grep -c '^maskwatch/container-check/events' "$WORK/events.txt")" -gt 0 ] && break
  sleep 0.1
done
kill "$sub" 2>/dev/null || true
arrived=$(grep -c '^maskwatch/container-check/events' "$WORK/events.txt" || true)
delivered=$(grep -o 'events [0-9]* delivered\|delivered [0-9]*' "$WORK/run.log" | tail -1 || true)
step "run: $arrived events arrived at the host's broker ${delivered:+($delivered)}"
[ "$arrived" -gt 0 ] || { tail -20 "$WORK/run.log" >&2; fail "no event arrived"; }

step "the image's command serves POST /v1/predict with a token"
c2=$(container)
http_port=$(free_port)
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
buildah run --isolation chroot --network host --user maskwatch \
  --env MASKWATCH_HTTP_TOKEN="$token" "$c2" -- mask-agent run \
  --config /etc/maskwatch/config.yaml --set source.wait=true --set http.enabled=true \
  --set http.port="$http_port" --set http.token_env=MASKWATCH_HTTP_TOKEN \
  --set mqtt.port="$port" --set device_id=container-serve --source /dev/video-none \
  > "$WORK/serve.log" 2>&1 &
serve=$!
# a frame of the bundled clip with people in it, as a JPEG made inside the image
inside "$c" python -c 'import sys, cv2; from maskwatch.agent.demo import DEMO_CLIP
v = cv2.VideoCapture(str(DEMO_CLIP)); v.set(cv2.CAP_PROP_POS_FRAMES, 60); ok, f = v.read()
sys.stdout.buffer.write(cv2.imencode(".jpg", f)[1].tobytes())' > "$WORK/frame.jpg"
python3 "$SRC/deploy/predict-check.py" "http://127.0.0.1:$http_port" "$token" "$WORK/frame.jpg" || { kill "$serve"; tail -20 "$WORK/serve.log" >&2;
  fail "predict did not answer"; }
kill "$serve" 2>/dev/null || true
wait "$serve" 2>/dev/null || true
step "container check passed: the image adds $added_mb MB above its base"
