/**
 * Mesh membership (#11.4): a KV bucket in the hub's JetStream domain (`syncd_members`). Each site's
 * reconciler claims its JetStream domain (`domains.<domain>`) and its name (`sites.<site>`) with its
 * site identity (a random id kept at the site, `syncd_site`/`identity`), then watches `sites.>`:
 * the initial values once, then only changes. Joining needs nothing done at the other sites, and
 * discovery costs a site one watch, not a request answered by every site every round.
 *
 * A claim already held by another identity is another site with the same name or domain: this site
 * is refused (state "refused", logged as an error, anti-entropy off); the site that claimed first is
 * not touched, but sees it: the refused site records its attempt under `refused.<owner>.<identity>`
 * (schemas/reconciler/refused.json), and the owner's watch raises DUPLICATE_SITE (error) while that
 * record exists, at most {@link REFUSED_KEEP_MS} after the last attempt. A site rebuilt from scratch
 * has a new identity: `syncd site remove <name>` first.
 */
import { randomUUID } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { type KV, type KvWatchEntry, Kvm } from "@nats-io/kv";
import { Empty, type NatsConnection, type QueuedIterator } from "@nats-io/nats-core";
import { Conditions, Severity, healthOf } from "../lib/health.ts";
import type { Logger } from "../lib/logger.ts";
import { validate } from "../lib/schema-registry.ts";
import type { ReconcilerMember, ReconcilerRefused } from "../lib/schemas.gen.ts";
import { openOrCreateKv } from "../lib/site.ts";
import { isCasConflict } from "../lib/stores.ts";
import {
  IDENTITY_KEY,
  MEMBERS_BUCKET,
  SITE_BUCKET,
  domainKey,
  memberKey,
  refusedKey,
} from "../lib/subjects.ts";

const health = healthOf("reconciler");

/** A member record (schemas/reconciler/member.json). */
export type Member = ReconcilerMember;

/** The record of a refused join attempt (schemas/reconciler/refused.json). */
export type RefusedAttempt = ReconcilerRefused;

/** How long after its last attempt a refused site's record keeps DUPLICATE_SITE raised at the owner (24 h). */
export const REFUSED_KEEP_MS = 24 * 3600_000;

/** joining: not registered yet (hub unreachable or without JetStream); member; refused; removed. */
export type MembershipState = "joining" | "member" | "refused" | "removed";

/** What the membership needs. */
export type MembershipDeps = {
  nc: NatsConnection;
  /** the site's own key-value manager (its identity lives at the site) */
  kvm: Kvm;
  hubDomain: string;
  /** replicas of the members bucket when this site creates it (the hub's replicas) */
  hubReplicas?: number;
  self: { site: string; domain: string; node_id: string; buckets: string[] };
  log: Logger;
  /** ms between attempts while the hub cannot be reached (default 5000) */
  retryMs?: number;
  /** told after the other sites' records changed (read them from `members`) */
  onChange: () => void;
  /** told once when the site is refused (after the error is logged) */
  onRefused?: (why: string) => void;
};

/** Another site holds this site's name or domain. */
export class MembershipRefused extends Error {
  constructor(
    readonly key: string,
    readonly holder: Member,
  ) {
    super(
      `${key} is held by another site (site ${holder.site}, domain ${holder.domain}, identity ${holder.identity}); if this is that site rebuilt, run \`syncd site remove ${holder.site}\` first`,
    );
    this.name = "MembershipRefused";
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const SITES_PREFIX = "sites.";
const REFUSED_PREFIX = "refused.";

function parseMember(data: Uint8Array): Member | null {
  try {
    const v: unknown = JSON.parse(dec.decode(data));
    return validate("reconciler/member.json", v) === null ? (v as Member) : null;
  } catch {
    return null;
  }
}

function parseRefused(data: Uint8Array): RefusedAttempt | null {
  try {
    const v: unknown = JSON.parse(dec.decode(data));
    return validate("reconciler/refused.json", v) === null ? (v as RefusedAttempt) : null;
  } catch {
    return null;
  }
}

/** The site's identity, made once and kept at the site. */
export async function siteIdentity(kvm: Kvm): Promise<string> {
  const kv = await openOrCreateKv(kvm, SITE_BUCKET);
  for (;;) {
    const e = await kv.get(IDENTITY_KEY);
    if (e?.operation === "PUT" && e.value.length > 0) return e.string();
    try {
      await kv.create(IDENTITY_KEY, enc.encode(randomUUID()));
    } catch (err) {
      if (!isCasConflict(err)) throw err;
    }
  }
}

/** The members bucket in the hub's domain (created when missing, with `replicas`). */
export function membersBucket(nc: NatsConnection, hubDomain: string, replicas = 1): Promise<KV> {
  return openOrCreateKv(new Kvm(jetstream(nc, { domain: hubDomain, timeout: 5000 })), MEMBERS_BUCKET, {
    replicas,
  });
}

/**
 * Write `rec` under `key` unless another identity holds it (throws MembershipRefused). Returns
 * the record as stored.
 */
export async function claim(kv: KV, key: string, rec: Member): Promise<Member> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await kv.get(key);
    const have = e?.operation === "PUT" ? parseMember(e.value) : null;
    if (have && have.identity !== rec.identity) throw new MembershipRefused(key, have);
    const want: Member = { ...rec, joined: have?.joined ?? rec.joined ?? new Date().toISOString() };
    if (have && JSON.stringify(have) === JSON.stringify(want)) return have;
    try {
      if (e?.operation === "PUT") await kv.update(key, enc.encode(JSON.stringify(want)), e.revision);
      else await kv.create(key, enc.encode(JSON.stringify(want)));
      return want;
    } catch (err) {
      if (isCasConflict(err)) continue;
      throw err;
    }
  }
  throw new Error(`${key}: kept losing the compare-and-set`);
}

/** This site's membership: registration, refusal, and the other sites' records. */
export class Membership {
  state: MembershipState = "joining";
  /** why the site was refused */
  refusal: string | undefined;
  identity: string | undefined;
  /** the other sites, by name */
  readonly members = new Map<string, Member>();
  private watcher: QueuedIterator<KvWatchEntry> | undefined;
  private kv: KV | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private failures = 0;
  /** the hub sequence this site has applied up to, as last published (services/reconciler/tombstones.ts) */
  private applied: number | undefined;

  constructor(private readonly deps: MembershipDeps) {}

  /**
   * Publish in this site's member record how far its merger has applied the hub aggregate (the
   * tombstone collection mark). Kept across re-joins.
   */
  async publishApplied(seq: number): Promise<void> {
    if (this.state !== "member" || !this.identity) return;
    this.applied = seq;
    const kv = await membersBucket(this.deps.nc, this.deps.hubDomain, this.deps.hubReplicas || 1);
    await claim(kv, memberKey(this.deps.self.site), this.record(this.identity));
  }

  private record(identity: string): Member {
    const rec: Member = { ...this.deps.self, identity };
    if (this.applied !== undefined) rec.applied = this.applied;
    return rec;
  }

  /** True when the hub's JetStream answers within `timeoutMs` (the site's link to the mesh is up). */
  async hubReachable(timeoutMs: number): Promise<boolean> {
    try {
      await this.deps.nc.request(`$JS.${this.deps.hubDomain}.API.INFO`, Empty, { timeout: timeoutMs });
      return true;
    } catch {
      return false;
    }
  }

  /** Join in the background (retrying while the hub cannot be reached). */
  start(): void {
    void this.attempt();
  }

  /** Stop watching. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.watcher?.stop();
  }

  private async attempt(): Promise<void> {
    if (this.stopped || this.state === "refused") return;
    try {
      await this.join();
      this.failures = 0;
    } catch (err) {
      if (err instanceof MembershipRefused) {
        this.refuse(err.message);
        return;
      }
      this.failures++;
      const level = this.failures === 1 ? "warn" : "debug";
      this.deps.log[level](
        { err, hubDomain: this.deps.hubDomain, attempt: this.failures },
        "cannot reach the members bucket at the hub; discovering peers by PING meanwhile",
      );
      if (!this.stopped) this.timer = setTimeout(() => void this.attempt(), this.deps.retryMs ?? 5000);
    }
  }

  private refuse(why: string): void {
    this.state = "refused";
    this.refusal = why;
    this.watcher?.stop();
    this.deps.log.error(
      { site: this.deps.self.site, domain: this.deps.self.domain, reason: why },
      "SITE REFUSED: another site of the mesh has this site's name or JetStream domain; anti-entropy is off until this is resolved",
    );
    this.deps.onRefused?.(why);
  }

  private async join(): Promise<void> {
    const { self } = this.deps;
    this.identity ??= await siteIdentity(this.deps.kvm);
    const kv = await membersBucket(this.deps.nc, this.deps.hubDomain, this.deps.hubReplicas || 1);
    const rec = this.record(this.identity);
    // check both claims before writing either: a refused site leaves nothing in the bucket
    for (const key of [domainKey(self.domain), memberKey(self.site)]) {
      const e = await kv.get(key);
      const have = e?.operation === "PUT" ? parseMember(e.value) : null;
      if (have && have.identity !== this.identity) {
        await this.recordAttempt(kv, key, have);
        throw new MembershipRefused(key, have);
      }
    }
    await claim(kv, domainKey(self.domain), {
      site: self.site,
      domain: self.domain,
      identity: this.identity,
    });
    await claim(kv, memberKey(self.site), rec);
    await this.follow(kv);
    if (this.state === "joining") {
      this.state = "member";
      this.deps.onChange();
      this.deps.log.info(
        { site: self.site, members: this.members.size + 1, identity: this.identity },
        "joined the mesh",
      );
    }
  }

  /**
   * Leave a record of this refused attempt for the site holding `key` (its reconciler raises
   * DUPLICATE_SITE): who tried, from which server, when. Best effort: the refusal stands without it.
   */
  private async recordAttempt(kv: KV, key: string, holder: Member): Promise<void> {
    const { self, nc, log } = this.deps;
    const id = refusedKey(holder.site, this.identity ?? "");
    try {
      const e = await kv.get(id);
      const prev = e?.operation === "PUT" ? parseRefused(e.value) : null;
      const rec: RefusedAttempt = {
        key,
        site: self.site,
        domain: self.domain,
        identity: this.identity ?? "",
        ...(nc.info?.server_id ? { server_id: nc.info.server_id } : {}),
        ...(nc.info?.server_name ? { server_name: nc.info.server_name } : {}),
        at: new Date().toISOString(),
        attempts: (prev?.attempts ?? 0) + 1,
      };
      await kv.put(id, enc.encode(JSON.stringify(rec)));
    } catch (err) {
      log.warn({ err, key: id }, "could not record the refused attempt in the members bucket");
    }
  }

  /**
   * A refused attempt on this site's name or domain (`refused.<self>.<identity>`): raise
   * DUPLICATE_SITE while the record is there and younger than {@link REFUSED_KEEP_MS}; delete an
   * older one.
   */
  private applyRefused(e: KvWatchEntry): void {
    const own = `${REFUSED_PREFIX}${this.deps.self.site}.`;
    if (!e.key.startsWith(own)) return;
    const subject = e.key.slice(own.length);
    const r = e.operation === "PUT" ? parseRefused(e.value) : null;
    const at = r ? Date.parse(r.at) : Number.NaN;
    const left = (Number.isFinite(at) ? at : e.created.getTime()) + REFUSED_KEEP_MS - Date.now();
    if (e.operation !== "PUT" || left <= 0) {
      health.clear(Conditions.duplicateSite, subject);
      if (e.operation === "PUT") void this.kv?.delete(e.key).catch(() => {});
      return;
    }
    const who = r
      ? `site ${r.site}, domain ${r.domain}, server ${r.server_name ?? "?"} (${r.server_id ?? "?"}), identity ${r.identity}`
      : `identity ${subject}`;
    const message = `another server tried to join the mesh with this site's ${r?.key.startsWith("domains.") ? "JetStream domain" : "name"} and was refused (${who}; ${r?.attempts ?? 1} attempt(s), last ${r?.at ?? e.created.toISOString()}): give it a name and domain of its own, or stop it; then delete ${MEMBERS_BUCKET} ${e.key}`;
    this.deps.log.error({ attempt: r ?? undefined, key: e.key }, `DUPLICATE SITE: ${message}`);
    health.raise(Conditions.duplicateSite, Severity.error, {
      message,
      subject,
      ttlMs: left,
      ...(r ? { data: { ...r } } : {}),
    });
  }

  /**
   * Watch the members bucket (`sites.>` for the members, `refused.<self>.>` for duplicates of this
   * site): initial values once, then changes; restart (re-join) when the watch ends.
   */
  private async follow(kv: KV): Promise<void> {
    this.watcher?.stop();
    this.kv = kv;
    const seen = new Set<string>();
    const initial = (await kv.status()).values;
    const it = await kv.watch({ key: ">" });
    this.watcher = it;
    let caughtUp: () => void = () => {};
    const done = new Promise<void>((r) => {
      caughtUp = r;
    });
    let isCaughtUp = initial === 0;
    if (isCaughtUp) caughtUp();
    void (async () => {
      try {
        for await (const e of it) {
          if (e.key.startsWith(SITES_PREFIX)) seen.add(e.key.slice(SITES_PREFIX.length));
          if (this.apply(e) && isCaughtUp) this.deps.onChange();
          if (!isCaughtUp && (e.isUpdate || e.delta === 0)) {
            isCaughtUp = true;
            caughtUp();
          }
        }
      } catch (err) {
        this.deps.log.warn({ err }, "members watch failed");
      }
      if (!isCaughtUp) {
        isCaughtUp = true;
        caughtUp();
      }
      if (!this.stopped && this.watcher === it && this.state !== "refused" && this.state !== "removed") {
        this.state = "joining";
        this.timer = setTimeout(() => void this.attempt(), this.deps.retryMs ?? 5000);
      }
    })();
    await done;
    // records that went while no watch was running
    for (const s of [...this.members.keys()]) if (!seen.has(s)) this.members.delete(s);
  }

  /** Fold one record in; true when the other sites' records changed. */
  private apply(e: KvWatchEntry): boolean {
    if (e.key.startsWith(REFUSED_PREFIX)) this.applyRefused(e);
    if (!e.key.startsWith(SITES_PREFIX)) return false;
    const site = e.key.slice(SITES_PREFIX.length);
    if (site === this.deps.self.site) {
      if (e.operation !== "PUT") {
        this.state = "removed";
        this.deps.log.error(
          { site },
          "this site was removed from the mesh (syncd site remove): wipe its syncd state before it joins again (README Membership), or deletes collected meanwhile may come back",
        );
        return false;
      }
      const m = parseMember(e.value);
      if (m && m.identity !== this.identity) this.refuse(new MembershipRefused(e.key, m).message);
      return false;
    }
    if (e.operation !== "PUT") return this.members.delete(site);
    const m = parseMember(e.value);
    if (!m || m.site !== site) {
      this.deps.log.warn({ key: e.key }, "members bucket entry is not a member record; ignored");
      return false;
    }
    this.members.set(site, m);
    return true;
  }
}
