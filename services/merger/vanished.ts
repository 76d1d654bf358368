/**
 * Local self-repair of syncd-merger: notices a bucket re-created (its KV stream's creation time
 * changed) or values vanishing without an op (the stream purged, a message removed, entries aged
 * out), and puts back what `_meta` says the site held from the ops in the site's own streams —
 * raising (counted, logged as an error) what it cannot repair.
 */
import type { JetStreamClient, JetStreamManager, StreamInfo } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { CONSUMER_CHECK_MS } from "../lib/consume.ts";
import { Conditions, EVENT_TTL_MS, Severity, healthOf } from "../lib/health.ts";
import { isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { type Op, decodeOpMessage } from "../lib/op.ts";
import { incarnationOf } from "../lib/stores.ts";
import { kvStream, metaBucket } from "../lib/subjects.ts";
import { type BucketState, findVanished, repairVanished } from "./handlers.ts";

const health = healthOf("merger");

/** What the monitor counts (merged into the merger's status counts). */
export type VanishedCounts = {
  bucket_recreated: number;
  vanished: number;
  repaired: number;
  unrepaired: number;
};

/** Least time between two scans after one that left keys vanished (unrepaired, or expired by a max age). */
const RESCAN_MS = 60_000;

/** Least time between two scans for keys raised as lost, triggered by entries coming back. */
const LOST_RECHECK_MS = 5000;

function bucketSubjects(info: StreamInfo): number {
  return info.state.num_subjects ?? 0;
}

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
 * Watch one bucket every `checkMs`: its incarnation (kept in `state.incarnation`) and its subject
 * count against `_meta`'s. On a new incarnation, on fewer subjects in the bucket than in `_meta`,
 * and once at start, look for values `_meta` holds that the bucket lost, and repair them from
 * `repairStreams` (oldest first). A bucket with a max age (values expire by design) is only
 * reported, never repaired.
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
  let wake: () => void = () => {};
  let reported: string | undefined;
  const problem = (p: string | undefined) => {
    args.onProblem(p);
    reported = p;
  };

  /** keys found vanished and not repaired (raised until they come back) */
  const lost = new Set<string>();
  const scan = async (ttl: boolean) => {
    const vanished = await findVanished(state, await args.metaKv.keys());
    const refused = new Map<string, string>();
    for (const k of lost) if (!vanished.has(k)) lost.delete(k);
    let fresh = 0;
    for (const k of vanished.keys()) if (!lost.has(k)) fresh++;
    counts.vanished += fresh;
    if (vanished.size > 0 && ttl) {
      for (const k of vanished.keys()) lost.add(k);
      if (fresh > 0) log.warn({ keys: fresh }, "values expired from a bucket with a max age: not repaired");
    } else if (vanished.size > 0) {
      if (fresh > 0)
        log.warn({ keys: vanished.size }, "values vanished from the bucket without an op: repairing");
      let restored = 0;
      for (const s of args.repairStreams) {
        if (vanished.size === 0) break;
        restored += await repairVanished(state, vanished, streamOps(js, jsm, s), refused);
      }
      counts.repaired += restored;
      if (restored > 0)
        health.raise(Conditions.valuesRestored, Severity.warn, {
          message: `${restored} value(s) had vanished from ${bucket} without an op (a purge, a removed message, a restore from an older copy) and were put back from this site's op streams`,
          subject: bucket,
          ttlMs: EVENT_TTL_MS,
          data: { count: restored },
        });
      for (const k of vanished.keys()) lost.add(k);
    }
    counts.unrepaired = ttl ? 0 : lost.size;
    if (lost.size > 0 && !ttl) {
      const keys = [...lost];
      const why = refused.size > 0 ? [...refused][0] : undefined;
      problem(
        why
          ? `${bucket}: ${keys.length} value(s) the bucket refused to take back, e.g. "${why[0]}" (${why[1]})`
          : `${bucket}: ${keys.length} vanished value(s) with no op to repair from, e.g. "${keys[0]}"`,
      );
      health.raise(Conditions.valuesLost, Severity.error, {
        message: why
          ? `${keys.length} value(s) missing from ${bucket} although \`_meta\` holds their version, e.g. "${keys[0]}": the bucket refused putting "${why[0]}" back (${why[1]})`
          : `${keys.length} value(s) vanished from ${bucket} without an op and no op here to repair them from, e.g. "${keys[0]}": anti-entropy may bring them back, else write or restore them`,
        subject: bucket,
        data: { keys: keys.slice(0, 10), count: keys.length, refused: refused.size },
      });
      if (fresh > 0)
        log.error(
          { keys: keys.slice(0, 20), count: keys.length },
          "values vanished from the bucket and cannot be repaired locally (anti-entropy may bring them back)",
        );
    } else {
      health.clear(Conditions.valuesLost, bucket);
      if (reported && !reported.startsWith(kvStream(bucket))) problem(undefined);
    }
    return lost.size > 0;
  };

  const loop = (async () => {
    let first = true;
    let nextScanAt = 0;
    let scannedSubjects = 0;
    let scannedAt = 0;
    while (!stopped) {
      try {
        const info = await jsm.streams.info(kvStream(bucket));
        const metaInfo = await jsm.streams.info(kvStream(metaBucket(bucket)));
        const inc = incarnationOf(info.created);
        // every key `_meta` versions has an entry in the bucket (a value or a delete marker), so
        // fewer subjects in the bucket than in `_meta` means entries vanished without an op
        let check = first || (Date.now() >= nextScanAt && bucketSubjects(info) < bucketSubjects(metaInfo));
        // keys raised as lost: look again as soon as entries come back (anti-entropy, a restore)
        const ttl = (info.config.max_age ?? 0) > 0;
        if (
          lost.size > 0 &&
          !ttl &&
          bucketSubjects(info) > scannedSubjects &&
          Date.now() >= scannedAt + LOST_RECHECK_MS
        )
          check = true;
        if (inc !== state.incarnation()) {
          counts.bucket_recreated++;
          log.error(
            { was: state.incarnation(), now: inc },
            "bucket was re-created: earlier revisions no longer count; restoring its values",
          );
          args.setIncarnation(inc);
          check = true;
          health.raise(Conditions.bucketRecreated, Severity.warn, {
            message: `bucket ${bucket} was re-created: its values are restored from this site's op streams and by anti-entropy`,
            subject: bucket,
            ttlMs: EVENT_TTL_MS,
          });
        } else if (reported?.startsWith(`${kvStream(bucket)} `))
          health.clear(Conditions.bucketRecreated, bucket);
        first = false;
        if (reported?.startsWith(`${kvStream(bucket)} `)) problem(undefined);
        if (check) {
          scannedSubjects = bucketSubjects(info);
          scannedAt = Date.now();
          const left = await scan(ttl);
          nextScanAt = Date.now() + (left ? RESCAN_MS : 0);
        }
      } catch (err) {
        if (isNotFound(err)) {
          const p = `${kvStream(bucket)} missing: the bucket was deleted`;
          if (reported !== p) {
            log.error({}, "the bucket's stream is missing; waiting for it");
            health.raise(Conditions.bucketRecreated, Severity.error, {
              message: `the stream ${kvStream(bucket)} is missing: bucket ${bucket} was deleted; writes to it fail until it is created again`,
              subject: bucket,
            });
          }
          problem(p);
        } else log.warn({ err }, "bucket check failed");
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
