/**
 * Reading V8 `.cpuprofile` files (node --cpu-prof): self time per function and per package, cut to
 * a window of CLOCK_MONOTONIC µs (the profile's clock, the same as process.hrtime in any process).
 */
import { readFileSync } from "node:fs";

type CallFrame = { functionName: string; url: string; lineNumber: number; columnNumber: number };
type ProfileNode = { id: number; callFrame: CallFrame; children?: number[] };
type CpuProfile = {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
};

/** `ms`: self time (top) or inclusive time (repo_inclusive) inside the window; `pct` of the busy time */
export type FnTime = { fn: string; where: string; group: string; ms: number; pct: number };
export type GroupTime = { group: string; self_ms: number; pct: number };

export type ProfileSummary = {
  file: string;
  /** ms inside the window: busy (not idle) and idle */
  busy_ms: number;
  idle_ms: number;
  samples: number;
  top: FnTime[];
  groups: GroupTime[];
  /** functions of the repo (services/, scripts/) by inclusive time: what each step costs with its callees */
  repo_inclusive: FnTime[];
};

/** `file:///…/node_modules/@nats-io/nats-core/lib/x.js` → `@nats-io/nats-core/lib/x.js`; repo files relative. */
export function shortUrl(url: string, root: string): string {
  let u = url.replace(/^file:\/\//, "");
  const nm = u.lastIndexOf("/node_modules/");
  if (nm >= 0) return u.slice(nm + "/node_modules/".length);
  if (u.startsWith(`${root}/`)) u = u.slice(root.length + 1);
  // the compiled build (dist/services/...) stands for the sources
  if (u.startsWith("dist/")) u = u.slice("dist/".length);
  return u;
}

/**
 * Where a frame is: file and line. The repo's .ts files run transpiled by tsx, whose line numbers do
 * not match the source: those get the file only.
 */
function whereOf(cf: CallFrame, root: string): string {
  if (!cf.url) return "";
  const s = shortUrl(cf.url, root);
  return cf.url.endsWith(".ts") ? s : `${s}:${cf.lineNumber + 1}`;
}

/** Which package or area a frame belongs to. */
export function groupOf(fn: string, url: string, root: string): string {
  if (!url) {
    if (fn === "(garbage collector)") return "(garbage collector)";
    if (fn === "(program)") return "(program: native, not JS)";
    if (fn === "(idle)") return "(idle)";
    return "(native/builtin)";
  }
  if (url.startsWith("node:")) {
    const m = /^node:(?:internal\/)?([a-z_]+)/.exec(url);
    return `node:${m?.[1] ?? "?"}`;
  }
  const s = shortUrl(url, root);
  const pkg = /^(@[^/]+\/[^/]+|[^/]+)\//.exec(s);
  if (url.includes("/node_modules/") && pkg) return pkg[1] as string;
  const dir = /^(services\/[^/]+)\//.exec(s);
  return dir ? (dir[1] as string) : s;
}

/** Self time per function and per group of one profile, inside [fromUs, toUs] (CLOCK_MONOTONIC µs). */
export function summarizeProfile(
  file: string,
  fromUs: number,
  toUs: number,
  root: string,
  topN = 15,
): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (cf: CallFrame): string => `${cf.functionName || "(anonymous)"}@${whereOf(cf, root)}`;
  const isRepo = (cf: CallFrame): boolean =>
    cf.url.startsWith(`file://${root}/`) && !cf.url.includes("/node_modules/");
  /** the distinct repo functions on the stack of a node (memoized) */
  const stackCache = new Map<number, string[]>();
  const repoStack = (id: number): string[] => {
    const hit = stackCache.get(id);
    if (hit) return hit;
    const n = byId.get(id);
    const up = parent.has(id) ? repoStack(parent.get(id) as number) : [];
    let out = up;
    if (n && isRepo(n.callFrame)) {
      const k = keyOf(n.callFrame);
      if (!up.includes(k)) out = [...up, k];
    }
    stackCache.set(id, out);
    return out;
  };
  const inclusive = new Map<string, number>();
  const selfUs = new Map<number, number>();
  let t = p.startTime;
  let inWindow = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    if (t < fromUs || t > toUs) continue;
    // a sample stands for the interval until the next one
    const w = p.timeDeltas[i + 1] ?? dt;
    const id = p.samples[i] as number;
    selfUs.set(id, (selfUs.get(id) ?? 0) + w);
    for (const k of repoStack(id)) inclusive.set(k, (inclusive.get(k) ?? 0) + w);
    inWindow++;
  }
  const fnTimes = new Map<string, { fn: string; where: string; group: string; us: number }>();
  const groups = new Map<string, number>();
  let idle = 0;
  let busy = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (!n) continue;
    const cf = n.callFrame;
    const fn = cf.functionName || "(anonymous)";
    const group = groupOf(fn, cf.url, root);
    if (group === "(idle)") {
      idle += us;
      continue;
    }
    busy += us;
    const where = whereOf(cf, root);
    const k = `${fn}@${where}`;
    const cur = fnTimes.get(k) ?? { fn, where, group, us: 0 };
    cur.us += us;
    fnTimes.set(k, cur);
    groups.set(group, (groups.get(group) ?? 0) + us);
  }
  const pct = (us: number) => Math.round((us / Math.max(1, busy)) * 1000) / 10;
  return {
    file,
    busy_ms: Math.round(busy / 1000),
    idle_ms: Math.round(idle / 1000),
    samples: inWindow,
    top: [...fnTimes.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, topN)
      .map((f) => ({
        fn: f.fn,
        where: f.where,
        group: f.group,
        ms: Math.round(f.us / 100) / 10,
        pct: pct(f.us),
      })),
    groups: [...groups.entries()]
      .sort((a, b) => b[1] - a[1])
      .map(([group, us]) => ({ group, self_ms: Math.round(us / 100) / 10, pct: pct(us) })),
    repo_inclusive: [...inclusive.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, topN)
      .map(([k, us]) => {
        const at = k.indexOf("@");
        const where = k.slice(at + 1);
        return {
          fn: k.slice(0, at),
          where,
          group: groupOf(k.slice(0, at), `file://${root}/${where}`, root),
          ms: Math.round(us / 100) / 10,
          pct: pct(us),
        };
      }),
  };
}
