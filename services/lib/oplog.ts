/**
 * Publishing into a per-key compacted op log (DESIGN §5). A log keeps one message per subject
 * (`rep.kv.ops.<site>.<bucket>.<key>`), so the last op published on a subject must be the greatest
 * version that was ever published on it, whatever the order in which racing publishers get there.
 * Each publish reads the subject's last op and skips when that one is greater or equal; after
 * publishing it reads the last op again and, while that is below the greatest of its own op and
 * the site's current own version (`_meta`, read fresh), publishes that greatest one again. Why that
 * suffices: the publisher of the last message to land on a subject always checks after it landed,
 * and `_meta` holds every own version before it is published.
 *
 * The fast path (`holds`): every publisher of a site's log commits its op to `_meta` before it
 * publishes it (the watcher stamps, the merger applies a hand-made op before forwarding it, the seed
 * copies `_meta`), and `_meta` only moves up. So when `_meta`, read fresh after the publish landed,
 * still holds exactly the op: (1) no greater op was published on the subject before it (it would
 * have been committed first, and `_meta` would be above the op) — the read before the publish can
 * be skipped; (2) any op that lands after it is published by someone who checks after it landed,
 * when `_meta` is at least this op: that check either holds its own op (then it is equal or
 * greater) or takes the slow path, which ends the log with the site's current own version. One
 * fresh `_meta` read then replaces the two reads of the log and the read of the bucket
 * (test/I1-convergence-model checks the log's last op per key at quiescence).
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { compare, valueHash } from "./lww.ts";
import { type Op, decodeOpMessage, encodeOpMessage, makeOp, opVersioned } from "./op.ts";
import type { Version } from "./schemas.gen.ts";

/** What an ordered publish did. */
export const OrderedResult = {
  /** the op is now the subject's last message */
  published: "published",
  /** the subject already held this op or a greater one: nothing published */
  superseded: "superseded",
} as const;
export type OrderedResult = (typeof OrderedResult)[keyof typeof OrderedResult];

const MAX_ATTEMPTS = 100;

/** Publish an op in its wire form (split for large values: services/lib/op.ts). */
async function publishOp(js: Pick<JetStreamClient, "publish">, subject: string, op: Op, msgID?: string) {
  const m = encodeOpMessage(op);
  await js.publish(subject, m.data, {
    ...(msgID ? { msgID } : {}),
    ...(m.headers ? { headers: m.headers } : {}),
  });
}

/** What reading a log's last op per subject needs. */
export type LastOpReader = { streams: Pick<JetStreamManager["streams"], "getMessage"> };

/** The last op on a subject of a stream and its sequence (null: none, or not an op). */
export async function lastOp(
  jsm: LastOpReader,
  stream: string,
  subject: string,
): Promise<{ seq: number; op: Op | null } | null> {
  const m = await jsm.streams.getMessage(stream, { last_by_subj: subject });
  if (!m) return null;
  try {
    return { seq: m.seq, op: decodeOpMessage(m.data, m.header) };
  } catch {
    return { seq: m.seq, op: null };
  }
}

/**
 * The op of the version the site's own log must end with for a key: `_meta`'s current version when
 * it is a local write of this node (not a merger's), with the value the bucket shows for it; null
 * when `_meta` holds another node's version, or a newer local write is not stamped yet (its own
 * publish comes later). Read fresh, never from a cache: a repair must see the latest commit.
 */
export async function currentOwnOp(
  meta: KV,
  data: KV,
  nodeId: string,
  bucket: string,
  key: string,
): Promise<Op | null> {
  const me = await meta.get(key);
  if (me?.operation !== "PUT") return null;
  const v = me.json<Version>();
  if (v.merged || v.node_id !== nodeId) return null;
  if (v.deleted) return ownOpOf(v, null, bucket, key);
  const d = await data.get(key);
  if (d?.operation !== "PUT") return null;
  return ownOpOf(v, { rev: d.revision, deleted: false, value: d.value }, bucket, key);
}

/**
 * {@link currentOwnOp} from what was read: `_meta`'s version of the key (fresh, own and not a
 * merger's, else null) and the bucket's latest entry (needed for a put).
 */
export function ownOpOf(
  v: Version,
  latest: { rev: number; deleted: boolean; value: Uint8Array } | null,
  bucket: string,
  key: string,
): Op | null {
  if (v.deleted) return makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: true });
  if (!latest || latest.deleted) return null;
  if (v.vh ? valueHash(latest.value) !== v.vh : latest.rev !== v.rev) return null;
  return makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: false, value: latest.value });
}

/**
 * True when `_meta`'s version `v` (read fresh) is exactly `op`: same version, same kind, and for a
 * put the same value hash (a version without one is never taken as proof).
 */
export function versionIsOp(v: Version | null | undefined, op: Op): boolean {
  if (!v || v.ts !== op.ts || v.node_id !== op.node_id) return false;
  const o = opVersioned(op);
  if (v.deleted !== o.deleted) return false;
  return o.deleted || (v.vh !== undefined && v.vh === valueHash(o.value ?? new Uint8Array()));
}

/** Whether `_meta` (read fresh, never from a cache) holds exactly `op` for its key: see {@link versionIsOp}. */
export async function metaHoldsOp(meta: KV, op: Op): Promise<boolean> {
  const me = await meta.get(op.key);
  return me?.operation === "PUT" && me.value.length > 0 && versionIsOp(me.json<Version>(), op);
}

/**
 * Publish `op` on `subject` of `stream` unless the subject already holds it or a greater version,
 * then make sure the subject ends with the greatest of `op` and `current()` (the site's own current
 * version of the key): a publisher whose op landed after a newer one publishes the newer one again.
 * No expectation headers: they stay in the stored message, and nats-server 2.9 checks them again
 * when the hub sources the message, refusing it silently.
 */
export async function publishOrdered(
  deps: { js: Pick<JetStreamClient, "publish">; jsm: LastOpReader },
  stream: string,
  subject: string,
  op: Op,
  opts: {
    msgID?: string;
    current?: () => Promise<Op | null>;
    /**
     * whether `_meta`, read fresh, holds exactly `op` (see metaHoldsOp): with it, the log is not
     * read before the publish, and not after it when `_meta` still holds the op (the fast path)
     */
    holds?: () => Promise<boolean>;
  } = {},
): Promise<OrderedResult> {
  if (!opts.holds) {
    const first = await lastOp(deps.jsm, stream, subject);
    if (first?.op && compare(opVersioned(first.op), opVersioned(op)) >= 0) return OrderedResult.superseded;
  }
  await publishOp(deps.js, subject, op, opts.msgID);
  if (opts.holds && (await opts.holds())) return OrderedResult.published;
  let target = op;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const cur = (await opts.current?.()) ?? null;
    if (cur && compare(opVersioned(cur), opVersioned(target)) > 0) target = cur;
    const last = await lastOp(deps.jsm, stream, subject);
    if (last?.op && compare(opVersioned(last.op), opVersioned(target)) >= 0) return OrderedResult.published;
    // an older op landed after ours (a racing publisher): publish the greatest again
    await publishOp(deps.js, subject, target);
  }
  throw new Error(`${subject}: the last op kept changing, gave up after ${MAX_ATTEMPTS} attempts`);
}
