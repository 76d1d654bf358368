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
import type { Logger } from "./logger.ts";
import { isNotFound } from "./site.ts";

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
export type ConsumerLoop = { stop: () => Promise<void>; delivered: () => number };

/**
 * Consume `durable` on `stream` and apply `handle` to each message (errors → nak after 1 s).
 * Keeps going across reconnects until stopped.
 */
export async function runConsumer(args: {
  js: JetStreamClient;
  stream: string;
  durable: string;
  concurrency: number;
  keyOf: (m: JsMsg) => string;
  handle: (m: JsMsg) => Promise<Disposition>;
  log: Logger;
}): Promise<ConsumerLoop> {
  const { js, stream, durable, log } = args;
  const gate = new KeyedGate(args.concurrency);
  let stopped = false;
  let delivered = 0;
  const consumer = await js.consumers.get(stream, durable);
  const messages = await consumer.consume({ max_messages: Math.max(64, args.concurrency * 2) });
  // the client's connection (nats.js keeps it on the JetStream client): the server it is connected to now
  const nc = (js as Partial<{ nc: NatsConnection }>).nc;
  const settle = (m: JsMsg, d: Disposition) => {
    if ("ack" in d) m.ack();
    else if ("term" in d) {
      if (termTakesReason(nc?.info?.version)) m.term(d.term);
      else m.term();
    } else m.nak(d.nak);
  };
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
  return {
    delivered: () => delivered,
    stop: async () => {
      stopped = true;
      await messages.close().catch(() => {});
      await loop.catch(() => {});
      await gate.idle();
    },
  };
}
