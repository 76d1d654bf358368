#!/usr/bin/env bash
# Partition rehearsal on the local mesh: ./scripts/hub.sh stop   (every site works alone)
#                                        ./scripts/hub.sh start  (heal; waits for every leaf connection)
set -euo pipefail
cd "$(dirname "$0")/.."
exec node --import tsx scripts/mesh.ts hub "$@"
