/**
 * The endpoint adapter: every request is parsed, validated against its schema, handed to a plain
 * async handler, and answered with JSON or `respondError(status, message)`. It also keeps the micro
 * stats true: nats.js counts only synchronous throws as errors and only the synchronous part of a
 * handler as processing time, so the adapter records both for the async work itself.
 */
import { nanos } from "@nats-io/nats-core";
import type { Service, ServiceMsg } from "@nats-io/services";
import { SyncdError, isSyncdError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { type SchemaId, check } from "./schema-registry.ts";
import { QUEUE_GROUP } from "./subjects.ts";

/** What a handler gets besides its request. */
export type HandlerContext = { log: Logger; msg: ServiceMsg };

/** One endpoint: its name, subject, schemas and handler. */
export type EndpointSpec<Req, Res> = {
  name: string;
  subject: string;
  request: SchemaId;
  response: SchemaId;
  description?: string;
  handler: (req: Req, ctx: HandlerContext) => Promise<Res>;
  /** turn the request message into the value its schema checks (default: the body as JSON) */
  decode?: (msg: ServiceMsg) => unknown;
};

/** The part of nats.js's endpoint stats the adapter updates (not exported by @nats-io/services). */
type EndpointStats = {
  num_requests: number;
  num_errors: number;
  last_error?: string;
  processing_time: number;
  average_processing_time: number;
};

function statsOf(service: Service, name: string): EndpointStats | undefined {
  const handlers = (service as unknown as { handlers?: { name: string; stats?: EndpointStats }[] }).handlers;
  return handlers?.find((h) => h.name === name)?.stats;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const enc = new TextEncoder();

/** Decode a request body as JSON; an empty body is `{}`. */
export function decodeJson(data: Uint8Array): unknown {
  if (data.length === 0) return {};
  try {
    return JSON.parse(utf8.decode(data));
  } catch {
    throw new SyncdError("SYNCD_ERR_NOT_JSON");
  }
}

/** Add an endpoint to a micro service through the adapter. */
export function addEndpoint<Req, Res>(
  service: Service,
  spec: EndpointSpec<Req, Res>,
  deps: { log: Logger },
): void {
  const log = deps.log.child({ endpoint: spec.name });
  const metadata: Record<string, string> = {
    "schema.request": `schemas/${spec.request}`,
    "schema.response": `schemas/${spec.response}`,
  };
  if (spec.description) metadata.description = spec.description;
  service.addEndpoint(spec.name, {
    subject: spec.subject,
    queue: QUEUE_GROUP,
    metadata,
    handler: (err, msg) => {
      if (err) {
        log.error({ err }, "endpoint subscription failed");
        return;
      }
      void serve(msg);
    },
  });
  const stats = () => statsOf(service, spec.name);

  async function serve(msg: ServiceMsg): Promise<void> {
    const started = Date.now();
    try {
      const req = check<Req>(spec.request, spec.decode ? spec.decode(msg) : decodeJson(msg.data));
      const res = await spec.handler(req, { log, msg });
      if (msg.reply) msg.respond(enc.encode(JSON.stringify(res)));
    } catch (e) {
      const err = isSyncdError(e)
        ? e
        : new SyncdError("SYNCD_ERR_INTERNAL", (e as Error)?.message ?? String(e), { cause: e });
      const s = stats();
      if (s) {
        s.num_errors++;
        s.last_error = `${err.code}: ${err.message}`;
      }
      if (err.status >= 500) log.error({ err: e, code: err.code }, "request failed");
      else log.debug({ code: err.code, reason: err.message }, "request refused");
      try {
        if (msg.reply) msg.respondError(err.status, `${err.code}: ${err.message}`);
      } catch (re) {
        log.warn({ err: re }, "could not send the error reply");
      }
    } finally {
      const s = stats();
      if (s) {
        // nats.js already counted the request and the synchronous part; add the async remainder.
        s.processing_time += nanos(Math.max(0, Date.now() - started));
        s.average_processing_time = s.num_requests > 0 ? Math.round(s.processing_time / s.num_requests) : 0;
      }
    }
  }
}
