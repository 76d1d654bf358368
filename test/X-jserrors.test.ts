/**
 * services/lib/jserrors.ts against a real nats-server: each predicate recognises the error the server
 * really sends (by API code), and only that one.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { AckPolicy, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  apiCode,
  ensureConsumer,
  isAlreadyExists,
  isConsumerNotFound,
  isNatsError,
  isNoResponders,
  isNotFound,
  isStreamNotFound,
  isTimeout,
  isTooLarge,
  isTransientNatsError,
  isWrongLastSequence,
  openOrCreateKv,
} from "../services/mod.ts";
import { withMesh } from "./helpers.ts";

const { nc } = withMesh({ sites: ["a"], services: false });

const all = { isAlreadyExists, isNotFound, isTooLarge, isWrongLastSequence } as const;

/** The predicates (of `all`) that recognise `err`. */
function which(err: unknown): string[] {
  return Object.entries(all)
    .filter(([, f]) => f(err))
    .map(([n]) => n);
}

async function thrown(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail("expected the server to refuse");
}

test("jserrors: each JetStream refusal is recognised by its API code, by exactly one predicate", async () => {
  const jsm = await jetstreamManager(nc.a!);
  const js = jetstream(nc.a!);

  const noStream = await thrown(jsm.streams.info("NOPE"));
  assert.deepEqual(which(noStream), ["isNotFound"]);
  assert.ok(isStreamNotFound(noStream) && !isConsumerNotFound(noStream));

  await jsm.streams.add({ name: "T", subjects: ["t.>"], max_msg_size: 64, allow_direct: true });
  const noConsumer = await thrown(jsm.consumers.info("T", "nope"));
  assert.deepEqual(which(noConsumer), ["isNotFound"]);
  assert.ok(isConsumerNotFound(noConsumer) && !isStreamNotFound(noConsumer));

  const exists = await thrown(jsm.streams.add({ name: "T", subjects: ["u.>"] }));
  assert.deepEqual(which(exists), ["isAlreadyExists"]);

  await js.publish("t.a", "1");
  const wrongLast = await thrown(js.publish("t.a", "2", { expect: { lastSubjectSequence: 99 } }));
  assert.deepEqual(which(wrongLast), ["isWrongLastSequence"]);

  const tooLarge = await thrown(js.publish("t.b", new Uint8Array(1000)));
  assert.deepEqual(which(tooLarge), ["isTooLarge"]);

  assert.equal(
    await jsm.direct.getMessage("T", { last_by_subj: "t.none" }),
    null,
    "no message: null, not an error",
  );

  assert.deepEqual(which(new Error("stream not found")), [], "message text alone is never enough");
});

test("X jserrors: openOrCreateKv creates a bucket only when its stream is not found", async () => {
  const counted = (kvm: Kvm) => {
    const made: string[] = [];
    const create = kvm.create.bind(kvm);
    kvm.create = (name, opts) => {
      made.push(name);
      return create(name, opts);
    };
    return made;
  };
  const kvm = new Kvm(nc.a!);
  const made = counted(kvm);
  await (await openOrCreateKv(kvm, "made_here", { history: 3 })).put("k", "v");
  const again = await openOrCreateKv(kvm, "made_here");
  assert.equal((await again.get("k"))?.string(), "v", "the second call opens the bucket the first made");
  assert.equal((await again.status()).history, 3);
  assert.deepEqual(made, ["made_here"]);

  const elsewhere = new Kvm(jetstream(nc.a!, { domain: "nowhere", timeout: 1000 }));
  const tried = counted(elsewhere);
  const err = await thrown(openOrCreateKv(elsewhere, "members"));
  assert.ok(!isStreamNotFound(err), "a JetStream that does not answer is not a missing stream");
  assert.deepEqual(tried, [], "an error other than stream-not-found is thrown, not answered by a create");
});

test("X jserrors: a request that times out or that nobody answers is transient; a refusal is a NATS error, not transient", async () => {
  const sub = nc.a!.subscribe("x.slow", { callback: () => {} });
  await nc.a!.flush();
  const slow = await thrown(nc.a!.request("x.slow", "", { timeout: 200 }));
  sub.unsubscribe();
  const noResponders = await thrown(nc.a!.request("x.nobody", "", { timeout: 2000 }));
  const jsm = await jetstreamManager(nc.a!);
  const viaApi = await thrown(jetstreamManager(nc.a!, { domain: "nowhere", timeout: 300 }));
  const refused = await thrown(jsm.streams.info("NOPE2"));
  for (const [what, err] of Object.entries({ slow, noResponders, viaApi })) {
    assert.ok(isTransientNatsError(err), `${what}: transient`);
    assert.ok(isNatsError(err), `${what}: a NATS error`);
  }
  // which of the two (the CLI's "no responders" / "timeout after" answers rest on it)
  assert.ok(isTimeout(slow) && !isNoResponders(slow), "slow: a timeout");
  assert.ok(isNoResponders(noResponders) && !isTimeout(noResponders), "nobody: no responders");
  assert.ok(!isTimeout(new Error("timeout")), "a message saying timeout is not a timeout");
  assert.ok(!isTransientNatsError(refused) && isNatsError(refused), "a refusal: a NATS error, not transient");
  for (const err of [new Error("timeout"), new TypeError("x"), undefined, "timeout"])
    assert.ok(!isTransientNatsError(err) && !isNatsError(err), `${String(err)}: not a NATS error`);
});

test("X jserrors: a durable made first by another instance is recognised by its API code (ensureConsumer goes on with it); a message saying so is not enough", async () => {
  const jsm = await jetstreamManager(nc.a!);
  const version = nc.a!.info?.version ?? "";
  await jsm.streams.add({ name: "C", subjects: ["c.>"] });
  // a push durable bound to a subscribed deliver subject, asked for again with another one: 2.9
  // answers "consumer name already in use" (10013), 2.10+ "consumer already exists" (10148)
  const sub = nc.a!.subscribe("deliver.1", { callback: () => {} });
  const push = (to: string) =>
    jsm.consumers.add("C", { durable_name: "push", deliver_subject: to, ack_policy: AckPolicy.Explicit });
  await push("deliver.1");
  const taken = await thrown(push("deliver.2"));
  sub.unsubscribe();
  assert.deepEqual(which(taken), ["isAlreadyExists"], `${version}: ${(taken as Error).message}`);

  // another instance makes the durable (with other limits) between ensureConsumer's info and its
  // add: 2.10+ refuses the add (already exists), 2.9 applies it as an update; either way it goes on
  const refused: unknown[] = [];
  const racing = {
    consumers: {
      info: async (s: string, d: string) => {
        try {
          return await jsm.consumers.info(s, d);
        } finally {
          await jsm.consumers.add("C", {
            durable_name: "w",
            ack_policy: AckPolicy.Explicit,
            max_ack_pending: 7,
          });
        }
      },
      add: async (s: string, c: Parameters<JetStreamManager["consumers"]["add"]>[1]) => {
        try {
          return await jsm.consumers.add(s, c);
        } catch (err) {
          refused.push(err);
          throw err;
        }
      },
    },
  } as unknown as JetStreamManager;
  await ensureConsumer(racing, "C", "w", { deliver: "all" });
  assert.equal((await jsm.consumers.info("C", "w")).name, "w");
  const [, minor] = /^v?2\.(\d+)\./.exec(version) ?? [];
  assert.deepEqual(
    refused.map(apiCode),
    Number(minor) >= 10 ? [10148] : [],
    `${version}: the add after the other instance's`,
  );

  // an error that only says so (no API code) is thrown, not taken as "made elsewhere"
  const saysSo = {
    consumers: {
      info: () => jsm.consumers.info("C", "nope"),
      add: async () => {
        throw new Error("consumer already exists");
      },
    },
  } as unknown as JetStreamManager;
  await assert.rejects(ensureConsumer(saysSo, "C", "x", { deliver: "all" }), /consumer already exists/);
});

test("X an existing durable takes the configured ack wait when an instance starts (SYNCD_ACK_WAIT_MS), keeping its position", async () => {
  const jsm = await jetstreamManager(nc.a!);
  const js = jetstream(nc.a!);
  await jsm.streams.add({ name: "AW", subjects: ["aw.>"] });
  await jsm.consumers.add("AW", {
    durable_name: "d",
    ack_policy: AckPolicy.Explicit,
    ack_wait: 30_000 * 1e6,
  });
  await js.publish("aw.1", "x");
  const m = await (await js.consumers.get("AW", "d")).next();
  m?.ack();
  await nc.a!.flush();
  await ensureConsumer(jsm, "AW", "d", { deliver: "all", ackWaitMs: 2000 });
  const ci = await jsm.consumers.info("AW", "d");
  assert.equal(ci.config.ack_wait, 2000 * 1e6);
  assert.equal(ci.delivered.stream_seq, 1, "the durable's position");
  await jsm.streams.delete("AW");
});
