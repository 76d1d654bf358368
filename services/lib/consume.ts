/**
 * A durable pull consumer shared by every instance of a service at a site, processed with bounded
 * concurrency; messages of one key are handled one after another (in delivery order) inside a process.
 */
import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/nats-core";
import { envInt } from "./config.ts";
import { Conditions, EVENT_TTL_MS, type HealthView, Severity, health as processHealth } from "./health.ts";
import { isAlreadyExists, isNotFound } from "./jserrors.ts";
import type { Logger } from "./logger.ts";

/** What a handler decides for a message. */
export type Disposition = { ack: true } | { term: string } | { nak: number };

const NANOS_PER_MS = 1_000_000;

/**
 * Whether a nats-server of this version (`nc.info.version`) takes `+TERM <reason>`: 2.10.4 and later.
 * Older servers (Debian's 2.9.10) do not parse the reason and would leave the message pending.
 */
export function termTakesReason(version: string | undefined): boolean {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version ?? "");
  if (!m) return false;
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return major > 2 || (major === 2 && (minor > 10 || (minor === 10 && patch >= 4)));
}

/**
 * How long a message handed to an instance waits for its ack before the server hands it to another
 * (an instance killed with its messages in hand): `SYNCD_ACK_WAIT_MS`, set on the durable whenever an
 * instance starts.
 */
export const ACK_WAIT_MS = 30_000;

/**
 * Create the durable consumer unless it exists (its position survives restarts). Another instance
 * creating it first is no error: the server's "already exists" / "name already in use" refusal (by
 * API code) is taken as that, and the durable as it stands is used. An existing durable's ack wait is
 * set to the configured one (the one setting an operator tunes after the fact).
 */
export async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  durable: string,
  opts: { filter?: string; deliver: "all" | "last_per_subject"; ackWaitMs?: number; maxAckPending?: number },
): Promise<void> {
  const ackWait =
    (opts.ackWaitMs ?? envInt(process.env, "SYNCD_ACK_WAIT_MS", ACK_WAIT_MS, 1000)) * NANOS_PER_MS;
  try {
    const ci = await jsm.consumers.info(stream, durable);
    if (ci.config.ack_wait !== ackWait) await jsm.consumers.update(stream, durable, { ack_wait: ackWait });
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const cfg: Partial<ConsumerConfig> = {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: opts.deliver === "all" ? DeliverPolicy.All : DeliverPolicy.LastPerSubject,
    ack_wait: ackWait,
    max_ack_pending: opts.maxAckPending ?? 4096,
    ...(opts.filter ? { filter_subject: opts.filter } : {}),
  };
  try {
    await jsm.consumers.add(stream, cfg);
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  }
}

/** Runs tasks with at most `limit` in flight; tasks with the same key run in submission order. */
export class KeyedGate {
  private inFlight = 0;
  private readonly waiters: (() => void)[] = [];
  private readonly tails = new Map<string, Promise<void>>();

  constructor(private readonly limit: number) {}

  /** Resolves when the task is admitted (not when it ends). */
  async submit(key: string, task: () => Promise<void>): Promise<void> {
    while (this.inFlight >= this.limit) await new Promise<void>((r) => this.waiters.push(r));
    this.inFlight++;
    const prev = this.tails.get(key) ?? Promise.resolve();
    const run = prev.then(task).finally(() => {
      this.inFlight--;
      this.waiters.shift()?.();
      if (this.tails.get(key) === run) this.tails.delete(key);
    });
    this.tails.set(key, run);
  }

  /** Resolves when nothing is in flight. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.tails.values()]);
  }
}

/**
 * Messages of one key that wait behind a running one, coalesced: of the messages a consumer has
 * delivered for a key and not started yet, only the one that makes the others unnecessary runs
 * (for LWW ops: the greatest version). `pick(waiting, newcomer)` names that one, or null when
 * neither replaces the other (the newcomer then waits on its own, in order). `run` gets the winner
 * and the losers; it settles the losers only once the winner's outcome is durable.
 */
export class Coalescer<M> {
  private readonly waiting = new Map<string, { winner: M; losers: M[] }>();
  /** messages that joined a waiting one instead of running */
  coalesced = 0;

  constructor(
    private readonly gate: KeyedGate,
    private readonly pick: (waiting: M, newcomer: M) => M | null,
    private readonly run: (winner: M, losers: M[]) => Promise<void>,
  ) {}

  /** Resolves when the message is admitted (or joined a waiting one), not when it ends. */
  async submit(key: string, m: M): Promise<void> {
    const w = this.waiting.get(key);
    if (w) {
      const p = this.pick(w.winner, m);
      if (p !== null) {
        this.coalesced++;
        if (p === m) {
          w.losers.push(w.winner);
          w.winner = m;
        } else w.losers.push(m);
        return;
      }
    }
    const batch = { winner: m, losers: [] as M[] };
    this.waiting.set(key, batch);
    await this.gate.submit(key, async () => {
      if (this.waiting.get(key) === batch) this.waiting.delete(key);
      await this.run(batch.winner, batch.losers);
    });
  }
}

/**
 * How the losers of a coalesced batch are settled: as the winner when it was acked (they are stale
 * by then, and acked only after the winner's outcome is durable); otherwise put back at once, to be
 * handled on their own (a winner redelivered or dead-lettered decides nothing for them).
 */
export function loserDisposition(winner: Disposition): Disposition {
  if ("ack" in winner) return winner;
  return { nak: "nak" in winner ? winner.nak : 0 };
}

/** A running consumer loop. */
export type ConsumerLoop = {
  stop: () => Promise<void>;
  delivered: () => number;
  /** how often the durable was found gone (deleted, or its stream deleted or re-created) and re-made */
  recreated: () => number;
  /** why the durable cannot be re-made right now (e.g. its stream is missing), else undefined */
  problem: () => string | undefined;
};

/** Failures of one key's messages in a row after which KEY_STUCK is raised as a warning, then as an error. */
export const KEY_STUCK_WARN = 3;
export const KEY_STUCK_ERROR = 10;
/** Keys whose failures one loop counts at most (the oldest are forgotten first). */
const MAX_FAILING_KEYS = 10_000;

/** How often a loop checks that its durable still exists (it also reacts to consumer notifications). */
export const CONSUMER_CHECK_MS = 2000;

/**
 * How long a nats-server with leaf nodes or gateways (every site server) keeps serving a pull
 * request whose reply subject has no interest, counted from when it received the request
 * (`defaultGatewayRecentSubExpiration` in its consumer.go): interest may still be on its way.
 */
export const PULL_INTEREST_GRACE_MS = 2000;

/** How long a graceful stop waits for the server to confirm the requests it sent (a flush). */
const FLUSH_WAIT_MS = 1000;

/**
 * What a graceful stop needs of nats.js's `consume()` beyond its public face (nats.js 3.x,
 * PullConsumerMessagesImpl): the method it sends pull requests with, and its subscription.
 */
type ConsumeInternals = { pull?: unknown; sub?: Subscription };

/**
 * End a `consume()` so that nothing the server delivers to it waits out the ack wait: send no more
 * pull requests, let the ones out grow older than {@link PULL_INTEREST_GRACE_MS} (meanwhile what
 * arrives is handled as usual), then drain its subscription. A request the server holds then has no
 * interest and is past the grace, so the server drops it instead of delivering into the void, and
 * what it sent before the unsubscribe reaches the iterator (which ends after it). Falls back to a
 * plain close when nats.js is not shaped as expected.
 */
async function endConsume(
  messages: ConsumerMessages,
  nc: NatsConnection | undefined,
  lastPull: number,
  onDrain: () => void,
): Promise<void> {
  const impl = messages as unknown as ConsumeInternals;
  if (nc && typeof impl.pull === "function" && impl.sub && !impl.sub.isClosed()) {
    impl.pull = () => {};
    if (Date.now() - lastPull < PULL_INTEREST_GRACE_MS + 1000) {
      // once flushed, the server has received every request sent: each is older than the grace
      // after it. Not connected: nothing reaches this subscription anyway, so no wait
      const flushed = await Promise.race([
        nc.flush().then(
          () => true,
          () => false,
        ),
        new Promise<boolean>((r) => setTimeout(() => r(false), FLUSH_WAIT_MS)),
      ]);
      if (flushed) await new Promise((r) => setTimeout(r, PULL_INTEREST_GRACE_MS + 100));
    }
    onDrain();
    await impl.sub.drain().catch(() => {});
  }
  await messages.close().catch(() => {});
}

/**
 * Consume `durable` on `stream` and apply `handle` to each message (errors → nak after 1 s).
 * Keeps going across reconnects until stopped. With `recreate`, it also survives its durable being
 * deleted, or its stream being deleted or re-created: it notices within `checkMs` (or at once on a
 * consumer-deleted notification), lets the messages in hand finish, calls `onGone` (e.g. re-read
 * the bucket's incarnation), re-makes the durable with `recreate`, and consumes again from there.
 */
export async function runConsumer<T = undefined>(args: {
  js: JetStreamClient;
  stream: string;
  durable: string;
  concurrency: number;
  /** decode a message once, before keyOf and handle see it (one that throws is terminated) */
  decode?: (m: JsMsg) => T;
  keyOf: (m: JsMsg, decoded: T) => string;
  handle: (m: JsMsg, decoded: T) => Promise<Disposition>;
  /**
   * Coalesce the waiting messages of a key (see Coalescer): which of two makes the other
   * unnecessary, or null. Only the winner is handled; the losers are settled after it.
   */
  pick?: (
    waiting: { m: JsMsg; decoded: T },
    newcomer: { m: JsMsg; decoded: T },
  ) => "waiting" | "newcomer" | null;
  /**
   * told about every message handled, once it and the losers coalesced with it (with `pick`) are
   * settled: `d` is the winner's disposition (the losers were acked with it iff it is an ack)
   */
  onBatch?: (winner: { m: JsMsg; decoded: T }, losers: { m: JsMsg; decoded: T }[], d: Disposition) => void;
  log: Logger;
  /** where KEY_STUCK and CONSUMER_MISSING go: the consuming service's view (default: no service's) */
  health?: HealthView;
  /** re-make the durable (and what it needs) when it is gone; without it the loop does not check */
  recreate?: () => Promise<void>;
  /** runs before `recreate`, once the messages of the old durable are settled */
  onGone?: () => Promise<void>;
  checkMs?: number;
  /** the KEY_STUCK subject of a message key (default `<stream>/<key>`) */
  subjectOf?: (key: string) => string;
}): Promise<ConsumerLoop> {
  const { js, stream, durable, log } = args;
  const health = args.health ?? processHealth;
  const gate = new KeyedGate(args.concurrency);
  let stopped = false;
  /** what arrives now is handed back (nak) instead of handled */
  let handingBack = false;
  let delivered = 0;
  // the client's connection (nats.js keeps it on the JetStream client): the server it is connected to now
  const nc = (js as Partial<{ nc: NatsConnection }>).nc;
  let recreated = 0;
  let problem: string | undefined;
  const subjectOf = args.subjectOf ?? ((k: string) => `${stream}/${k}`);
  /** failures in a row per key: KEY_STUCK past a threshold, cleared when the key goes through */
  const failures = new Map<string, number>();
  const failed = (key: string, err: unknown) => {
    const n = (failures.get(key) ?? 0) + 1;
    failures.delete(key);
    failures.set(key, n);
    if (failures.size > MAX_FAILING_KEYS) failures.delete(failures.keys().next().value!);
    if (n <= KEY_STUCK_WARN) return;
    const subject = subjectOf(key);
    health.raise(Conditions.keyStuck, n > KEY_STUCK_ERROR ? Severity.error : Severity.warn, {
      message: `${subject} failed ${n} times in a row (${stream}): ${(err as Error)?.message ?? err}`,
      subject,
      data: { stream, durable, failures: n },
    });
  };
  const wentThrough = (key: string) => {
    if (failures.delete(key)) health.clear(Conditions.keyStuck, subjectOf(key));
  };
  const setProblem = (why: string | undefined) => {
    problem = why;
    if (why === undefined) health.clear(Conditions.consumerMissing, `${stream}/${durable}`);
    else
      health.raise(Conditions.consumerMissing, Severity.error, {
        message: `cannot re-make the durable consumer ${why}`,
        subject: `${stream}/${durable}`,
      });
  };
  const settle = (m: JsMsg, d: Disposition) => {
    if ("ack" in d) m.ack();
    else if ("term" in d) {
      if (termTakesReason(nc?.info?.version)) m.term(d.term);
      else m.term();
    } else m.nak(d.nak);
  };
  type Item = { m: JsMsg; decoded: T };
  const trySettle = (m: JsMsg, d: Disposition) => {
    try {
      settle(m, d);
    } catch (err) {
      log.warn({ err }, "could not settle a message");
    }
  };
  const runOne = async (key: string, w: Item, losers: Item[]) => {
    let d: Disposition;
    try {
      d = await args.handle(w.m, w.decoded);
      if (!("nak" in d)) wentThrough(key);
    } catch (err) {
      log.warn({ err, stream, seq: w.m.seq }, "message failed, will be redelivered");
      failed(key, err);
      d = { nak: 1000 };
    }
    trySettle(w.m, d);
    const ld = loserDisposition(d);
    for (const l of losers) trySettle(l.m, ld);
    try {
      args.onBatch?.(w, losers, d);
    } catch (err) {
      log.warn({ err }, "could not account for a batch");
    }
  };
  const pick = args.pick;
  const coalescer = pick
    ? new Coalescer<Item & { key: string }>(
        gate,
        (a, b) => {
          const p = pick(a, b);
          return p === "waiting" ? a : p === "newcomer" ? b : null;
        },
        (w, losers) => runOne(w.key, w, losers),
      )
    : undefined;
  let poke: () => void = () => {};
  const start = async () => {
    const consumer = await js.consumers.get(stream, durable);
    const { created } = await consumer.info(true);
    const messages = await consumer.consume({ max_messages: Math.max(64, args.concurrency * 2) });
    const state = { messages, lastPull: Date.now() };
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === "next") state.lastPull = Date.now();
        if (s.type === "consumer_deleted" || s.type === "consumer_not_found" || s.type === "stream_not_found")
          poke();
      }
    })().catch(() => {});
    const loop = (async () => {
      for await (const m of messages) {
        // stopping: hand what is already pulled back at once instead of after the ack wait
        if (handingBack) {
          m.nak();
          continue;
        }
        delivered++;
        let decoded: T;
        try {
          decoded = args.decode ? args.decode(m) : (undefined as T);
        } catch (err) {
          log.error({ err, stream, seq: m.seq }, "message cannot be decoded: terminated");
          settle(m, { term: "cannot be decoded" });
          continue;
        }
        const key = args.keyOf(m, decoded);
        if (coalescer) await coalescer.submit(key, { m, decoded, key });
        else await gate.submit(key, () => runOne(key, { m, decoded }, []));
      }
    })();
    loop.catch((err) => log.error({ err, stream, durable }, "consumer loop ended"));
    return { state, loop, created };
  };
  let current = await start();
  /** gracefully: see endConsume; otherwise (the durable is gone) at once */
  const close = async (graceful = false) => {
    const { messages, lastPull } = current.state;
    if (graceful)
      await endConsume(messages, nc, lastPull, () => {
        handingBack = true;
      });
    else await messages.close().catch(() => {});
    await current.loop.catch(() => {});
    await gate.idle();
    handingBack = false;
  };

  const recover = async () => {
    log.warn(
      { stream, durable },
      "durable consumer is gone (deleted, or its stream deleted or re-created): re-making it",
    );
    await close();
    await args.onGone?.();
    await args.recreate!();
    current = await start();
    recreated++;
    setProblem(undefined);
    health.raise(Conditions.consumerMissing, Severity.warn, {
      message: `the durable consumer ${stream}/${durable} was gone (deleted, or its stream deleted or re-created) and was re-made`,
      subject: `${stream}/${durable}`,
      ttlMs: EVENT_TTL_MS,
    });
    log.warn({ stream, durable, recreated }, "durable consumer re-made; consuming again");
  };
  const supervisor = args.recreate
    ? (async () => {
        const jsm = await js.jetstreamManager();
        while (!stopped) {
          await new Promise<void>((r) => {
            const t = setTimeout(r, args.checkMs ?? CONSUMER_CHECK_MS);
            poke = () => {
              clearTimeout(t);
              r();
            };
          });
          poke = () => {};
          if (stopped) break;
          try {
            const ci = await jsm.consumers.info(stream, durable);
            // found and the same one: consuming (unless an earlier re-make failed half-way); another
            // creation time means another instance re-made it after a deletion: catch up the same way
            if (problem === undefined && ci.created === current.created) continue;
          } catch (err) {
            if (!isNotFound(err)) continue;
          }
          try {
            await recover();
          } catch (e) {
            const why = `${stream}/${durable}: ${(e as Error).message ?? e}`;
            if (why !== problem)
              log.error({ err: e, stream, durable }, "cannot re-make the durable consumer; will retry");
            setProblem(why);
          }
        }
      })()
    : Promise.resolve();
  supervisor.catch((err) => log.error({ err, stream, durable }, "consumer supervisor ended"));
  return {
    delivered: () => delivered,
    recreated: () => recreated,
    problem: () => problem,
    stop: async () => {
      stopped = true;
      poke();
      await supervisor.catch(() => {});
      await close(true);
    },
  };
}
