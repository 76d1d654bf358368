import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
/**
 * The Prometheus metrics of one service process (prom-client): read at scrape time from the counts
 * the services keep anyway (their status endpoints and micro STATS show the same numbers), so a
 * scrape costs nothing on the hot path. Every metric name is in METRIC_NAMES: deploy/prometheus
 * rules are checked against it.
 */
import { health } from "./health.ts";

/** Label values of one sample, and its value. */
export type Sample = { labels?: Record<string, string>; value: number };

/** Every syncd metric name (without the default process_/nodejs_ ones). */
export const METRIC_NAMES = {
  /** 1 per process, labels version, service, site */
  info: "syncd_info",
  /** 1 while connected to NATS */
  natsConnected: "syncd_nats_connected",
  /** 1 once the service is wired and its consumers exist (what /readyz answers) */
  ready: "syncd_ready",
  /** merger: ops handled, by result applied|stale|duplicate|forwarded|errors */
  mergerOps: "syncd_merger_ops_total",
  /** merger: ops dead-lettered, by error code */
  deadLetters: "syncd_dead_letters_total",
  /** merger: concurrent writes resolved by LWW (conflict records written) */
  conflicts: "syncd_conflicts_total",
  /** merger: ops waiting in the site's inbound stream for the merger durable */
  mergerBacklog: "syncd_merger_backlog",
  /** watcher: local writes handled, by bucket and outcome */
  watcherOps: "syncd_watcher_ops_total",
  /** watcher: local writes not yet turned into ops, by bucket */
  watcherLag: "syncd_watcher_lag",
  /** clock: ticks given, remote timestamps observed */
  clockTicks: "syncd_clock_ticks_total",
  clockObserved: "syncd_clock_observed_total",
  /** clock: observed timestamps refused because too far ahead (HLC skew / Lamport jump) */
  skewRefused: "syncd_clock_skew_refused_total",
  /** reconciler: anti-entropy runs and failed runs */
  reconcileRuns: "syncd_reconcile_runs_total",
  reconcileFailures: "syncd_reconcile_failures_total",
  /** reconciler: entries moved, by direction pulled|pushed */
  reconcileMoved: "syncd_reconcile_moved_total",
  /** merger (the site's FEED) and watcher (the hub's source of the site's op log): stalled sources re-armed, by stream */
  sourceRearms: "syncd_source_rearms_total",
  /** health conditions this process has raised, by code and severity */
  conditions: "syncd_health_conditions",
  /** NATS errors the process went on after, by where they surfaced: startup|uncaught|rejection */
  processErrors: "syncd_process_errors_total",
} as const;
export type MetricName = (typeof METRIC_NAMES)[keyof typeof METRIC_NAMES];

/** The registry of one process and helpers to expose existing counts. */
export class Metrics {
  readonly registry = new Registry();

  /** `processMetrics`: also Node's process_* and nodejs_* metrics (event-loop and GC observers). */
  constructor(labels: Record<string, string>, opts: { processMetrics: boolean } = { processMetrics: true }) {
    this.registry.setDefaultLabels(labels);
    if (opts.processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** A counter whose value is read from `read` at scrape time (monotonic counts the service keeps). */
  counterFrom(name: MetricName, help: string, labelNames: string[], read: () => Sample[] | number): void {
    new Counter({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of samples(read())) if (s.value > 0) this.inc(s.labels ?? {}, s.value);
      },
    });
  }

  private readonly rearmReaders: (() => Sample[])[] = [];

  /**
   * `syncd_source_rearms_total{stream}`, read from `read` at scrape time. Both the merger and the
   * watcher re-arm sources; in one process (the agent) they share this one counter.
   */
  rearmsFrom(read: () => Sample[]): void {
    if (this.rearmReaders.push(read) > 1) return;
    this.counterFrom(
      METRIC_NAMES.sourceRearms,
      "stalled stream sources re-armed (removed and added again) while their other side answered, by stream",
      ["stream"],
      () => this.rearmReaders.flatMap((r) => r()),
    );
  }

  /** A gauge read at scrape time (may be async: a consumer's pending count). */
  gaugeFrom(
    name: MetricName,
    help: string,
    labelNames: string[],
    read: () => Sample[] | number | Promise<Sample[] | number>,
  ): void {
    new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const s of samples(await read())) this.set(s.labels ?? {}, s.value);
      },
    });
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}

/** The health-conditions gauge: how many conditions of each code and severity are raised now. */
export function registerConditions(m: Metrics): void {
  m.gaugeFrom(
    METRIC_NAMES.conditions,
    "health conditions raised now, by code and severity",
    ["code", "severity"],
    () => {
      const n = new Map<string, Sample>();
      for (const c of health.list()) {
        const k = `${c.code}\u0000${c.severity}`;
        const cur = n.get(k) ?? { labels: { code: c.code, severity: c.severity }, value: 0 };
        cur.value++;
        n.set(k, cur);
      }
      return [...n.values()];
    },
  );
}

function samples(v: Sample[] | number): Sample[] {
  return typeof v === "number" ? [{ value: v }] : v;
}

/** Samples of a record of counts, one label taking the record's keys. */
export function byLabel(
  label: string,
  counts: Record<string, number>,
  extra: Record<string, string> = {},
): Sample[] {
  return Object.entries(counts).map(([k, value]) => ({ labels: { ...extra, [label]: k }, value }));
}
