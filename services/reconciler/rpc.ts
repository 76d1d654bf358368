/**
 * Requests to other syncd endpoints (a peer's reconciler, a merger): lib/request.ts's requestJson,
 * with every payload byte counted and "nobody answered" told apart from an error reply.
 */
import type { MsgHdrs, NatsConnection } from "@nats-io/nats-core";
import { ServiceReplyError, requestMessage } from "../lib/request.ts";
import type { MeshTransport } from "../lib/transport.ts";

export { ServiceReplyError };

/** Nobody answered (no responders, timeout, connection trouble). */
export class UnavailableError extends Error {
  constructor(
    readonly subject: string,
    options?: { cause?: unknown },
  ) {
    const cause = options?.cause as Error | undefined;
    super(`${subject}: no answer (${cause?.message ?? "unavailable"})`, options);
    this.name = "UnavailableError";
  }
}

/** Where the bytes of a run's requests and replies are added up. */
export type Meter = { bytes: number };

/**
 * What a request needs. With a transport, requests to other sites take whichever route the hub
 * offers (direct, or relayed by a hub that isolates leaf interest: transport.ts).
 */
export type Caller = { nc: NatsConnection; timeoutMs: number; transport?: MeshTransport | undefined };

const dec = new TextDecoder();

async function viaTransport<T>(
  t: MeshTransport,
  subject: string,
  msg: { data: Uint8Array; headers?: MsgHdrs | undefined },
  timeoutMs: number,
): Promise<{ value: T; bytes: number }> {
  const m = await t.request(subject, msg, timeoutMs);
  const code = m.headers?.get("Nats-Service-Error-Code");
  if (code)
    throw new ServiceReplyError(Number(code), m.headers?.get("Nats-Service-Error") ?? "error", subject);
  return { value: JSON.parse(dec.decode(m.data)) as T, bytes: msg.data.length + m.data.length };
}

/**
 * Send a JSON request and return the parsed reply. Throws ServiceReplyError for an error reply and
 * UnavailableError when nobody answered.
 */
export async function call<T>(c: Caller, subject: string, body: unknown, meter?: Meter): Promise<T> {
  return callMessage<T>(c, subject, { data: new TextEncoder().encode(JSON.stringify(body ?? {})) }, meter);
}

/** {@link call} with a request already encoded (e.g. an op in its wire form, lib/op.ts). */
export async function callMessage<T>(
  c: Caller,
  subject: string,
  msg: { data: Uint8Array; headers?: MsgHdrs | undefined },
  meter?: Meter,
): Promise<T> {
  try {
    const r = c.transport
      ? await viaTransport<T>(c.transport, subject, msg, c.timeoutMs)
      : await requestMessage<T>(c.nc, subject, msg, { timeout: c.timeoutMs });
    if (meter) meter.bytes += r.bytes;
    return r.value;
  } catch (err) {
    if (err instanceof ServiceReplyError || err instanceof SyntaxError) throw err;
    throw new UnavailableError(subject, { cause: err });
  }
}
