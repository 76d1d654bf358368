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
import { type Versioned, compare } from "../lib/lww.ts";
import { type Op, opValue, opVersioned } from "../lib/op.ts";
import type { MergerMergeResponse } from "../lib/schemas.gen.ts";
import {
  type BucketEntry,
  type BucketStoreLike,
  type MetaEntry,
  type MetaStoreLike,
  isCasConflict,
} from "../lib/stores.ts";

/** The stores of one bucket. */
export type BucketState = { meta: MetaStoreLike; data: BucketStoreLike; maxValueSize: number };

/** What applying an op needs. */
export type MergeDeps = {
  buckets: Map<string, BucketState>;
  /** advance the site clock past ts (refuses skew); resolves when persisted */
  observe: (ts: number) => Promise<void>;
  /** throws SyncdError(SYNCD_ERR_CLOCK_SKEW) when ts is too far ahead */
  checkSkew: (ts: number) => void;
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

/** True when the bucket already shows version `m` (or a local write that will supersede it). */
export function bucketHolds(m: MetaEntry["version"], l: BucketEntry | null): boolean {
  if (!l) return m.deleted;
  if (l.version) return l.version.ts === m.ts && l.version.node_id === m.node_id && l.deleted === m.deleted;
  return l.rev >= m.rev;
}

/**
 * True when the merger may replace the bucket's latest entry: it is absent, written by a merger,
 * or a local write already stamped (its revision is covered by `_meta`).
 */
export function canOverwrite(m: MetaEntry | null, l: BucketEntry | null): boolean {
  if (!l || l.version) return true;
  return m !== null && l.rev <= m.version.rev;
}

/** The register state `_meta` describes, with the value bytes when the bucket holds them. */
function currentState(m: MetaEntry, l: BucketEntry | null): Versioned {
  const v = m.version;
  const value = l && !l.deleted && bucketHolds(v, l) ? l.value : undefined;
  return { ts: v.ts, node_id: v.node_id, deleted: v.deleted, value };
}

/** Check what does not depend on the site's state: bucket known, value size, clock skew. */
export function admit(deps: MergeDeps, op: Op): BucketState {
  const b = deps.buckets.get(op.bucket);
  if (!b) throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", `"${op.bucket}"`);
  if (op.op === "put" && b.maxValueSize >= 0) {
    const size = opValue(op).length;
    if (size > b.maxValueSize)
      throw new SyncdError("SYNCD_ERR_TOO_LARGE", `${size} > ${b.maxValueSize} bytes`);
  }
  deps.checkSkew(op.ts);
  return b;
}

/** Apply one (validated) op by LWW. Idempotent; safe to run concurrently with itself and the watcher. */
export async function applyOp(deps: MergeDeps, op: Op): Promise<MergerMergeResponse> {
  const b = admit(deps, op);
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
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const [m, l] = await Promise.all([b.meta.get(op.key), b.data.latest(op.key)]);
    const current = m ? currentState(m, l) : null;
    const cmp = current ? compare(incoming, current) : 1;
    if (m && current && cmp < 0) {
      if (current.node_id !== incoming.node_id) {
        deps.onConflict?.({
          bucket: op.bucket,
          key: op.key,
          kind: "stale_op",
          loser: incoming,
          winner: current,
        });
      }
      return reply(MergeResult.stale, m.version);
    }
    if (m && cmp === 0) {
      const done = committed ? MergeResult.applied : MergeResult.duplicate;
      if (bucketHolds(m.version, l)) return reply(done, m.version);
      // a local write slipped in after the commit: it will be stamped above this version
      if (!canOverwrite(m, l)) return reply(MergeResult.stale, m.version);
      try {
        await b.data.write(op.key, incoming, l?.rev ?? 0);
      } catch (err) {
        if (isCasConflict(err)) continue;
        throw err;
      }
      return reply(done, m.version);
    }
    const overwrite = canOverwrite(m, l);
    const version = {
      ts: op.ts,
      node_id: op.node_id,
      deleted: incoming.deleted,
      rev: overwrite ? (l?.rev ?? 0) : (m?.version.rev ?? 0),
    };
    try {
      await b.meta.cas(op.key, version, m);
    } catch (err) {
      if (isCasConflict(err)) continue;
      throw err;
    }
    committed = true;
    // A local write not yet stamped will be stamped above this version: it wins, this op does not.
    if (!overwrite) return reply(MergeResult.stale, version);
    // Always write, also a tombstone over "no entry": the read of the bucket may be older than the
    // read of _meta, and only the conditional write can tell (a concurrent older put may land).
    try {
      await b.data.write(op.key, incoming, l?.rev ?? 0);
    } catch (err) {
      if (isCasConflict(err)) continue;
      throw err;
    }
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
