#!/usr/bin/env bash
# Demo: replication a → b. A write at site a — a plain KV put, as any NATS client makes it —
# reaches site b with its version; an overwrite follows; site b never re-publishes what it applied.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "replication a → b" \
  "A write at one site appears at the other with the version the writing site gave it: the watcher at a stamps and publishes it, b sources a's op stream and its merger applies it."

THEME="replication.$RUN.theme"
GREETING="replication.$RUN.greeting"

step "write two keys at site $A (a plain KV put through site $A's JetStream domain)"
run syncd --server "$A_URL" put "$BUCKET" "$THEME" dark --site "$A"
run syncd --server "$A_URL" put "$BUCKET" "$GREETING" "hello, wörld" --site "$A"

step "wait until every site holds them, under the same version (at most ${DEMO_WAIT} s)"
check expect "$BUCKET" "$THEME" --value dark
check expect "$BUCKET" "$GREETING" --value "hello, wörld"
say "site $B holds node=site-$A's version: it applied the op, it did not stamp a write of its own (no echo)"

step "overwrite at site $A: the new value replaces the old one at site $B too"
run syncd --server "$A_URL" put "$BUCKET" "$THEME" light --site "$A"
check expect "$BUCKET" "$THEME" --value light

step "value and version at every site, as the syncd CLI shows them"
run syncd --server "$B_URL" get "$BUCKET" "$THEME"

pass "writes at site $A reached site $B (2 puts and an overwrite), same version at every site"
