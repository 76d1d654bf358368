#!/usr/bin/env bash
# Start the local mesh: a hub and one nats-server per site (JetStream domain = site name, leaf node
# of the hub), bucket "config" on each site, and the four syncd services of every site, all detached.
# Prints each site's URL and how to try it; state in $MESH_DIR/mesh.json. Running it again while
# the mesh runs changes nothing. Stop it with ./scripts/down.sh.
#
# Environment (defaults):
#   MESH_DIR=<repo>/.mesh   SITES="a b"   BUCKET=config   SCALE="merger=1,..." (e.g. "merger=3,watcher=2")
#   MODE=services   agent: each site's four services in one process (services/agent), the instances
#                   SCALE adds beyond the first of a kind in processes of their own
#   HUB_PORT=7222 (monitoring HUB_HTTP_PORT=HUB_PORT+1)   HUB_LEAF_PORT=7422
#   SITE_BASE_PORT=4222   SITE_PORT_STEP=1000   -> site i: client BASE+STEP*i, monitoring +1
#                   (slots on the hub's ports skipped; unset STEP and too many sites: steps of 10)
#   LOG_LEVEL=info   NATS_SERVER=<path of nats-server>   SYNCD_* settings pass through to the services
#   SECURE=0   1: the secured variant (deploy/SECURITY.md): per-site users with least privilege
#              (syncd, app, reader, admin; random passwords in $MESH_DIR/secrets/), TLS on every client
#              port and mutual TLS + a password on the leaf connections (certificates in
#              $MESH_DIR/certs, made by ./scripts/gen-certs.sh), the hub for admin only
#   SYNCD_HUB_ISOLATE=auto   the hub isolates leaf interest when nats-server is 2.12+ (1: must, 0: never);
#              a site's own clients then see only its services (`nats micro ls`); `syncd` reaches
#              every site through the hub relay
set -euo pipefail
export SYNCD_CALLER_CWD="$PWD"   # relative paths given by the user are meant from here
cd "$(dirname "$0")/.."
case "${SECURE:-0}" in
  1|true|yes) ./scripts/ensure-deps.sh --tls ;;
  *) ./scripts/ensure-deps.sh ;;
esac
exec node --import tsx scripts/mesh.ts up
