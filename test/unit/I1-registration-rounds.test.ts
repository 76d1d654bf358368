/**
 * I1 at many sites (#11.1): when a watcher's hub registration round reads the aggregate's whole info
 * (full: its size grows with the number of sites) and when one message of it is enough (cheap), and
 * when the next round is due (services/watcher/outlog.ts RegistrationRounds; keepRegistered does the
 * reads). Integration: test/I1-hub-check.test.ts.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type LastOpAtHub, RegistrationRounds } from "../../services/mod.ts";

const P = 15_000;
const held: LastOpAtHub = { held: true, upTo: 10, restarted: false, readAt: 0 };
const behindAt = (upTo: number): LastOpAtHub => ({ held: false, upTo, restarted: false, readAt: 0 });
/** Rounds after a first full round that found everything settled, at time 0. */
const settled = (sources = 2) => {
  const r = new RegistrationRounds(P);
  r.afterFull({ sources, settled: true, now: 0 });
  return r;
};

describe("I1 registration rounds", () => {
  it("the first round is full; after a settled one, cheap rounds every period until the full period is over", () => {
    const r = new RegistrationRounds(P);
    const t0 = 1_000_000;
    assert.equal(r.fullDue(t0), true);
    r.afterFull({ sources: 2, settled: true, now: t0 });
    assert.equal(r.fullDue(t0 + P), false);
    assert.equal(r.afterCheap(held), P);
    assert.equal(r.fullDue(t0 + 4 * P - 1), false);
    assert.equal(r.fullDue(t0 + 4 * P), true);
  });

  it("the full period grows with the sites beyond 16: N/4 periods", () => {
    const r = settled(1000);
    assert.equal(r.fullDue(249 * P), false);
    assert.equal(r.fullDue(250 * P), true);
  });

  it("a full round that did not settle (entry added, source silent or missing) makes the next one full too", () => {
    const r = new RegistrationRounds(P);
    r.afterFull({ sources: 2, settled: false, now: 0 });
    assert.equal(r.fullDue(1), true);
  });

  it("a check that cannot tell, or an aggregate made again, asks for a full round", () => {
    assert.equal(settled().afterCheap(undefined), undefined);
    assert.equal(settled().afterCheap({ ...held, restarted: true }), undefined);
  });

  it("the hub behind: looked at again soon; moving on: the normal period; not moving: a full round", () => {
    const r = settled();
    assert.equal(r.afterCheap(behindAt(5)), 3_000);
    assert.equal(r.afterCheap(behindAt(7)), P);
    assert.equal(r.afterCheap(behindAt(7)), undefined);
  });

  it("held in between forgets where the hub stood", () => {
    const r = settled();
    assert.equal(r.afterCheap(behindAt(5)), 3_000);
    assert.equal(r.afterCheap(held), P);
    assert.equal(r.afterCheap(behindAt(5)), 3_000);
  });

  it("after a failure (hub unreachable): held → cheap checks every 5 s; behind → a full round at once; until a full round settles", () => {
    const r = settled();
    r.failed();
    assert.equal(r.fullDue(1), false, "a hub back from an outage is not read whole by every site");
    assert.equal(r.afterCheap(held), 5_000);
    assert.equal(r.afterCheap(behindAt(5)), undefined);
    // a full round that did not settle leaves it so
    r.afterFull({ sources: 2, settled: false, now: 0 });
    assert.equal(r.afterCheap(held), 5_000);
    r.afterFull({ sources: 2, settled: true, now: 0 });
    assert.equal(r.afterCheap(held), P);
    assert.equal(r.afterCheap(behindAt(5)), 3_000);
  });

  it("a reconnect to the site's server makes the next round full", () => {
    const r = settled();
    r.reconnected();
    assert.equal(r.fullDue(1), true);
  });
});
