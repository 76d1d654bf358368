/**
 * I7 hostile input: random bytes and random JSON sent to every endpoint found through $SRV.INFO
 * always get a reply (a value or a coded error), and no service dies.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/nats-core";
import fc from "fast-check";
import { fcParams } from "./fc.ts";
import { withMesh } from "./helpers.ts";

type Info = { name: string; id: string; endpoints: { name: string; subject: string }[] };

async function discover(nc: NatsConnection): Promise<Info[]> {
  const out = new Map<string, Info>();
  const replies = await nc.requestMany("$SRV.INFO", "", { maxWait: 1000 });
  for await (const m of replies) {
    const i = m.json<Info>();
    out.set(i.id, i);
  }
  return [...out.values()];
}

describe("I7 fuzz every endpoint", () => {
  const { mesh, nc } = withMesh({ sites: ["a"], serviceArgs: ["--reconcile-interval", "0"] });

  it("I7 random bytes and random JSON always get a reply; every service survives", async () => {
    const infos = await discover(nc.a!);
    const subjects = [...new Set(infos.flatMap((i) => i.endpoints.map((e) => e.subject)))];
    assert.ok(subjects.length >= 10, `found only ${subjects.length} endpoints`);
    const payload = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.json({ maxDepth: 3 }).map((s) => new TextEncoder().encode(s)),
      fc
        .record(
          {
            op: fc.constantFrom("put", "delete", "x", 1),
            bucket: fc.constantFrom("config", "nope", "", 3),
            key: fc.oneof(fc.string(), fc.constantFrom("k", "a..b", ".x")),
            value: fc.oneof(fc.string(), fc.integer()),
            ts: fc.oneof(fc.integer(), fc.double(), fc.constant(2 ** 60)),
            node_id: fc.string(),
            count: fc.oneof(fc.integer(), fc.string()),
            prefixes: fc.array(fc.string(), { maxLength: 5 }),
            keys: fc.array(fc.string(), { maxLength: 5 }),
            peers: fc.array(fc.string(), { maxLength: 3 }),
          },
          { requiredKeys: [] },
        )
        .map((o) => new TextEncoder().encode(JSON.stringify(o))),
    );
    let requests = 0;
    let errors = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...subjects), payload, async (subject, data) => {
        // run: only against a peer that does not exist, so a fuzz run stays cheap
        const body = subject.endsWith(".reconciler.run")
          ? new TextEncoder().encode('{"peers":["nobody"]}')
          : data;
        const r = await nc.a!.request(subject, body, { timeout: 10_000 });
        requests++;
        const code = r.headers?.get("Nats-Service-Error-Code");
        if (code) {
          errors++;
          assert.match(code, /^[1-5]\d\d$/);
          assert.ok((r.headers?.get("Nats-Service-Error") ?? "").length > 0, "error without a message");
          assert.notEqual(
            code,
            "500",
            `${subject}: internal error for ${new TextDecoder().decode(body)}: ${r.headers?.get("Nats-Service-Error")}`,
          );
        } else {
          JSON.parse(new TextDecoder().decode(r.data));
        }
      }),
      fcParams({ numRuns: 300 }),
    );
    assert.ok(errors > 0 && requests > errors);
    const after = await discover(nc.a!);
    assert.deepEqual(
      after.map((i) => i.id).sort(),
      infos.map((i) => i.id).sort(),
      "a service died or restarted",
    );
    for (const s of mesh.services("a")) assert.ok(s.alive(), `${s.kind} died`);
  });
});
