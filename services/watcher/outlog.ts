/**
 * What the watcher owns besides stamping: the site's outbound op log, its place among the sources
 * of the hub's aggregate (kept there by a periodic re-check, loud while the hub is unreachable),
 * and the migration from the full-mesh topology (a fresh log is seeded from `_meta`; the legacy
 * outbound stream, which watchers of the previous version may still write to, is bridged into it).
 */
import { DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { type NatsConnection, TimeoutError } from "@nats-io/nats-core";
import type { Config } from "../lib/config.ts";
import { type ConsumerLoop, ensureConsumer, runConsumer } from "../lib/consume.ts";
import { healthOf, reportStores } from "../lib/health.ts";
import { isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { valueHash } from "../lib/lww.ts";
import { type Op, makeOp, parseOp } from "../lib/op.ts";
import { OrderedResult, currentOwnOp, metaHoldsOp, publishOrdered } from "../lib/oplog.ts";
import { RearmGate, rearmSource, rearmsHubSource } from "../lib/rearm.ts";
import type { Version } from "../lib/schemas.gen.ts";
import { type LastOpAtHub, ensureHubRegistration, hubManager, siteSource } from "../lib/site.ts";
import { isDeleteMarker } from "../lib/stores.ts";
import { Durables, Streams, kvFilter, kvKeyOf, kvStream, metaBucket, opsSubject } from "../lib/subjects.ts";
import { IDLE_STALLED_RECHECK_MS, RegistrationRounds } from "./rounds.ts";

const health = healthOf("watcher");

/** Milliseconds between re-checks of the hub registration once it is in place. */
export const HUB_RECHECK_MS = 15_000;
/** While the hub does not answer, the longest wait between two attempts (one error log per HUB_RECHECK_MS). */
const FAILING_RETRY_MS = 4_000;
/** A source heard from within this (ns) is healthy: it sends a heartbeat a second. */
const HEARD_NS = 3e9;
/** Ops stored this long before the hub last heard from the source may still be missing there. */
const PENDING_MARGIN_MS = 5_000;
/** After the connection to the site server is back, the first re-check waits this (for the leaf link). */
const AFTER_RECONNECT_MS = 1_000;

/**
 * Keep the site's outbound log among the sources of the hub's aggregate: now, then every
 * HUB_RECHECK_MS (sooner after a reconnect, and while the source looks stalled). A round is full
 * (the aggregate's info: registration, the source's state, re-arm) at start, after a reconnect, while
 * anything is amiss and every FULL_ROUND_EVERY periods or more; the rounds in between only check
 * that the hub holds the log's last op (`lastOp`), and turn full when it is not so. While the hub is
 * unreachable, attempts back off to FAILING_RETRY_MS, with an error log at most once per period. A
 * source the hub has not heard from for a while although the hub answers here (so the leaf link is
 * up both ways) is re-armed
 * (services/lib/rearm.ts) when the log holds ops the hub may lack: the hub's server would otherwise
 * wait out its back-off.
 */
export function keepRegistered(
  nc: NatsConnection,
  config: Config,
  log: Logger,
  opts: {
    periodMs?: number;
    gate?: RearmGate;
    /** when the site's op log last stored an op (ms since the epoch; not a number when empty) */
    outLastMs?: () => Promise<number>;
    /**
     * runs in every full round once the hub answered, with when its aggregate was created (e.g.
     * make the site's op log again when it was deleted)
     */
    eachRound?: (hubCreated: string) => Promise<void>;
    /** the cheap check between full rounds ({@link lastOpAtHub}); without it every round is full */
    lastOp?: () => Promise<LastOpAtHub | undefined>;
  } = {},
): { stop: () => void; rearms: () => number } {
  const periodMs = opts.periodMs ?? HUB_RECHECK_MS;
  const gate = opts.gate ?? new RearmGate();
  /** when the hub last heard from the source, as far as this instance saw */
  let heardAt: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let running = false;
  let failures = 0;
  let rearms = 0;
  let lastErrorLog = 0;
  const mine = siteSource(config.site, config.domain).name;
  /** when the connection to the site's server came back last (the server restarted, or the link) */
  let reconnectedAt = 0;
  // a site's own outage: one site re-arms, whatever it holds; the hub's outage: every site at once,
  // so only those with ops to send
  /** the site's own outage (or this instance's start) since the hub last heard from the source */
  const ownOutage = () => heardAt === undefined || reconnectedAt > heardAt;
  const pending = async () => {
    const heard = heardAt;
    if (heard === undefined || ownOutage() || !opts.outLastMs) return true;
    const last = await opts.outLastMs();
    return Number.isFinite(last) && last > heard - PENDING_MARGIN_MS;
  };
  const rounds = new RegistrationRounds(periodMs);
  const recovered = () => {
    if (failures > 0)
      log.info(
        { hubDomain: config.hubDomain, stream: Streams.hub },
        "the hub answers again; the site's op log is a source of it",
      );
    failures = 0;
  };
  /** The delay until the next round when a cheap round ({@link lastOpAtHub}) is enough, else undefined. */
  const cheapRound = async (): Promise<number | undefined> => {
    if (!opts.lastOp || rounds.fullDue()) return undefined;
    const r = await opts.lastOp().catch(() => undefined);
    const next = rounds.afterCheap(r);
    if (next !== undefined && r?.held) {
      heardAt = r.readAt;
      recovered();
    }
    return next;
  };
  const fullRound = async (): Promise<number> => {
    let next = periodMs;
    const r = await ensureHubRegistration(nc, config, log);
    reportStores(health, [r.usage]);
    await opts
      .eachRound?.(r.hubCreated)
      .catch((err: unknown) => log.warn({ err }, "could not check the site's op log against the hub"));
    if (r.added)
      log.info(
        { hubDomain: config.hubDomain, stream: Streams.hub },
        "the site's op log is a source of the hub",
      );
    recovered();
    const active = r.source?.active ?? -1;
    // heard from with nothing left to deliver: the hub had every op stored before then
    if (active >= 0 && active < HEARD_NS && r.source?.lag === 0) heardAt = Date.now() - active / 1e6;
    // the hub's server makes the source's consumer: its version decides (not the site's)
    // (after an outage on the hub's side, only while its sources are few enough for every site's
    // re-arm at once to cost it little; this site's own outage is one re-arm at any N)
    const wait = rearmsHubSource(r.hubVersion, r.sources, ownOutage())
      ? gate.wait(r.source)
      : Number.POSITIVE_INFINITY;
    // re-adding costs the hub a backward scan of its aggregate down to this site's last op: only
    // when the log holds ops the hub may lack (the server's own retry takes the others in time)
    if (wait === 0 && !(await pending())) next = Math.min(periodMs, IDLE_STALLED_RECHECK_MS);
    else if (wait === 0) {
      if (await rearmSource(await hubManager(nc, config.hubDomain), Streams.hub, mine)) {
        gate.rearmed();
        rearms++;
        log.warn(
          { stream: Streams.hub, source: mine, active_ns: r.source?.active },
          "the hub's source of the site's op log stalled while the hub answers: re-armed it",
        );
      }
    } else if (Number.isFinite(wait)) next = Math.min(periodMs, Math.max(wait, 500));
    rounds.afterFull({
      sources: r.sources,
      settled: !r.added && r.source !== undefined && !Number.isFinite(wait),
    });
    return next;
  };
  const run = async () => {
    if (running || stopped) return;
    running = true;
    let next = periodMs;
    try {
      next = (await cheapRound()) ?? (await fullRound());
    } catch (err) {
      failures++;
      rounds.failed();
      next = Math.min(500 * 2 ** failures, FAILING_RETRY_MS);
      if (failures === 1 || Date.now() - lastErrorLog >= periodMs) {
        lastErrorLog = Date.now();
        log.error(
          { err, hubDomain: config.hubDomain, attempt: failures },
          "HUB NOT REACHABLE: cannot register the site's op log at the hub; local writes are kept in the log and replicate once it is registered; retrying",
        );
      }
    }
    running = false;
    if (!stopped) timer = setTimeout(run, next);
  };
  void run();
  void (async () => {
    for await (const s of nc.status()) {
      if (stopped) break;
      if (s.type === "reconnect") {
        reconnectedAt = Date.now();
        rounds.reconnected();
      }
      if (s.type === "reconnect" && !running) {
        clearTimeout(timer);
        timer = setTimeout(run, AFTER_RECONNECT_MS);
      }
    }
  })();
  return {
    rearms: () => rearms,
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

/** Keys the seed handles at once: their round trips overlap, and at most this many values are held. */
export const SEED_CONCURRENCY = 64;
/** A seed of many keys logs how far it got this often. */
const SEED_PROGRESS_MS = 5000;
/** Tries per key when a request of the seed times out (a busy server): the ordered publish is safe to repeat. */
const SEED_TRIES = 5;

/**
 * Every key of a KV bucket with its latest entry, read once through an ordered pull consumer (last
 * per subject): one pass over the stream, no request per key, at most one pull batch held at a time.
 */
async function* latestEntries(
  js: JetStreamClient,
  bucket: string,
): AsyncGenerator<{ key: string; m: JsMsg }> {
  const c = await js.consumers.get(kvStream(bucket), {
    filter_subjects: kvFilter(bucket),
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  if ((await c.info()).num_pending === 0) return;
  const it = await c.consume({ max_messages: 256 });
  try {
    for await (const m of it) {
      yield { key: kvKeyOf(bucket, m.subject), m };
      if (m.info.pending === 0) break;
    }
  } finally {
    await it.close();
  }
}

/**
 * Rebuild a fresh outbound log from `_meta`: every version the site holds (its own, hand-made and
 * other sites' ops alike, tombstones included) whose value the bucket still shows. Publishes are
 * ordered, so running it next to the live watcher (or twice) never replaces a greater version.
 * `_meta` is read in one pass and its keys handled `concurrency` at a time (one key at a time, a
 * loaded bucket of 100 000 keys took minutes). Each publish takes the ordered fast path
 * (services/lib/oplog.ts): the seed copies `_meta`, so a fresh `_meta` read that still holds the op
 * proves the log ends with it. A key whose requests time out (a busy server) is tried again.
 * `ownOnly`: only the site's own versions (a log made again while the hub's aggregate still holds
 * what it copied from the old one: what may be missing there is the site's last own writes).
 */
export async function seedOutLog(
  deps: LogDeps & { js: JetStreamClient },
  bucket: string,
  meta: KV,
  data: KV,
  log: Logger,
  opts: { concurrency?: number; ownOnly?: boolean } = {},
): Promise<number> {
  const concurrency = opts.concurrency ?? SEED_CONCURRENCY;
  let seeded = 0;
  let failure: { err: unknown } | undefined;
  const inFlight = new Set<Promise<void>>();
  const seedKey = async (key: string, m: JsMsg): Promise<boolean> => {
    if (isDeleteMarker(m.headers) || m.data.length === 0) return false;
    let v: Version;
    try {
      v = m.json<Version>();
    } catch {
      return false;
    }
    if (opts.ownOnly && v.node_id !== deps.nodeId) return false;
    let op: Op;
    if (v.deleted) op = makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: true });
    else {
      const d = await data.get(key);
      if (d?.operation !== "PUT") return false;
      const matches = v.vh ? valueHash(d.value) === v.vh : d.revision === v.rev;
      // a newer local write is stamped by the watcher; a newer merger write is in its origin's log
      if (!matches) return false;
      op = makeOp({ bucket, key, ts: v.ts, nodeId: v.node_id, deleted: false, value: d.value });
    }
    const r = await publishOrdered(deps, Streams.out(deps.site), opsSubject(deps.site, bucket, key), op, {
      holds: () => metaHoldsOp(meta, op),
      current: () => currentOwnOp(meta, data, deps.nodeId, bucket, key),
    });
    return r === OrderedResult.published;
  };
  const seedKeyPatiently = async (key: string, m: JsMsg): Promise<boolean> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await seedKey(key, m);
      } catch (err) {
        if (!(err instanceof TimeoutError) || attempt >= SEED_TRIES) throw err;
        await new Promise((r) => setTimeout(r, 500 * attempt));
      }
    }
  };
  let seen = 0;
  let loggedAt = Date.now();
  for await (const { key, m } of latestEntries(deps.js, metaBucket(bucket))) {
    if (failure) break;
    if (++seen % 1000 === 0 && Date.now() - loggedAt >= SEED_PROGRESS_MS) {
      loggedAt = Date.now();
      log.info({ bucket, keys: seen, seeded }, "seeding the outbound op log from _meta");
    }
    const p: Promise<void> = seedKeyPatiently(key, m).then(
      (published) => {
        if (published) seeded++;
      },
      (err: unknown) => {
        failure ??= { err };
      },
    );
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    if (inFlight.size >= concurrency) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  if (failure) throw failure.err;
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
    health,
    js: deps.js,
    stream: legacy,
    durable,
    concurrency: 16,
    log: blog,
    decode: (m): Op | undefined => {
      try {
        return parseOp(m.data);
      } catch {
        return undefined;
      }
    },
    keyOf: (m, op) => (op ? `${op.bucket}/${op.key}` : `#${m.seq}`),
    handle: async (_m, op) => {
      if (!op) return { ack: true };
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
