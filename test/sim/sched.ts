/**
 * The seeded interleaving of a simulation. Every store call, clock request and network delivery is
 * one `step`: a promise that fast-check's scheduler resolves in an order it draws (and shrinks), so
 * that the tasks of one replica (watchers, mergers, users) and of the network genuinely race. The
 * effect of a call happens atomically right after its step, as a server applies a request.
 *
 * There are no timers in a simulation: once the microtask queue is empty, every task waits on a
 * step. `drain` releases steps one at a time until none is left (quiescence).
 */
import type { Scheduler } from "fast-check";

/** Wait for the scheduler's go; `label` shows in fast-check's report of a failing interleaving. */
export type Step = (label: string) => Promise<void>;

/** A scheduler with a step counter (the simulated passage of time). */
export class Sim {
  /** steps released so far: the fake physical clock advances with it */
  steps = 0;
  readonly step: Step;

  constructor(
    private readonly s: Scheduler,
    /** guard against livelock: a run never needs this many steps */
    private readonly maxSteps = 200_000,
  ) {
    this.step = (label) => this.s.schedule(Promise.resolve(), label);
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
 * `release(part)` lets the first (or last) pending step whose label contains `part` go.
 */
export class ManualSteps {
  private readonly pending: { label: string; go: () => void }[] = [];
  readonly step: Step = (label) => new Promise<void>((go) => this.pending.push({ label, go }));

  async release(part: string, which: "first" | "last" = "first"): Promise<void> {
    await settle();
    const hits = this.pending.flatMap((p, i) => (p.label.includes(part) ? [i] : []));
    const i = which === "first" ? hits[0] : hits[hits.length - 1];
    if (i === undefined)
      throw new Error(`no pending step "${part}"; pending: ${this.pending.map((p) => p.label).join(" | ")}`);
    this.pending.splice(i, 1)[0]!.go();
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
