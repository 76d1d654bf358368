/**
 * JetStream and NATS errors, classified by the API error code the server sends (nats-server's
 * `errors.json`, nats.js's `JetStreamApiCodes`) — never by message
 * text, which changes between server versions.
 */
import { JetStreamApiError, JetStreamError } from "@nats-io/jetstream";
import {
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  PermissionViolationError,
  ProtocolError,
  RequestError,
  TimeoutError,
} from "@nats-io/nats-core";

/** The JetStream API error codes the services act on (nats-server errors.json). */
export const ApiCode = {
  /** JSInsufficientResourcesErr (a stream's max_bytes cannot be reserved in the store) */
  insufficientResources: 10047,
  /** JSNoMessageFoundErr */
  noMessageFound: 10037,
  /** JSConsumerNotFoundErr */
  consumerNotFound: 10014,
  /** JSStreamMessageExceedsMaximumErr */
  messageExceedsMaximum: 10054,
  /** JSStreamNameExistErr: "stream name already in use with a different configuration" */
  streamNameExist: 10058,
  /** JSStreamNotFoundErr */
  streamNotFound: 10059,
  /** JSStreamWrongLastSequenceErr */
  wrongLastSequence: 10071,
  /** JSConsumerNameExistErr */
  consumerNameExist: 10013,
  /** JSConsumerExistingActiveErr */
  consumerExistingActive: 10105,
  /** JSConsumerAlreadyExists */
  consumerAlreadyExists: 10148,
  /** JSStreamWrongLastSequenceConstantErr (2.10+: wrong last sequence, expected value unknown) */
  wrongLastSequenceUnknown: 10164,
} as const;
export type ApiCode = (typeof ApiCode)[keyof typeof ApiCode];

/** The API error code of a JetStream error (searching `cause` too), or undefined. */
export function apiCode(err: unknown): number | undefined {
  for (let e = err, depth = 0; e && depth < 5; depth++) {
    if (e instanceof JetStreamApiError) return e.code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function hasCode(err: unknown, ...codes: number[]): boolean {
  const c = apiCode(err);
  return c !== undefined && codes.includes(c);
}

/** The stream does not exist. */
export function isStreamNotFound(err: unknown): boolean {
  return hasCode(err, ApiCode.streamNotFound);
}

/** The consumer does not exist. */
export function isConsumerNotFound(err: unknown): boolean {
  return hasCode(err, ApiCode.consumerNotFound);
}

/** The stream or the consumer does not exist. */
export function isNotFound(err: unknown): boolean {
  return hasCode(err, ApiCode.streamNotFound, ApiCode.consumerNotFound);
}

/** A message get found no message (that sequence or subject holds none). */
export function isNoMessageFound(err: unknown): boolean {
  return hasCode(err, ApiCode.noMessageFound);
}

/** A stream or consumer of that name exists already (another instance created it first). */
export function isAlreadyExists(err: unknown): boolean {
  return hasCode(
    err,
    ApiCode.streamNameExist,
    ApiCode.consumerNameExist,
    ApiCode.consumerExistingActive,
    ApiCode.consumerAlreadyExists,
  );
}

/** An expected-last-sequence publish lost a race (a compare-and-set conflict). */
export function isWrongLastSequence(err: unknown): boolean {
  return hasCode(err, ApiCode.wrongLastSequence, ApiCode.wrongLastSequenceUnknown);
}

/** The server cannot reserve what a stream asks for (its max_bytes against the store). */
export function isInsufficientResources(err: unknown): boolean {
  return hasCode(err, ApiCode.insufficientResources);
}

/** The stream refused a message over its max message size (the bucket's max value size). */
export function isTooLarge(err: unknown): boolean {
  return hasCode(err, ApiCode.messageExceedsMaximum);
}

/** The error, then its `cause`s (a few deep). */
function* causes(err: unknown): Generator<unknown> {
  for (let e = err, depth = 0; e && depth < 5; depth++) {
    yield e;
    e = (e as { cause?: unknown }).cause;
  }
}

/** A request that got no reply in time (nats.js TimeoutError, also as a `cause`). */
export function isTimeout(err: unknown): boolean {
  for (const e of causes(err)) if (e instanceof TimeoutError) return true;
  return false;
}

/** A request nobody was subscribed to answer (nats.js NoRespondersError, also as a `cause`). */
export function isNoResponders(err: unknown): boolean {
  for (const e of causes(err)) if (e instanceof NoRespondersError) return true;
  return false;
}

/**
 * A failure worth trying again: a request timed out or nobody answered it (a server paused or
 * overloaded, a JetStream still electing its leaders), by the nats.js error classes.
 */
export function isTransientNatsError(err: unknown): boolean {
  return isTimeout(err) || isNoResponders(err);
}

/**
 * An error of the NATS client (a request, a subscription, the connection or the JetStream API failed),
 * by class: one operation failed, not the process's own state.
 */
export function isNatsError(err: unknown): boolean {
  for (const e of causes(err))
    if (
      e instanceof TimeoutError ||
      e instanceof NoRespondersError ||
      e instanceof RequestError ||
      e instanceof ClosedConnectionError ||
      e instanceof DrainingConnectionError ||
      e instanceof ConnectionError ||
      e instanceof ProtocolError ||
      e instanceof PermissionViolationError ||
      e instanceof JetStreamError ||
      e instanceof JetStreamApiError
    )
      return true;
  return false;
}
