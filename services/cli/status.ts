import { jetstreamManager } from "@nats-io/jetstream";
import { type Condition, Conditions, Severity, needsPerson } from "../lib/health.ts";
/**
 * `syncd status`: one table of the mesh. Per site: its services and instance counts (micro PING
 * metadata), the clock (`clock.now`), watcher position and lag (`watcher.status`), merger backlog
 * and counts (`merger.status`), the last reconcile (`reconciler.status`), and the message counts of
 * the dead-letter and conflict streams (stream info through the site's JetStream domain), whether the
 * hub's aggregate holds the site's last op and the site's FEED the aggregate's last (lib/site.ts
 * `sourcedUpTo`: the server's source lag alone stays stale on nats-server 2.9), and the
 * health conditions of every instance (from the `data` of its micro STATS), worst first.
 * `--check` makes the exit code 1 when a condition needs a person (severity error): the monitoring hook.
 */
import { isStreamNotFound } from "../lib/jserrors.ts";
import type {
  ClockNowResponse,
  MergerStatusResponse,
  ReconcilerStatusResponse,
  WatcherStatusResponse,
} from "../lib/schemas.gen.ts";
import { type Sourced, sourcedUpTo } from "../lib/site.ts";
import { ServiceName, Streams } from "../lib/subjects.ts";
import { expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import {
  type MeshClient,
  type MicroStats,
  type SiteRef,
  ask,
  discover,
  messageOf,
  pickSites,
  sitesOf,
} from "./nats.ts";
import { ago, table } from "./table.ts";

/** The status of one site; a part that could not be read is null, with the reason in `errors`. */
export type SiteStatus = {
  site: string;
  domain: string;
  node_id: string | null;
  /** micro name → instances answering PING */
  services: Record<string, number>;
  clock: ClockNowResponse | null;
  watcher: WatcherStatusResponse | null;
  merger: MergerStatusResponse | null;
  reconciler: ReconcilerStatusResponse | null;
  /** messages on SYNCD_DLQ_<site> */
  dead_letters: number | null;
  /** messages on SYNCD_CONFLICTS_<site>; 0 when the stream does not exist yet */
  conflicts: number | null;
  /** how far the hub's aggregate has sourced the site's op log, and the site's FEED the aggregate (null: unreadable) */
  sourced: { hub: Sourced | null; feed: Sourced | null };
  /** both caught up (null: one could not be read) */
  caught_up: boolean | null;
  /** every instance's health conditions, worst first, plus the ones status itself finds (a service down) */
  conditions: SiteCondition[];
  errors: string[];
};

/** A condition with the instance that reports it. */
export type SiteCondition = Condition & { service: string; instance: string };

const KINDS = Object.values(ServiceName);

/** Run `status`. */
export async function statusCommand(ctx: Ctx): Promise<Output> {
  expectArgs(ctx.cli, 0, 0, "status [--site s] [--check]");
  const pings = (await discover<MicroStats>(ctx.mesh, "STATS")).filter((p) => p.name.startsWith("syncd-"));
  const sites = pickSites(sitesOf(pings), ctx.cli.site);
  const statuses = await Promise.all(
    sites.map((s) =>
      siteStatus(
        ctx.mesh,
        s,
        pings.filter((p) => p.metadata?.site === s.site),
        ctx.cli.conn.timeoutMs,
        ctx.cli.hubDomain,
      ),
    ),
  );
  const attention = statuses.some((s) => s.conditions.some((c) => needsPerson(c.severity)));
  return {
    data: { sites: statuses },
    text: render(statuses),
    ...(ctx.cli.check && attention ? { exitCode: 1 } : {}),
  };
}

/** One condition of one process: the same code, subject, message and first time. */
function conditionKey(instance: string, c: Condition): string {
  return [instance, c.code, c.subject ?? "", c.message, c.since].join("\u0000");
}

/** The conditions in the STATS data of a site's instances (once per instance), and a missing service. */
export function conditionsOf(
  stats: MicroStats[],
  services: Record<string, number>,
  unreadable: string[] = [],
): SiteCondition[] {
  const out = new Map<string, SiteCondition>();
  for (const s of stats) {
    for (const e of s.endpoints ?? []) {
      const list = (e.data as { conditions?: unknown } | null | undefined)?.conditions;
      if (!Array.isArray(list)) continue;
      const instance = s.metadata?.instance ?? s.id;
      // the services of one agent process each list what shared code raised: one row for it
      for (const c of list as Condition[]) {
        const key = conditionKey(instance, c);
        if (!out.has(key)) out.set(key, { ...c, service: s.name, instance });
      }
    }
  }
  const now = new Date().toISOString();
  for (const [name, n] of Object.entries(services)) {
    if (n > 0) continue;
    out.set(`${name}\u0000down`, {
      code: Conditions.serviceDown,
      severity: Severity.error,
      message: `no instance of ${name} answers`,
      subject: name,
      count: 1,
      since: now,
      last: now,
      service: name,
      instance: "",
    });
  }
  for (const what of unreadable) {
    out.set(`unreadable\u0000${what}`, {
      code: Conditions.statusUnreadable,
      severity: Severity.error,
      message: what,
      count: 1,
      since: now,
      last: now,
      service: "syncd",
      instance: "",
    });
  }
  const rank = { ok: 0, warn: 1, error: 2 } as const;
  return [...out.values()].sort(
    (a, b) => rank[b.severity] - rank[a.severity] || b.last.localeCompare(a.last),
  );
}

async function siteStatus(
  mesh: MeshClient,
  ref: SiteRef,
  pings: MicroStats[],
  timeoutMs: number,
  hubDomain: string,
): Promise<SiteStatus> {
  const errors: string[] = [];
  const services: Record<string, number> = Object.fromEntries(KINDS.map((k) => [k, 0]));
  for (const p of pings) services[p.name] = (services[p.name] ?? 0) + 1;
  const node = pings.find((p) => p.metadata?.node_id)?.metadata?.node_id ?? ref.node_id ?? null;
  const get = async <T>(service: "clock" | "watcher" | "merger" | "reconciler", endpoint: string) => {
    try {
      return await ask<T>(mesh, ref.site, service, endpoint, {}, timeoutMs);
    } catch (err) {
      errors.push(`${service}.${endpoint}: ${messageOf(err)}`);
      return null;
    }
  };
  const streams = streamCounts(mesh, ref, timeoutMs, errors);
  const sourced = async (where: { stream: string; domain: string }, origin: string) => {
    try {
      return await sourcedUpTo(
        mesh.nc,
        { ...where, timeoutMs, reach: (d, t) => mesh.jetStream(d, t) },
        origin,
      );
    } catch (err) {
      errors.push(`how far ${where.stream} sourced ${origin}: ${messageOf(err)}`);
      return null;
    }
  };
  const [clock, watcher, merger, reconciler, counts, hub, feed] = await Promise.all([
    get<ClockNowResponse>("clock", "now"),
    get<WatcherStatusResponse>("watcher", "status"),
    get<MergerStatusResponse>("merger", "status"),
    get<ReconcilerStatusResponse>("reconciler", "status"),
    streams,
    sourced({ stream: Streams.hub, domain: hubDomain }, Streams.out(ref.site)),
    sourced({ stream: Streams.in(ref.site), domain: ref.domain }, Streams.hub),
  ]);
  return {
    site: ref.site,
    domain: ref.domain,
    node_id: node,
    services,
    clock,
    watcher,
    merger,
    reconciler,
    dead_letters: counts.dlq,
    conflicts: counts.conflicts,
    sourced: { hub, feed },
    caught_up: hub && feed ? hub.caughtUp && feed.caughtUp : null,
    conditions: conditionsOf(pings, services, errors),
    errors,
  };
}

async function streamCounts(
  mesh: MeshClient,
  ref: SiteRef,
  timeoutMs: number,
  errors: string[],
): Promise<{ dlq: number | null; conflicts: number | null }> {
  let jsm: Awaited<ReturnType<typeof jetstreamManager>>;
  try {
    const to = await mesh.jetStream(ref.domain, timeoutMs);
    jsm = await jetstreamManager(to.nc, { ...to.opts, checkAPI: false });
  } catch (err) {
    errors.push(`JetStream of domain ${ref.domain}: ${messageOf(err)}`);
    return { dlq: null, conflicts: null };
  }
  const count = async (stream: string, missing: number | null) => {
    try {
      return (await jsm.streams.info(stream)).state.messages;
    } catch (err) {
      if (isStreamNotFound(err)) return missing;
      errors.push(`stream ${stream} (domain ${ref.domain}): ${messageOf(err)}`);
      return null;
    }
  };
  const [dlq, conflicts] = await Promise.all([
    count(Streams.dlq(ref.site), null),
    count(Streams.conflicts(ref.site), 0),
  ]);
  return { dlq, conflicts };
}

function lastReconcile(r: ReconcilerStatusResponse | null): string | null {
  if (!r) return null;
  if (r.running) return `running (${r.progress?.peer ?? "?"}/${r.progress?.bucket ?? "?"})`;
  if (!r.last_run_at) return "never";
  const runs = (r.last_run?.runs ?? []) as { entries_moved?: number; error?: string }[];
  const moved = runs.reduce((n, x) => n + (x.entries_moved ?? 0), 0);
  const failed = runs.filter((x) => x.error).length;
  return `${ago(r.last_run_at)}, moved ${moved}${failed ? `, ${failed} failed` : ""}`;
}

/** Tombstones waiting for collection: `blocked/collectible`, and the members they wait for. */
function tombstones(r: ReconcilerStatusResponse | null): string | null {
  if (!r?.tombstones) return null;
  const t = Object.values(r.tombstones);
  const blocked = t.reduce((n, x) => n + x.blocked, 0);
  const collectible = t.reduce((n, x) => n + x.collectible, 0);
  const by = blocked > 0 && r.gc_blocked_by?.length ? ` (${r.gc_blocked_by.join(",")})` : "";
  return `${blocked}/${collectible}${by}`;
}

/** `yes`, or what is behind: `hub 120/130` (origin sequences) or `feed lag 3`; null when unreadable. */
function caughtUp(s: SiteStatus): string | null {
  const { hub, feed } = s.sourced;
  if (!hub || !feed) return null;
  const behind = (what: string, x: Sourced) =>
    x.caughtUp
      ? []
      : [
          x.originLast !== undefined && x.upTo !== undefined
            ? `${what} ${x.upTo}/${x.originLast}`
            : `${what} ${x.lag === undefined ? "no source" : `lag ${x.lag}`}`,
        ];
  const b = [...behind("hub", hub), ...behind("feed", feed)];
  return b.length === 0 ? "yes" : `no (${b.join(", ")})`;
}

function render(statuses: SiteStatus[]): string {
  const short = (n: string) => n.replace(/^syncd-/, "");
  const rows = statuses.map((s) => {
    const w = s.watcher?.buckets ?? [];
    const position = w.length === 0 ? null : w.map((b) => `${b.bucket}:${b.position}`).join(" ");
    const lag = s.watcher ? w.reduce((n, b) => n + b.lag, 0) : null;
    const c = s.merger?.counts ?? {};
    return [
      s.site,
      s.domain,
      Object.entries(s.services)
        .map(([k, n]) => `${short(k)}=${n}`)
        .join(" "),
      s.clock ? `${s.clock.ts} ${s.clock.mode}` : null,
      position,
      lag,
      caughtUp(s),
      s.merger?.pending,
      s.merger ? `${c.applied ?? 0}/${c.stale ?? 0}/${c.duplicate ?? 0}` : null,
      lastReconcile(s.reconciler),
      s.dead_letters,
      s.conflicts,
      tombstones(s.reconciler),
    ];
  });
  const t = table(
    [
      "SITE",
      "DOMAIN",
      "SERVICES",
      "CLOCK",
      "WATCHER POSITION",
      "LAG",
      "CAUGHT UP",
      "BACKLOG",
      "APPLIED/STALE/DUP",
      "LAST RECONCILE",
      "DEAD LETTERS",
      "CONFLICTS",
      "TOMBSTONES BLOCKED/COLLECTIBLE",
    ],
    rows,
  );
  const problems = statuses.flatMap((s) => s.errors.map((e) => `  ${s.site}: ${e}`));
  const conds = statuses.flatMap((s) =>
    s.conditions.map((c) => [
      s.site,
      c.severity.toUpperCase(),
      c.code,
      c.subject ?? "",
      short(c.service),
      c.count,
      c.message,
    ]),
  );
  let out = t;
  out +=
    conds.length > 0
      ? `\n\n${table(["SITE", "SEVERITY", "CONDITION", "SUBJECT", "SERVICE", "COUNT", "MESSAGE"], conds)}`
      : "\n\nhealth: ok (no conditions)";
  return problems.length > 0 ? `${out}\n\nunavailable:\n${problems.join("\n")}` : out;
}
