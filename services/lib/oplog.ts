/**
 * Publishing into a per-key compacted op log (DESIGN §5). A log keeps one message per subject
 * (`rep.kv.ops.<site>.<bucket>.<key>`), so the last op published on a subject must be the greatest
 * version that was ever published on it, whatever the order in which racing publishers get there.
 * Each publish reads the subject's last op and skips when that one is greater or equal; after
 * publishing it reads the last op again and, while that is below the greatest of its own op and
 * the site's current own version (`_meta`, read fresh), publishes that greatest one again. Why that
 * suffices: the publisher of the last message to land on a subject always checks after it landed,
 * and `_meta` holds every own version before it is published.
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
  if (v.deleted) return makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: true });
  const d = await data.get(key);
  if (d?.operation !== "PUT") return null;
  if (v.vh ? valueHash(d.value) !== v.vh : d.revision !== v.rev) return null;
  return makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: false, value: d.value });
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
  opts: { msgID?: string; current?: () => Promise<Op | null> } = {},
): Promise<OrderedResult> {
  const first = await lastOp(deps.jsm, stream, subject);
  if (first?.op && compare(opVersioned(first.op), opVersioned(op)) >= 0) return OrderedResult.superseded;
  await publishOp(deps.js, subject, op, opts.msgID);
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
