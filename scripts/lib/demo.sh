# Sourced by scripts/demo-*.sh (not run by itself). What every demo shares:
#  - finds the local mesh of ./scripts/up.sh ($MESH_DIR/mesh.json, default <repo>/.mesh) and checks it
#    is whole (hub, every site's server, every site's four services); if there is no mesh it says
#    "run ./scripts/up.sh first" and exits 3, unless DEMO_START=1 (then it runs ./scripts/up.sh and
#    leaves the mesh running);
#  - `run CMD...`  prints "$ CMD" the way a reader would type it (`syncd ...` is the syncd CLI, run
#    here as `node --import tsx services/cli/main.ts`) and runs it, bounded by DEMO_CMD_TIMEOUT;
#  - `check SUBCOMMAND...` runs an observation of scripts/lib/demo.ts (every wait bounded by
#    DEMO_WAIT seconds) and fails the demo when it does not hold;
#  - `fail MSG` prints "FAIL <demo>: MSG" and exits 1; `pass MSG` prints "PASS <demo>: MSG";
#  - `restore_on_exit WHAT TIMEOUT CMD...` before a demo stops part of the mesh: on exit, whatever
#    happened, CMD runs (bounded by TIMEOUT seconds) unless `restored` said the demo put it back itself.
#
# A secured mesh (SECURE=1 ./scripts/up.sh) works too: the demo acts as its operator, admin, over TLS.
#
# Environment: MESH_DIR, DEMO_START=1, DEMO_WAIT (seconds, default 30: the longest any one wait may take),
# DEMO_CMD_TIMEOUT (seconds, default 180: the longest any one command may take; ./scripts/hub.sh start
# and server.sh start wait up to 150 s for the stream sources to resume).
# Sets: A, B (the first two sites), A_URL, B_URL, HUB_URL, BUCKET, DEMO_SITES, DEMO_SCALE, RUN (a tag
# that makes this run's keys unique: demos can run again and again on the same mesh).

set -euo pipefail

DEMO_NAME=$(basename "$0" .sh)
# Relative paths the user gives (MESH_DIR) are meant from where they ran the demo; the demo runs
# from the repo root, and so do the scripts it calls.
export SYNCD_CALLER_CWD="${SYNCD_CALLER_CWD:-$PWD}"
if [ -n "${MESH_DIR:-}" ]; then
  case "$MESH_DIR" in
    /*) ;;
    *) MESH_DIR="$SYNCD_CALLER_CWD/$MESH_DIR" ;;
  esac
  export MESH_DIR
fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SYNCD_CALLER_CWD="$PWD"

export DEMO_WAIT="${DEMO_WAIT:-30}"
DEMO_CMD_TIMEOUT="${DEMO_CMD_TIMEOUT:-180}"
DEMO_T0=$SECONDS
RUN="${DEMO_RUN:-$(date +%s)}"

say() { printf '%s\n' "$*"; }
step() { printf '\n-- %s\n' "$*"; }
fail() {
  printf '\nFAIL %s: %s\n' "$DEMO_NAME" "$*" >&2
  exit 1
}
pass() { printf '\nPASS %s: %s (%s s)\n' "$DEMO_NAME" "$*" "$((SECONDS - DEMO_T0))"; }

# One argument as a reader would type it: bare when it is safe, else in single quotes.
_shown() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s' "${out[*]}"
}

# Run a command bounded in time (DEMO_CMD_TIMEOUT), where coreutils' timeout is there.
_bounded() {
  if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=5 "$DEMO_CMD_TIMEOUT" "$@"
  else
    "$@"
  fi
}

# Print a command, then run it (bounded in time); a failure fails the demo.
run() {
  printf '$ %s\n' "$(_shown "$@")"
  local cmd=("$@")
  if [ "$1" = syncd ]; then cmd=(node --import tsx services/cli/main.ts "${@:2}"); fi
  local rc=0
  if [ "$1" = syncd ] && [ "${DEMO_SECURE:-0}" = 1 ]; then
    # a secured mesh: the CLI logs in as its operator, through the environment (not the command line)
    NATS_USER=admin NATS_PASSWORD="$(<"$DEMO_PASSWORD_FILE")" NATS_TLS_CA="$DEMO_CA" \
      _bounded "${cmd[@]}" || rc=$?
  else
    _bounded "${cmd[@]}" || rc=$?
  fi
  [ "$rc" = 0 ] || fail "exit code $rc from: $(_shown "$@")"
}

# Put back on exit what the demo stopped (see the header), unless `restored` ran since.
_restore_what=""
_restore_timeout=0
_restore_cmd=()
restore_on_exit() {
  _restore_what=$1
  _restore_timeout=$2
  _restore_cmd=("${@:3}")
  trap _restore EXIT
}
restored() { _restore_cmd=(); }
_restore() {
  [ "${#_restore_cmd[@]}" -gt 0 ] || return 0
  echo "(restoring $_restore_what: $(_shown "${_restore_cmd[@]}"))"
  DEMO_CMD_TIMEOUT=$_restore_timeout _bounded "${_restore_cmd[@]}" >/dev/null 2>&1 ||
    echo "could not restart $_restore_what: run $(_shown "${_restore_cmd[@]}")" >&2
}

# scripts/lib/demo.ts, bounded in time; its output goes to stdout.
dts() { _bounded node --import tsx scripts/lib/demo.ts "$@"; }

# An observation: fails the demo when it does not hold (demo.ts printed why).
check() {
  local rc=0
  dts "$@" || rc=$?
  [ "$rc" = 0 ] || fail "observation failed: $1 $(_shown "${@:2}")"
}

# Read the mesh, or start it with DEMO_START=1; export its addresses.
_demo_mesh() {
  local out errf rc=0
  errf=$(mktemp)
  out=$(dts env 2>"$errf") || rc=$?
  if [ "$rc" = 3 ] && [ "${DEMO_START:-0}" = 1 ]; then
    say "no local mesh yet; DEMO_START=1: starting one with ./scripts/up.sh (./scripts/down.sh stops it)"
    DEMO_CMD_TIMEOUT=180 _bounded ./scripts/up.sh >"$errf" 2>&1 || {
      cat "$errf" >&2
      rm -f "$errf"
      fail "./scripts/up.sh failed"
    }
    rc=0
    out=$(dts env 2>"$errf") || rc=$?
  fi
  if [ "$rc" != 0 ]; then
    cat "$errf" >&2
    rm -f "$errf"
    case "$rc" in
      3) fail "no local mesh: run ./scripts/up.sh first (or DEMO_START=1 $0)" ;;
      *) fail "the local mesh is not ready (see above)" ;;
    esac
  fi
  rm -f "$errf"
  eval "$out"
  BUCKET="$DEMO_BUCKET"
}

# demo_begin "title" "what it shows": the banner, then the mesh.
demo_begin() {
  printf '== %s: %s\n' "$DEMO_NAME" "$1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | fold -s -w 100
  _demo_mesh
  say "mesh: site $A at $A_URL, site $B at $B_URL, hub $HUB_URL, bucket $BUCKET"
  if [ "$DEMO_SECURE" = 1 ]; then say "(a secured mesh: the demo acts as its operator, admin, over TLS)"; fi
}
