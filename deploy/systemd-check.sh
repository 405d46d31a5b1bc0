#!/usr/bin/env bash
# The operator's path under a real systemd (PID 1): boot a Debian bookworm root with
# systemd-nspawn, run deploy/install.sh in it as a sudo user from their checkout, as the
# README says, then prove what the unit promises:
#   - Type=notify: the service is `active` once the model and the source are up, and
#     `systemctl status` shows the status line (fps, broker, outbox, people);
#   - every hardening setting in deploy/maskwatch.service holds the agent as it runs: it
#     reads a looping clip (the camera's stand-in) and delivers to Mosquitto in the box;
#   - WatchdogSec: a stalled loop (SIGSTOP) is killed and restarted;
#   - a broker outage and a SIGKILL meanwhile lose no event: the subscriber gets seq 1..N
#     with no gap; the outage is a warning in the journal (`-p warning`), people are not;
#   - a power cut (the box's PID 1 killed): at the next boot the unit starts by itself,
#     its outbox opens whole and the events' numbering goes on;
#   - `mask-agent` (the installer's, with the service's config) works as the service's
#     user and refuses root (exit 77) before writing into the service's state dir; a
#     folder of labels it cannot read (in a 0700 home) is one line, exit 66;
#   - RestartPreventExitStatus=78: a bad config fails once, with its one-line error, and
#     is not restarted; so does a model in /home, which the unit hides (ProtectHome);
#   - `install.sh --uninstall --purge` leaves no unit, venv, config or state.
#
#   sudo deploy/systemd-check.sh [--keep]        (root: debootstrap, systemd-nspawn)
#
# Needs: apt packages debootstrap and systemd-container (installed when missing), access
# to the Debian mirror and PyPI. Built under .cache/systemd in the repository, removed at
# the end (--keep keeps it). About 3 minutes.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/deploy/checkout.sh"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
check_options systemd-check "$@"

WORK="$SRC/.cache/systemd"
ROOTFS="$WORK/root"
BOX=maskwatch-check-$$  # its own name: two checks may run at once
started=$(date +%s)
fail() { echo "systemd-check: FAILED: $*" >&2; in_box journalctl -u maskwatch --no-pager -n 30 >&2 || true; exit 1; }
NSPAWN_PID=""
INIT_PID=""

cleanup() {
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true   # nspawn halts the box's systemd
    for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# in_box CMD...: run CMD inside the booted box (all of PID 1's namespaces), a clean env
in_box() {
  nsenter -t "$INIT_PID" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}
unit() { in_box systemctl show maskwatch -p "$1" --value; }
# wait_for SECONDS WHAT CMD...: CMD succeeds within SECONDS, or the check fails
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what (not within $seconds s)"
    sleep 1
  done
}
# (no `cmd | grep -q`, `| head` or `grep -m1` in this script: the reader leaves early, the
# writer gets SIGPIPE, and under pipefail the check fails by chance)
status_has() { [[ "$(unit StatusText)" =~ $1 ]]; }
# journal_has TEXT: the unit's journal holds TEXT
journal_has() {
  in_box journalctl -u maskwatch --no-pager -o cat > "$WORK/journal.txt"
  grep -qF -- "$1" "$WORK/journal.txt"
}
restarts_are() { [ "$(unit NRestarts)" = "$1" ] && [ "$(unit ActiveState)" = active ]; }

step "tools"
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  apt-get install -y -qq debootstrap systemd-container >/dev/null
fi
# nspawn keeps its mount propagation folder under /run/systemd/nspawn and, as a safety
# rule, removes it only from a tmpfs; a host whose /run is on disk (a container, a CI
# runner) needs one there
mkdir -p /run/systemd/nspawn
if [ "$(stat -f -c %T /run/systemd/nspawn)" != tmpfs ]; then
  mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
fi

step "debootstrap bookworm $(dpkg --print-architecture) with systemd"
checkout_dir "$SRC/.cache"
rm -rf "$WORK" && mkdir -p "$WORK"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,sudo,python3,python3-venv,ca-certificates,mosquitto,mosquitto-clients,procps \
  bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -20 "$WORK/debootstrap.log" >&2; exit 69; }
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# the host's CA bundle: where PyPI is reached through a TLS-inspecting proxy, the box needs it
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
echo "$BOX" > "$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n' "$BOX" > "$ROOTFS/etc/hosts"

# the box shares the host's network (the installer needs the mirror and PyPI): its
# Mosquitto listens on a free loopback port, not on a 1883 the host may be using
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" > "$ROOTFS/etc/mosquitto/conf.d/check.conf"

step "a sudo user with the checkout, as on a Pi"
chroot "$ROOTFS" useradd -m -s /bin/bash pi
echo "pi ALL=(ALL) NOPASSWD: ALL" > "$ROOTFS/etc/sudoers.d/pi"
build_copy "$ROOTFS/home/pi/maskwatch" deploy
chroot "$ROOTFS" chown -R pi:pi /home/pi/maskwatch

# boot_box: systemd as PID 1 in the root; sets NSPAWN_PID and INIT_PID
boot_box() {
  # --register=no --keep-unit: no systemd-machined or system bus is needed on the host
  systemd-nspawn -D "$ROOTFS" -M "$BOX" --boot --console=pipe --register=no --keep-unit \
    >>"$WORK/boot.log" 2>&1 &
  NSPAWN_PID=$!
  INIT_PID=""
  for _ in $(seq 1 120); do
    INIT_PID=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$INIT_PID" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/boot.log" >&2; exit 69; }
    sleep 0.5
  done
  [ -n "$INIT_PID" ] || { echo "systemd-check: the box did not boot" >&2; exit 69; }
  wait_for 120 "the box's systemd reached running" sh -c \
    "case \"\$(nsenter -t $INIT_PID -a systemctl is-system-running)\" in running|degraded) ;; *) exit 1 ;; esac"
  in_box systemctl is-active mosquitto >/dev/null || fail "mosquitto did not start in the box"
}
# subscribe FILE: the box's Mosquitto's events to FILE (QoS 1, a kept session)
subscribe() {
  in_box sh -c "mosquitto_sub -h localhost -p $PORT -t maskwatch/door-check/events -q 1 \\
    -i checker -c > $1 2>/root/sub.err &"
}
# first_seq FILE: the seq of the first event in FILE (in the box's root); not `| head -1`
# after a listing, whose closed pipe fails the script under pipefail
first_seq() { python3 -c 'import json, sys
lines = [line for line in open(sys.argv[1]) if line.endswith("\n") and line.strip()]
print(json.loads(lines[0])["seq"]) if lines else sys.exit(1)' "$ROOTFS$1"; }

step "boot it: systemd as PID 1 (systemd-nspawn)"
boot_box

step "sudo deploy/install.sh (as pi, from pi's checkout)"
in_box runuser -u pi -- sh -c 'cd ~/maskwatch && sudo deploy/install.sh' | tail -3
[ "$(unit ActiveState)" = active ] || fail "the installer left the service not active"
root_owned=$(in_box find /home/pi/maskwatch ! -user pi -print -quit)
[ -z "$root_owned" ] || fail "the installer left root-owned files in the checkout: $root_owned"

step "configure: device_id, a looping clip as the camera, the box's Mosquitto"
clip=$(in_box sh -c 'ls /opt/maskwatch/venv/lib/python3*/site-packages/maskwatch/agent/demo/street_demo.mp4')
in_box sed -i -e 's|^device_id: null|device_id: door-check|' \
  -e "s|^  uri: '0'|  uri: $clip|" -e 's|^  realtime: false|  realtime: true|' \
  -e 's|^  loop: false|  loop: true|' -e "s|^  port: 1883|  port: $PORT|" \
  /etc/maskwatch/config.yaml
subscribe /root/events.jsonl
in_box systemctl restart maskwatch
wait_for 60 "events delivered and counted on the status line" status_has "delivering to localhost:$PORT; .*people: [0-9]"
echo "   Status: $(unit StatusText)"
[ "$(unit Type)" = notify ] && [ "$(unit WatchdogUSec)" = 30s ] || fail "not Type=notify with a watchdog"
[ "$(in_box stat -c '%U %a' /var/lib/maskwatch)" = "maskwatch 750" ] || fail "state dir owner/mode"

step "the agent's commands on the device: as the service's user, not as root"
# pi_fails CODE LINE COMMAND: COMMAND, run by pi in its home, exits CODE saying LINE
pi_fails() {
  local want=$1 line=$2 got; shift 2
  set +e
  in_box runuser -u pi -- sh -c "cd ~ && $*" > "$WORK/said.txt" 2>&1
  got=$?
  set -e
  [ "$got" = "$want" ] && grep -qF -- "$line" "$WORK/said.txt" ||
    fail "$*: exit $got, $(cat "$WORK/said.txt")"
}
pi_fails 77 "belongs to maskwatch: run this as maskwatch" sudo mask-agent samples list
! in_box test -e /var/lib/maskwatch/samples || fail "root's samples list wrote into the state dir"
in_box runuser -u pi -- sudo -u maskwatch mask-agent samples list 2>&1 | tail -1
[ "$(in_box stat -c %U /var/lib/maskwatch/samples)" = maskwatch ] || fail "samples not maskwatch's"
[[ "$(in_box runuser -u pi -- sudo -u maskwatch mask-agent adapt --status)" == *'"head"'* ]] ||
  fail "adapt --status as maskwatch"
# the service's config holds its secrets (0640 root:maskwatch): pi alone cannot read it
pi_fails 78 "mask-agent: error: config: cannot read /etc/maskwatch/config.yaml: Permission denied (running as pi)" \
  mask-agent check-config
# pi's home is 0700, as on Raspberry Pi OS: the service's user can neither read labels
# there nor export into it
in_box runuser -u pi -- sh -c 'chmod 700 ~ && mkdir -p ~/labels/with_mask ~/labels/without_mask'
pi_fails 66 "mask-agent: error: cannot read /home/pi/labels: Permission denied (running as maskwatch)" \
  sudo -u maskwatch mask-agent adapt --labels '~/labels'
pi_fails 2 "mask-agent: error: cannot export to /home/pi/crops: Permission denied" \
  sudo -u maskwatch mask-agent samples export '~/crops'

step "watchdog: a stalled loop (SIGSTOP) is killed and restarted"
in_box kill -STOP "$(unit MainPID)"
wait_for 120 "a restart after the watchdog timeout" restarts_are 1
journal_has "Watchdog timeout" || fail "no watchdog timeout in the journal"
grep -F "Watchdog timeout" "$WORK/journal.txt"
wait_for 60 "delivering again after the restart" status_has "delivering to localhost:$PORT"

step "a broker outage, and a SIGKILL meanwhile: no event lost"
in_box systemctl stop mosquitto
wait_for 60 "events waiting in the outbox" status_has "waiting in the outbox"
echo "   Status: $(unit StatusText)"
in_box kill -KILL "$(unit MainPID)"   # a crash (systemctl kill also walks the threads of a
# cgroup v1 hierarchy, and failed on one already gone: EIO)
wait_for 60 "a restart after SIGKILL" restarts_are 2
warnings=$(in_box journalctl -u maskwatch -p warning --no-pager -o cat)
grep -q "cannot connect to MQTT broker\|disconnected from MQTT broker" <<< "$warnings" ||
  fail "the broker outage is not a warning in the journal"
! grep -q "person #" <<< "$warnings" || fail "info lines (people) logged as warnings"
in_box systemctl start mosquitto
wait_for 90 "the outbox emptied to the broker" status_has "delivering to localhost:$PORT; outbox empty"
echo "   Status: $(unit StatusText)"
in_box systemctl stop maskwatch   # its people end: the last events, drained to the broker
last=$(in_box /opt/maskwatch/venv/bin/python -c 'import sqlite3
db = sqlite3.connect("file:/var/lib/maskwatch/outbox.sqlite3?mode=ro", uri=True)
print(db.execute("SELECT value FROM counters WHERE name = ?", ("events",)).fetchone()[0])')
got_last() { python3 -c 'import json, sys
seqs = [json.loads(l)["seq"] for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if seqs and max(seqs) >= int(sys.argv[2]) else 1)' "$ROOTFS/root/events.jsonl" "$last"; }
wait_for 60 "the subscriber got the last event (seq $last)" got_last
in_box pkill -x mosquitto_sub || true
python3 - "$ROOTFS/root/events.jsonl" <<'PYCODE'
import json, sys
seqs = [json.loads(line)["seq"] for line in open(sys.argv[1]) if line.strip()]
assert seqs, "no events reached the subscriber"
got = sorted(set(seqs))
missing = sorted(set(range(1, got[-1] + 1)) - set(got))
print(f"   {len(seqs)} events received, seq 1..{got[-1]}, {len(seqs) - len(got)} duplicates, "
      f"{len(missing)} missing")
sys.exit(1 if missing or got[0] != 1 else 0)
PYCODE

step "a power cut (the box killed at once): at the next boot the unit starts by itself"
in_box systemctl start maskwatch
wait_for 60 "delivering before the power cut" status_has "delivering to localhost:$PORT"
kill -KILL "$INIT_PID"   # PID 1 of the box: every process in it dies with it
wait "$NSPAWN_PID" 2>/dev/null || true
boot_box
wait_for 60 "the service started at boot" sh -c \
  "[ \"\$(nsenter -t $INIT_PID -a systemctl is-active maskwatch)\" = active ]"
subscribe /root/after-boot.jsonl
wait_for 60 "delivering after the boot" status_has "delivering to localhost:$PORT"
echo "   Status: $(unit StatusText)"
wait_for 60 "an event after the boot" first_seq /root/after-boot.jsonl
first=$(first_seq /root/after-boot.jsonl)
[ "$first" -gt "$last" ] || fail "numbering began again after the power cut (seq $first, was $last)"
echo "   numbering goes on after the power cut: seq $first (the last before it: $last)"
aside=$(in_box find /var/lib/maskwatch -maxdepth 1 -name '*damaged*')
[ -z "$aside" ] || fail "the outbox was damaged by the power cut: $aside"
in_box pkill -x mosquitto_sub || true
in_box systemctl stop maskwatch

step "a bad config: its one-line error, exit 78, no restart"
# fails_once_with LINE: started, the service fails with LINE in the journal, exit 78, and
# systemd does not restart it
fails_once_with() {
  in_box systemctl reset-failed maskwatch 2>/dev/null || true
  in_box systemctl start maskwatch 2>/dev/null || true
  wait_for 30 "the service failed" sh -c \
    "[ \"\$(nsenter -t $INIT_PID -a systemctl show maskwatch -p ActiveState --value)\" = failed ]"
  [ "$(unit ExecMainStatus)" = 78 ] && [ "$(unit NRestarts)" = 0 ] ||
    fail "not exit 78 without restart ($(unit ExecMainStatus), $(unit NRestarts) restarts)"
  journal_has "$1" || fail "not in the journal: $1"
  grep -F -- "$1" "$WORK/journal.txt" | tail -1
}
cp "$ROOTFS/etc/maskwatch/config.yaml" "$WORK/config.yaml"
in_box sed -i 's|^  max_side: 480|  max_side: -3|' /etc/maskwatch/config.yaml
fails_once_with "error: config: detect.max_side: expected an integer from 64 to 4096, got -3"
# a bundle of one's own copied to the home folder: the unit hides /home (ProtectHome); it
# was an internal error and exit 1 there, restarted every 5 s for ever
cp "$WORK/config.yaml" "$ROOTFS/etc/maskwatch/config.yaml"
in_box runuser -u pi -- sh -c "cp -r ${clip%/demo/*}/vision/default_model ~/my_bundle"
in_box python3 - <<'PYCODE'
path = "/etc/maskwatch/config.yaml"
text = open(path).read()
start = text.index("classify:")
at = text.index("  model: null", start)
open(path, "w").write(text[:at] + "  model: /home/pi/my_bundle" + text[at + 13:])
PYCODE
fails_once_with "error: config: classify.model: cannot read /home/pi/my_bundle: Permission denied (running as maskwatch; the maskwatch service sees no /home"

step "systemd-analyze security, as installed"
in_box systemd-analyze security maskwatch --no-pager | tail -1

step "sudo deploy/install.sh --uninstall --purge"
in_box runuser -u pi -- sh -c 'cd ~/maskwatch && sudo deploy/install.sh --uninstall --purge' | tail -1
for gone in /etc/systemd/system/maskwatch.service /opt/maskwatch /etc/maskwatch /var/lib/maskwatch; do
  ! in_box test -e "$gone" || fail "$gone is still there"
done
step "systemd check passed"
