#!/usr/bin/env bash
# Partition rehearsal on the local mesh: ./scripts/hub.sh stop   (every site works alone)
#                                        ./scripts/hub.sh start  (heal; waits for every leaf connection
#                                          and for the stream sources to run again, up to 150 s)
set -euo pipefail
export SYNCD_CALLER_CWD="$PWD"   # relative paths given by the user are meant from here
cd "$(dirname "$0")/.."
exec node --import tsx scripts/mesh.ts hub "$@"
