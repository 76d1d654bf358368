/**
 * How a service (the reconciler; any client at a site) reaches the endpoints of other sites. Two routes:
 * - direct: publish on the endpoint's subject. Works when the hub tells every site about every other
 *   site's subscriptions (east-west interest: nats-server before 2.12, or a hub without isolation);
 * - relay: publish on `syncd_via.<subject>`; the hub maps it back to `<subject>` and delivers it to
 *   the site that subscribed (the hub itself knows every site's interest). Works when the hub isolates
 *   leaf interest (`isolate_leafnode_interest`, nats-server 2.12+), which keeps a site's own
 *   subscription count flat in the number of sites.
 * Replies come back on `syncd_reply.<site>.<id>.<n>` (one subscription per transport, identity-mapped
 * at the hub), whichever route the request took. A request tries the route that worked last; when
 * nothing at all listens there ("no responders", known at once, so nothing was delivered) it tries
 * the other one and keeps it. Requests to this site's own endpoints always go direct. The relay has no
 * "no responders" of its own (the hub holds the mapping's interest whatever site it names), so a
 * request that falls back to it waits at most {@link RELAY_PROBE_MS}: a site that is nowhere costs a
 * run a few seconds, not its whole timeout.
 */
import {
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  NoRespondersError,
  type Subscription,
  TimeoutError,
  nuid,
} from "@nats-io/nats-core";
import { isNoResponders } from "./jserrors.ts";
import { CLIENT_REPLY_SITE, relayReplyPrefix, relaySubject, siteSubjectPrefix } from "./subjects.ts";

/** How long a request tried on the relay after "no responders" on the direct route waits for a reply. */
export const RELAY_PROBE_MS = 3000;

/** The two ways to another site's endpoints. */
export type Route = "direct" | "relay";

/** A request as sent: payload and optional headers. */
export type OutMsg = { data: Uint8Array; headers?: MsgHdrs | undefined };

type Pending =
  | {
      kind: "one";
      subject: string;
      resolve: (m: Msg) => void;
      reject: (e: Error) => void;
      timer: NodeJS.Timeout;
    }
  | { kind: "many"; got: Msg[] };

/**
 * One request from a connection at any site (or at the hub) to a subject of any site, without
 * state: direct first, and on "no responders" (nothing delivered) once more through the relay with
 * a reply subject under `syncd_reply.<self>` (default `syncd_reply.cli`). For one-off callers (tests, tools); a service that
 * sends many uses {@link MeshTransport}, which remembers the route. Throws NoRespondersError or
 * TimeoutError like `nc.request`.
 */
export async function requestAnywhere(
  nc: NatsConnection,
  subject: string,
  msg: OutMsg,
  timeoutMs: number,
  self = CLIENT_REPLY_SITE,
): Promise<Msg> {
  const headers = msg.headers ? { headers: msg.headers } : {};
  try {
    return await nc.request(subject, msg.data, { timeout: timeoutMs, ...headers });
  } catch (err) {
    if (!isNoResponders(err)) throw err;
  }
  return nc.request(relaySubject(subject), msg.data, {
    timeout: timeoutMs,
    noMux: true,
    reply: `${relayReplyPrefix(self, nuid.next())}.1`,
    ...headers,
  });
}

/** Requests to other sites' endpoints, by whichever route the hub offers. */
export class MeshTransport {
  /** the route tried first (the one that worked last) */
  route: Route = "direct";
  /** requests sent per route, and how often the route in use changed */
  readonly counts = { direct: 0, relay: 0, switched: 0 };
  private readonly prefix: string;
  private readonly pending = new Map<string, Pending>();
  private sub: Subscription | undefined;
  private subscribing: Promise<void> | undefined;
  private seq = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly self: string,
  ) {
    this.prefix = relayReplyPrefix(self, nuid.next());
  }

  /**
   * Send a request and return the reply message. Throws NoRespondersError when nobody listens on
   * either route, TimeoutError when no reply came within `timeoutMs`.
   */
  async request(subject: string, msg: OutMsg, timeoutMs: number): Promise<Msg> {
    if (subject.startsWith(siteSubjectPrefix(this.self))) return this.once("direct", subject, msg, timeoutMs);
    const first = this.route;
    try {
      return await this.once(first, subject, msg, timeoutMs);
    } catch (err) {
      if (!isNoResponders(err)) throw err;
      const other: Route = first === "direct" ? "relay" : "direct";
      // the relay cannot say "no responders" (the hub has the mapping's interest, not the site's):
      // a probe of it gives up sooner, so a site that is nowhere fails fast
      const m = await this.once(
        other,
        subject,
        msg,
        other === "relay" ? Math.min(timeoutMs, RELAY_PROBE_MS) : timeoutMs,
      );
      if (this.route === first) {
        this.route = other;
        this.counts.switched++;
      }
      return m;
    }
  }

  /**
   * Publish one request on both routes and collect every reply for `waitMs` (discovery: `$SRV.PING`
   * answered by every site). A site may answer twice when both routes reach it.
   */
  async collect(subject: string, data: Uint8Array, waitMs: number): Promise<Msg[]> {
    await this.ensureSub();
    const reply = `${this.prefix}.${++this.seq}`;
    const entry: Pending = { kind: "many", got: [] };
    this.pending.set(reply, entry);
    try {
      this.nc.publish(subject, data, { reply });
      this.nc.publish(relaySubject(subject), data, { reply });
      await new Promise((r) => setTimeout(r, waitMs));
    } finally {
      this.pending.delete(reply);
    }
    return entry.got;
  }

  /** Drop the reply subscription; requests in flight fail. */
  close(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
    this.subscribing = undefined;
    for (const [k, p] of this.pending) {
      if (p.kind === "one") {
        clearTimeout(p.timer);
        p.reject(new Error("transport closed"));
      }
      this.pending.delete(k);
    }
  }

  private async once(route: Route, subject: string, msg: OutMsg, timeoutMs: number): Promise<Msg> {
    await this.ensureSub();
    this.counts[route]++;
    const reply = `${this.prefix}.${++this.seq}`;
    const target = route === "relay" ? relaySubject(subject) : subject;
    return new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(reply);
        reject(new TimeoutError());
      }, timeoutMs);
      this.pending.set(reply, { kind: "one", subject: target, resolve, reject, timer });
      try {
        this.nc.publish(target, msg.data, { reply, ...(msg.headers ? { headers: msg.headers } : {}) });
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(reply);
        reject(err as Error);
      }
    });
  }

  private ensureSub(): Promise<void> {
    if (this.sub) return this.subscribing ?? Promise.resolve();
    this.sub = this.nc.subscribe(`${this.prefix}.*`, { callback: (_err, m) => this.onReply(m) });
    // the subscription reaches the hub before any request does (same connection, in order); the
    // flush makes sure the server has it before the first reply can come
    this.subscribing = this.nc.flush();
    return this.subscribing;
  }

  private onReply(m: Msg): void {
    const p = this.pending.get(m.subject);
    if (!p) return;
    const noResponders = m.data.length === 0 && m.headers?.code === 503;
    if (p.kind === "many") {
      if (!noResponders) p.got.push(m);
      return;
    }
    this.pending.delete(m.subject);
    clearTimeout(p.timer);
    if (noResponders) p.reject(new NoRespondersError(p.subject));
    else p.resolve(m);
  }
}
