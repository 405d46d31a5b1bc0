#!/usr/bin/env bash
# Proof on the Pi's OS and CPU: build a Debian bookworm arm64 root (Raspberry Pi OS 64-bit
# is bookworm arm64) with debootstrap, run it under qemu-user-static, install the device
# package there from a wheel built here (no TensorFlow), and require that `mask-agent demo`
# works and that `mask-agent detect --json` on dev images gives the same boxes and labels
# as on this machine; then run deploy/install.sh there as on a Pi (apt, the maskwatch
# user, systemd-python compiled on arm64, config, unit; no systemctl: no systemd runs in a
# chroot) and the installed agent as that user with the installed config.
#
#   sudo deploy/arm64-check.sh [--images N] [--keep]      (root: debootstrap, chroot, mount)
#
# Needs: apt packages debootstrap qemu-user-static binfmt-support (installed when missing),
# ../shared (or $MASKWATCH_SHARED) for the dev images, access to the Debian mirror and PyPI.
# Everything is built under .cache/arm64 in the repository and removed at the end.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/deploy/checkout.sh"
SHARED=${MASKWATCH_SHARED:-$SRC/../shared}
IMAGES=30
KEEP=0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
while [ $# -gt 0 ]; do
  case "$1" in
    --images) IMAGES=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "arm64-check: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "arm64-check: run as root (debootstrap, chroot)" >&2; exit 2; }
[ -d "$SHARED/data/dev/andrewmvd/images" ] || {
  echo "arm64-check: dev images not found under $SHARED (set MASKWATCH_SHARED)" >&2; exit 66; }

WORK="$SRC/.cache/arm64"
# qemu's default "max" CPU has instructions that qemu 7.2 emulates wrongly (int8 kernels
# then return garbage); emulate the Pi's own cores instead: Pi 4 = Cortex-A72, Pi 5 = A76.
PI_CPUS="cortex-a72 cortex-a76"
ROOTFS="$WORK/root"
PY=${PYTHON:-python3}
started=$(date +%s)

cleanup() {
  for m in proc sys dev; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

step "tools"
# each of the three on its own: another check may have installed debootstrap alone
if ! command -v debootstrap >/dev/null || [ ! -e /usr/bin/qemu-aarch64-static ] || \
   ! command -v update-binfmts >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static \
    binfmt-support >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || {
  echo "arm64-check: qemu-aarch64 is not registered with binfmt_misc" >&2; exit 69; }

step "wheel of the device package (built here)"
checkout_dir "$SRC/.cache"
rm -rf "$WORK" && mkdir -p "$WORK/wheel" "$WORK/images"
build_copy "$WORK/source"
"$PY" -m pip wheel -q --no-deps -w "$WORK/wheel" "$WORK/source"
# awk, not head: head exits after N lines, and under pipefail the SIGPIPE it leaves sort
# (once the listing outgrows the pipe's buffer, as with a long $SHARED path) fails the script
find "$SHARED/data/dev/andrewmvd/images" -type f | sort | awk -v n="$IMAGES" 'NR <= n' |
  while read -r f; do cp "$f" "$WORK/images/"; done

step "reference: detect --json on x86 ($IMAGES images)"
"$PY" -m venv "$WORK/x86venv"
"$WORK/x86venv/bin/pip" install -q "$WORK"/wheel/*.whl
(cd "$WORK/images" && "$WORK/x86venv/bin/mask-agent" detect --json *) > "$WORK/x86.jsonl"

step "debootstrap bookworm arm64 (minbase + python3)"
debootstrap --arch=arm64 --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
  bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -20 "$WORK/debootstrap.log" >&2; exit 69; }
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# the host's CA bundle: where PyPI is reached through a TLS-inspecting proxy, the root needs it
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
for m in proc sys dev; do mount --bind "/$m" "$ROOTFS/$m"; done
mkdir -p "$ROOTFS/check"
cp -r "$WORK/wheel" "$WORK/images" "$ROOTFS/check/"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"

step "pip install the wheel inside the arm64 root"
chroot "$ROOTFS" /usr/bin/env -u PIP_FIND_LINKS /bin/sh -c 'python3 -m venv /check/venv &&
  /check/venv/bin/pip install -q /check/wheel/*.whl &&
  /check/venv/bin/python -c "import platform, sys; print(platform.machine(), sys.version.split()[0])"' |
  tee "$WORK/arm.platform"
grep -q aarch64 "$WORK/arm.platform"
if chroot "$ROOTFS" /check/venv/bin/python -c "import tensorflow" 2>/dev/null; then
  echo "arm64-check: TensorFlow must not be in the device install" >&2; exit 1
fi

step "demo under emulation (Cortex-A72, the Pi 4)"
QEMU_CPU=cortex-a72 chroot "$ROOTFS" /bin/sh -c \
  'cd /tmp && HOME=/tmp /check/venv/bin/mask-agent demo --no-broker' | tee "$WORK/demo.txt" |
  tail -3
grep -q "^people: " "$WORK/demo.txt"

for cpu in $PI_CPUS; do
  step "detect --json under emulation ($cpu) and compare with x86"
  QEMU_CPU=$cpu chroot "$ROOTFS" /bin/sh -c \
    'cd /check/images && /check/venv/bin/mask-agent detect --json *' > "$WORK/arm-$cpu.jsonl"
  "$PY" - "$WORK/x86.jsonl" "$WORK/arm-$cpu.jsonl" <<'PYCODE'
import json, sys
def load(path):
    return [json.loads(line) for line in open(path)]
x86, arm = load(sys.argv[1]), load(sys.argv[2])
assert len(x86) == len(arm) > 0, (len(x86), len(arm))
faces = differ = 0
for a, b in zip(x86, arm):
    assert a["image"] == b["image"]
    fa = [(f["box"], f["label"]) for f in a["faces"]]
    fb = [(f["box"], f["label"]) for f in b["faces"]]
    faces += len(fa)
    if fa != fb:
        differ += 1
        print(f"differs: {a['image']}: x86 {fa} arm64 {fb}")
print(f"{len(x86)} images, {faces} faces: {'identical' if not differ else f'{differ} differ'}")
sys.exit(1 if differ else 0)
PYCODE
done
step "deploy/install.sh inside the arm64 root (apt, user maskwatch, systemd-python built)"
build_copy "$ROOTFS/check/maskwatch" deploy
chroot "$ROOTFS" /usr/bin/env -u PIP_FIND_LINKS /bin/bash \
  /check/maskwatch/deploy/install.sh --no-systemctl 2>&1 | grep -v "^E: Can not write log" |
  tail -3

step "the installed agent as user maskwatch, with the installed config (Cortex-A72)"
first=$(ls "$WORK/images" | head -1)
QEMU_CPU=cortex-a72 chroot "$ROOTFS" runuser -u maskwatch -- /bin/sh -c \
  "cd /var/lib/maskwatch && /opt/maskwatch/venv/bin/python -c 'import systemd.daemon' &&
   /opt/maskwatch/venv/bin/mask-agent detect --config /etc/maskwatch/config.yaml \
   --json /check/images/$first" | tee "$WORK/installed.json" | head -c 200; echo
grep -q '"faces"' "$WORK/installed.json"

step "arm64 check passed"
