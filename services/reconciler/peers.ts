/**
 * The peers of a site. They come from the members bucket at the hub (members.ts: one watch, the
 * changes only), or, while the site cannot reach it (a hub without JetStream, the hub down at
 * start), from `$SRV.PING.syncd-reconciler` answered by every reconciler instance of the mesh, each
 * reply's metadata naming its site and JetStream domain. No static peer lists.
 */
import { Empty, type Msg, type NatsConnection } from "@nats-io/nats-core";
import { ServiceName, inCurrentMesh } from "../lib/subjects.ts";
import type { MeshTransport } from "../lib/transport.ts";

/** A peer site as known from discovery. */
export type Peer = {
  site: string;
  domain: string;
  /** the buckets the peer replicates (from its metadata), if it said */
  buckets?: string[];
  /** ms epoch of the last PING reply */
  lastSeen: number;
  /** discoveries in a row it missed */
  misses: number;
  /** false after it missed discoveries or a run against it found nobody answering */
  reachable: boolean;
};

/** What a discovery round changed. */
export type DiscoveryResult = { added: Peer[]; healed: Peer[]; lost: Peer[] };

type PingReply = { metadata?: Record<string, string> };

/** Discoveries a known peer may miss before it counts as unreachable. */
const MISSES_UNTIL_LOST = 2;

/**
 * Collect every PING reply for `waitMs`: the sites (other than `self`) and their domains. With a
 * transport, the PING also goes through the hub relay (a hub that isolates leaf interest).
 */
export async function ping(
  nc: NatsConnection,
  self: string,
  waitMs = 500,
  transport?: MeshTransport,
): Promise<Map<string, { domain: string; buckets?: string[] }>> {
  const found = new Map<string, { domain: string; buckets?: string[] }>();
  const subject = `$SRV.PING.${ServiceName.reconciler}`;
  const replies: AsyncIterable<Msg> | Msg[] = transport
    ? await transport.collect(subject, Empty, waitMs)
    : await nc.requestMany(subject, Empty, { strategy: "timer", maxWait: waitMs });
  for await (const m of replies) {
    let r: PingReply;
    try {
      r = m.json<PingReply>();
    } catch {
      continue;
    }
    const site = r.metadata?.site;
    if (!site || site === self || found.has(site) || !inCurrentMesh(r.metadata)) continue;
    const b = r.metadata?.buckets;
    found.set(site, {
      domain: r.metadata?.domain || site,
      ...(b ? { buckets: b.split(",").filter(Boolean) } : {}),
    });
  }
  return found;
}

/** The peers of a site, updated by discovery rounds and by run failures. */
export class PeerBook {
  readonly peers = new Map<string, Peer>();
  constructor(readonly self: string) {}

  /**
   * Make the peers exactly these members (the members bucket is the truth once the site joined):
   * new ones are added reachable, the ones no longer members are forgotten.
   */
  sync(
    members: Map<string, { domain: string; buckets?: string[] | undefined }>,
    now = Date.now(),
  ): { added: Peer[]; removed: string[] } {
    const out: { added: Peer[]; removed: string[] } = { added: [], removed: [] };
    for (const [site, m] of members) {
      if (site === this.self) continue;
      const p = this.peers.get(site);
      if (p) {
        p.domain = m.domain;
        if (m.buckets) p.buckets = m.buckets;
        continue;
      }
      const fresh: Peer = {
        site,
        domain: m.domain,
        ...(m.buckets ? { buckets: m.buckets } : {}),
        lastSeen: now,
        misses: 0,
        reachable: true,
      };
      this.peers.set(site, fresh);
      out.added.push(fresh);
    }
    for (const site of [...this.peers.keys()]) {
      if (members.has(site)) continue;
      this.peers.delete(site);
      out.removed.push(site);
    }
    return out;
  }

  /** A run against the peer worked: reachable again. True when it was not before (a heal). */
  markReachable(site: string, now = Date.now()): boolean {
    const p = this.peers.get(site);
    if (!p) return false;
    p.lastSeen = now;
    p.misses = 0;
    if (p.reachable) return false;
    p.reachable = true;
    return true;
  }

  /** Fold one discovery round in. */
  update(found: Map<string, { domain: string; buckets?: string[] }>, now = Date.now()): DiscoveryResult {
    const out: DiscoveryResult = { added: [], healed: [], lost: [] };
    for (const [site, info] of found) {
      const p = this.peers.get(site);
      if (!p) {
        const fresh: Peer = { site, ...info, lastSeen: now, misses: 0, reachable: true };
        this.peers.set(site, fresh);
        out.added.push(fresh);
        continue;
      }
      p.domain = info.domain;
      if (info.buckets) p.buckets = info.buckets;
      p.lastSeen = now;
      p.misses = 0;
      if (!p.reachable) {
        p.reachable = true;
        out.healed.push(p);
      }
    }
    for (const p of this.peers.values()) {
      if (found.has(p.site)) continue;
      p.misses++;
      if (p.reachable && p.misses >= MISSES_UNTIL_LOST) {
        p.reachable = false;
        out.lost.push(p);
      }
    }
    return out;
  }

  /** A run found nobody answering at this peer: the next discovery that sees it is a heal. */
  markUnreachable(site: string): void {
    const p = this.peers.get(site);
    if (p) p.reachable = false;
  }

  /** Sites of the known peers, sorted. */
  sites(): string[] {
    return [...this.peers.keys()].sort();
  }

  /** Sites of the peers that are not reachable now, sorted. */
  unreachable(): string[] {
    return [...this.peers.values()]
      .filter((p) => !p.reachable)
      .map((p) => p.site)
      .sort();
  }
}
