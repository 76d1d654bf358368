#!/usr/bin/env bash
# Every check and test: type check, lint/format check, then all test/**/*.test.ts, two files at a time
# (each file its own process, its own servers on free ports and temp dirs; TEST_CONCURRENCY=1 for one
# at a time: most of a file's time is waiting on servers and timers, so two share 2 cores well),
# against two nats-servers, each chosen explicitly with NATS_SERVER (never by PATH order):
#   pass 1, every test file:          Debian's 2.9.10 (/usr/sbin/nats-server, apt-get when missing)
#   pass 2, the files that start servers (integration): a current nats-server (scripts/lib/go-tools.sh,
#           built once with `go install` by ensure-deps.sh --go-tools); skipped, in one line, without Go.
# Both passes get NATS_CLI = the real `nats` CLI built the same way (tests that need it skip without it).
#   TEST_FILTER=substr   only test files whose path contains substr (the checks still run)
#   SKIP_CHECKS=1        skip tsc and biome (developer shortcut)
#   NATS_SERVER=path     one pass, every file, against that server only
# Output ends with node's TAP summary lines (# tests/pass/fail …) over both passes.
# Exit code: non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh --tls --go-tools   # --tls: openssl for the secured mesh; --go-tools: see above
# shellcheck source=scripts/lib/go-tools.sh
. scripts/lib/go-tools.sh

fail=0
if [ "${SKIP_CHECKS:-0}" != 1 ]; then
  echo "== tsc --noEmit"
  npx tsc --noEmit || fail=1
  echo "== biome check ."
  npx biome check . || fail=1
fi

# Node 20's --test does not expand globs: list the files ourselves.
mapfile -t files < <(find test -name '*.test.ts' -not -path '*/node_modules/*' | LC_ALL=C sort)
if [ -n "${TEST_FILTER:-}" ]; then
  filtered=()
  for f in "${files[@]}"; do
    case "$f" in *"$TEST_FILTER"*) filtered+=("$f") ;; esac
  done
  files=("${filtered[@]+"${filtered[@]}"}")
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files${TEST_FILTER:+ matching TEST_FILTER=$TEST_FILTER}" >&2
  exit 1
fi
# Integration files: those that start nats-servers (the harness and its helpers in test/helpers.ts, the
# topology, the scripts).
integration=()
for f in "${files[@]}"; do
  if grep -qE 'harness/mesh|(start|with)(Linked|Up)?Mesh\(|scripts/lib/(topology|services)|NATS_SERVER|nats-server|scripts/[a-z-]+\.sh' "$f"; then
    integration+=("$f")
  fi
done

[ -x "$GO_TOOLS_DIR/nats" ] && export NATS_CLI="${NATS_CLI:-$GO_TOOLS_DIR/nats}"
current="$GO_TOOLS_DIR/nats-server"
if [ -n "${NATS_SERVER:-}" ]; then
  passes=("$NATS_SERVER")
  echo "test.sh: NATS_SERVER=$NATS_SERVER given: one pass against it only"
else
  debian=/usr/sbin/nats-server
  [ -x "$debian" ] || debian=$(command -v nats-server)
  passes=("$debian")
  if [ -x "$current" ]; then
    passes+=("$current")
  else
    echo "test.sh: skipped (Go not installed): the ${#integration[@]} integration test files against nats-server ${GO_TOOL_NATS_SERVER##*@}, and every test that needs the nats CLI (${GO_TOOL_NATS_CLI##*@})"
  fi
fi

summary=$(mktemp -d)
trap 'rm -rf "$summary"' EXIT
n=0
for server in "${passes[@]}"; do
  n=$((n + 1))
  version=$("$server" --version 2>/dev/null | sed 's/^nats-server: //')
  if [ "$n" = 1 ]; then set -- "${files[@]}"; else set -- "${integration[@]+"${integration[@]}"}"; fi
  [ "$#" -eq 0 ] && continue
  echo "== node --test ($# files) against nats-server $version ($server)"
  NATS_SERVER=$server node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" \
    --test-timeout="${TEST_TIMEOUT_MS:-300000}" \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$summary/$n.tap" "$@" || { fail=1; touch "$summary/$n.failed"; }
  echo "$version" >"$summary/$n.version"
done

# One TAP summary over every pass (the last lines node's own TAP reporter would print).
for k in tests suites pass fail cancelled skipped todo; do
  total=0
  for tap in "$summary"/*.tap; do
    v=$(grep -E "^# $k [0-9]+$" "$tap" | tail -1 | awk '{print $3}')
    total=$((total + ${v:-0}))
  done
  eval "sum_$k=$total"
done
# a run that failed without a failing test (a file that crashed, a runner error) still counts as one
for tap in "$summary"/*.tap; do
  if [ -e "${tap%.tap}.failed" ] && ! grep -qE '^# fail [1-9]' "$tap"; then sum_fail=$((sum_fail + 1)); fi
done
[ "${sum_fail:-0}" != 0 ] && fail=1
if [ "$fail" != 0 ]; then
  echo "== FAILED" >&2
else
  echo "== all passed (nats-server $(cat "$summary"/*.version | paste -sd' '))"
fi
for k in tests suites pass fail cancelled skipped todo; do eval "echo \"# $k \$sum_$k\""; done
exit "$fail"
