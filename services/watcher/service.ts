/**
 * Wiring of syncd-watcher: one shared durable consumer per bucket on the bucket's stream, the
 * stamping handler, and the status endpoint.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { addEndpoint } from "../lib/adapter.ts";
import { Ticker } from "../lib/clock-client.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { health } from "../lib/health.ts";
import { METRIC_NAMES, type Sample, byLabel } from "../lib/metrics.ts";
import { currentOwnOp } from "../lib/oplog.ts";
import type { Running, ServiceContext, ServiceDef } from "../lib/runtime.ts";
import type { EmptyRequest, WatcherStatusResponse } from "../lib/schemas.gen.ts";
import { ensureOutStream } from "../lib/site.ts";
import { expiryProblem, isDeleteMarker, versionFromHeaders } from "../lib/stores.ts";
import { Durables, endpointSubject, kvStream } from "../lib/subjects.ts";
import { type LocalEntry, Outcome, stampEntry } from "./handlers.ts";
import { bridgeLegacyOut, keepRegistered, seedOutLog } from "./outlog.ts";

function keyOf(bucket: string, m: JsMsg): string {
  return m.subject.slice(`$KV.${bucket}.`.length);
}

/** Start one consumer loop per bucket and add the status endpoint. */
export async function wireWatcher(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  const ticker = new Ticker(nc, config.site, { hlc: config.clock === "hlc" });
  const loops: ConsumerLoop[] = [];
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
  const hub = keepRegistered(nc, config, log);
  for (const bucket of config.buckets) {
    const c: Record<Outcome | "errors", number> = {
      skipped_echo: 0,
      skipped_superseded: 0,
      published: 0,
      republished: 0,
      errors: 0,
    };
    counts.set(bucket, c);
    const meta = await ctx.metaCache(bucket);
    const deps = {
      site: config.site,
      nodeId: config.nodeId,
      bucket,
      meta,
      js: site.js,
      jsm: site.jsm,
      current: (key: string) =>
        currentOwnOp(site.metas.get(bucket)!, site.buckets.get(bucket)!, config.nodeId, bucket, key),
      tick: () => ticker.tick(),
    };
    const durable = Durables.watcher(config.site, bucket);
    await ensureConsumer(site.jsm, kvStream(bucket), durable, {
      filter: `$KV.${bucket}.>`,
      deliver: "last_per_subject",
    });
    const blog = log.child({ bucket });
    loops.push(
      await runConsumer({
        js: site.js,
        stream: kvStream(bucket),
        durable,
        concurrency: 64,
        keyOf: (m) => keyOf(bucket, m),
        log: blog,
        handle: async (m) => {
          const e: LocalEntry = {
            key: keyOf(bucket, m),
            rev: m.seq,
            deleted: isDeleteMarker(m.headers),
            value: m.data,
            headers: versionFromHeaders(m.headers),
          };
          try {
            const outcome = await stampEntry(deps, e);
            c[outcome]++;
            if (outcome === Outcome.published)
              blog.debug({ key: e.key, rev: e.rev }, "published local write");
            return { ack: true };
          } catch (err) {
            c.errors++;
            lastError = (err as Error).message;
            throw err;
          }
        },
      }),
    );
    blog.info({ durable }, "watching bucket");
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
            const ci = await site.jsm.consumers.info(kvStream(bucket), Durables.watcher(config.site, bucket));
            return {
              bucket,
              position: ci.delivered.stream_seq,
              lag: ci.num_pending,
              counts: { ...counts.get(bucket) },
            };
          }),
        ),
        ...(lastError ? { last_error: lastError } : {}),
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
