import { readFileSync } from "node:fs";
import { jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
/**
 * Keys across sites: `syncd get <bucket> <key>` (value and version at every site side by side,
 * through each site's `merger.get`), and `syncd put|del` (a user write through one site's KV, opened
 * in the site's JetStream domain so it works from any server of the mesh).
 */
import { isStreamNotFound } from "../lib/jserrors.ts";
import { compare } from "../lib/lww.ts";
import { ServiceReplyError } from "../lib/request.ts";
import type { MergerGetResponse } from "../lib/schemas.gen.ts";
import { CliError, UsageError, expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { type SiteRef, ask, findSites, messageOf, pickSites } from "./nats.ts";
import { clip, table } from "./table.ts";

/** A key at one site. */
export type KeyAtSite =
  | {
      site: string;
      state: "live" | "deleted";
      value?: string;
      encoding?: "utf8" | "base64";
      ts: number;
      node_id: string;
      rev: number;
    }
  | { site: string; state: "absent" }
  | { site: string; state: "error"; error: string };

/** What `get` prints with --json. */
export type GetResult = {
  bucket: string;
  key: string;
  /** true when the sites that answered do not all hold the same version and value */
  differ: boolean;
  /** the site(s) holding the greatest version (LWW) */
  newest: string[];
  sites: KeyAtSite[];
};

const BUCKET = /^[a-zA-Z0-9_-]+$/;
const KEY = /^(?![.])(?!.*[.]$)(?!.*[.][.])[-/=.\w]+$/;

function checkBucketKey(bucket: string, key?: string): void {
  if (!BUCKET.test(bucket)) throw new UsageError(`bad bucket name "${bucket}"`);
  if (key !== undefined && !KEY.test(key)) throw new UsageError(`"${key}" is not a valid KV key`);
}

const enc = new TextEncoder();

function bytesOf(k: KeyAtSite): Uint8Array {
  if (k.state !== "live" || k.value === undefined) return new Uint8Array();
  return k.encoding === "base64" ? new Uint8Array(Buffer.from(k.value, "base64")) : enc.encode(k.value);
}

/** Order of two answers by LWW: absent below everything, errors not compared. */
function order(a: KeyAtSite, b: KeyAtSite): number {
  if (a.state === "absent" || b.state === "absent")
    return (a.state === "absent" ? 0 : 1) - (b.state === "absent" ? 0 : 1);
  if (a.state === "error" || b.state === "error") return 0;
  return compare(
    { ts: a.ts, node_id: a.node_id, deleted: a.state === "deleted", value: bytesOf(a) },
    { ts: b.ts, node_id: b.node_id, deleted: b.state === "deleted", value: bytesOf(b) },
  );
}

/** A key at one site, through `syncd.<site>.merger.get` (404 not found → absent). */
export async function keyAt(ctx: Ctx, site: string, bucket: string, key: string): Promise<KeyAtSite> {
  try {
    const r = await ask<MergerGetResponse>(
      ctx.mesh,
      site,
      "merger",
      "get",
      { bucket, key },
      ctx.cli.conn.timeoutMs,
    );
    return {
      site,
      state: r.deleted ? "deleted" : "live",
      ts: r.ts,
      node_id: r.node_id,
      rev: r.rev,
      ...(!r.deleted && r.value !== undefined ? { value: r.value } : {}),
      ...(!r.deleted && r.encoding !== undefined ? { encoding: r.encoding } : {}),
    };
  } catch (err) {
    if (err instanceof ServiceReplyError && err.status === 404 && /NOT_FOUND/.test(err.message))
      return { site, state: "absent" };
    const msg = err instanceof ServiceReplyError ? `${err.status} ${err.message}` : messageOf(err);
    return { site, state: "error", error: msg };
  }
}

/** Compare the answers of the sites: which hold the greatest version, and whether they differ. */
export function compareSites(answers: KeyAtSite[]): { differ: boolean; newest: string[] } {
  const ok = answers.filter((a) => a.state !== "error");
  if (ok.length === 0) return { differ: false, newest: [] };
  let best = ok[0]!;
  for (const a of ok) if (order(a, best) > 0) best = a;
  const newest = ok.filter((a) => order(a, best) === 0).map((a) => a.site);
  return { differ: newest.length !== ok.length, newest };
}

/** Run `get <bucket> <key>`. */
export async function getCommand(ctx: Ctx): Promise<Output> {
  const [bucket, key] = expectArgs(ctx.cli, 2, 2, "get <bucket> <key> [--site s]") as [string, string];
  checkBucketKey(bucket, key);
  const sites = pickSites(await findSites(ctx.mesh), ctx.cli.site);
  const answers = await Promise.all(sites.map((s) => keyAt(ctx, s.site, bucket, key)));
  const errors = answers.filter((a) => a.state === "error");
  if (errors.length === answers.length)
    throw new CliError(
      `get ${bucket} ${key}: ${errors.map((e) => `site ${e.site}: ${"error" in e ? e.error : ""}`).join("; ")}`,
    );
  const { differ, newest } = compareSites(answers);
  const result: GetResult = { bucket, key, differ, newest, sites: answers };
  const rows = answers.map((a) => {
    const mark = a.state !== "error" && differ && !newest.includes(a.site) ? "*" : "";
    if (a.state === "absent" || a.state === "error")
      return [a.site, a.state, a.state === "error" ? clip(a.error, 60) : null, null, null, null, mark];
    const value =
      a.state === "live" ? `${clip(a.value ?? "", 50)}${a.encoding === "base64" ? " (base64)" : ""}` : null;
    return [a.site, a.state, value, a.ts, a.node_id, a.rev, mark];
  });
  const footer = differ
    ? `* differs from the newest version (at ${newest.join(", ")})`
    : answers.length > 1
      ? "same at every site that answered"
      : "";
  const text = `${table(["SITE", "STATE", "VALUE", "TS", "NODE", "REV", ""], rows)}${footer ? `\n\n${footer}` : ""}`;
  return { data: result, text };
}

/** The one site a write goes to: --site, or the only site there is. */
async function writeSite(ctx: Ctx, synopsis: string): Promise<SiteRef> {
  const found = await findSites(ctx.mesh);
  if (ctx.cli.site === undefined) {
    if (found.length === 1) return found[0]!;
    if (found.length === 0) throw new CliError("no syncd site found (is the mesh up?); name one with --site");
    throw new UsageError(
      `usage: syncd ${synopsis} --site <site> (sites: ${found.map((f) => f.site).join(", ")})`,
    );
  }
  return pickSites(found, ctx.cli.site, true)[0]!;
}

async function openBucket(ctx: Ctx, site: SiteRef, bucket: string): Promise<KV> {
  try {
    const to = await ctx.mesh.jetStream(site.domain, ctx.cli.conn.timeoutMs);
    const kv = await new Kvm(jetstream(to.nc, to.opts)).open(bucket);
    await kv.status();
    return kv;
  } catch (err) {
    const m = messageOf(err);
    if (isStreamNotFound(err))
      throw new CliError(`bucket "${bucket}" does not exist at site ${site.site} (domain ${site.domain})`);
    throw new CliError(`cannot open bucket "${bucket}" at site ${site.site} (domain ${site.domain}): ${m}`);
  }
}

/** Run `put <bucket> <key> <value>` (value "-" reads stdin). */
export async function putCommand(ctx: Ctx): Promise<Output> {
  const synopsis = "put <bucket> <key> <value|->";
  const [bucket, key, value] = expectArgs(ctx.cli, 3, 3, `${synopsis} --site <site>`) as [
    string,
    string,
    string,
  ];
  checkBucketKey(bucket, key);
  const site = await writeSite(ctx, synopsis);
  const kv = await openBucket(ctx, site, bucket);
  const data = value === "-" ? new Uint8Array(readFileSync(0)) : enc.encode(value);
  let revision: number;
  try {
    revision = await kv.put(key, data);
  } catch (err) {
    throw new CliError(`put ${bucket} ${key} at site ${site.site}: ${messageOf(err)}`);
  }
  return {
    data: { op: "put", site: site.site, domain: site.domain, bucket, key, revision, bytes: data.length },
    text: `put ${bucket} ${key} at site ${site.site}: revision ${revision}`,
  };
}

/** Run `del <bucket> <key>`. */
export async function delCommand(ctx: Ctx): Promise<Output> {
  const synopsis = "del <bucket> <key>";
  const [bucket, key] = expectArgs(ctx.cli, 2, 2, `${synopsis} --site <site>`) as [string, string];
  checkBucketKey(bucket, key);
  const site = await writeSite(ctx, synopsis);
  const kv = await openBucket(ctx, site, bucket);
  try {
    await kv.delete(key);
  } catch (err) {
    throw new CliError(`del ${bucket} ${key} at site ${site.site}: ${messageOf(err)}`);
  }
  return {
    data: { op: "delete", site: site.site, domain: site.domain, bucket, key },
    text: `deleted ${bucket} ${key} at site ${site.site}`,
  };
}
