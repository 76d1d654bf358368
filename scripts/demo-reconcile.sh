#!/usr/bin/env bash
# Demo: anti-entropy. Changes made behind the services' back — written straight into a site's bucket
# and _meta, so no op is ever published — leave the sites different for good; `syncd reconcile`
# compares digests, descends only where they differ and moves just the differing entries, both ways.
# Needs the local mesh (./scripts/up.sh; or DEMO_START=1). Exit 0 when every observation held.
source "$(dirname "$0")/lib/demo.sh"

demo_begin "reconcile (out-of-band changes, anti-entropy)" \
  "The op streams carry every write the watcher sees. A change it never sees — a restore from a backup, a hand edit of the bucket and its _meta, ops lost to stream retention — is found by anti-entropy: the reconcilers compare hashed key ranges of _meta and move only the entries that differ."

SHARED="reconcile.$RUN.shared"
ONLY_B="reconcile.$RUN.only-b"

step "a key both sites hold"
run syncd --server "$A_URL" put "$BUCKET" "$SHARED" v1 --site "$A"
check expect "$BUCKET" "$SHARED" --value v1

step "behind the services' back: a new key at site $B, a newer value of $SHARED at site $A"
say "(each written straight into the bucket with version headers, plus its _meta version: the watcher takes it for a replicated write and publishes nothing)"
check plant "$BUCKET" "$ONLY_B" --value "only at $B" --site "$B"
check plant "$BUCKET" "$SHARED" --value "v2, only at $A" --site "$A"

step "no op will ever carry these: the sites differ"
check expect "$BUCKET" "$ONLY_B" --deleted --sites "$A" --timeout 3
check expect "$BUCKET" "$SHARED" --value v1 --sites "$B" --timeout 3
run syncd --server "$A_URL" diff "$BUCKET"

step "run anti-entropy now at site $A against its peers: it pulls what $A misses, pushes what the peer misses"
run syncd --server "$A_URL" reconcile --site "$A"
check expect "$BUCKET" "$ONLY_B" --value "only at $B"
check expect "$BUCKET" "$SHARED" --value "v2, only at $A"

step "the sites hold the same again"
run syncd --server "$A_URL" diff "$BUCKET"

pass "2 out-of-band changes (one at each site) were repaired by one reconcile run at $A: pulled from $B and pushed to $B"
