/**
 * syncd-watcher: turns local writes into ops (DESIGN §4, watcher steps 1-2).
 *
 * For each entry of the bucket's stream: an entry with syncd headers is a replicated write (skip:
 * no echo, I2). Otherwise it is a local write at revision r: if `_meta` already describes a newer
 * entry, skip; else stamp it above both the clock and the version it replaces (I4), commit that
 * version to `_meta` (compare-and-set), and publish the op with a message id that makes a
 * re-publish a duplicate (I3, I6).
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import { SyncdError } from "../lib/errors.ts";
import { compareVersions } from "../lib/lww.ts";
import { type Op, encodeOpMessage, makeOp, opMessageSize } from "../lib/op.ts";
import { type LastOpReader, publishOrdered } from "../lib/oplog.ts";
import { type MetaStoreLike, type Version, coveredRev, isCasConflict, stampVersion } from "../lib/stores.ts";
import { MsgIds, Streams, opsSubject } from "../lib/subjects.ts";

/** One entry of the bucket's stream, as the watcher sees it. */
export type LocalEntry = {
  key: string;
  rev: number;
  deleted: boolean;
  value: Uint8Array;
  /** the version in the entry's syncd headers (a merger wrote it — or someone forged them) */
  headers: { ts: number; node_id: string } | null;
  /**
   * delivered before and not acked: its op may have landed in the log without the check that
   * follows a publish (the process died, or a reply was lost, in between)
   */
  redelivered?: boolean;
};

/** What the watcher's handlers need. */
export type WatcherDeps = {
  site: string;
  nodeId: string;
  bucket: string;
  meta: MetaStoreLike;
  js: Pick<JetStreamClient, "publish">;
  /** reads the last op of a key in the site's outbound log (ordered publish) */
  jsm: LastOpReader;
  /** the site's own current version of a key as an op, read fresh (see currentOwnOp) */
  current?: (key: string) => Promise<Op | null>;
  /**
   * whether `_meta`, read fresh (never through a cache), holds exactly this op (see metaHoldsOp):
   * the ordered publish's fast path, one read instead of three
   */
  holds?: (op: Op) => Promise<boolean>;
  tick: () => Promise<number>;
  /** the bucket's current incarnation (see bucketIncarnation); unknown: revisions are taken as they are */
  incarnation?: () => number;
  /**
   * the revision of the key's latest entry in the bucket (null: none): a `_meta` rev above it is
   * from an earlier incarnation the watcher has not noticed yet, and suppresses nothing
   */
  latestRev?: (key: string) => Promise<number | null>;
  /** the server's max_payload (bytes); an op message over it is refused with SYNCD_ERR_TOO_LARGE */
  maxPayload?: number;
  /** told about a stamped write whose op cannot be published (too large): dead-letter and count it */
  onTooLarge?: (op: Op, rev: number, err: SyncdError) => Promise<void>;
};

/** What happened to an entry. */
export const Outcome = {
  echo: "skipped_echo",
  superseded: "skipped_superseded",
  published: "published",
  republished: "republished",
  tooLarge: "too_large",
} as const;
export type Outcome = (typeof Outcome)[keyof typeof Outcome];

const MAX_ATTEMPTS = 100;
/** `Nats-Msg-Id` header name: counted in the message size */
const MSG_ID_HEADER = "Nats-Msg-Id";

/** The message id of the op of local write `rev`: a re-publish is dropped as a duplicate. */
export function opMsgId(site: string, bucket: string, rev: number, inc?: number): string {
  return MsgIds.localWrite(site, bucket, rev, inc);
}

async function publish(deps: WatcherDeps, e: LocalEntry, v: Version): Promise<Outcome | undefined> {
  const op = makeOp({
    bucket: deps.bucket,
    key: e.key,
    ts: v.ts,
    nodeId: v.node_id,
    deleted: e.deleted,
    value: e.value,
  });
  const msgID = opMsgId(deps.site, deps.bucket, e.rev, v.inc);
  const m = encodeOpMessage(op);
  const size = opMessageSize(m, { [MSG_ID_HEADER]: msgID });
  if (deps.maxPayload !== undefined && size > deps.maxPayload) {
    const err = new SyncdError(
      "SYNCD_ERR_TOO_LARGE",
      `key "${e.key}" rev ${e.rev}: op message ${size} > max_payload ${deps.maxPayload} bytes`,
    );
    if (!deps.onTooLarge) throw err;
    await deps.onTooLarge(op, e.rev, err);
    return Outcome.tooLarge;
  }
  // ordered: a racing instance that stamped a newer revision of the key may have published first
  await publishOrdered(deps, Streams.out(deps.site), opsSubject(deps.site, deps.bucket, e.key), op, {
    msgID,
    ...(deps.current ? { current: () => deps.current!(e.key) } : {}),
    ...(deps.holds ? { holds: () => deps.holds!(op) } : {}),
  });
  return undefined;
}

/**
 * After a redelivered entry turned out superseded: its earlier delivery may have published an op
 * that landed after a newer one without checking the log afterwards (killed, or a reply lost, in
 * between), so make sure the key's log ends with the site's current own version.
 */
async function repairLog(deps: WatcherDeps, key: string): Promise<void> {
  if (!deps.current) return;
  const cur = await deps.current(key);
  if (!cur) return;
  await publishOrdered(deps, Streams.out(deps.site), opsSubject(deps.site, deps.bucket, key), cur, {
    current: () => deps.current!(key),
  });
}

/** {@link Outcome.superseded}, once a redelivered entry's log is repaired. */
async function superseded(deps: WatcherDeps, e: LocalEntry): Promise<Outcome> {
  if (e.redelivered) await repairLog(deps, e.key);
  return Outcome.superseded;
}

/**
 * True when a headed entry is a merger's write: `_meta` holds that version or a newer one (a merger
 * commits `_meta` before it writes the bucket). Headers claiming a version `_meta` never held were
 * written by someone else: the entry is a local write like any other.
 */
async function isReplicated(
  deps: WatcherDeps,
  key: string,
  h: { ts: number; node_id: string },
): Promise<boolean> {
  let cur = await deps.meta.get(key);
  if (cur && compareVersions(cur.version, h) >= 0) return true;
  deps.meta.invalidate?.(key);
  cur = await deps.meta.get(key);
  return cur !== null && compareVersions(cur.version, h) >= 0;
}

/** Stamp and publish one local write (idempotent: safe to run again after a crash). */
export async function stampEntry(deps: WatcherDeps, e: LocalEntry): Promise<Outcome> {
  if (e.headers && (await isReplicated(deps, e.key, e.headers))) return Outcome.echo;
  let ts = 0;
  const inc = deps.incarnation?.();
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const cur = await deps.meta.get(e.key);
    if (cur) {
      let covered = coveredRev(cur.version, inc);
      if (covered > e.rev && deps.latestRev && ((await deps.latestRev(e.key)) ?? 0) < covered) covered = 0;
      if (covered > e.rev) return superseded(deps, e);
      if (covered === e.rev) {
        // stamped before (a redelivery after a crash): publish the same op again, the msg id dedupes it;
        // a merger commit covering this revision means a newer version replaced it
        if (cur.version.merged || cur.version.node_id !== deps.nodeId) return superseded(deps, e);
        return (await publish(deps, e, cur.version)) ?? Outcome.republished;
      }
    }
    if (ts === 0) ts = await deps.tick();
    const v = stampVersion(
      {
        ts: Math.max(ts, (cur?.version.ts ?? 0) + 1),
        node_id: deps.nodeId,
        deleted: e.deleted,
        value: e.value,
      },
      e.rev,
      inc,
    );
    try {
      await deps.meta.cas(e.key, v, cur);
    } catch (err) {
      if (isCasConflict(err)) continue;
      throw err;
    }
    return (await publish(deps, e, v)) ?? Outcome.published;
  }
  throw new Error(`key ${e.key}: _meta kept changing, gave up after ${MAX_ATTEMPTS} attempts`);
}

/**
 * Of two entries of one key waiting to be stamped, the one that replaces the other: the newer of two
 * local writes (entries without syncd headers); null when either has headers (an echo, or forged
 * headers, is decided by stampEntry), or either is a redelivery. The other is acked as superseded
 * once the winner is published.
 */
export function newerLocal(
  waiting: { rev: number; local: boolean; redelivered?: boolean },
  newcomer: { rev: number; local: boolean; redelivered?: boolean },
): "waiting" | "newcomer" | null {
  if (!waiting.local || !newcomer.local) return null;
  // a redelivered entry may have to repair the log (see repairLog): it runs on its own
  if (waiting.redelivered || newcomer.redelivered) return null;
  return waiting.rev >= newcomer.rev ? "waiting" : "newcomer";
}
