/**
 * Publishing into a per-key compacted op log (DESIGN §5). A log keeps one message per subject
 * (`rep.kv.ops.<site>.<bucket>.<key>`), so the last op published on a subject must be the greatest
 * version that was ever published on it, whatever the order in which racing publishers get there.
 * Each publish reads the subject's last op, skips when that one is greater or equal, and otherwise
 * publishes with "expected last subject sequence" = the sequence it read: a publish that lost a race
 * is refused by the server and decides again.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { compare } from "./lww.ts";
import { type Op, opVersioned, parseOp } from "./op.ts";
import { JsCode, jsCode } from "./site.ts";

/** What an ordered publish did. */
export const OrderedResult = {
  /** the op is now the subject's last message */
  published: "published",
  /** the subject already held this op or a greater one: nothing published */
  superseded: "superseded",
} as const;
export type OrderedResult = (typeof OrderedResult)[keyof typeof OrderedResult];

const MAX_ATTEMPTS = 100;
const enc = new TextEncoder();

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
    return { seq: m.seq, op: parseOp(m.data) };
  } catch {
    return { seq: m.seq, op: null };
  }
}

/**
 * Publish `op` on `subject` of `stream` unless the subject already holds it or a greater version.
 * `msgID` makes a re-publish within the stream's duplicate window a duplicate.
 */
export async function publishOrdered(
  deps: { js: Pick<JetStreamClient, "publish">; jsm: LastOpReader },
  stream: string,
  subject: string,
  op: Op,
  msgID?: string,
): Promise<OrderedResult> {
  const mine = opVersioned(op);
  const data = enc.encode(JSON.stringify(op));
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const last = await lastOp(deps.jsm, stream, subject);
    if (last?.op && compare(opVersioned(last.op), mine) >= 0) return OrderedResult.superseded;
    try {
      await deps.js.publish(subject, data, {
        ...(msgID ? { msgID } : {}),
        // no expected-stream header: it is kept in the stored message and 2.9 then refuses to source it
        expect: { lastSubjectSequence: last?.seq ?? 0 },
      });
      return OrderedResult.published;
    } catch (err) {
      if (jsCode(err) === JsCode.wrongLastSequence) continue;
      throw err;
    }
  }
  throw new Error(`${subject}: the last op kept changing, gave up after ${MAX_ATTEMPTS} attempts`);
}
