/**
 * Local self-repair of syncd-merger: notices a bucket re-created (its KV stream's creation time
 * changed) or values vanishing without an op (the stream purged, a message removed, entries aged
 * out), and puts back what `_meta` says the site held from the ops in the site's own streams —
 * raising (counted, logged as an error) what it cannot repair.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { CONSUMER_CHECK_MS } from "../lib/consume.ts";
import type { Logger } from "../lib/logger.ts";
import { type Op, decodeOpMessage } from "../lib/op.ts";
import { isNotFound } from "../lib/site.ts";
import { incarnationOf } from "../lib/stores.ts";
import { kvStream } from "../lib/subjects.ts";
import { type BucketState, findVanished, repairVanished } from "./handlers.ts";

/** What the monitor counts (merged into the merger's status counts). */
export type VanishedCounts = {
  bucket_recreated: number;
  vanished: number;
  repaired: number;
  unrepaired: number;
};

/** The ops stored in a stream, oldest first, up to its last message when the read began. */
export async function* streamOps(
  js: JetStreamClient,
  jsm: JetStreamManager,
  stream: string,
): AsyncGenerator<Op> {
  let last: number;
  try {
    const info = await jsm.streams.info(stream);
    if (info.state.messages === 0) return;
    last = info.state.last_seq;
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  const oc = await js.consumers.get(stream);
  const iter = await oc.consume();
  try {
    for await (const m of iter) {
      let op: Op | undefined;
      try {
        op = decodeOpMessage(m.data, m.headers);
      } catch {
        // not an op (bad input is the merger consumer's business)
      }
      if (op) yield op;
      if (m.seq >= last) break;
    }
  } finally {
    await iter.close().catch(() => {});
  }
}

/**
 * Watch one bucket every `checkMs`: its incarnation (kept in `state.incarnation`) and its message
 * count. On a new incarnation, on fewer messages than before, and once at start, look for values
 * `_meta` holds that the bucket lost, and repair them from `repairStreams` (oldest first). A bucket
 * with a max age (values expire by design) is only reported, never repaired.
 */
export function monitorBucket(args: {
  bucket: string;
  state: BucketState & { incarnation: () => number };
  setIncarnation: (inc: number) => void;
  metaKv: KV;
  js: JetStreamClient;
  jsm: JetStreamManager;
  repairStreams: string[];
  counts: VanishedCounts;
  onProblem: (problem: string | undefined) => void;
  log: Logger;
  checkMs?: number;
}): { stop: () => Promise<void> } {
  const { bucket, state, js, jsm, counts, log } = args;
  let stopped = false;
  let lastMessages = -1;
  let wake: () => void = () => {};
  let reported: string | undefined;
  const problem = (p: string | undefined) => {
    args.onProblem(p);
    reported = p;
  };

  const scan = async (ttl: boolean) => {
    const vanished = await findVanished(state, await args.metaKv.keys());
    if (vanished.size === 0) return;
    counts.vanished += vanished.size;
    if (ttl) {
      log.warn({ bucket, keys: vanished.size }, "values expired from a bucket with a max age: not repaired");
      return;
    }
    log.warn({ bucket, keys: vanished.size }, "values vanished from the bucket without an op: repairing");
    for (const s of args.repairStreams) {
      if (vanished.size === 0) break;
      counts.repaired += await repairVanished(state, vanished, streamOps(js, jsm, s));
    }
    if (vanished.size > 0) {
      counts.unrepaired += vanished.size;
      const keys = [...vanished.keys()];
      problem(`${bucket}: ${keys.length} vanished value(s) with no op to repair from, e.g. "${keys[0]}"`);
      log.error(
        { bucket, keys: keys.slice(0, 20), count: keys.length },
        "values vanished from the bucket and cannot be repaired locally (anti-entropy may bring them back)",
      );
    } else if (reported) problem(undefined);
  };

  const loop = (async () => {
    let first = true;
    while (!stopped) {
      try {
        const info = await jsm.streams.info(kvStream(bucket));
        const inc = incarnationOf(info.created);
        let check = first;
        if (inc !== state.incarnation()) {
          counts.bucket_recreated++;
          log.error(
            { bucket, was: state.incarnation(), now: inc },
            "bucket was re-created: earlier revisions no longer count; restoring its values",
          );
          args.setIncarnation(inc);
          check = true;
        }
        if (info.state.messages < lastMessages) check = true;
        lastMessages = info.state.messages;
        first = false;
        if (reported?.startsWith(`${kvStream(bucket)} `)) problem(undefined);
        if (check) await scan((info.config.max_age ?? 0) > 0);
      } catch (err) {
        if (isNotFound(err)) {
          const p = `${kvStream(bucket)} missing: the bucket was deleted`;
          if (reported !== p) log.error({ bucket }, "the bucket's stream is missing; waiting for it");
          problem(p);
        } else log.warn({ err, bucket }, "bucket check failed");
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, args.checkMs ?? CONSUMER_CHECK_MS);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      wake();
      await loop;
    },
  };
}
