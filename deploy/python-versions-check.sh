#!/usr/bin/env bash
# The oldest and newest Python the package supports, beside the 3.11 of bookworm that the
# README's test command covers: for each, a fresh venv with the device package and the
# test tools (`pip install -e '.[dev]'`, as the README says), the first README command
# (`mask-agent demo`) and the tests of what differs between them: the TFLite runtime and
# NumPy (3.9 gets tflite-runtime with NumPy 1 and OpenCV 4.11; 3.13 LiteRT with NumPy 2),
# OpenCV's messages, config parsing.
#
#   deploy/python-versions-check.sh [VERSION ...]      (default: 3.9 3.13)
#
# An interpreter is looked for in pyenv's versions, then as pythonX.Y on PATH; a version
# with none here is skipped, and said so. Needs PyPI. The venvs go in a temporary folder.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
[ $# -gt 0 ] || set -- 3.9 3.13
TESTS=(tests/test_classify.py tests/test_faults.py tests/test_config.py)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

interpreter() {  # the newest X.Y.Z of pyenv's, else pythonX.Y from PATH; empty: none
  local found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python 2>/dev/null |
          sort -V | tail -1)
  if [ -z "$found" ] && command -v "python$1" >/dev/null; then
    found=$(command -v "python$1")
  fi
  if [ -n "$found" ] && "$found" -c 'import sys' 2>/dev/null; then echo "$found"; fi
}

checked=0
for version in "$@"; do
  python=$(interpreter "$version")
  if [ -z "$python" ]; then
    echo "== Python $version: skipped, no interpreter here"
    continue
  fi
  echo "== Python $version ($python)"
  venv="$WORK/venv$version"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$SRC[dev]"
  "$venv/bin/pip" list --disable-pip-version-check 2>/dev/null |
    grep -i -E '^(numpy|opencv-python-headless|ai-edge-litert|tflite-runtime) ' || true
  demo=$(cd "$WORK" && HOME="$WORK" "$venv/bin/mask-agent" demo 2>&1) || {
    echo "$demo" | tail -5; echo "python-versions-check: demo failed on $version" >&2; exit 1; }
  echo "$demo" | grep -E '^(people|events):'
  (cd "$SRC" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}")
  checked=$((checked + 1))
done
echo "python-versions-check: $checked of $# version(s) checked"
