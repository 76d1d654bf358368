/**
 * One watch of a `<bucket>_meta` per process, shared by everything in the process that follows it
 * (the watcher's and the merger's `_meta` cache; the reconciler reads `_meta` on demand instead): the entries are
 * decoded by the server once and delivered to every listener, so a site's agent streams `_meta`
 * once, not once per consumer of it.
 *
 * The registry is keyed by the `_meta` KV handle, which names one connection and one bucket; it is
 * reference counted (`acquire` / `release`, or `follow` and its `leave` for one listener) and the
 * watch stops with its last user. A listener that
 * joins a running watch needs the initial values too: the watch starts a new pass (every listener
 * gets `reset`, the initial values, then `caughtUp`). A watch that ends unexpectedly tells every
 * listener (`ended`) and starts a new pass a second later.
 */
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { QueuedIterator } from "@nats-io/nats-core";
import type { Logger } from "./logger.ts";

const RESTART_MS = 1000;

/** What a follower of `_meta` is told. */
export type MetaListener = {
  /** a new pass starts: its initial values follow, then `caughtUp` */
  reset(): void;
  /** one entry, initial or live */
  entry(e: KvWatchEntry): void;
  /** the initial values of the pass are all delivered */
  caughtUp(): void;
  /** the watch ended (error or not); a new pass follows a second later while anyone listens */
  ended(err?: unknown): void;
};

const registry = new WeakMap<KV, MetaWatch>();

/** One listener's use of the shared watch of a `_meta` ({@link MetaWatch.follow}). */
export type Following = {
  /** resolves once the listener has seen the initial values; rejects (the use already left) when the watch cannot start */
  caughtUp: Promise<void>;
  /** stop following: the listener gets nothing more and its use of the watch is dropped (once, however often called) */
  leave(): void;
};

/** The shared watch of one `_meta` bucket. */
export class MetaWatch {
  private readonly listeners = new Set<MetaListener>();
  private refs = 0;
  private it: QueuedIterator<KvWatchEntry> | undefined;
  /** the pass in progress (incremented by every start) */
  private pass = 0;
  private isCaughtUp = false;
  private waiters = new Map<MetaListener, { resolve: () => void; reject: (e: unknown) => void }>();
  /** the listeners told `reset` by the pass in progress: only they get its entries */
  private readonly inPass = new Set<MetaListener>();
  private starting: Promise<void> | undefined;
  /** the pass being started has told its listeners `reset` */
  private resetSent = false;
  private startAgain = false;
  private restartTimer: NodeJS.Timeout | undefined;
  /** passes started (the first included) */
  passes = 0;

  private constructor(
    private readonly kv: KV,
    private readonly log: Logger,
  ) {}

  /** The process's watch of this `_meta` KV (created on first use); pair with `release`. */
  static acquire(kv: KV, log: Logger): MetaWatch {
    let w = registry.get(kv);
    if (!w) {
      w = new MetaWatch(kv, log);
      registry.set(kv, w);
    }
    w.refs++;
    return w;
  }

  /**
   * Follow `kv` with `l` through the process's watch of it: acquire it and listen. Leaving twice,
   * or after the watch failed to start, drops the use once.
   */
  static follow(kv: KV, l: MetaListener, log: Logger): Following {
    const w = MetaWatch.acquire(kv, log);
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      w.unlisten(l);
      w.release();
    };
    const caughtUp = w.listen(l).catch((err: unknown) => {
      leave();
      throw err;
    });
    return { caughtUp, leave };
  }

  /** Users holding this watch. */
  get users(): number {
    return this.refs;
  }

  /** Drop one use; the last one stops the watch and leaves the registry. */
  release(): void {
    if (this.refs === 0) return;
    this.refs--;
    if (this.refs > 0) return;
    registry.delete(this.kv);
    this.listeners.clear();
    this.inPass.clear();
    clearTimeout(this.restartTimer);
    this.pass++;
    this.it?.stop();
    this.it = undefined;
    this.settle();
  }

  /**
   * Start delivering to `l`; resolves once `l` has seen the initial values (a new pass when the
   * watch already ran). Rejects when the watch cannot start.
   */
  async listen(l: MetaListener): Promise<void> {
    this.listeners.add(l);
    const caught = new Promise<void>((resolve, reject) => this.waiters.set(l, { resolve, reject }));
    this.scheduleStart();
    try {
      await caught;
    } catch (err) {
      this.unlisten(l);
      throw err;
    }
  }

  /** Stop delivering to `l`. */
  unlisten(l: MetaListener): void {
    this.listeners.delete(l);
    this.inPass.delete(l);
  }

  /**
   * Listeners joining before a pass's `reset` share that pass; one joining after it gets the next.
   */
  private scheduleStart(): void {
    if (this.starting) {
      if (this.resetSent) this.startAgain = true;
      return;
    }
    this.starting = Promise.resolve().then(async () => {
      try {
        do {
          this.startAgain = false;
          await this.start();
        } while (this.startAgain && this.refs > 0);
      } finally {
        this.starting = undefined;
      }
    });
  }

  private async start(): Promise<void> {
    clearTimeout(this.restartTimer);
    if (this.refs === 0) return;
    const pass = ++this.pass;
    this.passes++;
    this.it?.stop();
    this.it = undefined;
    this.isCaughtUp = false;
    this.resetSent = false;
    let it: QueuedIterator<KvWatchEntry>;
    try {
      const initial = (await this.kv.status()).values;
      if (pass !== this.pass) return;
      it = await this.kv.watch({ key: ">" });
      if (pass !== this.pass) {
        it.stop();
        return;
      }
      this.it = it;
      this.inPass.clear();
      for (const l of this.listeners) {
        this.inPass.add(l);
        l.reset();
      }
      this.resetSent = true;
      if (initial === 0) this.markCaughtUp();
    } catch (err) {
      if (pass !== this.pass) return;
      const waiting = this.waiters;
      this.waiters = new Map();
      for (const w of waiting.values()) w.reject(err);
      this.endPass(err);
      return;
    }
    void this.follow(it, pass);
  }

  private async follow(it: QueuedIterator<KvWatchEntry>, pass: number): Promise<void> {
    let failure: unknown;
    try {
      for await (const e of it) {
        if (pass !== this.pass) break;
        for (const l of this.inPass) l.entry(e);
        if (!this.isCaughtUp && (e.isUpdate || e.delta === 0)) this.markCaughtUp();
      }
    } catch (err) {
      failure = err;
    }
    if (pass !== this.pass) return;
    this.it = undefined;
    this.endPass(failure);
  }

  private markCaughtUp(): void {
    this.isCaughtUp = true;
    for (const l of this.inPass) {
      l.caughtUp();
      this.waiters.get(l)?.resolve();
      this.waiters.delete(l);
    }
  }

  /** Resolve whoever waits for a catch-up (the watch ended or stopped: they read directly then). */
  private settle(): void {
    const waiting = this.waiters;
    this.waiters = new Map();
    for (const w of waiting.values()) w.resolve();
  }

  private endPass(err: unknown): void {
    if (err) this.log.warn({ err }, "meta watch failed");
    for (const l of this.listeners) l.ended(err);
    this.settle();
    if (this.refs === 0 || this.listeners.size === 0) return;
    this.log.warn("meta watch ended; starting it again in a second");
    this.restartTimer = setTimeout(() => {
      if (this.refs > 0 && this.listeners.size > 0) this.scheduleStart();
    }, RESTART_MS);
    this.restartTimer.unref();
  }
}
