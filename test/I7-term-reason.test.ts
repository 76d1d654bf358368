/**
 * I7 on every server: a bad op is terminated (`+TERM`) and never left pending; where the server
 * takes a reason (nats-server 2.10.4+) the termination advisory carries the error code, on older
 * ones (Debian's 2.9.10) the merger terminates without one.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Durables, OPS_INGRESS, Streams, termTakesReason } from "../services/mod.ts";
import { until, withMesh } from "./helpers.ts";

describe("I7 terminated bad ops", () => {
  const { nc } = withMesh({ sites: ["a"] });

  it("I7 termTakesReason: 2.10.4 and later", () => {
    for (const v of ["2.10.4", "2.10.22", "2.11.0", "2.15.2", "v2.12.0-RC.1", "3.0.0"])
      assert.equal(termTakesReason(v), true, v);
    for (const v of ["2.9.10", "2.10.3", "2.2.0", "", undefined, "garbage"])
      assert.equal(termTakesReason(v), false, String(v));
  });

  it("I7 a bad op is terminated, with its error code as the reason where the server takes one, and nothing stays pending", async () => {
    const advisories: { reason?: string; stream: string; consumer: string }[] = [];
    const sub = nc.a!.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.${Streams.ingress("a")}.>`, {
      callback: (_e, m) => {
        advisories.push(m.json());
      },
    });
    await nc.a!.flush();
    nc.a!.publish(OPS_INGRESS, "not json");
    const adv = await until(() => advisories[0], { message: "a termination advisory" });
    sub.unsubscribe();
    assert.equal(adv.consumer, Durables.merger);
    if (termTakesReason(nc.a!.info?.version)) assert.match(adv.reason ?? "", /^SYNCD_ERR_NOT_JSON: /);
    else assert.ok(!adv.reason, `no reason on ${nc.a!.info?.version}: ${JSON.stringify(adv)}`);
    const jsm = await jetstreamManager(nc.a!);
    await until(
      async () => (await jsm.consumers.info(Streams.ingress("a"), Durables.merger)).num_ack_pending === 0,
      {
        message: "the terminated op is not pending",
      },
    );
  });
});
