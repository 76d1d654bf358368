#!/usr/bin/env bash
# Make sure the project's dependencies are present:
#  - node_modules: `npm ci` when it is missing or was installed from another package-lock.json;
#  - nats-server (unless --no-nats-server): when neither $NATS_SERVER, PATH nor /usr/sbin has it,
#    `apt-get update && apt-get install -y nats-server` (as root, or with sudo);
#  - openssl, only with --tls (SECURE=1 ./scripts/up.sh: scripts/gen-certs.sh needs it): when it is
#    not on the PATH, `apt-get install -y openssl` the same way;
#  - only with --go-tools (./scripts/test.sh), when `go` is on the PATH: a current nats-server and the
#    real `nats` CLI (versions in scripts/lib/go-tools.sh), built once with `go install` into
#    $GO_TOOLS_DIR (default ~/.cache/nats-kv-syncd/go-bin), rebuilt only when missing or another
#    version. Without Go this says so and goes on (test.sh then skips what needs them).
# Prints what it does; exits 1 with a message when something cannot be provided.
set -euo pipefail
cd "$(dirname "$0")/.."

need_server=1
need_openssl=0
need_go_tools=0
for a in "$@"; do
  case "$a" in
    --no-nats-server) need_server=0 ;;
    --tls) need_openssl=1 ;;
    --go-tools) need_go_tools=1 ;;
    *) echo "usage: $0 [--no-nats-server] [--tls] [--go-tools]" >&2; exit 2 ;;
  esac
done

say() { echo "ensure-deps: $*"; }

# --- node and npm -------------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1; then
  say "node is not installed; install Node.js 20 or newer (https://nodejs.org)" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  say "Node.js $(node --version) is too old; 20 or newer is needed" >&2
  exit 1
fi
if [ ! -f package-lock.json ]; then
  say "package-lock.json is missing: cannot run npm ci (run npm install once and commit the lock file)" >&2
  exit 1
fi
# The lock file's hash is recorded at install time: compared by contents, not by file dates (a fresh
# clone or a git worktree has new dates on an unchanged lock file).
lock_sum=$(cksum < package-lock.json)
if [ ! -f node_modules/.package-lock.json ] || [ "$(cat node_modules/.syncd-lock-sum 2>/dev/null)" != "$lock_sum" ]; then
  say "installing node modules (npm ci)"
  npm ci --no-audit --no-fund
  echo "$lock_sum" > node_modules/.syncd-lock-sum
fi

# Install a Debian package with apt-get (as root, or with passwordless sudo); $2 says how to get it
# by hand when that is impossible. Exits 1 with a clear message on failure.
apt_install() {
  local pkg=$1 by_hand=$2
  if ! command -v apt-get >/dev/null 2>&1; then
    say "$pkg is not installed and apt-get is not available: $by_hand" >&2
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      say "$pkg is not installed; installing it needs root: run as root, or with passwordless sudo, or $by_hand" >&2
      exit 1
    fi
  fi
  say "installing $pkg: ${sudo[*]:+${sudo[*]} }apt-get update && apt-get install -y $pkg"
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$pkg"
}

# --- nats-server ----------------------------------------------------------------------------------
have_nats_server() {
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || [ -x /usr/local/bin/nats-server ]
}
if [ "$need_server" = 1 ]; then
  if [ -n "${NATS_SERVER:-}" ]; then
    [ -x "$NATS_SERVER" ] || { say "NATS_SERVER=$NATS_SERVER is not an executable file" >&2; exit 1; }
  elif ! have_nats_server; then
    apt_install nats-server "install it yourself (https://github.com/nats-io/nats-server/releases) and put it on PATH or set NATS_SERVER"
    have_nats_server || { say "apt-get installed no nats-server binary" >&2; exit 1; }
  fi
fi

# --- openssl (only for TLS) -------------------------------------------------------------------------
if [ "$need_openssl" = 1 ] && ! command -v openssl >/dev/null 2>&1; then
  apt_install openssl "install openssl yourself"
  command -v openssl >/dev/null 2>&1 || { say "apt-get installed no openssl binary" >&2; exit 1; }
fi

# --- Go tools (only with --go-tools) ----------------------------------------------------------------
# shellcheck source=scripts/lib/go-tools.sh
. scripts/lib/go-tools.sh
# go install <path@version> into $GO_TOOLS_DIR unless the binary there already reports that version.
# Built in a temporary GOBIN and moved in place, under a lock: parallel runs never see half a binary.
go_tool() {
  local bin=$1 spec=$2 want=${2##*@}
  [ "$(go_tool_version "$GO_TOOLS_DIR/$bin")" = "$want" ] && return 0
  mkdir -p "$GO_TOOLS_DIR"
  (
    command -v flock >/dev/null 2>&1 && { exec 9>"$GO_TOOLS_DIR/.lock"; flock 9; }
    [ "$(go_tool_version "$GO_TOOLS_DIR/$bin")" = "$want" ] && exit 0
    say "building $bin $want: go install $spec into $GO_TOOLS_DIR (once; about a minute)"
    local tmp
    tmp=$(mktemp -d "$GO_TOOLS_DIR/.build.XXXXXX")
    if ! GOBIN=$tmp go install "$spec"; then
      rm -rf "$tmp"
      say "go install $spec failed" >&2
      exit 1
    fi
    mv -f "$tmp/$bin" "$GO_TOOLS_DIR/$bin"
    rm -rf "$tmp"
  )
  [ "$(go_tool_version "$GO_TOOLS_DIR/$bin")" = "$want" ] || {
    say "$GO_TOOLS_DIR/$bin does not report $want after go install" >&2
    exit 1
  }
}
if [ "$need_go_tools" = 1 ]; then
  if command -v go >/dev/null 2>&1; then
    go_tool nats-server "$GO_TOOL_NATS_SERVER"
    go_tool nats "$GO_TOOL_NATS_CLI"
    say "go tools: $GO_TOOLS_DIR/nats-server $(go_tool_version "$GO_TOOLS_DIR/nats-server"), $GO_TOOLS_DIR/nats $(go_tool_version "$GO_TOOLS_DIR/nats")"
  else
    say "go is not installed: no current nats-server and no nats CLI (https://go.dev/dl to get them)"
  fi
fi

# compiled services (dist/) when the build is missing or older than the sources: they need about a
# third less memory than TypeScript run through tsx (services/run.mjs runs a stale checkout through
# tsx with a warning, and refuses to under NODE_ENV=production: services/launch.mjs)
node scripts/build.mjs >&2

if [ "$need_server" = 1 ]; then
  say "ok: node $(node --version), node_modules up to date, nats-server $(${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)} --version 2>/dev/null | sed 's/^nats-server: //')"
else
  say "ok: node $(node --version), node_modules up to date"
fi
