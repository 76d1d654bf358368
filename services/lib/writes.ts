/**
 * One socket write per event-loop turn instead of one per microtask turn (nats.js 3.x).
 */
import { ProtocolHandler } from "@nats-io/nats-core/internal";

const SCHEDULED = Symbol("syncd.flushScheduled");
type Flushing = {
  outbound: { size(): number };
  pendingLimit: number;
  flushPending(this: Flushing): void;
  close(this: Flushing, err?: Error): Promise<void>;
  [SCHEDULED]?: true;
};
let installed = false;

/**
 * nats.js writes its outbound buffer to the socket one microtask after the first command that
 * filled it, so a process answering a burst of messages (acks, request replies, compare-and-set
 * publishes, each issued from its own promise continuation) writes nearly every protocol message on
 * its own: socket writes were ~19 % of the merger's self time in the bench profile, and each write
 * is a read for the server. After this, the buffer is written once per event-loop turn
 * (`setImmediate`: after the I/O callbacks of the turn), or at once when it reaches nats.js's
 * pending limit and before a close. Nothing is reordered: the buffer is the
 * same, only written later. `SYNCD_COALESCE_WRITES=0` leaves nats.js as it is (for a benchmark's
 * baseline). Idempotent.
 */
export function coalesceWrites(env: NodeJS.ProcessEnv = process.env): void {
  if (installed || env.SYNCD_COALESCE_WRITES === "0") return;
  installed = true;
  const proto = ProtocolHandler.prototype as unknown as Flushing;
  const flush = proto.flushPending;
  const close = proto.close;
  proto.flushPending = function () {
    if (this.outbound.size() >= this.pendingLimit) return flush.call(this);
    if (this[SCHEDULED]) return;
    this[SCHEDULED] = true;
    setImmediate(() => {
      this[SCHEDULED] = undefined;
      flush.call(this);
    });
  };
  proto.close = function (err) {
    flush.call(this);
    return close.call(this, err);
  };
}
