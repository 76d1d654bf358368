#!/usr/bin/env bash
# Create the TLS files of a secured mesh (SECURE=1 ./scripts/up.sh, the tests' `tls` meshes):
#   ./scripts/gen-certs.sh [DIR] [--force]
# DIR defaults to $MESH_DIR/certs ($MESH_DIR defaults to <repo>/.mesh). Writes, with openssl:
#   ca.pem, ca-key.pem           a private CA (the key is only needed to sign more certificates)
#   server.pem, server-key.pem   the servers' certificate (hub and sites): client ports and the hub's
#                                leaf listener; SAN DNS:localhost, IP:127.0.0.1 plus $CERT_SANS
#                                (e.g. CERT_SANS="DNS:hub.example.org,IP:10.0.0.5")
#   client.pem, client-key.pem   a client certificate (extendedKeyUsage clientAuth): what the sites'
#                                leaf remotes present to the hub (mutual TLS), and optionally the
#                                services (--tls-cert/--tls-key)
# Keys are EC P-256, mode 0600; certificates are valid for $CERT_DAYS days (default 365). Existing
# files are kept (a mesh's certificates stay valid across restarts) unless --force is given.
# This is for a local mesh and for trying TLS out: at a real site use your own PKI.
set -euo pipefail

dir=""
force=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gen-certs: unknown option $a" >&2; exit 2 ;;
    *) [ -z "$dir" ] || { echo "gen-certs: one DIR only" >&2; exit 2; }; dir="$a" ;;
  esac
done
if [ -z "$dir" ]; then
  root="$(cd "$(dirname "$0")/.." && pwd)"
  dir="${MESH_DIR:-$root/.mesh}/certs"
fi

if ! command -v openssl >/dev/null 2>&1; then
  echo "gen-certs: openssl is not installed (./scripts/ensure-deps.sh --tls installs it, or: apt-get install -y openssl)" >&2
  exit 1
fi

days="${CERT_DAYS:-365}"
sans="DNS:localhost,IP:127.0.0.1${CERT_SANS:+,$CERT_SANS}"

if [ "$force" = 0 ] && [ -s "$dir/ca.pem" ] && [ -s "$dir/server.pem" ] && [ -s "$dir/server-key.pem" ] \
  && [ -s "$dir/client.pem" ] && [ -s "$dir/client-key.pem" ]; then
  echo "gen-certs: certificates already in $dir (--force makes new ones)"
  exit 0
fi

mkdir -p "$dir"
chmod 700 "$dir"
umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA.
key "$dir/ca-key.pem"
openssl req -x509 -new -key "$dir/ca-key.pem" -sha256 -days "$days" -subj "/CN=nats-kv-syncd local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$dir/ca.pem"

# sign NAME CN EXTENSIONS
sign() {
  key "$dir/$1-key.pem"
  openssl req -new -key "$dir/$1-key.pem" -subj "/CN=$2" -out "$tmp/$1.csr"
  printf '%s\n' "$3" >"$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$days" -extfile "$tmp/$1.ext" -out "$dir/$1.pem" 2>/dev/null
}

sign server "nats-kv-syncd server" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans"
sign client "nats-kv-syncd client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

chmod 644 "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem"
openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem" >/dev/null
echo "gen-certs: CA, server ($sans) and client certificates in $dir"
