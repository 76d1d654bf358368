/**
 * The opt-in HTTP port of a service process (--http-port): GET /metrics (Prometheus text),
 * /healthz (liveness: the process runs and is connected to NATS) and /readyz (readiness: the
 * service is wired and its durable consumers exist). Probe bodies are JSON: `{ ok, checks }`.
 */
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "./logger.ts";

/** The answer of a probe: ok, and what was checked (name → true or the reason it failed). */
export type ProbeResult = { ok: boolean; checks: Record<string, true | string> };

/** What the HTTP port serves. */
export type HttpHandlers = {
  healthz: () => Promise<ProbeResult>;
  readyz: () => Promise<ProbeResult>;
  metrics: () => Promise<{ body: string; contentType: string }>;
};

/** A running HTTP port. */
export type HttpServer = { port: number; close: () => Promise<void> };

/** Listen on host:port (0 = any free port); rejects when the port cannot be had. */
export function startHttp(host: string, port: number, h: HttpHandlers, log: Logger): Promise<HttpServer> {
  const server = createServer((req, res) => {
    void handle(req, res, h).catch((err: unknown) => {
      log.warn({ err, path: req.url }, "http handler failed");
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end("internal error\n");
    });
  });
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      server.on("error", (err) => log.error({ err }, "http server error"));
      resolve({
        port: (server.address() as AddressInfo).port,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}

async function handle(req: IncomingMessage, res: ServerResponse, h: HttpHandlers): Promise<void> {
  const path = (req.url ?? "/").split("?")[0];
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
    res.end("method not allowed\n");
    return;
  }
  if (path === "/metrics") {
    const m = await h.metrics();
    res.writeHead(200, { "content-type": m.contentType });
    res.end(req.method === "HEAD" ? undefined : m.body);
    return;
  }
  if (path === "/healthz" || path === "/readyz") {
    const r = await (path === "/healthz" ? h.healthz() : h.readyz());
    res.writeHead(r.ok ? 200 : 503, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(req.method === "HEAD" ? undefined : `${JSON.stringify(r)}\n`);
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found: /metrics, /healthz, /readyz\n");
}
