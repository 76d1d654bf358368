/**
 * Wiring of syncd-merger: the streams that feed it (IN, which sources the hub's aggregate, and the
 * ingress of hand-made ops and journal records), a shared durable consumer on each, dead-lettering
 * of bad ops, forwarding of hand-made ops to the site's OUT log once they are the site's current
 * winner (ordered, so the log keeps each key's greatest version), the removal of full-mesh peer
 * sources once those peers feed the hub, and the merge / get / status endpoints.
 */
import { type JetStreamManager, type JsMsg, jetstream } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { addEndpoint } from "../lib/adapter.ts";
import { Observer } from "../lib/clock-client.ts";
import { ClockMode, LAMPORT_CATCH_UP_MS, admissible } from "../lib/clock-rules.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { type ErrorCodeName, SyncdError, isSyncdError } from "../lib/errors.ts";
import { Conditions, Severity, healthOf } from "../lib/health.ts";
import { isNotFound } from "../lib/jserrors.ts";
import { compareVersions } from "../lib/lww.ts";
import { METRIC_NAMES, byLabel } from "../lib/metrics.ts";
import {
  type Op,
  decodeOpMessage,
  encodeOpMessage,
  encodeValue,
  opMessageSize,
  opVersioned,
} from "../lib/op.ts";
import { currentOwnOp, publishOrdered } from "../lib/oplog.ts";
import { keepArmed, sourcesBackOff } from "../lib/rearm.ts";
import type { Running, ServiceContext, ServiceDef } from "../lib/runtime.ts";
import type {
  EmptyRequest,
  MergerGetRequest,
  MergerGetResponse,
  MergerStatusResponse,
} from "../lib/schemas.gen.ts";
import { ensureMergerStreams, hubAnswers, hubManager, hubSource, siteSource } from "../lib/site.ts";
import { BucketStore, incarnationOf } from "../lib/stores.ts";
import {
  Durables,
  Headers,
  OPS_INGRESS,
  Streams,
  conflictsSubject,
  dlqSubject,
  endpointSubject,
  forwardMsgId,
  journalSubject,
  opsFilter,
  opsSubject,
} from "../lib/subjects.ts";
import {
  type BucketState,
  type Conflict,
  type ConflictSide,
  type MergeDeps,
  MergeResult,
  admit,
  applyAdmitted,
  greaterOp,
  ownOpSettled,
} from "./handlers.ts";
import { monitorBucket } from "./vanished.ts";

const health = healthOf("merger");

type Parsed = { op: Op; bucket: BucketState } | { error: SyncdError; ts?: number; refused?: Op };

/** The longest a parked op waits before it is tried again. */
const MAX_PARK_MS = 60_000;
const PARK_LOG_EVERY_MS = 10_000;

/** room for the headers the server and client add to a dead-letter record */
const DLQ_SLACK = 512;

function isSkew(err: SyncdError): boolean {
  return err.code === ("SYNCD_ERR_CLOCK_SKEW" satisfies ErrorCodeName);
}

/** Wire syncd-merger. */
export async function wireMerger(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  /** counters of this instance, shown in status and STATS data */
  const counts = {
    applied: 0,
    stale: 0,
    duplicate: 0,
    forwarded: 0,
    dead_lettered: 0,
    conflicts: 0,
    errors: 0,
    /** deliveries of ops not acceptable yet (clock skew / Lamport jump), put back to be tried later */
    parked: 0,
    /** a bucket found re-created; values that vanished without an op; repaired; not repairable */
    bucket_recreated: 0,
    vanished: 0,
    repaired: 0,
    unrepaired: 0,
    /** times this instance re-armed the FEED's stalled source of the hub */
    sources_rearmed: 0,
    /** of the duplicate and stale ops, this site's own ops back from the hub, settled by `_meta` alone */
    own_settled: 0,
  };
  /** dead-lettered ops by error code */
  const deadByCode: Record<string, number> = {};
  let lastError: string | undefined;
  const buckets = new Map<string, BucketState>();
  const monitors: { stop: () => Promise<void> }[] = [];
  const problems = new Map<string, string>();
  for (const b of config.buckets) {
    const info = await site.jsm.streams.info(`KV_${b}`);
    const meta = await ctx.metaCache(b);
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
    nodeId: config.nodeId,
    observe: (ts) => observer.observe(ts),
    checkSkew: (ts) => {
      // HLC only: the Lamport jump is checked by the clock service, which knows the site's mark
      if (config.clock !== ClockMode.hlc) return;
      const a = admissible(config.clock, ts, {
        nowMs: observer.clockNowMs(),
        hw: 0,
        maxSkewMs: config.maxClockSkewMs,
        maxJump: config.maxClockJump,
      });
      if (!a.ok) throw new SyncdError("SYNCD_ERR_CLOCK_SKEW", a.reason);
    },
  };
  /** A refused ts is not a verdict: raised, counted, and the op is tried again later. */
  const raiseRefused = (err: SyncdError, ts: number | undefined) =>
    health.raise(
      config.clock === ClockMode.hlc ? Conditions.clockSkew : Conditions.clockJump,
      Severity.error,
      {
        message: `${err.message}: ops from a clock that is off wait (parked) until they are acceptable`,
        ttlMs: 10 * 60_000,
        ...(ts !== undefined ? { data: { ts } } : {}),
      },
    );
  let lastParkLog = 0;
  let parkedSinceLog = 0;
  const park = (m: JsMsg, err: SyncdError, ts: number | undefined): { nak: number } => {
    counts.parked++;
    parkedSinceLog++;
    raiseRefused(err, ts);
    const a =
      ts === undefined
        ? null
        : admissible(config.clock, ts, {
            nowMs: observer.clockNowMs(),
            hw: 0,
            maxSkewMs: config.maxClockSkewMs,
            maxJump: config.maxClockJump,
          });
    // Lamport: the first refusal moved the clock (catchUp), often within reach of the op: try it
    // again soon, then once per catch-up step
    const lamportWait = m.info.deliveryCount <= 1 ? 0 : LAMPORT_CATCH_UP_MS;
    const wait = config.clock === ClockMode.hlc && a && !a.ok ? a.waitMs : lamportWait;
    const delay = Math.min(MAX_PARK_MS, Math.max(1000, wait));
    if (Date.now() - lastParkLog >= PARK_LOG_EVERY_MS) {
      log.error(
        {
          code: err.code,
          reason: err.message,
          stream: m.info.stream,
          seq: m.seq,
          retry_ms: delay,
          parked: parkedSinceLog,
        },
        "CLOCK: an op is not acceptable yet (far ahead of this site's clock); parked, tried again later",
      );
      lastParkLog = Date.now();
      parkedSinceLog = 0;
    }
    return { nak: delay };
  };
  const parse = (m: JsMsg): Parsed => {
    let op: Op | undefined;
    try {
      op = decodeOpMessage(m.data, m.headers);
      return { op, bucket: admit(deps, op) };
    } catch (err) {
      return {
        error: isSyncdError(err) ? err : new SyncdError("SYNCD_ERR_INTERNAL", String(err)),
        ...(op ? { ts: op.ts, refused: op } : {}),
      };
    }
  };

  const deadLetter = async (m: JsMsg, err: SyncdError, p?: Parsed): Promise<{ term: string }> => {
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
    if (err.code === ("SYNCD_ERR_TOO_LARGE" satisfies ErrorCodeName)) {
      const op = p && ("op" in p ? p.op : p.refused);
      const subject = op ? `${op.bucket}/${op.key}` : m.subject;
      health.raise(Conditions.valueTooLarge, Severity.error, {
        message: `an op of ${subject} cannot be applied or forwarded here: ${err.message}; dead-lettered`,
        subject,
        data: { stream: m.info.stream, seq: m.seq },
      });
    }
    const fields = {
      code: err.code,
      reason: err.message,
      stream: m.info.stream,
      seq: m.seq,
      subject: m.subject,
    };
    log.warn(fields, "bad op dead-lettered");
    return { term: `${err.code}: ${err.message}` };
  };

  const journal = journalSubject(config.site);
  const ownOrigin = opsFilter(config.site).slice(0, -1);
  const journalDeps: MergeDeps = { ...deps, onConflict: undefined };
  const durable = Durables.merger;
  await ensureMergerStreams(site.jsm, config, site.replicas, log);
  // the ingress stream's incarnation: its sequences (in forwarded ops' message ids) restart when it is made again
  const ingressIncarnation = async () =>
    incarnationOf((await site.jsm.streams.info(Streams.ingress(config.site))).created);
  let ingressInc = await ingressIncarnation();
  /**
   * the conflicts of a message of the streams, recorded once its batch is settled (with those of
   * the ops coalesced with it: they lost to what it lost to, else to it)
   */
  const conflictsOf = new WeakMap<JsMsg, Conflict[]>();
  const handle = async (m: JsMsg, p: Parsed) => {
    if ("error" in p) return isSkew(p.error) ? park(m, p.error, p.ts) : deadLetter(m, p.error, p);
    try {
      // this site's own op back from the hub: settled by `_meta` (the watch-fed cache) when it holds it
      if (m.subject.startsWith(ownOrigin)) {
        const settled = ownOpSettled(await p.bucket.meta.get(p.op.key), p.op);
        if (settled) {
          counts[settled]++;
          counts.own_settled++;
          return { ack: true } as const;
        }
      }
      // a journaled copy of a merge request: the endpoint already recorded its conflicts; else the
      // version a losing op lost to is kept for the ops coalesced with it (they lost to it too)
      const d =
        m.subject === journal
          ? journalDeps
          : {
              ...deps,
              onConflict: (c: Conflict) => {
                conflictsOf.set(m, [...(conflictsOf.get(m) ?? []), c]);
              },
            };
      const r = await applyAdmitted(d, p.bucket, p.op);
      counts[r.result]++;
      if (r.result === "applied") health.clear(Conditions.valueTooLarge, `${p.op.bucket}/${p.op.key}`);
      // a hand-made op goes to the site's log only as the key's current winner here
      if (m.subject === OPS_INGRESS && r.result !== "stale") {
        const msgID = forwardMsgId(config.site, m.seq, ingressInc);
        const size = opMessageSize(encodeOpMessage(p.op), { "Nats-Msg-Id": msgID });
        if (size > (nc.info?.max_payload ?? Number.POSITIVE_INFINITY))
          return deadLetter(
            m,
            new SyncdError("SYNCD_ERR_TOO_LARGE", `op message ${size} bytes > max_payload`),
            p,
          );
        await publishOrdered(
          { js, jsm: site.jsm },
          Streams.out(config.site),
          opsSubject(config.site, p.op.bucket, p.op.key),
          p.op,
          {
            msgID,
            current: () =>
              currentOwnOp(
                site.metas.get(p.op.bucket)!,
                site.buckets.get(p.op.bucket)!,
                config.nodeId,
                p.op.bucket,
                p.op.key,
              ),
          },
        );
        counts.forwarded++;
      }
      return { ack: true } as const;
    } catch (err) {
      // a ts the clock refuses waits; other bad input is dead-lettered; a conflict (409) is retried
      if (isSyncdError(err) && isSkew(err)) return park(m, err, p.op.ts);
      if (isSyncdError(err) && err.status < 500 && err.code !== "SYNCD_ERR_CONFLICT")
        return deadLetter(m, err, p);
      counts.errors++;
      lastError = (err as Error).message;
      throw err;
    }
  };
  const streams = [Streams.in(config.site), Streams.ingress(config.site)];
  const loops: ConsumerLoop[] = [];
  // a wiring that fails half-way (it is tried again) leaves no loop running
  try {
    for (const stream of streams) {
      const ensure = () => ensureConsumer(site.jsm, stream, durable, { deliver: "all" });
      await ensure();
      loops.push(
        await runConsumer({
          health,
          // a stream deleted: make the merger's streams (and their hub source) again, then the durable
          recreate: async () => {
            try {
              await site.jsm.streams.info(stream);
            } catch (err) {
              if (!isNotFound(err)) throw err;
              log.error({ stream }, "a stream the merger consumes was deleted: creating it again");
              await new Promise((r) => setTimeout(r, DELETED_STREAM_SETTLE_MS));
              await ensureMergerStreams(site.jsm, config, site.replicas, log);
            }
            await ensure();
            ingressInc = await ingressIncarnation();
          },
          js: site.js,
          stream,
          durable,
          concurrency: 64,
          log,
          subjectOf: (key) => key,
          decode: parse,
          keyOf: (m, p) => ("op" in p ? `${p.op.bucket}/${p.op.key}` : `#${m.seq}`),
          handle,
          // of a key's ops waiting together only the greatest is applied: the others are stale (LWW)
          pick: (a, b) =>
            "op" in a.decoded && "op" in b.decoded
              ? greaterOp(
                  { op: a.decoded.op, handMade: a.m.subject === OPS_INGRESS },
                  { op: b.decoded.op, handMade: b.m.subject === OPS_INGRESS },
                )
              : null,
          onBatch: (w, losers, d) => {
            const found = conflictsOf.get(w.m) ?? [];
            conflictsOf.delete(w.m);
            const records = found.map((c) => ({ seq: w.m.seq, c }));
            if ("ack" in d && "op" in w.decoded) {
              counts.stale += losers.length;
              // each lost to what the winner lost to, else to the winner
              const lost = found.find((c) => c.kind === "stale_op")?.winner;
              const winner = lost ?? opVersioned(w.decoded.op);
              for (const l of losers) {
                if (
                  !("op" in l.decoded) ||
                  l.m.subject === journal ||
                  l.decoded.op.node_id === winner.node_id
                )
                  continue;
                const loser = opVersioned(l.decoded.op);
                const c: Conflict = {
                  bucket: l.decoded.op.bucket,
                  key: l.decoded.op.key,
                  kind: "stale_op",
                  loser,
                  winner,
                };
                records.push({ seq: l.m.seq, c });
              }
            }
            // in stream order, as if the ops had been applied one by one
            for (const r of records.sort((a, b) => a.seq - b.seq)) recordConflict(r.c);
          },
        }),
      );
    }
  } catch (err) {
    await Promise.all(loops.map((l) => l.stop()));
    throw err;
  }
  const cleanup = keepLegacySourcesPruned(nc, site.jsm, config, log);
  // the FEED's source of the hub: re-armed when it stalls while the hub answers (services/lib/rearm.ts)
  const armed = keepArmed({
    jsm: site.jsm,
    stream: Streams.in(config.site),
    source: hubSource(config.hubDomain),
    reachable: () => hubAnswers(nc, config.hubDomain),
    log,
    onRearm: () => counts.sources_rearmed++,
    rearm: sourcesBackOff(nc.info?.version),
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
        let bucket: BucketState;
        try {
          bucket = admit(deps, op);
          // a ts the clock refuses is answered 422 before anything is journaled: the sender tries later
          await deps.observe(op.ts);
        } catch (err) {
          if (isSyncdError(err) && isSkew(err)) raiseRefused(err, op.ts);
          throw err;
        }
        // anti-entropy sends what differs: a cached `_meta` version that makes this op stale or a
        // duplicate is suspect (a `_meta` purged behind the services' back leaves the cache's
        // entries in place) and is read again; any other answer is checked by the compare-and-set
        let before = await bucket.meta.get(op.key);
        if (before && compareVersions(before.version, op) >= 0) {
          bucket.meta.invalidate?.(op.key);
          before = await bucket.meta.get(op.key);
        }
        // journal first: if this process dies half-way, the consumer applies the op again
        const j = encodeOpMessage(op);
        await js.publish(journalSubject(config.site), j.data, j.headers ? { headers: j.headers } : {});
        let r = await applyAdmitted(deps, bucket, op);
        // the journal's consumer may have applied it first, on this request's behalf
        if (r.result === MergeResult.duplicate && (!before || compareVersions(before.version, op) < 0))
          r = { ...r, result: MergeResult.applied };
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
        const cis = await Promise.all(
          streams.map((st) =>
            site.jsm.consumers.info(st, durable).catch((err) => {
              lastError = `${st}: ${(err as Error).message}`;
              return null;
            }),
          ),
        );
        return {
          site: config.site,
          node_id: config.nodeId,
          instance: config.instance,
          counts: { ...counts, ...deadByCode },
          pending: cis.reduce((n, ci) => n + (ci?.num_pending ?? 0), 0),
          ...(() => {
            const errs = [...problems.values(), ...loops.map((l) => l.problem()), lastError].filter(Boolean);
            return errs.length > 0 ? { last_error: errs.join("; ") } : {};
          })(),
          conditions: health.list(),
        };
      },
    },
    d,
  );
  ctx.metrics.counterFrom(METRIC_NAMES.mergerOps, "ops handled, by result", ["result"], () =>
    byLabel("result", {
      applied: counts.applied,
      stale: counts.stale,
      duplicate: counts.duplicate,
      forwarded: counts.forwarded,
      errors: counts.errors,
    }),
  );
  ctx.metrics.counterFrom(METRIC_NAMES.deadLetters, "ops dead-lettered, by error code", ["code"], () =>
    byLabel("code", deadByCode),
  );
  ctx.metrics.counterFrom(
    METRIC_NAMES.conflicts,
    "concurrent writes resolved by LWW",
    [],
    () => counts.conflicts,
  );
  ctx.metrics.rearmsFrom(() => [
    { labels: { stream: Streams.in(config.site) }, value: counts.sources_rearmed },
  ]);
  ctx.metrics.gaugeFrom(METRIC_NAMES.mergerBacklog, "ops waiting in the inbound stream", [], async () => {
    const ci = await site.jsm.consumers.info(Streams.in(config.site), Durables.merger);
    return ci.num_pending;
  });
  return {
    stop: async () => {
      cleanup.stop();
      armed.stop();
      await Promise.all(monitors.map((m) => m.stop()));
      await Promise.all(loops.map((l) => l.stop()));
    },
    statsData: (ep) => (ep === "merge" ? { ...counts, ...deadByCode } : null),
  };
}

/** syncd-merger, for `runService` and the site agent. */
export const mergerService: ServiceDef = {
  kind: "merger",
  description: "applies ops to the site's buckets by last-writer-wins",
  wire: wireMerger,
  consumers: (config) =>
    [Streams.in(config.site), Streams.ingress(config.site)].map((stream) => ({
      stream,
      durable: Durables.merger,
    })),
};

/**
 * How long the merger waits before making a deleted stream again. nats-server 2.9.10 removes a
 * deleted stream's files after its delete request has returned: a stream of the same name made
 * within moments had its store directory removed under it (`open …/msgs/1.blk: no such file or
 * directory` in the server log) and stored and delivered nothing (test/I6-recreated.test.ts).
 */
export const DELETED_STREAM_SETTLE_MS = 2000;

/** Seconds between checks for full-mesh peer sources that the hub has made redundant. */
const PRUNE_PERIOD_MS = 15_000;

/**
 * Migration from the full mesh: the ingress stream (the former IN stream) may still source peers'
 * legacy OUT streams. A peer's source is removed once that peer's compacted log is a source of the
 * hub's aggregate: from then on its watcher bridges whatever its legacy stream still gets.
 */
function keepLegacySourcesPruned(
  nc: ServiceContext["nc"],
  jsm: JetStreamManager,
  config: ServiceContext["config"],
  log: ServiceContext["log"],
): { stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const ingress = Streams.ingress(config.site);
  const run = async () => {
    try {
      const info = await jsm.streams.info(ingress);
      const legacy = info.config.sources ?? [];
      if (legacy.length === 0) return; // nothing left to migrate: stop checking
      const hub = await hubManager(nc, config.hubDomain);
      const fed = new Set((await hub.streams.info(Streams.hub)).config.sources?.map((s) => s.name) ?? []);
      const keep = legacy.filter((s) => {
        const peer = s.name.startsWith(Streams.legacyOut(""))
          ? s.name.slice(Streams.legacyOut("").length)
          : "";
        return !(peer && fed.has(siteSource(peer, "").name));
      });
      if (keep.length < legacy.length) {
        await jsm.streams.update(ingress, { ...info.config, sources: keep });
        log.info(
          { removed: legacy.filter((s) => !keep.includes(s)).map((s) => s.name) },
          "removed full-mesh peer sources: those peers feed the hub",
        );
      }
      if (keep.length === 0) return;
    } catch (err) {
      log.warn({ err }, "could not check the full-mesh peer sources; retrying");
    }
    if (!stopped) timer = setTimeout(run, PRUNE_PERIOD_MS);
  };
  void run();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
