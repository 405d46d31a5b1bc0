# Sourced (not run) by the deploy scripts that run as root from a user's checkout
# (`sudo deploy/install.sh`, `sudo deploy/arm64-check.sh`, `sudo deploy/container-check.sh`).
# Whatever they leave in the checkout must stay the user's: pip's in-tree build left a
# root-owned maskwatch.egg-info/ and build/ there, after which the user's own
# `pip install -e .` failed ("Cannot update time stamp of directory 'maskwatch.egg-info'"),
# and a root-owned .cache/ or bench/ stops the tests (Home Assistant installs into .cache/)
# and the benches (they write bench/*.json). Needs SRC, the checkout's root.

# build_copy DIR [MORE...]: the files a wheel is built from (the ones deploy/Dockerfile
# copies), and the checkout's MORE (deploy: a checkout the installer runs from), in DIR,
# so that pip builds there and writes nothing into the checkout.
build_copy() {
  local dir=$1; shift
  mkdir -p "$dir"
  (cd "$SRC" && tar --exclude=__pycache__ -cf - pyproject.toml README.md config.yaml agent \
    convert "$@") | tar -C "$dir" -xf -
}

# owned_like_checkout PATH...: given to the checkout's owner (and group).
owned_like_checkout() {
  chown "$(stat -c %u:%g "$SRC")" "$@"
}

# checkout_dir DIR: DIR (inside the checkout) made if missing, owned like the checkout.
checkout_dir() {
  mkdir -p "$1"
  owned_like_checkout "$1"
}

# check_options NAME "$@": the options of a check script (container-check,
# systemd-check): --keep sets KEEP=1, -h/--help prints the script's header comment; then
# root is required (the checks debootstrap, mount and run containers)
check_options() {
  local name=$1; shift
  KEEP=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --keep) KEEP=1; shift ;;
      -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "$name: unknown option $1" >&2; exit 2 ;;
    esac
  done
  [ "$(id -u)" = 0 ] || { echo "$name: run as root (debootstrap, containers)" >&2; exit 2; }
}

# step TEXT: a progress line with the seconds since `started`
step() { echo "== [$(( $(date +%s) - started ))s] $*"; }
