/**
 * The endpoint adapter (services/lib/adapter.ts) against a real nats-server: schema failures and
 * non-JSON payloads get 400 naming the problem, a SyncdError gets its registered status, any other
 * throw gets 500; the micro STATS count every request and every error (also of async handlers, which
 * nats.js alone would miss), keep last_error and an integer processing_time, pass natscli's check;
 * and the endpoint keeps serving.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { constants, accessSync, mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import type { Msg, NatsConnection } from "@nats-io/nats-core";
import { type Service, Svcm } from "@nats-io/services";
import { connect } from "@nats-io/transport-node";
import { type ClockObserveRequest, SyncdError, addEndpoint, createLogger } from "../services/mod.ts";
import { checkMicroSchema } from "./micro-schemas.ts";

const SERVICE = "adapter-test";
const SUBJECT = "syncd.t.clock.observe";
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `$NATS_SERVER`, else nats-server on PATH, else /usr/sbin/nats-server. */
function natsServerBinary(): string {
  if (process.env.NATS_SERVER) return process.env.NATS_SERVER;
  for (const d of [...(process.env.PATH ?? "").split(path.delimiter).filter(Boolean), "/usr/sbin"]) {
    try {
      accessSync(path.join(d, "nats-server"), constants.X_OK);
      return path.join(d, "nats-server");
    } catch {
      /* next */
    }
  }
  throw new Error("nats-server not found: set NATS_SERVER or put it on PATH");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === "object" ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

type EndpointStats = {
  name: string;
  num_requests: number;
  num_errors: number;
  last_error?: string;
  processing_time: number;
  average_processing_time: number;
};

describe("I7 endpoint adapter against a real nats-server", () => {
  let dir: string;
  let server: ChildProcess | undefined;
  let serverLog = "";
  let nc: NatsConnection;
  let svcNc: NatsConnection;
  let service: Service;
  let requests = 0;
  let errors = 0;

  const request = async (payload: string | Uint8Array): Promise<Msg> => {
    requests++;
    return nc.request(SUBJECT, typeof payload === "string" ? enc.encode(payload) : payload, {
      timeout: 5000,
    });
  };
  const refused = async (payload: string | Uint8Array, status: number, message: RegExp): Promise<void> => {
    const m = await request(payload);
    errors++;
    assert.equal(m.headers?.get("Nats-Service-Error-Code"), String(status), `status for ${payload}`);
    assert.match(m.headers?.get("Nats-Service-Error") ?? "", message, `message for ${payload}`);
  };
  const stats = async (): Promise<{ raw: Msg; endpoint: EndpointStats }> => {
    const raw = await nc.request(`$SRV.STATS.${SERVICE}`, "", { timeout: 5000 });
    const endpoint = raw.json<{ endpoints: EndpointStats[] }>().endpoints.find((e) => e.name === "observe");
    assert.ok(endpoint, "STATS lists the observe endpoint");
    return { raw, endpoint };
  };

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "syncd-adapter-"));
    const port = await freePort();
    server = spawn(
      natsServerBinary(),
      ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", path.join(dir, "js")],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    server.stdout?.on("data", (d: Buffer) => {
      serverLog += d.toString();
    });
    server.stderr?.on("data", (d: Buffer) => {
      serverLog += d.toString();
    });
    const url = `nats://127.0.0.1:${port}`;
    const t0 = Date.now();
    for (;;) {
      try {
        nc = await connect({ servers: url, name: "adapter-test-client" });
        break;
      } catch (err) {
        if (Date.now() - t0 > 10000)
          throw new Error(`nats-server did not come up: ${String(err)}\n${serverLog}`);
        await sleep(50);
      }
    }
    svcNc = await connect({ servers: url, name: "adapter-test-service" });
    service = await new Svcm(svcNc).add({ name: SERVICE, version: "0.0.1", queue: "syncd" });
    const log = createLogger({
      service: SERVICE,
      site: "t",
      instance: "1",
      level: process.env.LOG_LEVEL ?? "silent",
    });
    addEndpoint<ClockObserveRequest, { ts: number; mode: string }>(
      service,
      {
        name: "observe",
        subject: SUBJECT,
        request: "clock/observe.request.json",
        response: "clock/observe.response.json",
        handler: (req) => {
          // a plain Error thrown synchronously by the handler
          if (req.ts === 500) throw new Error("kaboom");
          return (async () => {
            await sleep(5);
            // a registered error thrown after an await: only the adapter can count it
            if (req.ts === 404) throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", "nope");
            return { ts: req.ts, mode: "hlc" };
          })();
        },
      },
      { log },
    );
    await svcNc.flush();
  });

  after(async () => {
    await service?.stop().catch(() => {});
    await svcNc?.close().catch(() => {});
    await nc?.close().catch(() => {});
    server?.kill("SIGTERM");
    if (server && server.exitCode === null) await new Promise((r) => server?.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  });

  it("a request failing its schema gets 400 naming the field", async () => {
    await refused('{"ts":"x"}', 400, /SYNCD_ERR_SCHEMA.*"ts"/);
    await refused('{"ts":1.5}', 400, /SYNCD_ERR_SCHEMA.*"ts"/);
    await refused("{}", 400, /SYNCD_ERR_SCHEMA.*missing field "ts"/);
    await refused('{"ts":1,"extra":true}', 400, /SYNCD_ERR_SCHEMA.*"extra"/);
  });

  it("a payload that is not JSON gets 400", async () => {
    await refused("{nope", 400, /SYNCD_ERR_NOT_JSON/);
    await refused(new Uint8Array([0xff, 0xfe, 0x7b]), 400, /SYNCD_ERR_NOT_JSON/);
  });

  it("a handler throwing SyncdError(SYNCD_ERR_UNKNOWN_BUCKET) gets 404", async () => {
    await refused('{"ts":404}', 404, /SYNCD_ERR_UNKNOWN_BUCKET/);
  });

  it("a handler throwing a plain Error gets 500", async () => {
    await refused('{"ts":500}', 500, /SYNCD_ERR_INTERNAL.*kaboom/);
  });

  it("$SRV.STATS counts every request and error, keeps last_error and an integer processing_time, and passes natscli's check", async () => {
    const { raw, endpoint } = await stats();
    assert.equal(endpoint.num_requests, requests, "num_requests");
    assert.equal(endpoint.num_errors, errors, "num_errors");
    assert.equal(errors, requests, "every request so far was refused");
    assert.match(endpoint.last_error ?? "", /SYNCD_ERR_INTERNAL.*kaboom/, "last_error is the last error");
    assert.ok(Number.isInteger(endpoint.processing_time), `processing_time ${endpoint.processing_time}`);
    assert.ok(
      endpoint.processing_time >= 5_000_000,
      `processing_time ${endpoint.processing_time} ns includes the async work`,
    );
    assert.ok(
      Number.isInteger(endpoint.average_processing_time),
      `average ${endpoint.average_processing_time}`,
    );
    const check = checkMicroSchema("stats", raw.data);
    assert.ok(check.ok, JSON.stringify(check));
  });

  it("the endpoint still answers a good request afterwards", async () => {
    const m = await request('{"ts":7}');
    assert.ok(!m.headers?.get("Nats-Service-Error-Code"), "no error header");
    assert.deepEqual(m.json(), { ts: 7, mode: "hlc" });
    const { endpoint } = await stats();
    assert.equal(endpoint.num_requests, requests);
    assert.equal(endpoint.num_errors, errors);
    assert.match(endpoint.last_error ?? "", /kaboom/, "a success leaves last_error alone");
  });
});
