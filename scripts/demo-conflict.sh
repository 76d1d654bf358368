#!/usr/bin/env bash
# Demo: a conflict. The same key is written at sites a and b at the same instant, before either write
# can replicate. Both sites end with the same winner — the greater version (ts, then node_id) — and
# the losing write is kept in the conflict log. Then "read, then overwrite": a later write wins.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "conflict" \
  "Two sites write the same key at the same instant. Last-writer-wins on the version (ts, node_id) picks the same winner at every site, with no coordination; the loser is not silently dropped: it is kept, with both versions, in the conflict log."

COLOR="conflict.$RUN.color"

step "write $COLOR = dark at site $A and = light at site $B at the same instant (two connections, one process: no op can travel in between)"
check put-at-once "$BUCKET" "$COLOR" "$A=dark" "$B=light"

step "both sites converge on one value: the write with the greater version"
check expect "$BUCKET" "$COLOR" --converged
WINNER=$(dts value "$BUCKET" "$COLOR" --site "$A") || fail "cannot read $COLOR at site $A"
case "$WINNER" in
  dark) LOSER=light ;;
  light) LOSER=dark ;;
  *) fail "the sites converged on \"$WINNER\", which neither site wrote" ;;
esac
say "winner: \"$WINNER\"; loser: \"$LOSER\" (greater ts wins; at equal ts the greater node_id)"
run syncd --server "$A_URL" get "$BUCKET" "$COLOR"

step "the losing write is kept in the conflict log, with the version that beat it"
check conflict "$BUCKET" "$COLOR" --loser "$LOSER"
run syncd --server "$A_URL" conflicts "$BUCKET" "$COLOR"

step "read, then overwrite: the site whose write lost writes again; a write made after seeing a version always beats it"
LOSER_SITE=$([ "$LOSER" = dark ] && echo "$A" || echo "$B")
LOSER_URL=$([ "$LOSER" = dark ] && echo "$A_URL" || echo "$B_URL")
run syncd --server "$LOSER_URL" put "$BUCKET" "$COLOR" "$LOSER, again" --site "$LOSER_SITE"
check expect "$BUCKET" "$COLOR" --value "$LOSER, again"

pass "concurrent writes at $A and $B converged on \"$WINNER\" everywhere, \"$LOSER\" kept in the conflict log; a later write won"
