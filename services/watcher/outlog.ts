/**
 * What the watcher owns besides stamping: the site's outbound op log, its place among the sources
 * of the hub's aggregate (kept there by a periodic re-check, loud while the hub is unreachable),
 * and the migration from the full-mesh topology (a fresh log is seeded from `_meta`; the legacy
 * outbound stream, which watchers of the previous version may still write to, is bridged into it).
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Config } from "../lib/config.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { valueHash } from "../lib/lww.ts";
import { type Op, makeOp, parseOp } from "../lib/op.ts";
import { OrderedResult, currentOwnOp, publishOrdered } from "../lib/oplog.ts";
import type { Version } from "../lib/schemas.gen.ts";
import { ensureHubRegistration } from "../lib/site.ts";
import { Durables, Streams, opsSubject } from "../lib/subjects.ts";

/** Seconds between re-checks of the hub registration once it is in place. */
export const HUB_RECHECK_MS = 15_000;

/**
 * Keep the site's outbound log among the sources of the hub's aggregate: now, then every
 * HUB_RECHECK_MS; while the hub is unreachable, an error log per attempt (backing off to the period).
 */
export function keepRegistered(
  nc: NatsConnection,
  config: Config,
  log: Logger,
  periodMs = HUB_RECHECK_MS,
): { stop: () => void; registered: () => boolean } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let failures = 0;
  let ok = false;
  const run = async () => {
    try {
      const added = await ensureHubRegistration(nc, config, log);
      if (failures > 0 || added)
        log.info(
          { hubDomain: config.hubDomain, stream: Streams.hub },
          "the site's op log is a source of the hub",
        );
      failures = 0;
      ok = true;
    } catch (err) {
      failures++;
      ok = false;
      log.error(
        { err, hubDomain: config.hubDomain, attempt: failures },
        "HUB NOT REACHABLE: cannot register the site's op log at the hub; local writes are kept in the log and replicate once it is registered; retrying",
      );
    }
    if (!stopped) timer = setTimeout(run, failures > 0 ? Math.min(500 * 2 ** failures, periodMs) : periodMs);
  };
  void run();
  return {
    registered: () => ok,
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

type LogDeps = {
  site: string;
  nodeId: string;
  js: Pick<JetStreamClient, "publish">;
  jsm: Pick<JetStreamManager, "streams">;
};

/**
 * Rebuild a fresh outbound log from `_meta`: every version the site holds (its own, hand-made and
 * other sites' ops alike, tombstones included) whose value the bucket still shows. Publishes are
 * ordered, so running it next to the live watcher (or twice) never replaces a greater version.
 */
export async function seedOutLog(
  deps: LogDeps,
  bucket: string,
  meta: KV,
  data: KV,
  log: Logger,
): Promise<number> {
  let seeded = 0;
  for await (const key of await meta.keys()) {
    const me = await meta.get(key);
    if (me?.operation !== "PUT") continue;
    const v = me.json<Version>();
    let op: Op;
    if (v.deleted) op = makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: true });
    else {
      const d = await data.get(key);
      if (d?.operation !== "PUT") continue;
      const matches = v.vh ? valueHash(d.value) === v.vh : d.revision === v.rev;
      // a newer local write is stamped by the watcher; a newer merger write is in its origin's log
      if (!matches) continue;
      op = makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: false, value: d.value });
    }
    const r = await publishOrdered(deps, Streams.out(deps.site), opsSubject(deps.site, bucket, key), op, {
      current: () => currentOwnOp(meta, data, deps.nodeId, bucket, key),
    });
    if (r === OrderedResult.published) seeded++;
  }
  log.info({ bucket, seeded }, "seeded the outbound op log from _meta");
  return seeded;
}

/**
 * While the full-mesh outbound stream exists, copy every op in it into the compacted log (ordered):
 * watchers of the previous version may still be running at this site during a rolling upgrade.
 */
export async function bridgeLegacyOut(
  deps: LogDeps & {
    js: JetStreamClient;
    jsm: JetStreamManager;
    metas: Map<string, KV>;
    buckets: Map<string, KV>;
  },
  log: Logger,
): Promise<ConsumerLoop | null> {
  const legacy = Streams.legacyOut(deps.site);
  try {
    await deps.jsm.streams.info(legacy);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
  const durable = Durables.bridge(deps.site);
  await ensureConsumer(deps.jsm, legacy, durable, { deliver: "all" });
  const blog = log.child({ stream: legacy });
  blog.info({ durable }, "bridging the full-mesh outbound stream into the compacted op log");
  return runConsumer({
    js: deps.js,
    stream: legacy,
    durable,
    concurrency: 16,
    log: blog,
    keyOf: (m) => {
      try {
        const op = parseOp(m.data);
        return `${op.bucket}/${op.key}`;
      } catch {
        return `#${m.seq}`;
      }
    },
    handle: async (m) => {
      let op: Op;
      try {
        op = parseOp(m.data);
      } catch {
        return { ack: true };
      }
      await publishOrdered(deps, Streams.out(deps.site), opsSubject(deps.site, op.bucket, op.key), op, {
        current: () =>
          currentOwnOp(
            deps.metas.get(op.bucket)!,
            deps.buckets.get(op.bucket)!,
            deps.nodeId,
            op.bucket,
            op.key,
          ),
      });
      return { ack: true };
    },
  });
}
