/**
 * Wiring of syncd-watcher: one shared durable consumer per bucket on the bucket's stream, the
 * stamping handler, and the status endpoint.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { addEndpoint } from "../lib/adapter.ts";
import { Ticker } from "../lib/clock-client.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { CachedMetaStore } from "../lib/meta-cache.ts";
import type { Running, ServiceContext } from "../lib/runtime.ts";
import type { EmptyRequest, WatcherStatusResponse } from "../lib/schemas.gen.ts";
import { BucketStore, bucketIncarnation, isDeleteMarker, versionFromHeaders } from "../lib/stores.ts";
import { Durables, Headers, dlqSubject, endpointSubject, kvStream, kvSubject } from "../lib/subjects.ts";
import { type LocalEntry, Outcome, type WatcherDeps, stampEntry } from "./handlers.ts";

/** Counters per bucket, shown in status and STATS data. */
export const counts = new Map<string, Record<Outcome | "errors", number>>();
let lastError: string | undefined;

function keyOf(bucket: string, m: JsMsg): string {
  return m.subject.slice(`$KV.${bucket}.`.length);
}

/** Start one consumer loop per bucket and add the status endpoint. */
export async function wireWatcher(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  const ticker = new Ticker(nc, config.site, { hlc: config.clock === "hlc" });
  const loops: ConsumerLoop[] = [];
  const loopOf = new Map<string, ConsumerLoop>();
  const caches: CachedMetaStore[] = [];
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
    const meta = new CachedMetaStore(site.metas.get(bucket)!, log.child({ bucket }));
    await meta.start();
    caches.push(meta);
    const blog = log.child({ bucket });
    const data = new BucketStore(bucket, site.jsm, site.js, false);
    let inc = await bucketIncarnation(site.jsm, bucket);
    const deps: WatcherDeps = {
      incarnation: () => inc,
      latestRev: async (key) => (await data.latest(key))?.rev ?? null,
      site: config.site,
      nodeId: config.nodeId,
      bucket,
      meta,
      js: site.js,
      tick: () => ticker.tick(),
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
        blog.error(
          { code: err.code, key: op.key, reason: err.message },
          "local write too large to replicate",
        );
      },
    };
    const durable = Durables.watcher(config.site, bucket);
    const ensure = () =>
      ensureConsumer(site.jsm, kvStream(bucket), durable, {
        filter: `$KV.${bucket}.>`,
        deliver: "last_per_subject",
      });
    await ensure();
    loops.push(
      await runConsumer({
        js: site.js,
        stream: kvStream(bucket),
        durable,
        concurrency: 64,
        keyOf: (m) => keyOf(bucket, m),
        log: blog,
        // the bucket deleted or re-created: read its new incarnation, then re-seed from its latest
        // entries (deliver last_per_subject); revisions of the old incarnation suppress nothing
        recreate: ensure,
        onGone: async () => {
          const was = inc;
          inc = await bucketIncarnation(site.jsm, bucket);
          if (inc !== was) {
            blog.error({ was, now: inc }, "bucket was re-created: re-seeding from its current entries");
          }
        },
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
    loopOf.set(bucket, loops[loops.length - 1]!);
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
        ...(() => {
          const errs = [...loops.map((l) => l.problem()).filter(Boolean), ...(lastError ? [lastError] : [])];
          return errs.length > 0 ? { last_error: errs.join("; ") } : {};
        })(),
      }),
    },
    { log },
  );
  return {
    stop: async () => {
      await Promise.all(loops.map((l) => l.stop()));
      for (const c of caches) c.stop();
    },
  };
}
