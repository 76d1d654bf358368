#!/usr/bin/env bash
# Demo: a partition. The hub stops; sites a and b keep taking writes, also to the same key; when the
# hub is back, every op crosses by store and forward (nothing lost, nothing twice) and the later
# write wins at every site; the one it beat is in the conflict log. The hub is started again on
# exit, whatever happened.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "partition (hub down), writes on both sides, heal" \
  "Each site publishes its ops into its own log, the hub's aggregate sources every log once and every site sources the aggregate. While the hub is down nothing crosses, nothing is lost: after the heal the sourcing catches up, and last-writer-wins settles keys written on both sides."

THEME="partition.$RUN.theme"
LANG_KEY="partition.$RUN.lang"
SIZE="partition.$RUN.size"

step "stop the hub: sites $A and $B are cut off from each other"
restore_on_exit "the hub" 180 ./scripts/hub.sh start
run ./scripts/hub.sh stop

step "write while cut off: $THEME = dark at site $A, then = light at site $B a moment later; one more key on each side"
run syncd --server "$A_URL" put "$BUCKET" "$THEME" dark --site "$A"
run syncd --server "$A_URL" put "$BUCKET" "$SIZE" xl --site "$A"
run syncd --server "$B_URL" put "$BUCKET" "$THEME" light --site "$B"
run syncd --server "$B_URL" put "$BUCKET" "$LANG_KEY" es --site "$B"

step "each site holds only its own writes"
check expect "$BUCKET" "$THEME" --value dark --sites "$A" --timeout 5
check expect "$BUCKET" "$THEME" --value light --sites "$B" --timeout 5
check expect "$BUCKET" "$LANG_KEY" --deleted --sites "$A" --timeout 5
check expect "$BUCKET" "$SIZE" --deleted --sites "$B" --timeout 5

step "heal: start the hub (returns once the sites' leaf connections and the stream sources are back)"
run ./scripts/hub.sh start
restored

step "the ops written during the partition cross now; the later write of $THEME (site $B's) wins at every site"
check expect "$BUCKET" "$LANG_KEY" --value es
check expect "$BUCKET" "$SIZE" --value xl
check expect "$BUCKET" "$THEME" --value light
run syncd --server "$A_URL" get "$BUCKET" "$THEME"

step "dark lost; it is kept in the conflict log with the version that beat it"
check conflict "$BUCKET" "$THEME" --loser dark
run syncd --server "$A_URL" conflicts "$BUCKET" "$THEME"

pass "writes on both sides of a partition reached every site after the heal; $THEME converged on the later write (light)"
