/**
 * The seeded interleaving of a simulation. Every store call, clock request and network delivery is
 * one `step`: a promise that fast-check's scheduler resolves in an order it draws (and shrinks), so
 * that the tasks of one replica (watchers, mergers, users) and of the network genuinely race. The
 * effect of a call happens atomically right after its step, as a server applies a request; with
 * faults on, a call may fail before its effect (request lost) or after it (reply lost).
 *
 * There are no timers in a simulation: once the microtask queue is empty, every task waits on a
 * step. `drain` releases steps one at a time until none is left (quiescence).
 */
import type { Scheduler } from "fast-check";

/** Wait for the scheduler's go; `label` shows in fast-check's report of a failing interleaving. */
export type Step = (label: string) => Promise<void>;

/** One request to a server: wait for the go, then apply `effect` atomically (or fail). */
export type Call = <T>(label: string, effect: () => T) => Promise<T>;

/** An injected failure of a request: its effect happened ("after") or not ("before"). */
export class FaultError extends Error {
  constructor(
    readonly label: string,
    readonly when: "before" | "after",
  ) {
    super(`injected fault ${when} effect: ${label}`);
    this.name = "FaultError";
  }
}

/** A small seeded PRNG (mulberry32): fault decisions that replay with the scenario. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Which calls fail: a rate and a seed (rate 0: none). Users' own writes never fail here. */
export type Faults = { rate: number; seed: number };

/** A scheduler with a step counter (the simulated passage of time) and optional faults. */
export class Sim {
  /** steps released so far: the fake physical clock advances with it */
  steps = 0;
  /** faults injected so far */
  faults = 0;
  readonly step: Step;
  readonly call: Call;

  constructor(
    private readonly s: Scheduler,
    faults: Faults = { rate: 0, seed: 0 },
    /** guard against livelock: a run never needs this many steps */
    private readonly maxSteps = 200_000,
  ) {
    this.step = (label) => this.s.schedule(Promise.resolve(), label);
    const rnd = prng(faults.seed);
    this.call = async <T>(label: string, effect: () => T): Promise<T> => {
      await this.step(label);
      const r = faults.rate > 0 && !label.includes(" user ") ? rnd() : 1;
      if (r < faults.rate / 2) {
        this.faults++;
        throw new FaultError(label, "before");
      }
      const out = effect();
      if (r < faults.rate) {
        this.faults++;
        throw new FaultError(label, "after");
      }
      return out;
    };
  }

  /** Release steps until every task is blocked on nothing: quiescence. */
  async drain(): Promise<void> {
    for (;;) {
      await settle();
      if (this.s.count() === 0) return;
      if (++this.steps > this.maxSteps) throw new Error(`no quiescence after ${this.maxSteps} steps`);
      await this.s.waitOne();
    }
  }
}

/**
 * Choices drawn by fast-check ahead of time (which instance gets a message, what the network does
 * with a copy), consumed in order; past the end, the first option. Shrinking shortens the array,
 * so a minimal counterexample uses the defaults wherever it can.
 */
export class Choices {
  private i = 0;
  constructor(private readonly drawn: readonly number[]) {}

  /** An integer in [0, n). */
  next(n: number): number {
    if (n <= 1 || this.i >= this.drawn.length) return 0;
    return this.drawn[this.i++]! % n;
  }
}

/** Let every microtask run (a simulation has no timers: what is left waits on a step). */
export function settle(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/**
 * Steps released by hand, for a fixed interleaving (a regression test of a counterexample):
 * `release(part)` lets the first (or last) pending step whose label contains `part` go. A step that
 * is not pending fails the replay (it throws, naming the pending steps): once the code under test
 * makes its calls in another order the script no longer replays the counterexample, and must be
 * rewritten rather than pass on a harmless order. `released` lists what went, for the failure text.
 */
export class ManualSteps {
  private readonly pending: { label: string; go: () => void }[] = [];
  readonly released: string[] = [];
  readonly step: Step = (label) => new Promise<void>((go) => this.pending.push({ label, go }));
  readonly call: Call = async (label, effect) => {
    await this.step(label);
    return effect();
  };

  async release(part: string, which: "first" | "last" = "first"): Promise<void> {
    await settle();
    const hits = this.pending.flatMap((p, i) => (p.label.includes(part) ? [i] : []));
    const i = which === "first" ? hits[0] : hits[hits.length - 1];
    if (i === undefined)
      throw new Error(
        `replay: no pending step matches "${part}" (pending: ${JSON.stringify(this.pending.map((p) => p.label))}; released so far: ${JSON.stringify(this.released)})`,
      );
    const [p] = this.pending.splice(i, 1);
    this.released.push(p!.label);
    p!.go();
    await settle();
  }

  /** Release everything, oldest first, until nothing is pending. */
  async drain(): Promise<void> {
    for (;;) {
      await settle();
      const p = this.pending.shift();
      if (!p) return;
      p.go();
    }
  }
}
