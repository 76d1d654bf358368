/**
 * The CLI's NATS side: one connection (no reconnects, clear errors), JSON requests to syncd
 * endpoints with errors a person can read, micro discovery ($SRV.PING|INFO|STATS) collected until
 * quiet, and the sites of the mesh — reached directly or through the hub relay ({@link MeshClient}).
 */
import { readFileSync } from "node:fs";
import type { JetStreamOptions } from "@nats-io/jetstream";
import { Empty, type Msg, type NatsConnection, createInbox, nuid } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { connectOptions } from "../lib/connect.ts";
import { isNoResponders, isTimeout } from "../lib/jserrors.ts";
import { ServiceReplyError, parseReply } from "../lib/request.ts";
import {
  CLIENT_REPLY_SITE,
  type ServiceKind,
  ServiceName,
  endpointSubject,
  inCurrentMesh,
  relayReplyPrefix,
  relaySubject,
} from "../lib/subjects.ts";
import type { Route } from "../lib/transport.ts";
import { CliError, type ConnOptions } from "./args.ts";

/** Connect once (a CLI does not wait for a server to come back); throws CliError. */
export async function connectCli(o: ConnOptions, inboxPrefix?: string): Promise<NatsConnection> {
  for (const [file, what] of [
    [o.creds, "credentials file"],
    [o.nkey, "nkey seed file"],
  ] as const) {
    if (!file) continue;
    try {
      readFileSync(file);
    } catch (err) {
      throw new CliError(`cannot read ${what} ${file}: ${(err as Error).message}`);
    }
  }
  try {
    return await connect({
      ...connectOptions(o),
      name: "syncd-cli",
      timeout: o.timeoutMs,
      maxReconnectAttempts: 0,
      ...(inboxPrefix ? { inboxPrefix } : {}),
    });
  } catch (err) {
    throw new CliError(`cannot connect to ${o.servers.join(",")}: ${messageOf(err)}`);
  }
}

/** The message of an error and of its causes, one line. */
export function messageOf(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let i = 0; e !== undefined && e !== null && i < 4; i++) {
    const m = e instanceof Error ? e.message : String(e);
    if (m && !parts.includes(m)) parts.push(m);
    e = e instanceof Error ? e.cause : undefined;
  }
  return parts.join(": ") || "unknown error";
}

/** Nobody answered a request: no responders, or a timeout. */
export class NoAnswerError extends CliError {
  constructor(
    readonly subject: string,
    why: string,
  ) {
    super(`no answer on ${subject} (${why})`);
  }
}

/** Whether an error is a micro error reply with this status. */
export function isReplyStatus(err: unknown, status: number): err is ServiceReplyError {
  return err instanceof ServiceReplyError && err.status === status;
}

/**
 * The CLI's way to every site (README "What the mesh is"): the server it is connected to reaches its
 * own site, and the others too unless the hub isolates leaf interest. Then the hub relay carries
 * what the direct route cannot (services/lib/transport.ts, same route logic): a request tries
 * the route that worked last for its site, and the other one on "no responders" (known at once,
 * nothing was delivered); discovery publishes on both routes; another site's JetStream is reached
 * through `syncd_via.$JS.<domain>.API` on a second connection whose inboxes are relay reply subjects.
 * A user not allowed the relay subjects (`syncd_via.<subject>`, `syncd_reply.cli.>`; see
 * deploy/nats/site-users.conf.template) sees its own site only under isolation, as `nats micro ls` does.
 */
export class MeshClient {
  private readonly routes = new Map<string, Route>();
  private readonly jsRoutes = new Map<string, Promise<Route>>();
  private readonly replyPrefix = relayReplyPrefix(CLIENT_REPLY_SITE, nuid.next());
  private relayConn: Promise<NatsConnection> | undefined;
  private seq = 0;

  /** `openRelay(inboxPrefix)` connects again, with that inbox prefix (used once, when needed). */
  constructor(
    readonly nc: NatsConnection,
    private readonly openRelay: (inboxPrefix: string) => Promise<NatsConnection>,
  ) {}

  /** A reply subject under the relay's reply root. */
  relayInbox(): string {
    return `${this.replyPrefix}.${++this.seq}`;
  }

  /** Send a request to a subject of `site`; throws NoRespondersError when neither route has any. */
  async request(site: string, subject: string, data: Uint8Array, timeoutMs: number): Promise<Msg> {
    const first = this.routes.get(site) ?? "direct";
    try {
      return await this.once(first, subject, data, timeoutMs);
    } catch (err) {
      if (!isNoResponders(err)) throw err;
      const other: Route = first === "direct" ? "relay" : "direct";
      const m = await this.once(other, subject, data, timeoutMs);
      this.routes.set(site, other);
      return m;
    }
  }

  private once(route: Route, subject: string, data: Uint8Array, timeout: number): Promise<Msg> {
    if (route === "direct") return this.nc.request(subject, data, { timeout });
    return this.nc.request(relaySubject(subject), data, { timeout, noMux: true, reply: this.relayInbox() });
  }

  /**
   * The connection and JetStream options that reach the JetStream of `domain`: directly when
   * `$JS.<domain>.API.INFO` has a responder here, else through the relay.
   */
  async jetStream(domain: string, timeout: number): Promise<{ nc: NatsConnection; opts: JetStreamOptions }> {
    let route = this.jsRoutes.get(domain);
    if (!route) {
      route = this.nc.request(`$JS.${domain}.API.INFO`, Empty, { timeout }).then(
        (): Route => "direct",
        (err): Route => (isNoResponders(err) ? "relay" : "direct"),
      );
      this.jsRoutes.set(domain, route);
    }
    if ((await route) === "direct") return { nc: this.nc, opts: { domain, timeout } };
    return { nc: await this.relay(), opts: { apiPrefix: relaySubject(`$JS.${domain}.API`), timeout } };
  }

  private relay(): Promise<NatsConnection> {
    this.relayConn ??= this.openRelay(relayReplyPrefix(CLIENT_REPLY_SITE, nuid.next()));
    return this.relayConn;
  }

  /** Close the relay connection, if one was opened (the caller closes `nc`). */
  async close(): Promise<void> {
    const c = this.relayConn;
    this.relayConn = undefined;
    if (c) await (await c.catch(() => undefined))?.close().catch(() => {});
  }
}

/**
 * Request a syncd endpoint of a site. Throws ServiceReplyError for an error reply (callers that
 * expect one, like a 404, catch it), NoAnswerError when nobody answered, CliError otherwise.
 */
export async function request<T>(
  mesh: MeshClient,
  site: string,
  service: ServiceKind,
  endpoint: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ value: T; bytes: number }> {
  const subject = endpointSubject(site, service, endpoint);
  try {
    const data = enc.encode(JSON.stringify(body ?? {}));
    return parseReply<T>(await mesh.request(site, subject, data, timeoutMs), subject, data.length);
  } catch (err) {
    if (err instanceof ServiceReplyError) throw err;
    if (isNoResponders(err)) throw new NoAnswerError(subject, "no responders");
    if (isTimeout(err)) throw new NoAnswerError(subject, `timeout after ${timeoutMs} ms`);
    if (err instanceof SyntaxError) throw new CliError(`${subject}: reply is not JSON`);
    throw new CliError(`${subject}: ${messageOf(err)}`);
  }
}

/** The value of a request (see {@link request}). */
export async function ask<T>(
  mesh: MeshClient,
  site: string,
  service: ServiceKind,
  endpoint: string,
  body: unknown,
  timeoutMs: number,
): Promise<T> {
  return (await request<T>(mesh, site, service, endpoint, body, timeoutMs)).value;
}

const enc = new TextEncoder();

/** A CliError for any error, with a prefix saying what was being done. */
export function asCliError(what: string, err: unknown): CliError {
  if (err instanceof ServiceReplyError) return new CliError(`${what}: ${err.status} ${err.message}`);
  if (err instanceof CliError) return new CliError(`${what}: ${err.message}`);
  return new CliError(`${what}: ${messageOf(err)}`);
}

/** How long discovery waits: at most `maxMs` in all, and `quietMs` after the last reply. */
export type CollectOptions = { maxMs?: number; quietMs?: number };

/**
 * Publish an empty request, directly and through the hub relay (every other site when the hub
 * isolates leaf interest), and collect every reply until nothing came for `quietMs` (after the
 * first one) or `maxMs` passed — what `nats micro` does for $SRV requests. An instance reached both
 * ways answers twice.
 */
export async function collect(
  mesh: MeshClient,
  subject: string,
  o: CollectOptions = {},
): Promise<Uint8Array[]> {
  const { nc } = mesh;
  const maxMs = o.maxMs ?? 1000;
  const quietMs = o.quietMs ?? 300;
  const inbox = createInbox();
  const relayInbox = mesh.relayInbox();
  const out: Uint8Array[] = [];
  let quiet: ReturnType<typeof setTimeout> | undefined;
  let finish: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const all = setTimeout(() => finish(), maxMs);
  const callback = (err: Error | null, m: Msg) => {
    if (err) return;
    if (m.data.length === 0 && m.headers?.code === 503) return;
    out.push(m.data);
    clearTimeout(quiet);
    quiet = setTimeout(() => finish(), quietMs);
  };
  const subs = [nc.subscribe(inbox, { callback }), nc.subscribe(relayInbox, { callback })];
  try {
    await nc.flush();
    nc.publish(subject, Empty, { reply: inbox });
    nc.publish(relaySubject(subject), Empty, { reply: relayInbox });
    await done;
  } finally {
    clearTimeout(all);
    clearTimeout(quiet);
    for (const sub of subs) sub.unsubscribe();
  }
  return out;
}

/** The identity every micro reply carries. */
export type MicroIdentity = {
  type?: string;
  name: string;
  id: string;
  version: string;
  metadata?: Record<string, string> | null;
};

/** An endpoint as `$SRV.INFO` and `$SRV.STATS` name it. */
type MicroEndpoint = { name: string; subject: string; queue_group?: string };

/** A `$SRV.INFO` reply. */
export type MicroInfo = MicroIdentity & {
  description?: string;
  endpoints?: (MicroEndpoint & { metadata?: Record<string, string> | null })[];
};

/** A `$SRV.STATS` reply. */
export type MicroStats = MicroIdentity & {
  started?: string;
  endpoints?: (MicroEndpoint & {
    num_requests: number;
    num_errors: number;
    last_error?: string;
    processing_time: number;
    average_processing_time: number;
    data?: unknown;
  })[];
};

/** The micro verbs. */
export type MicroVerb = "PING" | "INFO" | "STATS";

const dec = new TextDecoder();

/** `$SRV.<verb>[.name[.id]]`, every reply that parses (syncd's only of the mesh in use), sorted by name, site, id. */
export async function discover<T extends MicroIdentity>(
  mesh: MeshClient,
  verb: MicroVerb,
  name?: string,
  id?: string,
  o?: CollectOptions,
): Promise<T[]> {
  const subject = ["$SRV", verb, ...(name ? [name] : []), ...(name && id ? [id] : [])].join(".");
  const out: T[] = [];
  const seen = new Set<string>();
  for (const data of await collect(mesh, subject, o)) {
    let v: unknown;
    try {
      v = JSON.parse(dec.decode(data));
    } catch {
      continue;
    }
    if (!v || typeof v !== "object") continue;
    const r = v as T;
    if (typeof r.name !== "string" || typeof r.id !== "string" || seen.has(r.id)) continue;
    // another mesh's syncd instance (metadata `mesh`): not part of this one
    if (r.name.startsWith("syncd-") && !inCurrentMesh(r.metadata)) continue;
    seen.add(r.id);
    out.push(r);
  }
  return out.sort(
    (a, b) => cmp(a.name, b.name) || cmp(a.metadata?.site ?? "", b.metadata?.site ?? "") || cmp(a.id, b.id),
  );
}

/** String order (code units), for stable output. */
export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A site of the mesh, as its mergers announce it. */
export type SiteRef = { site: string; domain: string; node_id?: string };

/** The sites of the mesh: `$SRV.PING.syncd-merger` metadata (site, domain), sorted by name. */
export async function findSites(mesh: MeshClient, o?: CollectOptions): Promise<SiteRef[]> {
  return sitesOf(await discover(mesh, "PING", ServiceName.merger, undefined, o));
}

/** The distinct sites of some micro replies (metadata site, domain, node_id), sorted. */
export function sitesOf(replies: MicroIdentity[]): SiteRef[] {
  const sites = new Map<string, SiteRef>();
  for (const r of replies) {
    const md = r.metadata ?? {};
    if (!md.site || sites.has(md.site)) continue;
    sites.set(md.site, {
      site: md.site,
      domain: md.domain || md.site,
      ...(md.node_id ? { node_id: md.node_id } : {}),
    });
  }
  return [...sites.values()].sort((a, b) => cmp(a.site, b.site));
}

/**
 * The sites a command acts on: every site found, or the one `--site` names. With `fallback`, a
 * named site no merger announces is still used (its domain = its name), for JetStream-only work.
 */
export function pickSites(found: SiteRef[], site: string | undefined, fallback = false): SiteRef[] {
  if (site === undefined) {
    if (found.length === 0)
      throw new CliError("no syncd site found: no syncd-merger answered $SRV.PING (is the mesh up?)");
    return found;
  }
  const s = found.find((f) => f.site === site);
  if (s) return [s];
  if (fallback) return [{ site, domain: site }];
  const known = found.map((f) => f.site).join(", ") || "none";
  throw new CliError(`site "${site}" not found (sites with a syncd-merger: ${known})`);
}
