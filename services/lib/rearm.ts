/**
 * Re-arming a stream source that the server left stalled. nats-server 2.10+ re-creates a source's
 * consumer after a failure with a back-off of 10 s × failures, capped at 2 min: after a hub outage
 * or a site server restart, ops would wait up to that long once the other side is back (2.9 retries
 * every few seconds). A source the server has not heard from (no message, no heartbeat: it sends one
 * a second) for {@link REARM_STALL_MS} while its other side answers is re-armed: removed from the
 * stream's config and added again. A re-added source starts with no failures, so the server creates
 * its consumer at once, and resumes after the last message it stored from that source (2.10+: the
 * stream's index of its sources, rebuilt by a backward scan of the stream until that source's last
 * message; 2.9: the same backward scan), so nothing is replayed from 1 and nothing is skipped.
 *
 * A {@link RearmGate} per source decides when: only while stalled, at most once per back-off that
 * doubles with every re-arm that did not help (from the stall threshold to {@link REARM_MAX_GAP_MS}),
 * reset once the source is heard from again.
 *
 * Only against nats-server 2.10+ ({@link sourcesBackOff}) — the version of the server that holds the
 * stream ({@link versionOfStreamConfig} for the hub's): 2.9 retries within seconds by itself, and
 * a source re-added there reports a stale `lag` until its next message.
 */
import type { JetStreamManager, StreamConfig, StreamSource, StreamSourceInfo } from "@nats-io/jetstream";
import type { Logger } from "./logger.ts";

/** True for a nats-server version (`x.y.z`) that backs off re-creating failed sources (2.10+). */
export function sourcesBackOff(version: string | undefined): boolean {
  const [maj = 0, min = 0] = (version ?? "0.0").split(".").map(Number);
  return maj > 2 || (maj === 2 && min >= 10);
}

/**
 * The most sources the hub's aggregate may have for watchers to re-arm their sites' entries after an
 * outage on the hub's side. A re-arm is two edits of the whole source list, so after a hub restart
 * N sites with ops to send cost the hub O(N²): measured with every site at once (bench case "hub"),
 * 0.3 s of the hub's CPU and a 4 s catch-up at 50 sites, 1 s and 11 s at 100, 5.7 s and 37 s at
 * 200 — where the server's own retry catches up in ~42 s at any N. Beyond this many sources, that
 * retry is left to it. A site's own outage (its server restarted, its services reconnected) is one
 * site's re-arm at any N.
 */
export const REARM_MAX_HUB_SOURCES = 100;

/**
 * Whether a watcher re-arms its entry among the aggregate's sources: on a 2.10+ hub, after its own
 * site's outage at any N, after one on the hub's side only up to {@link REARM_MAX_HUB_SOURCES}.
 */
export function rearmsHubSource(
  hubVersion: string | undefined,
  sources: number,
  ownOutage: boolean,
): boolean {
  return sourcesBackOff(hubVersion) && (ownOutage || sources <= REARM_MAX_HUB_SOURCES);
}

/**
 * The version of the nats-server whose stream info carries this stream config, at least as far as
 * {@link sourcesBackOff} needs it: 2.11+ names itself in the config's metadata (`_nats.ver`); 2.10
 * added config fields it always writes (`compression`, `consumer_limits`), answered as "2.10.0"; 2.9
 * knows neither ("2.9.0"). This is how a site learns the version of another server, the hub's, whose
 * stream it reads through JetStream (the connection's `info.version` is the site server's own).
 */
export function versionOfStreamConfig(cfg: object): string {
  const ver = (cfg as { metadata?: Record<string, string> }).metadata?.["_nats.ver"];
  if (ver && /^\d+\.\d+\.\d+/.test(ver)) return ver;
  return "compression" in cfg || "consumer_limits" in cfg ? "2.10.0" : "2.9.0";
}

/** Silence (no message or heartbeat) after which a source whose other side answers is stalled. */
export const REARM_STALL_MS = 5_000;
/**
 * How long a source may show no consumer at all (`active` -1: none since the stream or the server
 * started, or since the source was added) while its other side answers: a consumer made a moment
 * ago sends its first heartbeat within a second, so a longer wait means its creation failed.
 */
export const REARM_NEVER_MS = 3_000;
/** The longest gap between two re-arms of a source that stays stalled. */
export const REARM_MAX_GAP_MS = 10 * 60_000;
/** Below this silence a source is healthy (heartbeats come every second). */
const HEARD_MS = 3_000;

/**
 * How long a source has been silent by its own report (ms), or null when it never reported (`active`
 * -1), or undefined when the stream has no such source.
 */
export function sourceSilence(src: StreamSourceInfo | undefined): number | null | undefined {
  if (!src) return undefined;
  return src.active >= 0 ? src.active / 1_000_000 : null;
}

/** When to re-arm one source, from what its stream info shows over time. */
export class RearmGate {
  /** when this gate first saw the source without a consumer (`active` -1) */
  private neverSince: number | undefined;
  /** re-arms since the source was last heard from */
  private misses = 0;
  private lastRearm = 0;

  constructor(
    private readonly o: { stallMs: number; neverMs: number; maxGapMs: number } = {
      stallMs: REARM_STALL_MS,
      neverMs: REARM_NEVER_MS,
      maxGapMs: REARM_MAX_GAP_MS,
    },
  ) {}

  /**
   * Milliseconds until the source counts as stalled (0: it does), or Infinity when the stream has
   * no such source or the source was just heard from; also records what the gate needs to know (first seen without a consumer, heard).
   */
  private untilStalled(src: StreamSourceInfo | undefined, now: number): number {
    const s = sourceSilence(src);
    if (s === undefined) return Number.POSITIVE_INFINITY;
    if (s === null) {
      this.neverSince ??= now;
      return Math.max(this.o.neverMs - (now - this.neverSince), 0);
    }
    this.neverSince = undefined;
    if (s >= HEARD_MS) return Math.max(this.o.stallMs - s, 0);
    // heard from: nothing to expect before an observation that says otherwise
    this.misses = 0;
    return Number.POSITIVE_INFINITY;
  }

  private gap(): number {
    return Math.min(this.o.stallMs * 2 ** Math.max(this.misses - 1, 0), this.o.maxGapMs);
  }

  /**
   * Milliseconds until `due` may turn true (0: now), from what `src` shows: the source must be
   * stalled, and a re-arm that did not help is repeated only after the stall threshold × 2^(misses−1),
   * at most the max gap.
   */
  wait(src: StreamSourceInfo | undefined, now = Date.now()): number {
    const stalled = this.untilStalled(src, now);
    if (this.misses === 0) return stalled;
    return Math.max(stalled, this.lastRearm + this.gap() - now);
  }

  /** True when the source should be re-armed now (call only while its other side answers). */
  due(src: StreamSourceInfo | undefined, now = Date.now()): boolean {
    return this.wait(src, now) === 0;
  }

  /** Record a re-arm made now. */
  rearmed(now = Date.now()): void {
    this.lastRearm = now;
    this.misses++;
    this.neverSince = now;
  }
}

/** Pause after a write to a stream's source list before checking it: 100–400 ms, random. */
export const SETTLE_MS = { min: 100, max: 400 } as const;
/** Writes of one change to a source list before giving up (each followed by a check). */
const EDIT_ATTEMPTS = 20;

const settle = () =>
  new Promise((r) => setTimeout(r, SETTLE_MS.min + Math.random() * (SETTLE_MS.max - SETTLE_MS.min)));

/**
 * Make one change to a stream's config hold although stream updates are not compare-and-set (a
 * writer that read the config before this write and writes after it puts the old list back). Reads
 * the config, lets `edit` return the config to write (undefined: the change holds), writes it, waits
 * a random moment ({@link SETTLE_MS}: longer than a read-modify-write of another writer takes, so a
 * write based on a read before this one has landed) and reads again, until a read needs no write.
 * Returns whether it wrote. Throws what `edit` throws, and after {@link EDIT_ATTEMPTS} writes.
 */
export async function editSources(
  jsm: JetStreamManager,
  stream: string,
  edit: (cfg: StreamConfig) => StreamConfig | undefined,
): Promise<boolean> {
  let wrote = false;
  for (let attempt = 0; attempt < EDIT_ATTEMPTS; attempt++) {
    const next = edit((await jsm.streams.info(stream)).config);
    if (!next) return wrote;
    await jsm.streams.update(stream, next);
    wrote = true;
    await settle();
  }
  throw new Error(`${stream}: a change to its sources did not hold after ${EDIT_ATTEMPTS} writes`);
}

/**
 * The config with `src` added when it lacks a source of that name (undefined when it has one). A
 * stream the server saw without sources holds its own name as subject (the server's default); that
 * subject goes when the source comes back, unless the stream had it with its sources (`keepNameSubject`).
 */
function withSource(
  cfg: StreamConfig,
  src: StreamSource,
  keepNameSubject: boolean,
): StreamConfig | undefined {
  if ((cfg.sources ?? []).some((s) => s.name === src.name)) return undefined;
  const subjects = (cfg.subjects ?? []).filter((s) => keepNameSubject || s !== cfg.name);
  return { ...cfg, subjects, sources: [...(cfg.sources ?? []), src] };
}

/** Add `src` to `stream` unless it is there, until the addition holds ({@link editSources}). */
export async function restoreSource(
  jsm: JetStreamManager,
  stream: string,
  src: StreamSource,
  keepNameSubject = false,
): Promise<boolean> {
  return editSources(jsm, stream, (cfg) => withSource(cfg, src, keepNameSubject));
}

/**
 * Remove the source `name` from `stream` and add it again, so the server re-creates its consumer
 * now. The two updates follow each other with no read in between (the second starts from the
 * config the first returned), so the source is missing for one update's round trip, and any other
 * writer's change made meanwhile is lost only if it lands in that gap — its writer's own check puts
 * it back. Then the re-added source is checked until it holds ({@link editSources}). A stream left
 * without sources gets its name as subject from the server in between; the second update takes it
 * away again. Returns false when the stream has no such source (nothing done). When the second
 * update fails, the source is missing: the caller's next round adds it back with {@link restoreSource}
 * (resuming all the same).
 */
export async function rearmSource(jsm: JetStreamManager, stream: string, name: string): Promise<boolean> {
  const before = (await jsm.streams.info(stream)).config;
  const src = (before.sources ?? []).find((s) => s.name === name);
  if (!src) return false;
  const keep = (before.subjects ?? []).includes(stream);
  const others = (before.sources ?? []).filter((s) => s.name !== name);
  const removed = await jsm.streams.update(stream, {
    ...before,
    subjects: before.subjects ?? [],
    sources: others,
  });
  const back = withSource(removed.config, src, keep);
  if (back) await jsm.streams.update(stream, back);
  await settle();
  await restoreSource(jsm, stream, src, keep);
  return true;
}

/**
 * Keep one source of a stream armed: every `periodMs` (sooner while it looks stalled) read the
 * stream's info; add the source back when the config lacks it; re-arm it when its gate says so and
 * `reachable()` (its other side answers).
 */
export function keepArmed(o: {
  jsm: JetStreamManager;
  stream: string;
  source: StreamSource;
  reachable: () => Promise<boolean>;
  log: Logger;
  onRearm: () => void;
  periodMs?: number;
  gate?: RearmGate;
  /** false: only add the source back when missing, never re-arm it (see {@link sourcesBackOff}) */
  rearm?: boolean;
}): { stop: () => void } {
  const periodMs = o.periodMs ?? 5_000;
  const gate = o.gate ?? new RearmGate();
  const log = o.log.child({ stream: o.stream, source: o.source.name });
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let failing = false;
  const run = async () => {
    let next = periodMs;
    try {
      const info = await o.jsm.streams.info(o.stream);
      if (!(info.config.sources ?? []).some((s) => s.name === o.source.name)) {
        if (await restoreSource(o.jsm, o.stream, o.source))
          log.warn({}, "the source was missing: added it back");
      } else {
        const src = info.sources?.find((s) => s.name === o.source.name);
        const wait = gate.wait(src);
        if (o.rearm === false) next = periodMs;
        else if (wait === 0 && (await o.reachable())) {
          await rearmSource(o.jsm, o.stream, o.source.name);
          gate.rearmed();
          o.onRearm();
          log.warn({ active_ns: src?.active }, "source stalled while its other side answers: re-armed it");
        } else next = Math.min(periodMs, Math.max(wait, 500));
      }
      failing = false;
    } catch (err) {
      // once per streak: while the site's server is down every round fails
      if (!failing) log.warn({ err }, "could not check the source; retrying");
      failing = true;
    }
    if (!stopped) timer = setTimeout(run, next);
  };
  timer = setTimeout(run, periodMs);
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
