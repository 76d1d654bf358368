#!/usr/bin/env bash
# Run one site's syncd services (what an operator runs at a real site), detached, against any NATS
# server:
#   ./scripts/site.sh <site> start|stop|status [flags]
# Flags (or environment):
#   --nats-url URL[,URL]   ($NATS_URL; default: the site's URL in $MESH_DIR/mesh.json, else nats://127.0.0.1:4222)
#   --bucket B[,B]         ($SYNCD_BUCKETS, default config)
#   --node-id ID           ($SYNCD_NODE_ID, default site-<site>)
#   --clock hlc|lamport    ($SYNCD_CLOCK, default hlc)
#   --scale SPEC           ($SCALE, e.g. "merger=3,watcher=2"; unnamed kinds 1)
#   --mode agent|services  ($MODE, default services): agent = the four services in one process, plus a
#                          process per instance beyond the first of a kind
#   --state-dir DIR        ($SYNCD_STATE_DIR, default $MESH_DIR/site-<site>): pid files
#   --log-dir DIR          ($SYNCD_LOG_DIR, default: the state dir if given, else $MESH_DIR/logs/site-<site>)
#   --http-port BASE       ($SYNCD_HTTP_PORT, default off): /metrics and probes, one port per process:
#                          clock BASE, watcher BASE+1, merger BASE+2, reconciler BASE+3 (9401 gives the
#                          systemd units' 9401–9404); an agent BASE; instance n of a kind +10·(n−1)
# Every other flag goes to the services unchanged, e.g. --creds FILE, --user U --password P,
# --tlsca FILE (or --tls-ca), --context NAME, --reconcile-interval S (see `node --import tsx services/clock/main.ts --help`).
# start starts the missing instances and waits until they answer $SRV.PING; status exits 0 when all
# recorded instances run, 3 when none does.
set -euo pipefail
export SYNCD_CALLER_CWD="$PWD"   # relative paths given by the user are meant from here
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh --no-nats-server >&2
exec node --import tsx scripts/mesh.ts site "$@"
