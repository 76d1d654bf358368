/**
 * syncd-merger: applies ops by LWW (DESIGN §4, merger steps 1-4).
 *
 * `_meta` is the commit point: an op that wins is first committed there (compare-and-set), then
 * written to the bucket with its version headers and "expected last subject sequence" = the entry
 * it compared against. The merger never overwrites a local write that the watcher has not stamped
 * yet: that write will be stamped above the committed version (it happened later) and wins
 * everywhere. A redelivered op whose version equals `_meta` only repairs the bucket if it must.
 */
import { SyncdError } from "../lib/errors.ts";
import { type Versioned, compare, compareBytes, compareVersions, valueHash } from "../lib/lww.ts";
import { type Op, opValueSize, opVersioned } from "../lib/op.ts";
import type { MergerMergeResponse } from "../lib/schemas.gen.ts";
import {
  type BucketEntry,
  type BucketStoreLike,
  type MetaEntry,
  type MetaStoreLike,
  type Version,
  coveredRev,
  isCasConflict,
  mergerHeaderBytes,
  mergerVersion,
  stampVersion,
} from "../lib/stores.ts";

/** The stores of one bucket. */
export type BucketState = {
  meta: MetaStoreLike;
  data: BucketStoreLike;
  maxValueSize: number;
  /** the server's max_payload: a merger write (value + version headers) must fit in one message */
  maxPayload?: number;
  /** the bucket's current incarnation (see bucketIncarnation); unknown: revisions are taken as they are */
  incarnation?: () => number;
};

/** What applying an op needs. */
export type MergeDeps = {
  buckets: Map<string, BucketState>;
  /** advance the site clock past ts (refuses skew); resolves when persisted */
  observe: (ts: number) => Promise<void>;
  /** throws SyncdError(SYNCD_ERR_CLOCK_SKEW) when ts is too far ahead */
  checkSkew: (ts: number) => void;
  /**
   * this site's node id: an op of its own found unstamped in the bucket while `_meta` has no entry
   * (`_meta` wiped or purged) is taken as that write's stamp
   */
  nodeId?: string;
  /** told about every conflict: an op that lost, or a value of another node that an op replaced */
  onConflict?: (c: Conflict) => void;
};

/** One side of a conflict. */
export type ConflictSide = { ts: number; node_id: string; deleted: boolean; value?: Uint8Array | undefined };

/** A conflict, as the conflict log keeps it (schemas/conflict.json). */
export type Conflict = {
  bucket: string;
  key: string;
  kind: "stale_op" | "overwritten";
  loser: ConflictSide;
  winner: ConflictSide;
};

/** The outcomes of merge, as on the wire. */
export const MergeResult = { applied: "applied", stale: "stale", duplicate: "duplicate" } as const;

const MAX_ATTEMPTS = 100;

/**
 * True when the bucket shows version `metaVersion`: for a merger commit, the latest entry carries exactly
 * that version in its headers; for a stamped local write, the latest entry is that write.
 */
export function bucketHolds(metaVersion: Version, latest: BucketEntry | null, inc?: number): boolean {
  if (!latest) return false;
  if (metaVersion.merged) {
    if (
      latest.version === null ||
      !sameVersion(latest.version, metaVersion) ||
      latest.deleted !== metaVersion.deleted
    )
      return false;
    return metaVersion.deleted || !metaVersion.vh || valueHash(latest.value) === metaVersion.vh;
  }
  return latest.version === null && latest.rev === covered(metaVersion, latest, inc);
}

/**
 * The bucket revision `_meta`'s version covers now: 0 when it was written in another incarnation of
 * the bucket, or when the key's latest entry is older than it (the bucket was re-created and its
 * new incarnation not seen yet, or the entry was removed).
 */
export function covered(metaVersion: Version | undefined, latest: BucketEntry | null, inc?: number): number {
  if (!metaVersion) return 0;
  const r = coveredRev(metaVersion, inc);
  return latest !== null && latest.rev < r ? 0 : r;
}

/**
 * Whether the bucket shows a newer commit than the `_meta` read (which then is stale): a greater
 * version in the headers, a tombstone of the same version, or the same version with greater bytes.
 * "unknown" when the bucket holds other bytes at the same version and this op does not carry
 * `_meta`'s bytes to compare them with.
 */
export function bucketAhead(
  metaVersion: Version,
  latest: BucketEntry | null,
  incoming: Versioned,
): boolean | "unknown" {
  if (!latest?.version) return false;
  const c = compareVersions(latest.version, metaVersion);
  if (c !== 0) return c > 0;
  if (latest.deleted !== metaVersion.deleted) return latest.deleted;
  if (metaVersion.deleted || !metaVersion.vh || valueHash(latest.value) === metaVersion.vh) return false;
  if (!incoming.deleted && incoming.value && valueHash(incoming.value) === metaVersion.vh) {
    return compareBytes(latest.value, incoming.value) > 0;
  }
  return "unknown";
}

/**
 * True when the bucket's latest entry is a local write the watcher has not stamped yet (its
 * revision is above everything `_meta` covers). The merger never overwrites it: it will be stamped
 * above whatever `_meta` holds then — it happened later — and win everywhere.
 */
export function pendingLocal(
  metaVersion: Version | undefined,
  latest: BucketEntry | null,
  inc?: number,
): boolean {
  return latest !== null && latest.version === null && latest.rev > covered(metaVersion, latest, inc);
}

/** Whether a bucket entry shows what an op writes: both tombstones, or both puts of the same bytes. */
function sameWrite(e: BucketEntry, v: Versioned): boolean {
  if (e.deleted || v.deleted) return e.deleted === v.deleted;
  return compareBytes(e.value, v.value ?? new Uint8Array()) === 0;
}

function sameVersion(a: { ts: number; node_id: string }, b: { ts: number; node_id: string }): boolean {
  return a.ts === b.ts && a.node_id === b.node_id;
}

/** Two puts of the same version (only hand-made ops can differ in their bytes then). */
function sameContentVersion(incoming: Versioned, metaVersion: Version): boolean {
  return sameVersion(incoming, metaVersion) && !incoming.deleted && !metaVersion.deleted;
}

/**
 * Equal versions with different bytes while the bucket does not show `_meta`'s bytes yet (its
 * write is in flight): decided on a retry, once the bucket holds them.
 */
function undecidable(b: BucketState, op: Op): SyncdError {
  // the `_meta` read may be a stale cache entry: the retry reads the server
  b.meta.invalidate?.(op.key);
  return new SyncdError(
    "SYNCD_ERR_CONFLICT",
    `key "${op.key}": same version with other bytes still being written; retry`,
  );
}

/** The register state `_meta` describes, with the value bytes when the bucket holds them. */
function currentState(metaVersion: Version, latest: BucketEntry | null, inc?: number): Versioned {
  const value = latest && !latest.deleted && bucketHolds(metaVersion, latest, inc) ? latest.value : undefined;
  return { ts: metaVersion.ts, node_id: metaVersion.node_id, deleted: metaVersion.deleted, value };
}

/**
 * At least the bytes of a merger write's version headers ({@link mergerHeaderBytes}) for a node id:
 * the fixed lines (`NATS/1.0`, `Syncd-Ts`, `Syncd-Node`, the delete marker, the revision condition,
 * each with a 16-digit number at most) fit in 160 bytes, the node id in 3 bytes per UTF-16 unit.
 */
export function headerBytesBound(nodeId: string): number {
  return 160 + 3 * nodeId.length;
}

/** Check what does not depend on the site's state: bucket known, value size, clock skew. */
export function admit(deps: MergeDeps, op: Op): BucketState {
  const b = deps.buckets.get(op.bucket);
  if (!b) throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", `"${op.bucket}"`);
  const limits = [b.maxValueSize, b.maxPayload ?? -1].filter((n) => n >= 0);
  if (op.op === "put" && limits.length > 0) {
    // the server counts headers toward the limit: the version headers must fit too
    const limit = Math.min(...limits);
    const value = opValueSize(op);
    // the headers are built only when the value comes near the limit
    const size =
      value + headerBytesBound(op.node_id) <= limit
        ? value
        : value + mergerHeaderBytes({ ...op, deleted: false });
    if (size > limit) {
      throw new SyncdError("SYNCD_ERR_TOO_LARGE", `${size} > ${limit} bytes (value and version headers)`);
    }
  }
  deps.checkSkew(op.ts);
  return b;
}

/** Apply one (validated) op by LWW. Idempotent; safe to run concurrently with itself and the watcher. */
export function applyOp(deps: MergeDeps, op: Op): Promise<MergerMergeResponse> {
  return applyAdmitted(deps, admit(deps, op), op);
}

/**
 * Run one compare-and-set step; true when it lost a race (the caller reads `_meta` and the bucket
 * again and starts over), any other error is thrown.
 */
async function lostRace(step: () => Promise<unknown>): Promise<boolean> {
  try {
    await step();
    return false;
  } catch (err) {
    if (isCasConflict(err)) return true;
    throw err;
  }
}

/** {@link applyOp} for an op `admit` already accepted, with the bucket it returned. */
export async function applyAdmitted(deps: MergeDeps, b: BucketState, op: Op): Promise<MergerMergeResponse> {
  await deps.observe(op.ts);
  const incoming = opVersioned(op);
  const reply = (result: MergerMergeResponse["result"], v: { ts: number; node_id: string }) => ({
    result,
    bucket: op.bucket,
    key: op.key,
    ts: v.ts,
    node_id: v.node_id,
  });
  let committed = false;
  let aheadOf: number | undefined;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    // _meta first, then the bucket: the bucket read is never older than the _meta read.
    const metaEntry = await b.meta.get(op.key);
    const latestEntry = await b.data.latest(op.key);
    const metaVersion = metaEntry?.version;
    const writeBucket = () => b.data.write(op.key, incoming, latestEntry?.rev ?? 0);
    // a merger wrote a newer version than the _meta we read: our read is stale. Unless a fresh read
    // of the same `_meta` revision shows it again: a merger commits `_meta` first, so that entry was
    // written behind the services' back and is no newer commit (LWW below decides over it).
    const ahead = metaVersion ? bucketAhead(metaVersion, latestEntry, incoming) : false;
    if (ahead === true && aheadOf !== metaEntry?.revision) {
      aheadOf = metaEntry?.revision;
      b.meta.invalidate?.(op.key);
      continue;
    }
    if (ahead === "unknown") throw undecidable(b, op);
    const inc = b.incarnation?.();
    const current = metaVersion ? currentState(metaVersion, latestEntry, inc) : null;
    let cmp = current ? compare(incoming, current) : 1;
    // same version, `_meta`'s bytes not in the bucket yet: only the value hash can tell them apart
    if (
      metaVersion &&
      current &&
      cmp !== 0 &&
      current.value === undefined &&
      sameContentVersion(incoming, metaVersion)
    ) {
      if (!metaVersion.vh) cmp = compare(incoming, current);
      else if (valueHash(incoming.value ?? new Uint8Array()) === metaVersion.vh) cmp = 0;
      else throw undecidable(b, op);
    }
    if (metaVersion && current && cmp < 0) {
      if (current.node_id !== incoming.node_id) {
        deps.onConflict?.({
          bucket: op.bucket,
          key: op.key,
          kind: "stale_op",
          loser: incoming,
          winner: current,
        });
      }
      return reply(MergeResult.stale, metaVersion);
    }
    if (metaVersion && cmp === 0) {
      const done = committed ? MergeResult.applied : MergeResult.duplicate;
      if (bucketHolds(metaVersion, latestEntry, inc)) return reply(done, metaVersion);
      // a local write slipped in after the commit: it will be stamped above this version
      if (pendingLocal(metaVersion, latestEntry, inc)) return reply(MergeResult.stale, metaVersion);
      if (await lostRace(writeBucket)) continue;
      return reply(done, metaVersion);
    }
    const pending = pendingLocal(metaVersion, latestEntry, inc);
    if (
      pending &&
      !metaVersion &&
      latestEntry &&
      incoming.node_id === deps.nodeId &&
      sameWrite(latestEntry, incoming)
    ) {
      // the watcher stamped this local write long ago and `_meta` lost it: the op is that stamp
      const stamp = stampVersion(incoming, latestEntry.rev, inc);
      if (await lostRace(() => b.meta.cas(op.key, stamp, metaEntry))) continue;
      return reply(MergeResult.duplicate, stamp);
    }
    const cov = covered(metaVersion, latestEntry, inc);
    const version = mergerVersion(incoming, pending ? cov : Math.max(cov, latestEntry?.rev ?? 0), inc);
    if (await lostRace(() => b.meta.cas(op.key, version, metaEntry))) continue;
    committed = true;
    if (pending) return reply(MergeResult.stale, version);
    // Always write, also a tombstone over "no entry": only the conditional write can tell
    // whether the bucket moved since it was read.
    if (await lostRace(writeBucket)) continue;
    if (current && current.node_id !== incoming.node_id && !(current.deleted && incoming.deleted)) {
      deps.onConflict?.({
        bucket: op.bucket,
        key: op.key,
        kind: "overwritten",
        loser: current,
        winner: incoming,
      });
    }
    return reply(MergeResult.applied, version);
  }
  throw new SyncdError("SYNCD_ERR_CONFLICT", `key "${op.key}": lost ${MAX_ATTEMPTS} races`);
}

/**
 * What `_meta` already says about an op this site published itself (its origin subject
 * `rep.kv.ops.<site>.…` in the site's FEED, back from the hub's aggregate): such an op was committed
 * to this site's `_meta` before it was published, so `_meta` holds it or a greater version. Returns
 * the outcome without a store call when the `_meta` entry read (the watch-fed cache) shows that —
 * "duplicate" for the same write, "stale" for a newer version of the same node (no conflict to
 * record) — and null when it does not (a wiped `_meta`, a site rejoining under its name, a cache
 * behind, a newer version of another node): the op is then applied as any other.
 */
export function ownOpSettled(metaEntry: MetaEntry | null, op: Op): "duplicate" | "stale" | null {
  const v = metaEntry?.version;
  if (!v) return null;
  const c = compareVersions(v, op);
  if (c > 0) return v.node_id === op.node_id ? MergeResult.stale : null;
  if (c < 0 || v.deleted !== (op.op === "delete")) return null;
  if (v.deleted || !v.vh) return MergeResult.duplicate;
  return valueHash(opVersioned(op).value ?? new Uint8Array()) === v.vh ? MergeResult.duplicate : null;
}

/**
 * Of two ops of one key waiting together, the one to apply: the greater by LWW (the other is stale
 * and acked once the winner is durable); of equal ones a hand-made op (only it is forwarded), else
 * the one waiting.
 */
export function greaterOp(
  waiting: { op: Op; handMade: boolean },
  newcomer: { op: Op; handMade: boolean },
): "waiting" | "newcomer" {
  const c = compare(opVersioned(waiting.op), opVersioned(newcomer.op));
  if (c !== 0) return c > 0 ? "waiting" : "newcomer";
  return newcomer.handMade && !waiting.handMade ? "newcomer" : "waiting";
}

/**
 * Keys whose value vanished from the bucket without an op: `_meta` holds a live version (a put)
 * while the bucket has no entry for the key — the bucket was purged or re-created, or the entry
 * removed. Returns key → the version `_meta` holds.
 */
export async function findVanished(b: BucketState, keys: AsyncIterable<string> | Iterable<string>) {
  const vanished = new Map<string, MetaEntry>();
  for await (const key of keys) {
    const metaEntry = await b.meta.get(key);
    if (!metaEntry || metaEntry.version.deleted) continue;
    if ((await b.data.latest(key)) === null) vanished.set(key, metaEntry);
  }
  return vanished;
}

/**
 * Put vanished values back from the ops that carried them (the site's op streams): an op whose
 * version (and value hash) is the one `_meta` holds is committed again as a merger write covering
 * nothing of the current incarnation, then written with its version headers — so the watcher sees
 * an echo, not a new write. A local write that slipped in wins as usual (it is stamped above).
 * Returns what was repaired; the keys left in `vanished` had no op to repair from, or the bucket
 * refused the write (then `refused`, when given, holds why, per key).
 */
export async function repairVanished(
  b: BucketState,
  vanished: Map<string, MetaEntry>,
  ops: AsyncIterable<Op>,
  refused?: Map<string, string>,
): Promise<number> {
  let repaired = 0;
  for await (const op of ops) {
    if (vanished.size === 0) break;
    const metaEntry = vanished.get(op.key);
    if (
      !metaEntry ||
      op.op !== "put" ||
      op.ts !== metaEntry.version.ts ||
      op.node_id !== metaEntry.version.node_id
    )
      continue;
    const incoming = opVersioned(op);
    const value = incoming.value ?? new Uint8Array();
    if (metaEntry.version.vh && valueHash(value) !== metaEntry.version.vh) continue;
    vanished.delete(op.key);
    const version = mergerVersion(incoming, 0, b.incarnation?.());
    try {
      await b.meta.cas(op.key, version, metaEntry);
      await b.data.write(op.key, incoming, 0);
      repaired++;
    } catch (err) {
      // `_meta` or the bucket moved meanwhile: a newer write of the key is under way, nothing to repair
      if (isCasConflict(err)) continue;
      // any other refusal (e.g. too large, a full bucket): the key stays vanished, raised by the caller
      vanished.set(op.key, metaEntry);
      refused?.set(op.key, (err as Error)?.message ?? String(err));
    }
  }
  return repaired;
}
