#!/usr/bin/env bash
# Stop the local mesh started by ./scripts/up.sh: every process recorded in $MESH_DIR (services
# first, then the site servers, then the hub; SIGTERM, SIGKILL after 5 s) and nothing else.
# Removes the state (mesh.json) and the JetStream data; keeps the logs ($MESH_DIR/logs/) until the
# next up.
set -euo pipefail
export SYNCD_CALLER_CWD="$PWD"   # relative paths given by the user are meant from here
cd "$(dirname "$0")/.."
exec node --import tsx scripts/mesh.ts down
