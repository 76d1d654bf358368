/**
 * Write a version the way a merger does, but without any op: for tests, the bench and the demo's
 * `plant` (a restore from a backup, a hand edit or a lost op, which only anti-entropy can find).
 */
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Version } from "./schemas.gen.ts";
import { mergerHeaders, mergerVersion } from "./stores.ts";
import { kvSubject, metaBucket } from "./subjects.ts";

/** What to plant: a key's version and value (none: a tombstone when `deleted`). */
export type Planting = {
  bucket: string;
  key: string;
  ts: number;
  node_id: string;
  deleted?: boolean;
  value?: string | Uint8Array;
  /** the `_meta` version as code before `merged`/`vh` wrote it */
  legacy?: boolean;
  /** the least `rev` the version claims (default: the key's current bucket revision) */
  minRev?: number;
  /** write the bucket entry only if the key's revision did not move since it was read */
  expectRev?: boolean;
};

/**
 * Plant a version at the site `nc` is connected to, in the order a merger commits: the `_meta`
 * version first (the commit point; `rev` = the key's current bucket revision), then the bucket entry
 * with its version headers. In that order the watcher sees a merger's write; the other way round, a
 * headed entry that `_meta` does not know is taken for a user's write with forged headers, and
 * replicated. Returns the bucket entry's revision.
 */
export async function plantVersion(nc: NatsConnection, p: Planting): Promise<number> {
  const deleted = p.deleted ?? false;
  const value =
    deleted || p.value === undefined
      ? new Uint8Array()
      : typeof p.value === "string"
        ? new TextEncoder().encode(p.value)
        : p.value;
  const kvm = new Kvm(nc);
  const base = (await (await kvm.open(p.bucket)).get(p.key))?.revision ?? 0;
  const v = { ts: p.ts, node_id: p.node_id, deleted, value };
  const rev = Math.max(base, p.minRev ?? 0);
  const version: Version = p.legacy ? { ts: p.ts, node_id: p.node_id, deleted, rev } : mergerVersion(v, rev);
  await (await kvm.open(metaBucket(p.bucket))).put(p.key, JSON.stringify(version));
  const pa = await jetstream(nc).publish(kvSubject(p.bucket, p.key), value, {
    headers: mergerHeaders(v, p.expectRev ? base : undefined),
  });
  return pa.seq;
}
