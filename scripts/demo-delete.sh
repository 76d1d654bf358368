#!/usr/bin/env bash
# Demo: deletes are tombstones. A key written at site a is deleted at site b; the delete replicates;
# the original put, arriving again late (a hand-made op on rep.kv.ops with the put's version), does
# not bring the key back; a newer put does.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "delete (tombstones)" \
  "A delete is a version too (a tombstone, deleted: true in the _meta bucket): it replicates like a put, and an older put can never resurrect the key — whatever order the ops arrive in."

FEATURE="delete.$RUN.feature"

step "put $FEATURE = on at site $A; it replicates"
run syncd --server "$A_URL" put "$BUCKET" "$FEATURE" on --site "$A"
check expect "$BUCKET" "$FEATURE" --value on
read -r PUT_TS PUT_NODE < <(dts version "$BUCKET" "$FEATURE" --site "$A") || fail "cannot read the version of $FEATURE"
say "the put's version: ts=$PUT_TS node=$PUT_NODE"

step "delete it at site $B; the tombstone replicates: gone at every site"
run syncd --server "$B_URL" del "$BUCKET" "$FEATURE" --site "$B"
check expect "$BUCKET" "$FEATURE" --deleted
run syncd --server "$A_URL" get "$BUCKET" "$FEATURE"

step "the original put arrives again, late (as a replay from an old backup or a slow link would bring it): a hand-made op on rep.kv.ops at site $A"
OP="{\"op\":\"put\",\"bucket\":\"$BUCKET\",\"key\":\"$FEATURE\",\"value\":\"on\",\"ts\":$PUT_TS,\"node_id\":\"$PUT_NODE\"}"
say "op: $OP"
say "(what \`nats --server $A_URL pub rep.kv.ops '<op>'\` does; published here through JetStream to see when the merger consumed it)"
check pub-op "$OP" --site "$A"
say "the merger compared it with the tombstone, which is newer: the op is stale, and kept in the conflict log"
check conflict "$BUCKET" "$FEATURE" --loser on --kind stale_op
check expect "$BUCKET" "$FEATURE" --deleted --timeout 3

step "a newer put (made after the delete) brings the key back"
run syncd --server "$A_URL" put "$BUCKET" "$FEATURE" "on again" --site "$A"
check expect "$BUCKET" "$FEATURE" --value "on again"

pass "the delete at $B removed $FEATURE everywhere; the late older put did not resurrect it; a newer put did"
