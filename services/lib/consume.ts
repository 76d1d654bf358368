/**
 * A durable pull consumer shared by every instance of a service at a site, processed with bounded
 * concurrency; messages of one key are handled one after another (in delivery order) inside a process.
 */
import {
  AckPolicy,
  type ConsumerConfig,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { isNotFound } from "./jserrors.ts";
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

/** Create the durable consumer unless it exists (its position survives restarts). */
export async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  durable: string,
  opts: { filter?: string; deliver: "all" | "last_per_subject"; ackWaitMs?: number; maxAckPending?: number },
): Promise<void> {
  try {
    await jsm.consumers.info(stream, durable);
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const cfg: Partial<ConsumerConfig> = {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: opts.deliver === "all" ? DeliverPolicy.All : DeliverPolicy.LastPerSubject,
    ack_wait: (opts.ackWaitMs ?? 30_000) * NANOS_PER_MS,
    max_ack_pending: opts.maxAckPending ?? 4096,
    ...(opts.filter ? { filter_subject: opts.filter } : {}),
  };
  try {
    await jsm.consumers.add(stream, cfg);
  } catch (err) {
    if (!/already (exists|in use)/i.test(String((err as Error).message))) throw err;
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

/** A running consumer loop. */
export type ConsumerLoop = {
  stop: () => Promise<void>;
  delivered: () => number;
  /** how often the durable was found gone (deleted, or its stream deleted or re-created) and re-made */
  recreated: () => number;
  /** why the durable cannot be re-made right now (e.g. its stream is missing), else undefined */
  problem: () => string | undefined;
};

/** How often a loop checks that its durable still exists (it also reacts to consumer notifications). */
export const CONSUMER_CHECK_MS = 2000;

/**
 * Consume `durable` on `stream` and apply `handle` to each message (errors → nak after 1 s).
 * Keeps going across reconnects until stopped. With `recreate`, it also survives its durable being
 * deleted, or its stream being deleted or re-created: it notices within `checkMs` (or at once on a
 * consumer-deleted notification), lets the messages in hand finish, calls `onGone` (e.g. re-read
 * the bucket's incarnation), re-makes the durable with `recreate`, and consumes again from there.
 */
export async function runConsumer(args: {
  js: JetStreamClient;
  stream: string;
  durable: string;
  concurrency: number;
  keyOf: (m: JsMsg) => string;
  handle: (m: JsMsg) => Promise<Disposition>;
  log: Logger;
  /** re-make the durable (and what it needs) when it is gone; without it the loop does not check */
  recreate?: () => Promise<void>;
  /** runs before `recreate`, once the messages of the old durable are settled */
  onGone?: () => Promise<void>;
  checkMs?: number;
}): Promise<ConsumerLoop> {
  const { js, stream, durable, log } = args;
  const gate = new KeyedGate(args.concurrency);
  let stopped = false;
  let delivered = 0;
  // the client's connection (nats.js keeps it on the JetStream client): the server it is connected to now
  const nc = (js as Partial<{ nc: NatsConnection }>).nc;
  let recreated = 0;
  let problem: string | undefined;
  const settle = (m: JsMsg, d: Disposition) => {
    if ("ack" in d) m.ack();
    else if ("term" in d) {
      if (termTakesReason(nc?.info?.version)) m.term(d.term);
      else m.term();
    } else m.nak(d.nak);
  };
  let poke: () => void = () => {};
  const start = async () => {
    const consumer = await js.consumers.get(stream, durable);
    const { created } = await consumer.info(true);
    const messages = await consumer.consume({ max_messages: Math.max(64, args.concurrency * 2) });
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === "consumer_deleted" || s.type === "consumer_not_found" || s.type === "stream_not_found")
          poke();
      }
    })().catch(() => {});
    const loop = (async () => {
      for await (const m of messages) {
        // stopping: hand what is already pulled back at once instead of after the ack wait
        if (stopped) {
          m.nak();
          continue;
        }
        delivered++;
        await gate.submit(args.keyOf(m), async () => {
          let d: Disposition;
          try {
            d = await args.handle(m);
          } catch (err) {
            log.warn({ err, stream, seq: m.seq }, "message failed, will be redelivered");
            d = { nak: 1000 };
          }
          try {
            settle(m, d);
          } catch (err) {
            log.warn({ err }, "could not settle a message");
          }
        });
      }
    })();
    loop.catch((err) => log.error({ err, stream, durable }, "consumer loop ended"));
    return { messages, loop, created };
  };
  let current = await start();
  const close = async () => {
    await current.messages.close().catch(() => {});
    await current.loop.catch(() => {});
    await gate.idle();
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
    problem = undefined;
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
            problem = why;
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
      await close();
    },
  };
}
