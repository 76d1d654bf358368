#!/usr/bin/env bash
# Outage rehearsal on the local mesh: ./scripts/server.sh <site> stop|start stops or starts one
# site's nats-server (its services keep running and reconnect); start waits for the leaf connection
# and for the site's services to answer again, then for the stream sources of and from the site to
# run again (read from the servers' /jsz; gives up after 150 s naming the stalled ones).
set -euo pipefail
export SYNCD_CALLER_CWD="$PWD"   # relative paths given by the user are meant from here
cd "$(dirname "$0")/.."
exec node --import tsx scripts/mesh.ts server "$@"
