#!/usr/bin/env bash
# Every check and test: type check, lint/format check, then all test/**/*.test.ts one file at a time.
#   TEST_FILTER=substr   only test files whose path contains substr (the checks still run)
#   SKIP_CHECKS=1        skip tsc and biome (developer shortcut)
# Exit code: non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh --tls   # --tls: also openssl, for the secured-mesh tests (scripts/gen-certs.sh)

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
echo "== node --test (${#files[@]} files)"
node --import tsx --test --test-concurrency=1 --test-timeout="${TEST_TIMEOUT_MS:-300000}" "${files[@]}" || fail=1

if [ "$fail" != 0 ]; then
  echo "== FAILED" >&2
  exit 1
fi
echo "== all passed"
