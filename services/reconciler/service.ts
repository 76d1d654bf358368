/**
 * Wiring of syncd-reconciler: one version index per bucket (ready before any endpoint answers),
 * the digest / entries / run / status endpoints, peer discovery and the periodic runs.
 */
import type { MsgHdrs } from "@nats-io/nats-core";
import { addEndpoint } from "../lib/adapter.ts";
import { envInt } from "../lib/config.ts";
import { healthOf } from "../lib/health.ts";
import { METRIC_NAMES } from "../lib/metrics.ts";
import type { Running, ServiceContext, ServiceDef } from "../lib/runtime.ts";
import type {
  EmptyRequest,
  ReconcilerDigestRequest,
  ReconcilerDigestResponse,
  ReconcilerEntriesRequest,
  ReconcilerEntriesResponse,
  ReconcilerRunRequest,
  ReconcilerRunResponse,
  ReconcilerStatusResponse,
} from "../lib/schemas.gen.ts";
import { BucketStore, MetaStore } from "../lib/stores.ts";
import { Headers, endpointSubject, kvStream } from "../lib/subjects.ts";
import { MeshTransport } from "../lib/transport.ts";
import { type EntriesDeps, digest, entries } from "./handlers.ts";
import { Membership } from "./members.ts";
import { DEFAULT_TUNING, Reconciler, type ReconcilerTuning } from "./reconciler.ts";
import { DEFAULT_GC, type GcTuning, TombstoneGc } from "./tombstones.ts";
import type { ValueSource } from "./values.ts";
import { BucketIndex } from "./versions.ts";

const health = healthOf("reconciler");

const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** how old an index may be when it answers a digest request after a run's first */
const FRESH_MS = 1000;

/**
 * The tunables: SYNCD_RECONCILE_RATE (merges/s, 0 = unlimited), SYNCD_RECONCILE_CONCURRENCY
 * (merges in flight), SYNCD_RECONCILE_TIMEOUT_MS (per request), SYNCD_RECONCILE_DISCOVERY_MS
 * (between discovery rounds), SYNCD_RECONCILE_ON_HEAL=0 (a peer's heal starts no run: for tests of
 * store-and-forward alone); SYNCD_RECONCILE_LOST_GRACE_MS (how
 * long a put's value may be missing from the bucket before it is raised); the interval from the config.
 */
export function tuningFrom(env: NodeJS.ProcessEnv, intervalMs: number): ReconcilerTuning {
  return {
    ...DEFAULT_TUNING,
    rate: envInt(env, "SYNCD_RECONCILE_RATE", DEFAULT_TUNING.rate, 0),
    concurrency: envInt(env, "SYNCD_RECONCILE_CONCURRENCY", DEFAULT_TUNING.concurrency, 1),
    timeoutMs: envInt(env, "SYNCD_RECONCILE_TIMEOUT_MS", DEFAULT_TUNING.timeoutMs, 100),
    discoveryMs: envInt(env, "SYNCD_RECONCILE_DISCOVERY_MS", DEFAULT_TUNING.discoveryMs, 100),
    healRuns: env.SYNCD_RECONCILE_ON_HEAL !== "0",
    lostGraceMs: envInt(env, "SYNCD_RECONCILE_LOST_GRACE_MS", DEFAULT_TUNING.lostGraceMs, 0),
    intervalMs,
  };
}

/**
 * Tombstone collection settings: SYNCD_TOMBSTONE_MIN_AGE_MS (least age of a tombstone before it
 * may be collected) and SYNCD_TOMBSTONE_GC_MS (between collection passes, 0 = no collection).
 */
export function gcTuningFrom(env: NodeJS.ProcessEnv): GcTuning {
  return {
    minAgeMs: envInt(env, "SYNCD_TOMBSTONE_MIN_AGE_MS", DEFAULT_GC.minAgeMs, 0),
    intervalMs: envInt(env, "SYNCD_TOMBSTONE_GC_MS", DEFAULT_GC.intervalMs, 0),
  };
}

/** Wire syncd-reconciler. */
export async function wireReconciler(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site, nc } = ctx;
  const tuning = tuningFrom(process.env, config.reconcileIntervalMs);
  const gcTuning = gcTuningFrom(process.env);
  const indexes = new Map<string, BucketIndex>();
  const values = new Map<string, ValueSource>();
  for (const b of config.buckets) {
    const info = await site.jsm.streams.info(kvStream(b));
    values.set(b, {
      meta: new MetaStore(site.metas.get(b)!),
      data: new BucketStore(b, site.jsm, site.js, info.config.allow_direct === true),
      nodeId: config.nodeId,
    });
    const ix = new BucketIndex(b, log, site.jsm);
    indexes.set(b, ix);
  }
  // a wiring that fails here (it is tried again) leaves nothing running
  await Promise.all([...indexes.values()].map((ix) => ix.start())).catch((err: unknown) => {
    for (const ix of indexes.values()) ix.stop();
    throw err;
  });

  const membership = new Membership({
    nc,
    kvm: site.kvm,
    hubDomain: config.hubDomain,
    hubReplicas: config.hubReplicas,
    self: { site: config.site, domain: config.domain, node_id: config.nodeId, buckets: config.buckets },
    log,
    onChange: () => reconciler.syncMembers(),
    // a site refused by the mesh answers nothing under the name it shares with another site
    onRefused: (why) => {
      reconciler.stop();
      void service
        .stop()
        .catch(() => {})
        .finally(() => {
          log.fatal({ reason: why }, "refusing to run: this site's name or domain belongs to another site");
          process.exit(1);
        });
    },
  });
  const hlc = config.clock === "hlc";
  const gc = new TombstoneGc({
    nc,
    jsm: site.jsm,
    site: config.site,
    hubDomain: config.hubDomain,
    buckets: config.buckets,
    indexes,
    metas: site.metas,
    membership,
    log,
    tuning: gcTuning,
    hlc,
  });
  const transport = new MeshTransport(nc, config.site);
  const reconciler = new Reconciler({
    nc,
    transport,
    jsm: site.jsm,
    site: config.site,
    nodeId: config.nodeId,
    instance: config.instance,
    buckets: config.buckets,
    indexes,
    values,
    log,
    tuning,
    membership,
    gc,
    absentLike: (v) => v.deleted && gc.agedVersion(v.ts, hlc),
  });
  const treeOf = (bucket: string) => indexes.get(bucket)?.tree;
  const entriesDeps: EntriesDeps = {
    tree: treeOf,
    values: (bucket) => values.get(bucket),
    maxPayload: nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD,
    concurrency: 64,
  };
  /** Catch a bucket's index up (unless it did less than `maxAgeMs` ago) and check the bucket; failures are logged. */
  const verifyQuietly = async (bucket: string, maxAgeMs = 0, minMetaSeq?: number) => {
    try {
      const ix = indexes.get(bucket);
      if (minMetaSeq !== undefined) await ix?.atLeast(minMetaSeq);
      else await ix?.fresh(maxAgeMs);
    } catch (err) {
      log.warn({ err, bucket }, "could not check the bucket's stream state");
    }
  };
  /**
   * Before answering a request of a peer's run after its root: catch up to what the root's answer
   * accounted for (header {@link Headers.minMetaSeq}; another instance may have answered it), or,
   * from a peer that does not send it, when this index is older than FRESH_MS.
   */
  const catchUpFor = (bucket: string, msg: { headers?: MsgHdrs | undefined }) => {
    const raw = msg.headers?.get(Headers.minMetaSeq);
    const seq = raw ? Number(raw) : Number.NaN;
    return verifyQuietly(bucket, FRESH_MS, Number.isSafeInteger(seq) && seq >= 0 ? seq : undefined);
  };
  const subject = (e: string) => endpointSubject(config.site, "reconciler", e);
  const d = { log };
  addEndpoint<ReconcilerDigestRequest, ReconcilerDigestResponse>(
    service,
    {
      name: "digest",
      subject: subject("digest"),
      request: "reconciler/digest.request.json",
      response: "reconciler/digest.response.json",
      description: "the root digest and the digests of the children of some version-tree nodes",
      handler: async (req, { msg }) => {
        // a peer's run starts with the root: check first that the bucket still holds what the index
        // says; its later requests may reach another instance, which catches up to the root's answer
        if (req.prefixes.length === 0) await verifyQuietly(req.bucket);
        else await catchUpFor(req.bucket, msg);
        const ix = indexes.get(req.bucket);
        return { ...(await digest({ tree: treeOf }, req)), ...(ix ? { meta_seq: ix.metaSeq } : {}) };
      },
    },
    d,
  );
  addEndpoint<ReconcilerEntriesRequest, ReconcilerEntriesResponse>(
    service,
    {
      name: "entries",
      subject: subject("entries"),
      request: "reconciler/entries.request.json",
      response: "reconciler/entries.response.json",
      description: "versions (and values) of named keys or of the keys under tree prefixes, paged",
      handler: async (req, { msg }) => {
        await catchUpFor(req.bucket, msg);
        return entries(entriesDeps, req);
      },
    },
    d,
  );
  addEndpoint<ReconcilerRunRequest, ReconcilerRunResponse>(
    service,
    {
      name: "run",
      subject: subject("run"),
      request: "reconciler/run.request.json",
      response: "reconciler/run.response.json",
      description: "reconcile now with every peer (or the given ones); waits for a run in progress first",
      handler: (req) => reconciler.run(req),
    },
    d,
  );
  addEndpoint<EmptyRequest, ReconcilerStatusResponse>(
    service,
    {
      name: "status",
      subject: subject("status"),
      request: "empty.request.json",
      response: "reconciler/status.response.json",
      description: "index sizes, peers, the run in progress and the last run",
      handler: async () => {
        await Promise.all(config.buckets.map((b) => verifyQuietly(b)));
        return { ...reconciler.status(), conditions: health.list() };
      },
    },
    d,
  );
  const counts = () =>
    reconciler.statsData() as Partial<Record<"runs" | "run_errors" | "pulled" | "pushed", number>>;
  ctx.metrics.counterFrom(METRIC_NAMES.reconcileRuns, "anti-entropy runs", [], () => counts().runs ?? 0);
  ctx.metrics.counterFrom(
    METRIC_NAMES.reconcileFailures,
    "anti-entropy runs that failed",
    [],
    () => counts().run_errors ?? 0,
  );
  ctx.metrics.counterFrom(
    METRIC_NAMES.reconcileMoved,
    "entries moved by anti-entropy, by direction",
    ["direction"],
    () => [
      { labels: { direction: "pulled" }, value: counts().pulled ?? 0 },
      { labels: { direction: "pushed" }, value: counts().pushed ?? 0 },
    ],
  );
  membership.start();
  reconciler.start();
  gc.start();
  return {
    stop: async () => {
      reconciler.stop();
      gc.stop();
      membership.stop();
      transport.close();
      for (const ix of indexes.values()) ix.stop();
    },
    statsData: () => reconciler.statsData(),
  };
}

/** syncd-reconciler, for `runService` and the site agent. */
export const reconcilerService: ServiceDef = {
  kind: "reconciler",
  description: "anti-entropy with peer sites: version-tree digests, then only the differing entries",
  wire: wireReconciler,
};
