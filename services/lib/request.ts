/**
 * JSON request/reply to a syncd endpoint, turning micro error replies into exceptions.
 */
import type { MsgHdrs, NatsConnection } from "@nats-io/nats-core";
import { RequestOne } from "@nats-io/nats-core/internal";

/** A micro error reply (`Nats-Service-Error-Code` / `Nats-Service-Error`). */
export class ServiceReplyError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly subject: string,
  ) {
    super(message);
    this.name = "ServiceReplyError";
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Send `body` as JSON and parse the JSON reply; throws ServiceReplyError for an error reply. */
export async function requestJson<T>(
  nc: NatsConnection,
  subject: string,
  body: unknown,
  opts: { timeout?: number } = {},
): Promise<{ value: T; bytes: number }> {
  return requestMessage<T>(nc, subject, { data: enc.encode(JSON.stringify(body ?? {})) }, opts);
}

/**
 * {@link requestJson} for a request already encoded, with headers (e.g. an op in its split wire
 * form, services/lib/op.ts); the reply is parsed as JSON.
 */
export async function requestMessage<T>(
  nc: NatsConnection,
  subject: string,
  msg: { data: Uint8Array; headers?: MsgHdrs | undefined },
  opts: { timeout?: number } = {},
): Promise<{ value: T; bytes: number }> {
  const payload = msg.data;
  const m = await nc.request(subject, payload, {
    timeout: opts.timeout ?? 5000,
    ...(msg.headers ? { headers: msg.headers } : {}),
  });
  return parseReply<T>(m, subject, payload.length);
}

/** A reply parsed as JSON (`bytes`: `requestBytes` + the reply's); throws ServiceReplyError for an error reply. */
export function parseReply<T>(
  m: { data: Uint8Array; headers?: MsgHdrs | undefined },
  subject: string,
  requestBytes: number,
): { value: T; bytes: number } {
  const code = m.headers?.get("Nats-Service-Error-Code");
  if (code)
    throw new ServiceReplyError(Number(code), m.headers?.get("Nats-Service-Error") ?? "error", subject);
  return { value: JSON.parse(dec.decode(m.data)) as T, bytes: requestBytes + m.data.length };
}

const SETTLED = Symbol("syncd.settled");
type Settling = { [SETTLED]?: true; timer?: { cancel(): void }; mux: { cancel(r: unknown): void } };
let quieted = false;

/**
 * Stop nats.js (@nats-io/nats-core 3.x) from building an Error after every request that got its
 * reply: `RequestOne.resolver` settles the request, then calls `cancel()`, which rejects the settled
 * promise with a new `RequestError("cancelled")` — a stack trace captured for nothing, 10-13 % of
 * the watcher's and merger's CPU in the bench profile (`noAsyncTraces` does not cover it). After
 * this, a `cancel()` without an error on a request already settled only stops its timer and
 * unregisters it (what it did besides the rejection, which a settled promise ignores); every other
 * path (timeout, no responders, connection closed, a caller's cancel) is unchanged. Idempotent.
 */
export function quietSettledRequests(): void {
  if (quieted) return;
  quieted = true;
  const proto = RequestOne.prototype as unknown as {
    resolver: (this: Settling, err: Error | null, msg: unknown) => void;
    cancel: (this: Settling, err?: Error) => void;
  };
  const resolver = proto.resolver;
  const cancel = proto.cancel;
  proto.resolver = function (err, msg) {
    this[SETTLED] = true;
    resolver.call(this, err, msg);
  };
  proto.cancel = function (err) {
    if (err !== undefined || !this[SETTLED]) return cancel.call(this, err);
    this.timer?.cancel();
    this.mux.cancel(this);
  };
}
