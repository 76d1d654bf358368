import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
/**
 * `syncd conflicts <bucket> [key] [--site s] [--limit n]`: the conflict records (schemas/
 * conflict.json) the mergers keep on each site's stream `SYNCD_CONFLICTS_<site>` (subject
 * `syncd.<site>.conflicts`), read with an ordered consumer through the site's JetStream domain and
 * filtered by bucket and key. A site whose stream does not exist yet simply has none.
 */
import { isStreamNotFound } from "../lib/jserrors.ts";
import type { Conflict } from "../lib/schemas.gen.ts";
import { Streams } from "../lib/subjects.ts";
import { CliError, expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { type MeshClient, type SiteRef, cmp, findSites, messageOf, pickSites } from "./nats.ts";
import { clip, table } from "./table.ts";

/** What was read at one site. */
export type SiteConflicts = {
  site: string;
  domain: string;
  /** false: the site has no conflict stream (yet) */
  exists: boolean;
  /** records read from the stream */
  scanned: number;
  /** records of the bucket (and key) */
  matched: number;
};

/** What `conflicts` prints with --json. */
export type ConflictsResult = {
  bucket: string;
  key: string | null;
  /** the newest `limit` matching records of every site, oldest first */
  records: Conflict[];
  sites: SiteConflicts[];
};

const dec = new TextDecoder();

/** Read every record of a site's conflict stream that matches. */
async function readSite(
  mesh: MeshClient,
  ref: SiteRef,
  match: (c: Conflict) => boolean,
  timeoutMs: number,
): Promise<{ info: SiteConflicts; records: Conflict[] }> {
  const stream = Streams.conflicts(ref.site);
  const info: SiteConflicts = { site: ref.site, domain: ref.domain, exists: true, scanned: 0, matched: 0 };
  const records: Conflict[] = [];
  let messages: number;
  let js: JetStreamClient;
  try {
    const to = await mesh.jetStream(ref.domain, timeoutMs);
    js = jetstream(to.nc, to.opts);
    const jsm = await js.jetstreamManager(false);
    messages = (await jsm.streams.info(stream)).state.messages;
  } catch (err) {
    if (isStreamNotFound(err)) return { info: { ...info, exists: false }, records };
    throw new CliError(`site ${ref.site}: stream ${stream} (domain ${ref.domain}): ${messageOf(err)}`);
  }
  if (messages === 0) return { info, records };
  // the stream holds only the site's conflict subject: no filter (filter_subjects needs nats-server 2.10)
  const consumer = await js.consumers.get(stream);
  const iter = await consumer.consume({ max_messages: 512 });
  // nothing more may come (records aged out since the stream info): stop when the stream is quiet
  let idle: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => void iter.stop(), timeoutMs);
  };
  arm();
  try {
    for await (const m of iter) {
      arm();
      info.scanned++;
      let c: unknown;
      try {
        c = JSON.parse(dec.decode(m.data));
      } catch {
        c = undefined;
      }
      if (c && typeof c === "object" && match(c as Conflict)) {
        info.matched++;
        records.push(c as Conflict);
      }
      if (m.info.pending === 0) break;
    }
  } finally {
    clearTimeout(idle);
    await iter.close().catch(() => {});
  }
  return { info, records };
}

function side(s: Conflict["loser"]): string {
  const what = s.deleted
    ? "deleted"
    : s.value !== undefined
      ? JSON.stringify(clip(s.value, 24)) + (s.encoding === "base64" ? "(b64)" : "")
      : "(value)";
  return `${what} @${s.ts} ${s.node_id}`;
}

/** Run `conflicts <bucket> [key]`. */
export async function conflictsCommand(ctx: Ctx): Promise<Output> {
  const [bucket, key] = expectArgs(ctx.cli, 1, 2, "conflicts <bucket> [key] [--site s] [--limit n]") as [
    string,
    string | undefined,
  ];
  const sites = pickSites(await findSites(ctx.mesh), ctx.cli.site, true);
  const match = (c: Conflict) => c.bucket === bucket && (key === undefined || c.key === key);
  const timeout = ctx.cli.conn.timeoutMs;
  const read = await Promise.all(
    sites.map((s) =>
      readSite(ctx.mesh, s, match, timeout).catch((err) => {
        throw err instanceof CliError ? err : new CliError(`site ${s.site}: ${messageOf(err)}`);
      }),
    ),
  );
  const all = read
    .flatMap((r) => r.records)
    .sort((a, b) => cmp(a.at, b.at) || cmp(a.site, b.site) || cmp(a.key, b.key));
  const records = ctx.cli.limit > 0 ? all.slice(-ctx.cli.limit) : all;
  const result: ConflictsResult = { bucket, key: key ?? null, records, sites: read.map((r) => r.info) };
  const where = `${bucket}${key ? ` ${key}` : ""}`;
  const text =
    records.length === 0
      ? `no conflicts recorded for ${where} at ${sites.map((s) => s.site).join(", ")}`
      : `${table(
          ["AT", "SITE", "KEY", "KIND", "LOSER", "WINNER"],
          records.map((c) => [c.at, c.site, c.key, c.kind, side(c.loser), side(c.winner)]),
        )}\n\n${records.length < all.length ? `newest ${records.length} of ${all.length}` : `${all.length}`} conflict record${all.length === 1 ? "" : "s"} for ${where}`;
  return { data: result, text };
}
