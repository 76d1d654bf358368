/**
 * Requests to other syncd endpoints (a peer's reconciler, a merger): lib/request.ts's requestJson,
 * with every payload byte counted and "nobody answered" told apart from an error reply.
 */
import type { NatsConnection } from "@nats-io/nats-core";
import { ServiceReplyError, requestJson } from "../lib/request.ts";

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

/** What a request needs. */
export type Caller = { nc: NatsConnection; timeoutMs: number };

/**
 * Send a JSON request and return the parsed reply. Throws ServiceReplyError for an error reply and
 * UnavailableError when nobody answered.
 */
export async function call<T>(c: Caller, subject: string, body: unknown, meter?: Meter): Promise<T> {
  try {
    const r = await requestJson<T>(c.nc, subject, body, { timeout: c.timeoutMs });
    if (meter) meter.bytes += r.bytes;
    return r.value;
  } catch (err) {
    if (err instanceof ServiceReplyError || err instanceof SyntaxError) throw err;
    throw new UnavailableError(subject, { cause: err });
  }
}
