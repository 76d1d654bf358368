/**
 * One anti-entropy run between this site and one peer, for one bucket:
 * compare root digests; descend level by level only where digests differ (one digest request per
 * batch of prefixes of a level); list the versions under the differing small or leaf nodes on both
 * sides; compare them by LWW (equal versions with different value hashes: both ways, see
 * tree.ts plan); fetch the entries the peer wins with their values and merge them here; send the
 * entries this site wins to the peer's merger (its `merge` endpoint journals each op before
 * applying it, so a merge that dies half-way is applied again by that site's consumer). Merges are
 * pipelined (bounded) and rate-limited so a large repair does not starve live replication.
 */
import { headers } from "@nats-io/nats-core";
import { pageEntries } from "../lib/entries.ts";
import type { Logger } from "../lib/logger.ts";
import { compareVersions, valueHash } from "../lib/lww.ts";
import { type Op, encodeOpMessage, makeOp } from "../lib/op.ts";
import type {
  ReconcilerDigestResponse,
  ReconcilerEntriesRequest,
  ReconcilerEntriesResponse,
  ReconcilerRunResponse,
  ReconcilerStatusResponse,
} from "../lib/schemas.gen.ts";
import { Headers, endpointSubject, siteSubjectPrefix } from "../lib/subjects.ts";
import type { WireEntry } from "./handlers.ts";
import { type Caller, type Meter, ServiceReplyError, UnavailableError, call, callMessage } from "./rpc.ts";
import {
  type DigestSource,
  type KeyVersion,
  type NodeDigest,
  type Plan,
  type VersionTree,
  descend,
  plan,
} from "./tree.ts";
import { type ValueSource, readVersioned } from "./values.ts";

/** One run's record, as on the wire. */
export type RunRecord = ReconcilerRunResponse["runs"][number];
/** The progress of the run in progress, as shown by `status`. */
export type Progress = NonNullable<ReconcilerStatusResponse["progress"]>;

/** Prefixes per digest request (schema limit 256; 16 children each stay far below 1 MB). */
export const DIGEST_BATCH = 128;
/** Prefixes per entries request (schema limit 4096). */
export const LIST_BATCH = 1024;
/** Keys per entries-with-values request (the reply is paged anyway). */
export const FETCH_BATCH = 256;

/** Paces merges: at most `perSecond` (0 = unlimited), with a burst of a tenth of a second. */
export class RateLimiter {
  private next = 0;
  constructor(readonly perSecond: number) {}

  /** Wait for the next slot. */
  async take(): Promise<void> {
    if (this.perSecond <= 0) return;
    const now = performance.now();
    this.next = Math.max(this.next, now - 100) + 1000 / this.perSecond;
    const wait = this.next - now;
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  }
}

/** Runs tasks with at most `max` in flight; the first fatal error stops it. */
export class Pump {
  private readonly inflight = new Set<Promise<void>>();
  private fatal: Error | undefined;
  constructor(
    private readonly max: number,
    private readonly limiter: RateLimiter,
  ) {}

  /** Start a task once a slot and a rate token are free. Throws the fatal error, if any. */
  async submit(task: () => Promise<void>): Promise<void> {
    while (this.inflight.size >= this.max) await Promise.race(this.inflight);
    if (this.fatal) throw this.fatal;
    await this.limiter.take();
    const p: Promise<void> = task()
      .catch((err: unknown) => {
        this.fatal ??= err instanceof Error ? err : new Error(String(err));
      })
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  /** Wait for every task; throws the fatal error, if any. */
  async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all(this.inflight);
    if (this.fatal) throw this.fatal;
  }
}

/** What a run needs. */
export type RunDeps = {
  caller: Caller;
  /** this site */
  site: string;
  tree: VersionTree;
  values: ValueSource;
  log: Logger;
  limiter: RateLimiter;
  /** merges in flight */
  concurrency: number;
  /** stop descending where both sides hold at most this many keys */
  smallCount: number;
  /** a tombstone that counts as absence when the other side has no entry for its key (see plan) */
  absentLike?: (v: KeyVersion) => boolean;
};

const MAX_KEY_WARNINGS = 10;

/**
 * What one run with a peer learnt from its root digest: the `_meta` sequence the answering index
 * accounted for. Sent with every later request of the run (header Syncd-Min-Meta-Seq), so whichever
 * instance of the peer's reconciler answers, it answers from an index at least that new.
 */
type PeerView = { metaSeq?: number | undefined };

/** A JSON request of a run after the peer's root digest. */
function ask<T>(deps: RunDeps, subject: string, body: unknown, meter: Meter, view: PeerView): Promise<T> {
  if (view.metaSeq === undefined) return call<T>(deps.caller, subject, body, meter);
  const h = headers();
  h.set(Headers.minMetaSeq, String(view.metaSeq));
  return callMessage<T>(
    deps.caller,
    subject,
    { data: new TextEncoder().encode(JSON.stringify(body)), headers: h },
    meter,
  );
}

/** The peer's digests, fetched in batches, every byte counted. */
function remoteDigests(
  deps: RunDeps,
  peer: string,
  bucket: string,
  meter: Meter,
  view: PeerView,
): DigestSource {
  const subject = endpointSubject(peer, "reconciler", "digest");
  const ask1 = async (prefixes: string[]) => {
    const r = await ask<ReconcilerDigestResponse>(deps, subject, { bucket, prefixes }, meter, view);
    if (r.depth !== deps.tree.depth)
      throw new Error(`peer ${peer} uses tree depth ${r.depth}, this site ${deps.tree.depth}`);
    if (prefixes.length === 0) view.metaSeq = r.meta_seq;
    return r;
  };
  return {
    root: async () => (await ask1([])).root,
    children: async (prefixes) => {
      const out: NodeDigest[] = [];
      for (let i = 0; i < prefixes.length; i += DIGEST_BATCH)
        out.push(...(await ask1(prefixes.slice(i, i + DIGEST_BATCH))).nodes);
      return out;
    },
  };
}

/** Page through `entries` at the peer until every key and prefix is answered. */
async function* remoteEntries(
  deps: RunDeps,
  peer: string,
  req: ReconcilerEntriesRequest,
  meter: Meter,
  view: PeerView,
): AsyncGenerator<WireEntry[]> {
  const subject = endpointSubject(peer, "reconciler", "entries");
  yield* pageEntries(
    (body) => ask<ReconcilerEntriesResponse>(deps, subject, body, meter, view),
    req,
    () => new Error(`peer ${peer} made no progress listing entries`),
  );
}

function opOf(bucket: string, e: WireEntry): Op {
  const base = { bucket, key: e.key, ts: e.ts, node_id: e.node_id };
  if (e.deleted) return { op: "delete", ...base };
  return {
    op: "put",
    ...base,
    value: e.value ?? "",
    ...(e.encoding === "base64" ? { encoding: "base64" } : {}),
  };
}

/**
 * Equal versions of a put where only one side has a value hash (`_meta` written by older code).
 * Where this side has none, hash the local value (read with its own version, values.ts) into the
 * index: when the contents are equal, the digests agree from then on; when they differ, the key is
 * moved both ways (added to the plan) like any equal version with other contents. Where only this
 * side has one, the peer does the same when it runs against this site. The index keeps the hash
 * until `_meta` changes (or the index is rebuilt). Returns how many keys were hashed.
 */
export async function hashUnhashed(
  deps: Pick<RunDeps, "tree" | "values" | "concurrency">,
  p: Plan,
  theirs: Iterable<KeyVersion>,
): Promise<number> {
  const other = new Map<string, KeyVersion>();
  for (const e of theirs) if (!other.has(e.key)) other.set(e.key, e);
  const todo = p.unhashed.filter((k) => {
    const mine = deps.tree.get(k);
    return mine !== undefined && !mine.deleted && mine.vh === undefined;
  });
  let hashed = 0;
  const step = Math.max(1, deps.concurrency);
  for (let i = 0; i < todo.length; i += step) {
    await Promise.all(
      todo.slice(i, i + step).map(async (key) => {
        const mine = deps.tree.get(key);
        if (!mine || mine.deleted || mine.vh !== undefined) return;
        const v = await readVersioned(deps.values, key, mine);
        if (!v.ok || v.version.deleted || !v.value || compareVersions(v.version, mine) !== 0) return;
        const vh = valueHash(v.value);
        const now = deps.tree.get(key);
        if (!now || now.deleted || now.vh !== undefined || compareVersions(now, mine) !== 0) return;
        deps.tree.set(key, { ...now, vh });
        hashed++;
        const r = other.get(key);
        if (r?.vh !== undefined && r.vh !== vh) {
          p.pull.push(key);
          p.push.push(key);
        }
      }),
    );
  }
  return hashed;
}

/** A run's record, and whether it ended because the peer did not answer. */
export type RunOutcome = { record: RunRecord; peerUnavailable: boolean };

/**
 * Reconcile one bucket with one peer. Never throws: a failure ends the run early and is recorded
 * in its `error`.
 */
export async function reconcile(
  deps: RunDeps,
  peer: string,
  bucket: string,
  progress: Progress,
): Promise<RunOutcome> {
  const started = Date.now();
  const meter: Meter = { bytes: 0 };
  const rec: RunRecord = { ...emptyRecord(peer, bucket), started: new Date(started).toISOString() };
  const log = deps.log.child({ peer, bucket });
  let warnings = 0;
  const skip = (key: string, why: string, err?: unknown) => {
    rec.skipped = (rec.skipped ?? 0) + 1;
    progress.skipped = rec.skipped;
    if (warnings++ < MAX_KEY_WARNINGS)
      log.warn({ key, reason: why, ...(err ? { err } : {}) }, "key not moved");
  };
  const merge = async (site: string, op: Op): Promise<boolean> => {
    try {
      // the op's wire form: a large value travels as raw bytes, not base64 in JSON
      await callMessage(deps.caller, endpointSubject(site, "merger", "merge"), encodeOpMessage(op), meter);
      return true;
    } catch (err) {
      if (err instanceof UnavailableError) throw err;
      skip(op.key, err instanceof ServiceReplyError ? err.message : "merge failed", err);
      return false;
    }
  };
  const view: PeerView = {};
  const pump = new Pump(deps.concurrency, deps.limiter);
  let peerUnavailable = false;
  try {
    progress.phase = "digest";
    const d = await descend(deps.tree, remoteDigests(deps, peer, bucket, meter, view), {
      smallCount: deps.smallCount,
    });
    rec.ranges_descended = d.ranges;
    progress.ranges_descended = d.ranges;
    if (d.list.length > 0) {
      progress.phase = "list";
      const theirs: KeyVersion[] = [];
      for (let i = 0; i < d.list.length; i += LIST_BATCH) {
        const req = { bucket, prefixes: d.list.slice(i, i + LIST_BATCH) };
        for await (const page of remoteEntries(deps, peer, req, meter, view)) theirs.push(...page);
      }
      const p = plan(deps.tree.entries(d.list), theirs, deps.absentLike);
      if (p.unhashed.length > 0) {
        const hashed = await hashUnhashed(deps, p, theirs);
        log.debug({ unhashed: p.unhashed.length, hashed }, "hashed values of versions without vh");
      }
      rec.keys_compared = p.compared;
      progress.keys_compared = p.compared;
      progress.to_pull = p.pull.length;
      progress.to_push = p.push.length;
      log.debug({ compared: p.compared, pull: p.pull.length, push: p.push.length }, "differences found");

      progress.phase = "pull";
      for (let i = 0; i < p.pull.length; i += FETCH_BATCH) {
        const keys = p.pull.slice(i, i + FETCH_BATCH);
        const seen = new Set<string>();
        for await (const page of remoteEntries(deps, peer, { bucket, keys, values: true }, meter, view)) {
          for (const e of page) {
            seen.add(e.key);
            if (e.omitted) {
              skip(e.key, `value ${e.omitted} at ${peer}`);
              continue;
            }
            await pump.submit(async () => {
              if (await merge(deps.site, opOf(bucket, e))) {
                rec.pulled++;
                progress.pulled = rec.pulled;
              }
            });
          }
        }
        for (const k of keys) if (!seen.has(k)) skip(k, `gone at ${peer}`);
      }
      progress.phase = "push";
      for (const key of p.push) {
        await pump.submit(async () => {
          const v = await readVersioned(deps.values, key, deps.tree.get(key));
          if (!v.ok) {
            skip(key, `value ${v.reason} here`);
            return;
          }
          const op = makeOp({
            bucket,
            key,
            ts: v.version.ts,
            nodeId: v.version.node_id,
            deleted: v.version.deleted,
            ...(v.value ? { value: v.value } : {}),
          });
          if (await merge(peer, op)) {
            rec.pushed++;
            progress.pushed = rec.pushed;
          }
        });
      }
      await pump.drain();
    }
  } catch (err) {
    rec.error = (err as Error).message ?? String(err);
    peerUnavailable = err instanceof UnavailableError && err.subject.startsWith(siteSubjectPrefix(peer));
    log.warn({ err }, "reconcile run failed");
    await pump.drain().catch(() => {});
  }
  progress.phase = "done";
  rec.entries_moved = rec.pulled + rec.pushed;
  rec.bytes = meter.bytes;
  rec.ms = Date.now() - started;
  return { record: rec, peerUnavailable };
}

/** A run record with nothing done yet (and the error that stopped it, if any). */
export function emptyRecord(peer: string, bucket: string, error?: string): RunRecord {
  return {
    peer,
    bucket,
    keys_compared: 0,
    ranges_descended: 0,
    entries_moved: 0,
    bytes: 0,
    pulled: 0,
    pushed: 0,
    skipped: 0,
    ms: 0,
    ...(error !== undefined ? { error } : {}),
  };
}
