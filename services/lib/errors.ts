/**
 * The error-code registry. Every error a service returns (`Nats-Service-Error-Code` + message) or
 * records on the dead-letter stream has an entry here; README's "Errors" table lists them all and a
 * test keeps the two in step.
 */
export const ErrorCode = {
  SYNCD_ERR_NOT_JSON: { status: 400, text: "payload is not JSON" },
  SYNCD_ERR_SCHEMA: { status: 400, text: "payload does not match its schema" },
  SYNCD_ERR_BAD_BASE64: { status: 400, text: "value is not valid base64" },
  SYNCD_ERR_UNKNOWN_BUCKET: { status: 404, text: "bucket is not replicated by this site" },
  SYNCD_ERR_NOT_FOUND: { status: 404, text: "key not found" },
  SYNCD_ERR_CONFLICT: { status: 409, text: "compare-and-set kept losing races; retry" },
  SYNCD_ERR_TOO_LARGE: { status: 413, text: "value is larger than the bucket's max value size" },
  SYNCD_ERR_CLOCK_SKEW: { status: 422, text: "ts is too far ahead of the site's clock (not yet acceptable)" },
  SYNCD_ERR_INTERNAL: { status: 500, text: "internal error" },
  SYNCD_ERR_UNAVAILABLE: { status: 503, text: "a site or service needed for this request did not answer" },
} as const;
export type ErrorCodeName = keyof typeof ErrorCode;

/** An error with a registered code: the endpoint adapter turns it into `respondError(status, message)`. */
export class SyncdError extends Error {
  readonly code: ErrorCodeName;
  readonly status: number;
  constructor(code: ErrorCodeName, detail?: string, options?: { cause?: unknown }) {
    const base = ErrorCode[code];
    super(detail ? `${base.text}: ${detail}` : base.text, options);
    this.name = "SyncdError";
    this.code = code;
    this.status = base.status;
  }
}

/** True for a SyncdError (also across module copies). */
export function isSyncdError(err: unknown): err is SyncdError {
  return err instanceof SyncdError;
}
