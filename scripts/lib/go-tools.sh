# shellcheck shell=bash
# Sourced by scripts/ensure-deps.sh and scripts/test.sh: the Go-built NATS tools the tests use and
# where they are cached (shared by every clone and worktree of the repo; override with SYNCD_TOOLS_DIR).
GO_TOOLS_DIR=${SYNCD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nats-kv-syncd/go-bin}
# tool name → go install path@version (natscli: v0.5.0, not v0.5.1)
GO_TOOL_NATS_SERVER="github.com/nats-io/nats-server/v2@v2.15.2"
GO_TOOL_NATS_CLI="github.com/nats-io/natscli/nats@v0.5.0"

# The version a tool binary reports ("v2.15.2", "v0.5.0"), empty when it does not run.
go_tool_version() {
  [ -x "$1" ] || return 0
  "$1" --version 2>/dev/null | grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+[^ ]*' | head -1
}
