/**
 * One health model for every service: a process-wide list of **conditions**, each with a code (from
 * {@link Conditions}), a severity (`ok` / `warn` / `error`), a message and how often it was raised.
 * Every service shows the list in its status endpoint (`conditions`) and in the `data` of its micro
 * STATS; `syncd status` shows them per site and `syncd status --check` exits non-zero when one
 * needs a person (severity `error`).
 *
 * The API is three functions on {@link health}:
 *
 * ```ts
 * import { Conditions, health } from "../lib/health.ts";
 * health.raise(Conditions.keyStuck, "error", { message: `key ${key} retried ${n} times`, subject: `${bucket}/${key}` });
 * health.raise(Conditions.divergenceRepaired, "warn", { message: "moved 3 entries", ttlMs: 600_000 });
 * health.clear(Conditions.keyStuck, `${bucket}/${key}`);   // the key went through
 * health.list();                                           // what status and STATS show
 * ```
 *
 * - `raise(code, severity, detail)`: `detail` is the message, or `{message, subject?, ttlMs?, data?}`.
 *   A condition is identified by code + subject (default: no subject), so one code may hold one
 *   condition per bucket, key or peer. Raising it again updates severity, message and data, bumps
 *   `count` and `last`. With `ttlMs` the condition clears itself when not raised again in that time
 *   (for events: "a divergence was repaired", "an op was refused").
 * - `clear(code, subject?)`: the condition is over (no subject: every condition of that code).
 * - `list()`: the current conditions, worst first. At most {@link MAX_CONDITIONS} are kept (the oldest
 *   `ok`/`warn` ones go first), so a flood of keys cannot grow a process's memory.
 *
 * Several services in one process (the agent) share the list: each service raises and clears
 * through its own view, {@link healthOf}`(kind)` ({@link HealthView}), and `list(name)` shows it its own
 * conditions and those raised by shared code (no service). (An AsyncLocalStorage would find the
 * service by itself, but on Node 20 it makes every await ~2.5× dearer.)
 */
import type { StreamInfo } from "@nats-io/jetstream";
import { type ServiceKind, ServiceName } from "./subjects.ts";

/** Severities, from least to most urgent. `error` means a person must look. */
export const Severity = { ok: "ok", warn: "warn", error: "error" } as const;
export type Severity = (typeof Severity)[keyof typeof Severity];

/** Every condition code: the one registry (README "Health" lists them). */
export const Conditions = {
  /** an op or a local write retried more than N times without going through */
  keyStuck: "KEY_STUCK",
  /** a value the bucket accepted that cannot travel or be applied */
  valueTooLarge: "VALUE_TOO_LARGE",
  /** a bucket (its stream) was deleted and created again under a running service */
  bucketRecreated: "BUCKET_RECREATED",
  /** anti-entropy found entries that differ between sites */
  divergenceFound: "DIVERGENCE_FOUND",
  /** anti-entropy repaired entries that differed */
  divergenceRepaired: "DIVERGENCE_REPAIRED",
  /** ops refused because their ts is too far ahead of physical time (HLC) */
  clockSkew: "CLOCK_SKEW_REFUSED",
  /** ops refused because their ts jumps too far ahead of the site's clock (Lamport) */
  clockJump: "CLOCK_JUMP_REFUSED",
  /** a JetStream stream or the account nears its limits */
  storeFilling: "STORE_FILLING",
  /** a peer site stopped answering */
  peerLost: "PEER_LOST",
  /** a `_meta` entry is not a version (written behind the services' back) */
  metaInvalid: "META_INVALID",
  /** a stream syncd keeps (the site's op log) was deleted and made again */
  streamRecreated: "STREAM_RECREATED",
  /** a durable consumer a service needs is gone */
  consumerMissing: "CONSUMER_MISSING",
  /** values the site's `_meta` says it holds are gone from the bucket and nothing could repair them */
  valuesLost: "VALUES_LOST",
  /** values vanished from the bucket without an op (a purge, a removed message) and were put back */
  valuesRestored: "VALUES_RESTORED",
  /** the mesh refused this site (its name or JetStream domain is another site's) or removed it */
  siteRefused: "SITE_REFUSED",
  /** tombstone collection passes fail (a purge the site's permissions deny, the hub unreachable) */
  tombstoneGcFailed: "TOMBSTONE_GC_FAILED",
  /** another server tried to join the mesh with this site's name or JetStream domain and was refused */
  duplicateSite: "DUPLICATE_SITE",
  /** a service kind has no instance answering at a site (found by `syncd status`, not raised by a service) */
  serviceDown: "SERVICE_DOWN",
  /** a part of a site's status (an endpoint, a stream) could not be read (found by `syncd status`) */
  statusUnreadable: "STATUS_UNREADABLE",
} as const;
export type ConditionCode = (typeof Conditions)[keyof typeof Conditions];

/** One condition as status endpoints and STATS data show it (schemas/health/condition.json). */
export type Condition = {
  code: string;
  severity: Severity;
  message: string;
  subject?: string;
  /** times raised since `since` */
  count: number;
  /** ISO times: first raised, last raised */
  since: string;
  last: string;
  data?: Record<string, unknown>;
};

/** What `raise` takes besides code and severity. */
export type ConditionDetail =
  | string
  | { message: string; subject?: string; ttlMs?: number; data?: Record<string, unknown> };

/** How long an event condition (a bucket re-created, a divergence repaired) stays shown after it was last raised. */
export const EVENT_TTL_MS = 10 * 60_000;

/** The most conditions one process keeps. */
export const MAX_CONDITIONS = 200;

const RANK: Record<Severity, number> = { ok: 0, warn: 1, error: 2 };

type Item = Condition & { expires?: number; by?: string };

/** The process's list as one service raises, clears and reads it ({@link Health.as}). */
export type HealthView = {
  raise(code: string, severity: Severity, detail: ConditionDetail): void;
  clear(code: string, subject?: string): void;
  list(): Condition[];
};

/** A list of conditions; {@link health} is the process's own. */
export class Health {
  private readonly items = new Map<string, Item>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Raise (or raise again) a condition; `by`: the service raising it (see {@link as}). */
  raise(code: string, severity: Severity, detail: ConditionDetail, by?: string): void {
    const d = typeof detail === "string" ? { message: detail } : detail;
    const id = keyOf(code, d.subject, by);
    const at = this.now();
    const cur = this.items.get(id);
    const c: Item = {
      code,
      severity,
      message: d.message,
      ...(d.subject !== undefined ? { subject: d.subject } : {}),
      count: (cur?.count ?? 0) + 1,
      since: cur?.since ?? new Date(at).toISOString(),
      last: new Date(at).toISOString(),
      ...(d.data ? { data: d.data } : {}),
      ...(d.ttlMs !== undefined ? { expires: at + d.ttlMs } : {}),
      ...(by !== undefined ? { by } : {}),
    };
    this.items.delete(id);
    this.items.set(id, c);
    if (this.items.size > MAX_CONDITIONS) this.evict();
  }

  /**
   * Clear a condition (without subject: every condition with this code); with `by`, only that
   * service's (and those raised by no service).
   */
  clear(code: string, subject?: string, by?: string): void {
    // one key each (the merger clears VALUE_TOO_LARGE for every op it applies)
    if (subject !== undefined && by !== undefined) {
      this.items.delete(keyOf(code, subject, by));
      this.items.delete(keyOf(code, subject, undefined));
      return;
    }
    for (const [id, c] of this.items)
      if (c.code === code && (subject === undefined || c.subject === subject) && mine(c, by))
        this.items.delete(id);
  }

  /**
   * The current conditions, worst first, then most recent first: those of `service` and of no
   * service (without it: every condition of the process).
   */
  list(service?: string): Condition[] {
    const at = this.now();
    const out: Condition[] = [];
    for (const [id, c] of this.items) {
      if (c.expires !== undefined && c.expires <= at) {
        this.items.delete(id);
        continue;
      }
      if (!mine(c, service)) continue;
      const { expires: _e, by: _b, ...shown } = c;
      out.push(shown);
    }
    return out.sort((a, b) => RANK[b.severity] - RANK[a.severity] || b.last.localeCompare(a.last));
  }

  /** What the service `service` raises and clears is its own; it lists its own and shared ones. */
  as(service: string): HealthView {
    return {
      raise: (code, severity, detail) => this.raise(code, severity, detail, service),
      clear: (code, subject) => this.clear(code, subject, service),
      list: () => this.list(service),
    };
  }

  /** The worst severity of the current conditions (`ok` when there are none). */
  worst(): Severity {
    return this.list()[0]?.severity ?? Severity.ok;
  }

  private evict(): void {
    const victim = [...this.items].find(([, c]) => c.severity !== Severity.error) ?? [...this.items][0];
    if (victim) this.items.delete(victim[0]);
  }
}

function keyOf(code: string, subject: string | undefined, by: string | undefined): string {
  return `${code}\u0000${subject ?? "\u0001"}\u0000${by ?? ""}`;
}

/** A condition of `service` (or raised outside any service); with no service, every condition. */
function mine(c: Item, service: string | undefined): boolean {
  return service === undefined || c.by === undefined || c.by === service;
}

/** The conditions of this process: what its status endpoint and STATS data show. */
export const health = new Health();

/** The process's list as the service `kind` raises, clears and reads it (what a service's code uses). */
export function healthOf(kind: ServiceKind): HealthView {
  return health.as(ServiceName[kind]);
}

/** True when a severity needs a person (what `syncd status --check` fails on). */
export function needsPerson(s: Severity): boolean {
  return s === Severity.error;
}

/** Usage of one store (a stream, or the account) against its limits; a limit <= 0 means none. */
export type StoreUsage = {
  name: string;
  bytes: number;
  maxBytes: number;
  msgs?: number;
  maxMsgs?: number;
  /** true when a full store refuses writes (discard new: KV buckets, the account); false when it drops the oldest */
  refusesWhenFull: boolean;
  /**
   * a log of one message per subject that drops its oldest when full (the op logs): what goes first
   * is the only op of the key written longest ago, which a site that joins or returns then lacks
   */
  compacted?: boolean;
};

/** The usage of one stream from its info ({@link reportStores}). */
export function streamUsage(si: StreamInfo): StoreUsage {
  const refusesWhenFull = si.config.discard === "new";
  return {
    name: si.config.name,
    bytes: si.state.bytes,
    maxBytes: si.config.max_bytes,
    msgs: si.state.messages,
    maxMsgs: si.config.max_msgs,
    refusesWhenFull,
    ...(!refusesWhenFull && si.config.max_msgs_per_subject === 1 ? { compacted: true } : {}),
  };
}

/** Fill ratios at which a store is raised: `warn` at 80 %, `error` at 95 % when a full store refuses writes or is a compacted op log. */
export const STORE_WARN = 0.8;
export const STORE_ERROR = 0.95;

function fillOf(s: StoreUsage): number {
  return Math.max(
    s.maxBytes > 0 ? s.bytes / s.maxBytes : 0,
    s.maxMsgs !== undefined && s.maxMsgs > 0 ? (s.msgs ?? 0) / s.maxMsgs : 0,
  );
}

/** The severity of STORE_FILLING for one store ({@link reportStores}); `ok` below {@link STORE_WARN}. */
export function storeSeverity(s: StoreUsage, fill = fillOf(s)): Severity {
  if (fill < STORE_WARN) return Severity.ok;
  return (s.refusesWhenFull || s.compacted) && fill >= STORE_ERROR ? Severity.error : Severity.warn;
}

/**
 * Raise or clear STORE_FILLING for each store (subject: its name). A store that drops its oldest
 * messages when full (a log with limits) is at most a warning: that is what its limits are for —
 * unless it is a compacted op log, whose oldest message is a key's only op there (an error at 95 %).
 */
export function reportStores(h: HealthView, stores: StoreUsage[]): void {
  for (const s of stores) {
    const fill = fillOf(s);
    const severity = storeSeverity(s, fill);
    if (severity === Severity.ok) {
      h.clear(Conditions.storeFilling, s.name);
      continue;
    }
    const then = s.refusesWhenFull
      ? "when full, writes fail"
      : s.compacted
        ? "when full, the ops of the keys written longest ago go first, and a site that joins or returns gets those keys by anti-entropy alone: raise its byte limit"
        : "the oldest messages go first";
    h.raise(Conditions.storeFilling, severity, {
      message: `${s.name} is ${Math.round(fill * 100)} % full: ${then}`,
      subject: s.name,
      data: { bytes: s.bytes, max_bytes: s.maxBytes, msgs: s.msgs ?? null, max_msgs: s.maxMsgs ?? null },
    });
  }
}
