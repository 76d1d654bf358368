/**
 * `syncd diff <bucket>`: the keys whose versions differ between the sites, found the way the
 * reconciler finds them (services/reconciler/tree.ts, run.ts) but across every site at once: compare
 * the root digests (`syncd.<site>.reconciler.digest`), descend level by level only into the nodes
 * whose digests are not the same at every site, list the versions under the differing small or leaf
 * nodes (`reconciler.entries`), and keep the keys that are not the same everywhere. The cost follows
 * the difference, not the bucket.
 */
import { pageEntries } from "../lib/entries.ts";
import { compareVersions } from "../lib/lww.ts";
import type {
  ReconcilerDigestResponse,
  ReconcilerEntriesRequest,
  ReconcilerEntriesResponse,
} from "../lib/schemas.gen.ts";
import type { DigestSource, NodeDigest } from "../reconciler/tree.ts";
import { CliError, UsageError, expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { asCliError, cmp, findSites, request } from "./nats.ts";
import { clip, table } from "./table.ts";

/** Prefixes per digest request (the schema allows 256). */
const DIGEST_BATCH = 128;
/** Prefixes per entries request (the schema allows 4096). */
const LIST_BATCH = 1024;
/** Keys per entries-with-values request. */
const FETCH_BATCH = 256;
/** Stop descending where every site holds at most this many keys (the reconciler's default). */
export const SMALL_COUNT = 16;

/** What a descent over several sites found. */
export type DescentMany = {
  /** nodes whose keys must be listed and compared */
  list: string[];
  /** nodes whose digests were not the same at every site (the root included) */
  ranges: number;
};

function sameEverywhere(nodes: (NodeDigest | undefined)[]): boolean {
  const first = nodes[0];
  const count = first?.count ?? 0;
  return nodes.every((n) => (n?.count ?? 0) === count && (count === 0 || n?.hash === first?.hash));
}

/**
 * The multi-site form of the reconciler's `descend`: compare the roots of every source, then descend
 * level by level into the children whose digests are not the same at every source; stop at the
 * leaves (`depth` hex chars) or where every source holds at most `smallCount` keys.
 */
export async function descendMany(
  sources: DigestSource[],
  depth: number,
  smallCount: number = SMALL_COUNT,
): Promise<DescentMany> {
  const out: DescentMany = { list: [], ranges: 0 };
  if (sources.length < 2) return out;
  const roots = await Promise.all(sources.map((s) => s.root()));
  if (sameEverywhere(roots)) return out;
  out.ranges++;
  if (roots.every((r) => r.count <= smallCount)) {
    out.list.push("");
    return out;
  }
  let frontier = [""];
  while (frontier.length > 0) {
    const children = await Promise.all(
      sources.map(async (s) => new Map((await s.children(frontier)).map((n) => [n.prefix, n]))),
    );
    const next: string[] = [];
    for (const p of frontier) {
      for (let h = 0; h < 16; h++) {
        const c = p + h.toString(16);
        const nodes = children.map((m) => m.get(c));
        if (sameEverywhere(nodes)) continue;
        out.ranges++;
        if (c.length >= depth || nodes.every((n) => (n?.count ?? 0) <= smallCount)) out.list.push(c);
        else next.push(c);
      }
    }
    frontier = next;
  }
  return out;
}

/** A key's version (and, when fetched, value) at one site. */
export type SiteVersion = {
  ts: number;
  node_id: string;
  deleted: boolean;
  value?: string;
  encoding?: "utf8" | "base64";
  omitted?: "in_flux" | "too_large";
  /** the hash of a put's value, when the site's reconciler lists it (equal versions, other contents) */
  vh?: string;
  /** `_meta` holds this put but the site's bucket does not hold its value (purged, removed, expired) */
  lost?: boolean;
};

/** One differing key: its version at every site (null: the site does not have it). */
export type KeyDiff = { key: string; newest: string[]; sites: Record<string, SiteVersion | null> };

/** What `diff` prints with --json. */
export type DiffResult = {
  bucket: string;
  sites: string[];
  depth: number;
  ranges_descended: number;
  keys_compared: number;
  bytes: number;
  differences: KeyDiff[];
};

type Entry = ReconcilerEntriesResponse["entries"][number];

/** Compare listings of several sites key by key: the keys not the same at every site. */
export function differingKeys(listings: Map<string, Entry[]>): { compared: number; diffs: KeyDiff[] } {
  const sites = [...listings.keys()];
  const byKey = new Map<string, Record<string, SiteVersion | null>>();
  for (const [site, entries] of listings) {
    for (const e of entries) {
      let row = byKey.get(e.key);
      if (!row) {
        row = Object.fromEntries(sites.map((s) => [s, null]));
        byKey.set(e.key, row);
      }
      if (row[site]) continue;
      const vh = (e as { vh?: unknown }).vh;
      row[site] = {
        ts: e.ts,
        node_id: e.node_id,
        deleted: e.deleted,
        ...(typeof vh === "string" ? { vh } : {}),
        ...(e.lost ? { lost: true } : {}),
      };
    }
  }
  const diffs: KeyDiff[] = [];
  for (const [key, row] of byKey) {
    const vs = sites.map((s) => row[s] ?? null);
    const first = vs[0];
    const same = vs.every(
      (v) =>
        v !== null &&
        first !== null &&
        first !== undefined &&
        v.ts === first.ts &&
        v.node_id === first.node_id &&
        v.deleted === first.deleted &&
        (v.lost ?? false) === (first.lost ?? false) &&
        (v.vh === undefined || first.vh === undefined || v.vh === first.vh),
    );
    if (same) continue;
    diffs.push({ key, newest: newestOf(row), sites: row });
  }
  diffs.sort((a, b) => cmp(a.key, b.key));
  return { compared: byKey.size, diffs };
}

function newestOf(row: Record<string, SiteVersion | null>): string[] {
  const order = (a: SiteVersion | null, b: SiteVersion | null): number => {
    if (!a || !b) return (a ? 1 : 0) - (b ? 1 : 0);
    return compareVersions(a, b) || (a.deleted === b.deleted ? 0 : a.deleted ? 1 : -1);
  };
  const entries = Object.entries(row);
  let best: SiteVersion | null = null;
  for (const [, v] of entries) if (order(v, best) > 0) best = v;
  return entries.filter(([, v]) => order(v, best) === 0).map(([s]) => s);
}

/** Run `diff <bucket>`. */
export async function diffCommand(ctx: Ctx): Promise<Output> {
  const [bucket] = expectArgs(ctx.cli, 1, 1, "diff <bucket>") as [string];
  if (ctx.cli.site !== undefined) throw new UsageError("diff compares every site; --site does not apply");
  const sites = (await findSites(ctx.mesh)).map((s) => s.site);
  if (sites.length < 2)
    throw new CliError(`diff needs two sites or more; found ${sites.length ? sites.join(", ") : "none"}`);
  const timeout = ctx.cli.conn.timeoutMs;
  const meter = { bytes: 0 };
  const call = async <T>(site: string, endpoint: string, body: unknown): Promise<T> => {
    try {
      const r = await request<T>(ctx.mesh, site, "reconciler", endpoint, body, timeout);
      meter.bytes += r.bytes;
      return r.value;
    } catch (err) {
      throw asCliError(`site ${site}: reconciler.${endpoint}`, err);
    }
  };

  // roots first: every site must use the same tree depth
  const roots = new Map<string, ReconcilerDigestResponse>();
  await Promise.all(
    sites.map(async (s) => {
      roots.set(s, await call<ReconcilerDigestResponse>(s, "digest", { bucket, prefixes: [] }));
    }),
  );
  const depths = new Set([...roots.values()].map((r) => r.depth));
  if (depths.size !== 1)
    throw new CliError(
      `the sites use different tree depths (${sites.map((s) => `${s}: ${roots.get(s)?.depth}`).join(", ")})`,
    );
  const depth = [...depths][0]!;
  const sources: DigestSource[] = sites.map((s) => ({
    root: async () => roots.get(s)!.root,
    children: async (prefixes) => {
      const out: NodeDigest[] = [];
      for (let i = 0; i < prefixes.length; i += DIGEST_BATCH)
        out.push(
          ...(
            await call<ReconcilerDigestResponse>(s, "digest", {
              bucket,
              prefixes: prefixes.slice(i, i + DIGEST_BATCH),
            })
          ).nodes,
        );
      return out;
    },
  }));
  const d = await descendMany(sources, depth);

  const listings = new Map<string, Entry[]>();
  for (const s of sites) listings.set(s, []);
  if (d.list.length > 0) {
    await Promise.all(
      sites.map(async (s) => {
        for (let i = 0; i < d.list.length; i += LIST_BATCH) {
          const req = { bucket, prefixes: d.list.slice(i, i + LIST_BATCH) };
          for await (const page of pages(call, s, req)) listings.get(s)!.push(...page);
        }
      }),
    );
  }
  const { compared, diffs } = differingKeys(listings);

  // the values of the differing keys, where a site has them
  const byKey = new Map(diffs.map((k) => [k.key, k]));
  await Promise.all(
    sites.map(async (s) => {
      const keys = diffs.filter((k) => k.sites[s] && !k.sites[s]!.deleted).map((k) => k.key);
      for (let i = 0; i < keys.length; i += FETCH_BATCH) {
        const req = { bucket, keys: keys.slice(i, i + FETCH_BATCH), values: true };
        for await (const page of pages(call, s, req)) {
          for (const e of page) {
            const v = byKey.get(e.key)?.sites[s];
            // the version may have moved on since the listing: keep the value only with its version
            if (!v || v.ts !== e.ts || v.node_id !== e.node_id || v.deleted !== e.deleted) continue;
            if (e.value !== undefined) v.value = e.value;
            if (e.encoding !== undefined) v.encoding = e.encoding;
            if (e.omitted !== undefined) v.omitted = e.omitted;
          }
        }
      }
    }),
  );

  const result: DiffResult = {
    bucket,
    sites,
    depth,
    ranges_descended: d.ranges,
    keys_compared: compared,
    bytes: meter.bytes,
    differences: diffs,
  };
  return { data: result, text: render(result) };
}

/** Page through `entries` at one site until every key and prefix is answered. */
async function* pages(
  call: <T>(site: string, endpoint: string, body: unknown) => Promise<T>,
  site: string,
  req: ReconcilerEntriesRequest,
): AsyncGenerator<Entry[]> {
  yield* pageEntries(
    (ask) => call<ReconcilerEntriesResponse>(site, "entries", ask),
    req,
    () => new CliError(`site ${site} made no progress listing entries`),
  );
}

function cell(v: SiteVersion | null): string {
  if (!v) return "absent";
  const what = v.deleted
    ? "deleted"
    : v.lost
      ? "(lost: not in the bucket)"
      : v.value !== undefined
        ? JSON.stringify(clip(v.value, 24)) + (v.encoding === "base64" ? "(b64)" : "")
        : v.omitted
          ? `(${v.omitted})`
          : "(value?)";
  return `${what} @${v.ts} ${v.node_id}`;
}

function render(r: DiffResult): string {
  if (r.differences.length === 0) {
    return r.ranges_descended === 0
      ? `no differences in ${r.bucket} between ${r.sites.join(", ")} (root digests equal)`
      : `no differences in ${r.bucket} between ${r.sites.join(", ")} (${counted(r)}; the digests of ${plural(r.ranges_descended, "range")} differ, yet every listed version is the same: a change in flux, or equal versions with other contents)`;
  }
  const t = table(
    ["KEY", ...r.sites.map((s) => `AT ${s}`), "NEWEST"],
    r.differences.map((k) => [k.key, ...r.sites.map((s) => cell(k.sites[s] ?? null)), k.newest.join(",")]),
  );
  const n = r.differences.length;
  return `${t}\n\n${plural(n, "key")} differ${n === 1 ? "s" : ""} in ${r.bucket} (${counted(r)}, ${r.bytes} bytes)`;
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? "" : "s"}`;
}

function counted(r: DiffResult): string {
  return `${plural(r.keys_compared, "key")} compared in ${plural(r.ranges_descended, "range")}`;
}
