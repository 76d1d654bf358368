/**
 * Wiring of syncd-merger: the shared durable consumer on the site's IN stream (hand-made ingress +
 * every peer's ops, sourced), dead-lettering of bad ops, forwarding of hand-made ops to the site's
 * OUT stream (store-and-forward to the peers), and the merge / get / status endpoints.
 */
import { type JsMsg, jetstream } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { addEndpoint } from "../lib/adapter.ts";
import { Observer } from "../lib/clock-client.ts";
import { skewMs } from "../lib/clock-rules.ts";
import { ensureConsumer, runConsumer } from "../lib/consume.ts";
import { type ErrorCodeName, SyncdError, isSyncdError } from "../lib/errors.ts";
import { CachedMetaStore } from "../lib/meta-cache.ts";
import { type Op, decodeOpMessage, encodeOpMessage, encodeValue, opMessageSize } from "../lib/op.ts";
import type { Running, ServiceContext } from "../lib/runtime.ts";
import type {
  EmptyRequest,
  MergerGetRequest,
  MergerGetResponse,
  MergerStatusResponse,
} from "../lib/schemas.gen.ts";
import { isNotFound, openSite } from "../lib/site.ts";
import { BucketStore, incarnationOf } from "../lib/stores.ts";
import {
  Durables,
  Headers,
  MsgIds,
  OPS_INGRESS,
  Streams,
  conflictsSubject,
  dlqSubject,
  endpointSubject,
  journalSubject,
  opsSubject,
} from "../lib/subjects.ts";
import {
  type BucketState,
  type Conflict,
  type ConflictSide,
  type MergeDeps,
  admit,
  applyAdmitted,
} from "./handlers.ts";
import { monitorBucket } from "./vanished.ts";

/** Counters of this instance, shown in status and STATS data. */
export const counts = {
  applied: 0,
  stale: 0,
  duplicate: 0,
  forwarded: 0,
  dead_lettered: 0,
  conflicts: 0,
  errors: 0,
  /** a bucket found re-created; values that vanished without an op; repaired; not repairable */
  bucket_recreated: 0,
  vanished: 0,
  repaired: 0,
  unrepaired: 0,
};
/** Dead-lettered ops by error code. */
export const deadByCode: Record<string, number> = {};
let lastError: string | undefined;

/** room for the headers the server and client add to a dead-letter record */
const DLQ_SLACK = 512;

type Parsed = { op: Op; bucket: BucketState } | { error: SyncdError };

/** Wire syncd-merger. */
export async function wireMerger(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  const buckets = new Map<string, BucketState>();
  const caches: CachedMetaStore[] = [];
  const monitors: { stop: () => Promise<void> }[] = [];
  const problems = new Map<string, string>();
  for (const b of config.buckets) {
    const info = await site.jsm.streams.info(`KV_${b}`);
    const meta = new CachedMetaStore(site.metas.get(b)!, log.child({ bucket: b }));
    await meta.start();
    caches.push(meta);
    let inc = incarnationOf(info.created);
    const state = {
      meta,
      data: new BucketStore(b, site.jsm, site.js, info.config.allow_direct === true),
      maxValueSize: site.maxValueSize.get(b) ?? -1,
      ...(nc.info?.max_payload ? { maxPayload: nc.info.max_payload } : {}),
      incarnation: () => inc,
    };
    buckets.set(b, state);
    monitors.push(
      monitorBucket({
        bucket: b,
        state,
        setIncarnation: (i) => {
          inc = i;
        },
        metaKv: site.metas.get(b)!,
        js: site.js,
        jsm: site.jsm,
        repairStreams: [Streams.out(config.site), Streams.in(config.site)],
        counts,
        onProblem: (p) => (p ? problems.set(b, p) : problems.delete(b)),
        log: log.child({ bucket: b }),
      }),
    );
  }
  const observer = new Observer(nc, config.site, { hlc: config.clock === "hlc" });
  const js = jetstream(nc);
  const side = (v: ConflictSide) => ({
    ts: v.ts,
    node_id: v.node_id,
    deleted: v.deleted,
    ...(v.value && !v.deleted ? encodeValue(v.value) : {}),
  });
  const recordConflict = (c: Conflict) => {
    counts.conflicts++;
    const record = {
      site: config.site,
      bucket: c.bucket,
      key: c.key,
      kind: c.kind,
      loser: side(c.loser),
      winner: side(c.winner),
      at: new Date().toISOString(),
    };
    js.publish(conflictsSubject(config.site), JSON.stringify(record)).catch((err) =>
      log.warn({ err, bucket: c.bucket, key: c.key }, "could not record a conflict"),
    );
  };
  const deps: MergeDeps = {
    onConflict: recordConflict,
    buckets,
    observe: (ts) => observer.observe(ts),
    checkSkew: (ts) => {
      const ahead = skewMs(config.clock, ts, Date.now());
      if (ahead > config.maxClockSkewMs) {
        throw new SyncdError(
          "SYNCD_ERR_CLOCK_SKEW",
          `ts ${ts} is ${ahead} ms ahead (limit ${config.maxClockSkewMs} ms)`,
        );
      }
    },
  };
  const parsed = new WeakMap<JsMsg, Parsed>();
  const parse = (m: JsMsg): Parsed => {
    let p = parsed.get(m);
    if (!p) {
      try {
        const op = decodeOpMessage(m.data, m.headers);
        p = { op, bucket: admit(deps, op) };
      } catch (err) {
        p = { error: isSyncdError(err) ? err : new SyncdError("SYNCD_ERR_INTERNAL", String(err)) };
      }
      parsed.set(m, p);
    }
    return p;
  };

  const deadLetter = async (m: JsMsg, err: SyncdError): Promise<{ term: string }> => {
    const h = natsHeaders();
    h.set(Headers.code, err.code);
    h.set(Headers.reason, err.message);
    h.set(Headers.origin, `${m.info.stream}:${m.seq}:${m.subject}`);
    const splitOp = m.headers?.get(Headers.op);
    if (splitOp) h.set(Headers.op, splitOp);
    // a payload that cannot fit next to the reason is not kept: the record must never fail
    const keep = opMessageSize({ data: m.data, headers: h }) + DLQ_SLACK <= (nc.info?.max_payload ?? 0);
    if (!keep) h.set(Headers.reason, `${err.message} (payload of ${m.data.length} bytes not kept)`);
    await js.publish(dlqSubject(config.site), keep ? m.data : new Uint8Array(), { headers: h });
    counts.dead_lettered++;
    deadByCode[err.code] = (deadByCode[err.code] ?? 0) + 1;
    const fields = {
      code: err.code,
      reason: err.message,
      stream: m.info.stream,
      seq: m.seq,
      subject: m.subject,
    };
    if (err.code === ("SYNCD_ERR_CLOCK_SKEW" satisfies ErrorCodeName)) {
      log.error(
        fields,
        "CLOCK SKEW: refused an op stamped far in the future; check the clock of the site that sent it",
      );
    } else log.warn(fields, "bad op dead-lettered");
    return { term: `${err.code}: ${err.message}` };
  };

  const journal = journalSubject(config.site);
  const journalDeps: MergeDeps = { ...deps, onConflict: undefined };
  const durable = Durables.merger;
  const stream = Streams.in(config.site);
  // the IN stream's incarnation: its sequences restart when it is made again
  const inIncarnation = async () => incarnationOf((await site.jsm.streams.info(stream)).created);
  let inInc = await inIncarnation();
  const ensure = () => ensureConsumer(site.jsm, stream, durable, { deliver: "all" });
  await ensure();
  const loop = await runConsumer({
    // the IN stream deleted: make the site's streams again (openSite), then the durable; the
    // reconciler adds the peer sources back, which replay what the peers still hold
    recreate: async () => {
      try {
        await site.jsm.streams.info(stream);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        log.error({ stream }, "the site's inbound op stream was deleted: creating it again");
        await openSite(nc, config, log);
      }
      await ensure();
      inInc = await inIncarnation();
    },
    js: site.js,
    stream,
    durable,
    concurrency: 64,
    log,
    keyOf: (m) => {
      const p = parse(m);
      return "op" in p ? `${p.op.bucket}/${p.op.key}` : `#${m.seq}`;
    },
    handle: async (m) => {
      const p = parse(m);
      if ("error" in p) return deadLetter(m, p.error);
      if (m.subject === OPS_INGRESS) {
        const fwd = encodeOpMessage(p.op);
        const msgID = MsgIds.forwarded(config.site, m.seq, inInc);
        const size = opMessageSize(fwd, { "Nats-Msg-Id": msgID });
        if (size > (nc.info?.max_payload ?? Number.POSITIVE_INFINITY)) {
          return deadLetter(
            m,
            new SyncdError("SYNCD_ERR_TOO_LARGE", `op message ${size} bytes > max_payload`),
          );
        }
        await js.publish(opsSubject(config.site), fwd.data, {
          msgID,
          ...(fwd.headers ? { headers: fwd.headers } : {}),
        });
        counts.forwarded++;
      }
      try {
        // a journaled copy of a merge request: the endpoint already recorded its conflicts
        const r = await applyAdmitted(m.subject === journal ? journalDeps : deps, p.bucket, p.op);
        counts[r.result]++;
        return { ack: true };
      } catch (err) {
        // bad input is dead-lettered; a conflict (409) is retried
        if (isSyncdError(err) && err.status < 500 && err.code !== "SYNCD_ERR_CONFLICT")
          return deadLetter(m, err);
        counts.errors++;
        lastError = (err as Error).message;
        throw err;
      }
    },
  });

  const subject = (e: string) => endpointSubject(config.site, "merger", e);
  const d = { log };
  addEndpoint<Op, unknown>(
    service,
    {
      name: "merge",
      subject: subject("merge"),
      request: "op.json",
      response: "merger/merge.response.json",
      description: "apply one op by LWW: applied, stale or duplicate",
      // either op wire form: plain JSON, or a large value split out (Syncd-Op header + raw payload)
      decode: (msg) => decodeOpMessage(msg.data, msg.headers),
      handler: async (op) => {
        const bucket = admit(deps, op);
        // journal first: if this process dies half-way, the consumer applies the op again
        const j = encodeOpMessage(op);
        await js.publish(journalSubject(config.site), j.data, j.headers ? { headers: j.headers } : {});
        const r = await applyAdmitted(deps, bucket, op);
        counts[r.result]++;
        return r;
      },
    },
    d,
  );
  addEndpoint<MergerGetRequest, MergerGetResponse>(
    service,
    {
      name: "get",
      subject: subject("get"),
      request: "merger/get.request.json",
      response: "merger/get.response.json",
      description: "a key's value and LWW version at this site",
      handler: async (req) => {
        const b = buckets.get(req.bucket);
        if (!b) throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", `"${req.bucket}"`);
        const [m, l] = await Promise.all([b.meta.get(req.key), b.data.latest(req.key)]);
        if (!m && (!l || l.deleted))
          throw new SyncdError("SYNCD_ERR_NOT_FOUND", `"${req.key}" in "${req.bucket}"`);
        const res: MergerGetResponse = {
          bucket: req.bucket,
          key: req.key,
          ts: m?.version.ts ?? 0,
          node_id: m?.version.node_id ?? "",
          deleted: l ? l.deleted : (m?.version.deleted ?? true),
          rev: l?.rev ?? 0,
        };
        return l && !l.deleted ? { ...res, ...encodeValue(l.value) } : res;
      },
    },
    d,
  );
  addEndpoint<EmptyRequest, MergerStatusResponse>(
    service,
    {
      name: "status",
      subject: subject("status"),
      request: "empty.request.json",
      response: "merger/status.response.json",
      description: "counts of this instance and the backlog of the site's inbound op stream",
      handler: async () => {
        const ci = await site.jsm.consumers.info(stream, durable).catch((err) => {
          lastError = `${stream}: ${(err as Error).message}`;
          return null;
        });
        return {
          site: config.site,
          node_id: config.nodeId,
          instance: config.instance,
          counts: { ...counts, ...deadByCode },
          pending: ci?.num_pending ?? 0,
          ...(() => {
            const errs = [...problems.values(), loop.problem(), lastError].filter(Boolean);
            return errs.length > 0 ? { last_error: errs.join("; ") } : {};
          })(),
        };
      },
    },
    d,
  );
  return {
    stop: async () => {
      await Promise.all(monitors.map((m) => m.stop()));
      await loop.stop();
      for (const c of caches) c.stop();
    },
  };
}
