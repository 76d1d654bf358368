#!/usr/bin/env bash
# Demo: replay. Site b's four services stop (its nats-server keeps running); writes at site a — two
# puts and a delete — are stored at b all the same, waiting in b's ingress stream; when b's services
# start again, the merger's durable consumer replays them. b's services are started again on exit,
# whatever happened.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "replay (a site's services down, writes, services back)" \
  "Store and forward does not need the services: a site's nats-server keeps sourcing the other sites' ops into its SYNCD_IN_<site> stream while no syncd process runs there. The merger reads that stream through a durable consumer, so when it starts again it applies exactly what it missed."

K1="replay.$RUN.mode"
K2="replay.$RUN.size"
K3="replay.$RUN.banner"

step "a key both sites hold, to delete later"
run syncd --server "$A_URL" put "$BUCKET" "$K3" "welcome" --site "$A"
check expect "$BUCKET" "$K3" --value welcome

step "stop site $B's services (clock, watcher, merger, reconciler); its nats-server keeps running"
restore_on_exit "site $B's services" 120 ./scripts/site.sh "$B" start --bucket "$DEMO_BUCKETS" ${DEMO_SCALE:+--scale "$DEMO_SCALE"}
run ./scripts/site.sh "$B" stop

step "write at site $A while site $B's services are down: two puts and a delete"
run syncd --server "$A_URL" put "$BUCKET" "$K1" maintenance --site "$A"
run syncd --server "$A_URL" put "$BUCKET" "$K2" xl --site "$A"
run syncd --server "$A_URL" del "$BUCKET" "$K3" --site "$A"

step "the three ops are at site $B already, waiting in its ingress stream; its bucket does not have them"
check wait-backlog --site "$B" --min 3
check expect "$BUCKET" "$K1" --deleted --sites "$B" --timeout 3
check expect "$BUCKET" "$K3" --value welcome --sites "$B" --timeout 3

step "start site $B's services again: the merger replays what it missed"
run ./scripts/site.sh "$B" start --bucket "$DEMO_BUCKETS" ${DEMO_SCALE:+--scale "$DEMO_SCALE"}
restored
check expect "$BUCKET" "$K1" --value maintenance
check expect "$BUCKET" "$K2" --value xl
check expect "$BUCKET" "$K3" --deleted
run syncd --server "$B_URL" get "$BUCKET" "$K1"

pass "the 3 ops written while site $B's services were down were replayed at $B when they came back"
