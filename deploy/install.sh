#!/usr/bin/env bash
# maskwatch installer for Raspberry Pi OS / Debian (arm64, x86_64). Idempotent: run it
# again to upgrade; an existing /etc/maskwatch/config.yaml is never overwritten.
#
#   sudo deploy/install.sh                       # install and start the service
#   sudo deploy/install.sh --models-from DIR     # also copy the optional BlazeFace models
#   sudo deploy/install.sh --uninstall [--purge] # remove (--purge: config and state too)
#   deploy/install.sh --root /tmp/r --no-apt --no-systemctl   # lay files into a temp root
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/deploy/checkout.sh"
ROOT=""
APT=1
SYSTEMCTL=1
USERADD=1
UNINSTALL=0
PURGE=0
MODELS_FROM=""

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --no-apt) APT=0; shift ;;
    --no-systemctl) SYSTEMCTL=0; shift ;;
    --no-user) USERADD=0; shift ;;
    --models-from) MODELS_FROM=${2:?--models-from needs a folder}; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

if [ -n "$ROOT" ]; then
  ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
  USERADD=0   # a temporary root has no users of its own
fi
OPT="$ROOT/opt/maskwatch"
VENV="$OPT/venv"
ETC="$ROOT/etc/maskwatch"
STATE="$ROOT/var/lib/maskwatch"
UNIT="$ROOT/etc/systemd/system/maskwatch.service"
COMMAND="$ROOT/usr/local/bin/mask-agent"
MARK="# mask-agent as the maskwatch service sees it (deploy/install.sh)"

if [ "$UNINSTALL" = 1 ]; then
  # a --root install is no service of this machine's: its systemd is left alone
  HOST_SYSTEMD=0
  if [ "$SYSTEMCTL" = 1 ] && [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
    HOST_SYSTEMD=1
    systemctl disable --now maskwatch.service 2>/dev/null || true
  fi
  rm -f "$UNIT"
  # ours only: a mask-agent someone put there by other means stays
  if [ -f "$COMMAND" ] && grep -qxF "$MARK:" "$COMMAND"; then rm -f "$COMMAND"; fi
  rm -rf "$OPT"
  if [ "$PURGE" = 1 ]; then rm -rf "$ETC" "$STATE"; fi
  if [ "$HOST_SYSTEMD" = 1 ]; then systemctl daemon-reload || true; fi
  if [ "$PURGE" = 1 ]; then echo "maskwatch removed (config and state purged)"
  else echo "maskwatch removed (kept $ETC and $STATE; --purge removes them)"; fi
  exit 0
fi

[ "$(id -u)" = 0 ] || [ -n "$ROOT" ] || die "run as root (sudo), or use --root DIR"
# 32-bit Raspberry Pi OS (often on a 64-bit kernel, so `uname -m` says aarch64) gets no
# wheels of ai-edge-litert or opencv-python-headless: say so before minutes of apt and pip.
[ "$(getconf LONG_BIT)" = 64 ] || die "maskwatch needs a 64-bit system (arm64 or x86_64):" \
  "this one is $(getconf LONG_BIT)-bit ($(uname -m) kernel), and PyPI has no 32-bit ARM" \
  "wheels of ai-edge-litert or opencv-python-headless; install Raspberry Pi OS (64-bit)"

if [ "$APT" = 1 ]; then
  echo "== system packages"
  apt-get update -qq
  apt-get install -y -qq python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
    >/dev/null
fi

if [ "$USERADD" = 1 ] && ! id maskwatch >/dev/null 2>&1; then
  echo "== user maskwatch (groups: video)"
  useradd --system --home-dir /var/lib/maskwatch --no-create-home --shell /usr/sbin/nologin \
    --groups video maskwatch
fi

echo "== virtualenv $VENV"
mkdir -p "$OPT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# built from a copy: pip's in-tree build would leave root-owned files in the checkout
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
build_copy "$BUILD/maskwatch"
"$VENV/bin/pip" install -q "$BUILD/maskwatch[systemd]"

echo "== config $ETC/config.yaml"
mkdir -p "$ETC"
if [ -e "$ETC/config.yaml" ]; then
  echo "   kept the existing config (new defaults: $SRC/config.yaml)"
else
  sed -e 's|^state_dir: null|state_dir: /var/lib/maskwatch|' "$SRC/config.yaml" > "$ETC/config.yaml"
  chmod 0640 "$ETC/config.yaml"
fi
"$VENV/bin/mask-agent" check-config "$ETC/config.yaml" --set "state_dir=$STATE" >/dev/null

mkdir -p "$STATE"
# The default detector (YuNet) and classifier ship inside the package: nothing to fetch.
if [ -n "$MODELS_FROM" ]; then
  echo "== optional detector models $STATE/models"
  "$VENV/bin/mask-agent" models fetch --dest "$STATE/models" --from "$MODELS_FROM"
fi
if [ "$USERADD" = 1 ]; then
  chown -R maskwatch:maskwatch "$STATE"
  chgrp maskwatch "$ETC/config.yaml"
fi

# write_command: /usr/local/bin/mask-agent, the venv's with the service's config
write_command() {
  mkdir -p "$(dirname "$COMMAND")"
  cat > "$COMMAND" <<EOF
#!/bin/sh
$MARK:
# its config unless --config or MASKWATCH_CONFIG names another. Commands that change its
# state (samples, adapt, run) go as its user: sudo -u maskwatch mask-agent ...
export MASKWATCH_CONFIG="\${MASKWATCH_CONFIG:-$ETC/config.yaml}"
exec "$VENV/bin/mask-agent" "\$@"
EOF
  chmod 0755 "$COMMAND"
}
if [ -e "$COMMAND" ] && ! grep -qxF "$MARK:" "$COMMAND"; then
  echo "== left $COMMAND as it is (not the installer's): use $VENV/bin/mask-agent --config $ETC/config.yaml"
else
  echo "== command $COMMAND (the service's config; as its user: sudo -u maskwatch mask-agent ...)"
  write_command
fi

echo "== systemd unit $UNIT"
mkdir -p "$(dirname "$UNIT")"
sed -e "s|/opt/maskwatch/venv|$VENV|g" -e "s|/etc/maskwatch/|$ETC/|g" \
  "$SRC/deploy/maskwatch.service" > "$UNIT"
if [ "$SYSTEMCTL" = 1 ] && [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl enable maskwatch.service
  # restart, not `enable --now`: that leaves a running service as it was, so a rerun to
  # upgrade went on running the old code until the next reboot
  systemctl restart maskwatch.service
  echo "maskwatch is running: journalctl -u maskwatch -f"
else
  echo "maskwatch installed under ${ROOT:-/} (service not started)"
fi
