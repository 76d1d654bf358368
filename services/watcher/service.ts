/**
 * Wiring of syncd-watcher: one shared durable consumer per bucket on the bucket's stream, the
 * stamping handler, and the status endpoint.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { addEndpoint } from "../lib/adapter.ts";
import { Ticker } from "../lib/clock-client.ts";
import { envInt } from "../lib/config.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { Conditions, EVENT_TTL_MS, Severity, healthOf } from "../lib/health.ts";
import { isNoResponders, isStreamNotFound } from "../lib/jserrors.ts";
import { METRIC_NAMES, type Sample, byLabel } from "../lib/metrics.ts";
import { currentOwnOp, metaHoldsOp } from "../lib/oplog.ts";
import type { Running, ServiceContext, ServiceDef } from "../lib/runtime.ts";
import type { EmptyRequest, WatcherStatusResponse } from "../lib/schemas.gen.ts";
import { ensureOutStream, hubHoldsUpTo, hubManager, lastCopied, lastOpAtHub } from "../lib/site.ts";
import {
  BucketStore,
  bucketIncarnation,
  expiryProblem,
  isDeleteMarker,
  versionFromHeaders,
} from "../lib/stores.ts";
import {
  Durables,
  Headers,
  Streams,
  dlqSubject,
  endpointSubject,
  kvFilter,
  kvKeyOf,
  kvStream,
  kvSubject,
} from "../lib/subjects.ts";
import { type LocalEntry, Outcome, type WatcherDeps, newerLocal, stampEntry } from "./handlers.ts";
import { HUB_RECHECK_MS, bridgeLegacyOut, keepRegistered, seedOutLog } from "./outlog.ts";

const health = healthOf("watcher");

/** Start one consumer loop per bucket and add the status endpoint. */
export async function wireWatcher(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  const ticker = new Ticker(nc, config.site, { hlc: config.clock === "hlc" });
  const loops: ConsumerLoop[] = [];
  const loopOf = new Map<string, ConsumerLoop>();
  /** counters of this instance per bucket, shown in status and STATS data */
  const counts = new Map<string, Record<Outcome | "errors", number>>();
  let lastError: string | undefined;
  for (const bucket of config.buckets) {
    const problem = expiryProblem(bucket, (await site.jsm.streams.info(kvStream(bucket))).config);
    if (problem) {
      log.fatal({ bucket }, `refusing to replicate: ${problem}`);
      throw new Error(problem);
    }
  }
  const out = await ensureOutStream(site.jsm, config, site.replicas, log);
  const logDeps = { site: config.site, nodeId: config.nodeId, js: site.js, jsm: site.jsm };
  // a fresh log (new site, migration from the full mesh, lost store): rebuild it from _meta
  if (out.state.last_seq === 0)
    for (const bucket of config.buckets)
      await seedOutLog(logDeps, bucket, site.metas.get(bucket)!, site.buckets.get(bucket)!, log);
  const bridge = await bridgeLegacyOut({ ...logDeps, metas: site.metas, buckets: site.buckets }, log);
  if (bridge) loops.push(bridge);
  let outCreated = out.created;
  /** whether the log's numbering still has to be checked against what the hub holds from it */
  let alignPending = true;
  let keepingOut: Promise<void> | undefined;
  /**
   * Keep the site's op log usable by the hub. Deleted (`nats stream rm SYNCD_OPS_<site>`): made again.
   * Its numbering below what the hub's aggregate already holds from it (made again here or by
   * another instance, or lost with the site's store while the watchers were down): the hub's source
   * resumes after the sequence it last copied and would skip the new log's first ops, so the log is
   * moved past it (a purge up to that sequence) and seeded again from `_meta`; raised as
   * STREAM_RECREATED. Runs with each hub registration round, and at once when a publish finds no
   * stream; the comparison with the hub waits until the hub answers.
   */
  const keepOut = () => {
    keepingOut ??= (async () => {
      const name = Streams.out(config.site);
      const info = async () => {
        try {
          return await site.jsm.streams.info(name);
        } catch (err) {
          if (!isStreamNotFound(err)) throw err;
          return undefined;
        }
      };
      let si = (await info()) ?? (await ensureOutStream(site.jsm, config, site.replicas, log));
      const recreated = si.created !== outCreated;
      if (recreated) {
        outCreated = si.created;
        alignPending = true;
      }
      if (!alignPending) return;
      // the hub first, then the log: what the hub copied then, the log held then (or it restarted)
      const hubHas = await hubHoldsUpTo(await hubManager(nc, config.hubDomain), config.site);
      si = (await info()) ?? si;
      alignPending = false;
      const behind = si.state.last_seq < hubHas;
      if (!recreated && !behind) return;
      if (behind) await site.jsm.streams.purge(name, { seq: hubHas + 1 });
      log.error(
        { stream: name, last_seq: si.state.last_seq, hub_has: hubHas, recreated },
        "the site's op log was made again or restarted its numbering: seeding it again past what the hub holds",
      );
      health.raise(Conditions.streamRecreated, Severity.warn, {
        message: `${name} was deleted or restarted its numbering (at ${si.state.last_seq}, the hub holds up to ${hubHas}): moved past it and seeded again from _meta`,
        subject: name,
        ttlMs: EVENT_TTL_MS,
      });
      for (const bucket of config.buckets)
        await seedOutLog(logDeps, bucket, site.metas.get(bucket)!, site.buckets.get(bucket)!, log, {
          ownOnly: true,
        });
    })().finally(() => {
      keepingOut = undefined;
    });
    return keepingOut;
  };
  let hubCreated: string | undefined;
  /**
   * The hub's aggregate deleted and made again: its numbering restarts, and the site's inbound
   * stream's source of it would resume after the last sequence it copied, skipping the new
   * aggregate's first ops (nats-server before 2.10). Seen as the aggregate's creation time changing
   * between two rounds, or, at start, the inbound stream holding a copy of a later sequence than the
   * aggregate's last: the inbound stream is then deleted, and the merger makes it again, which
   * copies the aggregate from its start (one op per key and origin, applied by LWW). Raised as
   * STREAM_RECREATED.
   */
  const keepFeed = async (created: string) => {
    await resetFeedIf(hubCreated, created);
    // only once that went through: a failed reset is tried again next round
    hubCreated = created;
  };
  const resetFeedIf = async (was: string | undefined, created: string) => {
    const feed = Streams.in(config.site);
    let why: string | undefined;
    if (was !== undefined && was !== created) why = "the hub's aggregate was made again";
    else if (was === undefined) {
      const copied = await lastCopied(site.jsm, feed);
      const hubLast = (await (await hubManager(nc, config.hubDomain)).streams.info(Streams.hub)).state
        .last_seq;
      if (copied > hubLast)
        why = `the hub's aggregate restarted its numbering (at ${hubLast}, copied up to ${copied})`;
    }
    if (!why) return;
    const fi = await site.jsm.streams.info(feed).catch(() => undefined);
    if (!fi || Date.parse(fi.created) > Date.parse(created)) return;
    log.error({ stream: feed, reason: why }, "re-making the site's inbound stream from the hub's aggregate");
    await site.jsm.streams.delete(feed);
    health.raise(Conditions.streamRecreated, Severity.warn, {
      message: `${why}: ${feed} deleted for the merger to make again from the aggregate's start`,
      subject: feed,
      ttlMs: EVENT_TTL_MS,
    });
  };
  let hubJsm: JetStreamManager | undefined;
  /** How long the registration's cheap check may take before the round turns full. */
  const CHEAP_CHECK_MS = 2000;
  const hub = keepRegistered(nc, config, log, {
    periodMs: envInt(process.env, "SYNCD_HUB_RECHECK_MS", HUB_RECHECK_MS, 100),
    // a cheap check that cannot answer at once (a leader election at an R3 site, the hub slow)
    // gives way to the full round rather than wait out each request's timeout
    lastOp: async () => {
      hubJsm ??= await hubManager(nc, config.hubDomain);
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((r) => {
        timer = setTimeout(() => r(undefined), CHEAP_CHECK_MS);
      });
      return Promise.race([lastOpAtHub(site.jsm, hubJsm, config.site), late]).finally(() =>
        clearTimeout(timer),
      );
    },
    outLastMs: async () => Date.parse((await site.jsm.streams.info(Streams.out(config.site))).state.last_ts),
    eachRound: async (created) => {
      await keepOut();
      await keepFeed(created);
    },
  });
  // a wiring that fails half-way (it is tried again) leaves nothing running
  try {
    for (const bucket of config.buckets) {
      const c: Record<Outcome | "errors", number> = {
        skipped_echo: 0,
        skipped_superseded: 0,
        published: 0,
        republished: 0,
        too_large: 0,
        errors: 0,
      };
      counts.set(bucket, c);
      const meta = await ctx.metaCache(bucket);
      const blog = log.child({ bucket });
      const data = new BucketStore(bucket, site.jsm, site.js, false);
      let inc = await bucketIncarnation(site.jsm, bucket);
      const deps: WatcherDeps = {
        incarnation: () => inc,
        latestRev: async (key) => (await data.latest(key))?.rev ?? null,
        maxPayload: nc.info?.max_payload,
        // the op cannot travel: keep it (without its value) on the dead-letter stream and raise it
        onTooLarge: async (op, rev, err) => {
          const { value: _v, encoding: _e, ...rest } = op;
          const h = natsHeaders();
          h.set(Headers.code, err.code);
          h.set(Headers.reason, err.message);
          h.set(Headers.origin, `${kvStream(bucket)}:${rev}:${kvSubject(bucket, op.key)}`);
          await site.js.publish(dlqSubject(config.site), JSON.stringify(rest), { headers: h });
          lastError = `${err.code}: ${err.message}`;
          health.raise(Conditions.valueTooLarge, Severity.error, {
            message: `local write of ${bucket}/${op.key} (rev ${rev}) cannot travel: ${err.message}; dead-lettered, the other sites keep their value`,
            subject: `${bucket}/${op.key}`,
            data: { bucket, key: op.key, rev },
          });
          blog.error(
            { code: err.code, key: op.key, reason: err.message },
            "local write too large to replicate",
          );
        },
        site: config.site,
        nodeId: config.nodeId,
        bucket,
        meta,
        js: site.js,
        jsm: site.jsm,
        current: (key: string) =>
          currentOwnOp(site.metas.get(bucket)!, site.buckets.get(bucket)!, config.nodeId, bucket, key),
        holds: (op) => metaHoldsOp(site.metas.get(bucket)!, op),
        tick: () => ticker.tick(),
      };
      const durable = Durables.watcher(config.site, bucket);
      const ensure = () =>
        ensureConsumer(site.jsm, kvStream(bucket), durable, {
          filter: kvFilter(bucket),
          deliver: "last_per_subject",
        });
      await ensure();
      loops.push(
        await runConsumer({
          health,
          js: site.js,
          stream: kvStream(bucket),
          durable,
          concurrency: 64,
          decode: (m) => kvKeyOf(bucket, m.subject),
          keyOf: (_m, key) => key,
          // of a key's local writes waiting together, only the newest is stamped: it replaced the
          // others before they were stamped (I3); entries with headers are never coalesced
          pick: (a, b) =>
            newerLocal(
              {
                rev: a.m.seq,
                local: versionFromHeaders(a.m.headers) === null,
                redelivered: a.m.info.redelivered,
              },
              {
                rev: b.m.seq,
                local: versionFromHeaders(b.m.headers) === null,
                redelivered: b.m.info.redelivered,
              },
            ),
          onBatch: (_w, losers, d) => {
            if ("ack" in d) c.skipped_superseded += losers.length;
          },
          log: blog,
          subjectOf: (key) => `${bucket}/${key}`,
          // the bucket deleted or re-created: read its new incarnation, then re-seed from its latest
          // entries (deliver last_per_subject); revisions of the old incarnation suppress nothing
          recreate: ensure,
          onGone: async () => {
            const was = inc;
            inc = await bucketIncarnation(site.jsm, bucket);
            if (inc !== was) {
              blog.error({ was, now: inc }, "bucket was re-created: re-seeding from its current entries");
              health.raise(Conditions.bucketRecreated, Severity.warn, {
                message: `bucket ${bucket} was re-created: the watcher re-seeded from its current entries`,
                subject: bucket,
                ttlMs: EVENT_TTL_MS,
              });
            }
          },
          handle: async (m, key) => {
            const e: LocalEntry = {
              key,
              rev: m.seq,
              deleted: isDeleteMarker(m.headers),
              value: m.data,
              headers: versionFromHeaders(m.headers),
              redelivered: m.info.redelivered,
            };
            try {
              const outcome = await stampEntry(deps, e);
              c[outcome]++;
              if (outcome === Outcome.published) health.clear(Conditions.valueTooLarge, `${bucket}/${e.key}`);
              if (outcome === Outcome.published)
                blog.debug({ key: e.key, rev: e.rev }, "published local write");
              return { ack: true };
            } catch (err) {
              c.errors++;
              lastError = (err as Error).message;
              if (isNoResponders(err))
                void keepOut().catch((e) => blog.warn({ err: e }, "cannot make the op log again"));
              throw err;
            }
          },
        }),
      );
      loopOf.set(bucket, loops[loops.length - 1]!);
      blog.info({ durable }, "watching bucket");
    }
  } catch (err) {
    hub.stop();
    await Promise.all(loops.map((l) => l.stop()));
    throw err;
  }
  addEndpoint<EmptyRequest, WatcherStatusResponse>(
    service,
    {
      name: "status",
      subject: endpointSubject(config.site, "watcher", "status"),
      request: "empty.request.json",
      response: "watcher/status.response.json",
      description: "position, lag and counts of the watcher per bucket",
      handler: async () => ({
        site: config.site,
        node_id: config.nodeId,
        instance: config.instance,
        buckets: await Promise.all(
          config.buckets.map(async (bucket) => {
            const ci = await site.jsm.consumers
              .info(kvStream(bucket), Durables.watcher(config.site, bucket))
              .catch((err) => {
                lastError = `${kvStream(bucket)}: ${(err as Error).message}`;
                return null;
              });
            return {
              bucket,
              position: ci?.delivered.stream_seq ?? 0,
              lag: ci?.num_pending ?? 0,
              counts: { ...counts.get(bucket), recreated: loopOf.get(bucket)?.recreated() ?? 0 },
            };
          }),
        ),
        hub_rearms: hub.rearms(),
        ...(() => {
          const errs = [...loops.map((l) => l.problem()).filter(Boolean), ...(lastError ? [lastError] : [])];
          return errs.length > 0 ? { last_error: errs.join("; ") } : {};
        })(),
        conditions: health.list(),
      }),
    },
    { log },
  );
  ctx.metrics.counterFrom(
    METRIC_NAMES.watcherOps,
    "local writes handled, by bucket and outcome",
    ["bucket", "outcome"],
    () => [...counts].flatMap(([bucket, c]) => byLabel("outcome", c, { bucket })),
  );
  ctx.metrics.rearmsFrom(() => [{ labels: { stream: Streams.hub }, value: hub.rearms() }]);
  ctx.metrics.gaugeFrom(METRIC_NAMES.watcherLag, "local writes not yet turned into ops", ["bucket"], () =>
    Promise.all(
      config.buckets.map(async (bucket): Promise<Sample> => {
        const ci = await site.jsm.consumers.info(kvStream(bucket), Durables.watcher(config.site, bucket));
        return { labels: { bucket }, value: ci.num_pending };
      }),
    ),
  );
  return {
    stop: async () => {
      hub.stop();
      await Promise.all(loops.map((l) => l.stop()));
    },
    statsData: (ep) => (ep === "status" ? Object.fromEntries(counts) : null),
  };
}

/** syncd-watcher, for `runService` and the site agent. */
export const watcherService: ServiceDef = {
  kind: "watcher",
  description: "turns local writes of the site's buckets into ops",
  wire: wireWatcher,
  consumers: (config) =>
    config.buckets.map((b) => ({ stream: kvStream(b), durable: Durables.watcher(config.site, b) })),
};
