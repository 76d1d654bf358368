/**
 * Typed access to a site's per-bucket state: the `_meta` commit point (compare-and-set) and the
 * bucket's latest entry with the version headers a merger write carries.
 */
import { type JetStreamClient, type JetStreamManager, PubHeaders } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { type MsgHdrs, MsgHdrsImpl } from "@nats-io/nats-core";
import { SyncdError } from "./errors.ts";
import { Conditions, EVENT_TTL_MS, Severity, health } from "./health.ts";
import { ApiCode, apiCode, isTooLarge, isWrongLastSequence } from "./jserrors.ts";
import { type Versioned, valueHash } from "./lww.ts";
import { validate } from "./schema-registry.ts";
import type { Version } from "./schemas.gen.ts";
import { Headers, kvStream, kvSubject } from "./subjects.ts";

export type { Version };

/** JetStream's "wrong last sequence": a compare-and-set lost a race. */
export function isCasConflict(err: unknown): boolean {
  return err instanceof CasConflictError || isWrongLastSequence(err);
}

/**
 * The incarnation of a bucket: its KV stream's creation time in ms. A bucket deleted and created
 * again (`nats kv rm` + `nats kv add`, a restore) restarts its revisions at 1 under a new incarnation.
 */
export async function bucketIncarnation(jsm: JetStreamManager, bucket: string): Promise<number> {
  const info = await jsm.streams.info(kvStream(bucket));
  return incarnationOf(info.created);
}

/** An incarnation from a stream's `created` timestamp (RFC 3339, ns precision). */
export function incarnationOf(created: string): number {
  const ms = Date.parse(created);
  return Number.isFinite(ms) && ms > 0 ? ms : 0;
}

/**
 * The bucket revision a version covers in incarnation `inc`: its `rev` when it was written in that
 * incarnation (or `inc` or the version's own is unknown: older code), else 0 — a revision of an
 * earlier incarnation of the bucket never suppresses a write of this one.
 */
export function coveredRev(v: Version, inc: number | undefined): number {
  return inc === undefined || v.inc === undefined || v.inc === inc ? v.rev : 0;
}

/** A `_meta` entry: the key's version and the meta revision to compare-and-set against. */
export type MetaEntry = { version: Version; revision: number };

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The `_meta` operations the protocol uses (a KV-backed store here, an in-memory one in simulations). */
export interface MetaStoreLike {
  get(key: string): Promise<MetaEntry | null>;
  cas(key: string, version: Version, expected: MetaEntry | null): Promise<number>;
  /** forget what is known of a key: the next get reads it from the server (caching stores) */
  invalidate?(key: string): void;
}

/** The data-bucket operations the protocol uses. */
export interface BucketStoreLike {
  latest(key: string): Promise<BucketEntry | null>;
  write(key: string, v: Versioned, expectedRev: number): Promise<number>;
}

/** The error a store throws when a compare-and-set loses (what JetStream reports as wrong last sequence). */
export class CasConflictError extends Error {
  constructor(key: string) {
    super(`wrong last sequence for ${key}`);
    this.name = "CasConflictError";
  }
}

/** A `_meta` entry's value as a version (schemas/version.json); null when it is not one. */
export function parseVersion(data: Uint8Array): Version | null {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch {
    return null;
  }
  return validate("version.json", v) === null ? (v as Version) : null;
}

/**
 * Raise `META_INVALID` (a warning for 10 min) for a `_meta` entry that is not a version; subject
 * `<meta bucket>/<key>`.
 */
export function raiseMetaInvalid(kv: KV, key: string, revision: number): void {
  // nats.js's KV has its bucket's name; its interface does not say so
  const name = (kv as Partial<{ bucket: string }>).bucket ?? "_meta";
  health.raise(Conditions.metaInvalid, Severity.warn, {
    message: `${name} key "${key}" (revision ${revision}) is not a version (written behind the services' back): taken as none; the next op or write of the key replaces it`,
    subject: `${name}/${key}`,
    ttlMs: EVENT_TTL_MS,
  });
}

/** Keys with an invalid `_meta` entry one store remembers at most (the oldest are forgotten first). */
const MAX_INVALID = 10_000;

/**
 * `<bucket>_meta`: read and compare-and-set versions.
 *
 * An entry that is not a version (written behind the services' back: `nats kv put <bucket>_meta …`)
 * reads as "no version" and is raised as `META_INVALID`; the next compare-and-set of that key
 * replaces it (conditioned on its revision). The key is handled like one whose `_meta` was wiped:
 * the next op or local write of it commits a version, anti-entropy brings the mesh's one.
 */
export class MetaStore implements MetaStoreLike {
  /** key → revision of its entry that is not a version */
  private readonly invalid = new Map<string, number>();

  constructor(readonly kv: KV) {}

  /** The version of a key, or null when the site never versioned it (or its entry is not a version). */
  async get(key: string): Promise<MetaEntry | null> {
    const e = await this.kv.get(key);
    if (!e || e.operation !== "PUT" || e.value.length === 0) {
      this.invalid.delete(key);
      return null;
    }
    const version = parseVersion(e.value);
    if (version) {
      this.invalid.delete(key);
      return { version, revision: e.revision };
    }
    this.invalid.delete(key);
    this.invalid.set(key, e.revision);
    if (this.invalid.size > MAX_INVALID) this.invalid.delete(this.invalid.keys().next().value!);
    raiseMetaInvalid(this.kv, key, e.revision);
    return null;
  }

  /**
   * Replace the version iff the entry is still at `expected` (null: the key has no version yet, or
   * only an entry that is not one). Throws a CAS conflict (see isCasConflict) when it lost a race.
   * Returns the new meta revision.
   */
  async cas(key: string, version: Version, expected: MetaEntry | null): Promise<number> {
    const data = enc.encode(JSON.stringify(version));
    if (expected) return this.kv.update(key, data, expected.revision);
    const bad = this.invalid.get(key);
    if (bad === undefined) return this.kv.create(key, data);
    const revision = await this.kv.update(key, data, bad);
    this.invalid.delete(key);
    return revision;
  }
}

/** The latest entry of a key in a data bucket, with the version a merger write carries. */
export type BucketEntry = {
  rev: number;
  deleted: boolean;
  value: Uint8Array;
  /** present iff a merger wrote the entry */
  version: { ts: number; node_id: string } | null;
};

/** Read the version headers of a bucket entry (null: a user's own write). */
export function versionFromHeaders(h: MsgHdrs | undefined): { ts: number; node_id: string } | null {
  if (!h) return null;
  const ts = h.get(Headers.ts);
  const node = h.get(Headers.node);
  if (!ts || !node) return null;
  const n = Number(ts);
  return Number.isSafeInteger(n) ? { ts: n, node_id: node } : null;
}

/**
 * True when a KV message is a delete or purge marker: one a client wrote (`KV-Operation`), or one
 * the server wrote (nats-server 2.11+, `Nats-Marker-Reason`: `MaxAge` when the entry's max age or
 * per-message TTL ran out, `Remove`, `Purge`). Either way the key's value is gone: a delete.
 */
export function isDeleteMarker(h: MsgHdrs | undefined): boolean {
  const op = h?.get(Headers.kvOperation);
  return op === "DEL" || op === "PURGE" || !!h?.get("Nats-Marker-Reason");
}

/**
 * Why a bucket's stream settings cannot be replicated, or undefined when they can: entries that
 * expire (`max_age`, or per-message TTLs with `allow_msg_ttl`) disappear without a trace unless the
 * server writes a delete marker for them (`subject_delete_marker_ttl`, nats-server 2.11+, e.g.
 * `nats kv add --ttl 1h --marker-ttl 1m`): the expiry would never replicate, and anti-entropy would
 * bring the expired keys back from the other sites.
 */
export function expiryProblem(
  bucket: string,
  c: { max_age?: number; allow_msg_ttl?: boolean; subject_delete_marker_ttl?: number },
): string | undefined {
  const expires = [
    ...((c.max_age ?? 0) > 0 ? [`max_age ${(c.max_age ?? 0) / 1e9} s`] : []),
    ...(c.allow_msg_ttl ? ["per-message TTLs (allow_msg_ttl)"] : []),
  ];
  if (expires.length === 0 || (c.subject_delete_marker_ttl ?? 0) > 0) return undefined;
  return `bucket ${bucket} expires entries (${expires.join(", ")}) without delete markers: the expiries would not replicate and anti-entropy would bring expired keys back; give it subject_delete_marker_ttl (nats-server 2.11+, nats kv add --marker-ttl) or no expiry`;
}

/** The version a watcher stamps on a local write at `rev` (no `merged`: the value is the entry's own). */
export function stampVersion(v: Versioned, rev: number, inc?: number): Version {
  return {
    ts: v.ts,
    node_id: v.node_id,
    deleted: v.deleted,
    rev,
    ...(inc !== undefined ? { inc } : {}),
    ...(v.deleted ? {} : { vh: valueHash(v.value ?? new Uint8Array()) }),
  };
}

/**
 * The `_meta` version a merger commits for `v` over bucket revision `rev` (in incarnation `inc` when
 * known): `merged`, and for a put the value hash `vh` the reconciler's version tree includes.
 */
export function mergerVersion(v: Versioned, rev: number, inc?: number): Version {
  return { ...stampVersion(v, rev, inc), merged: true };
}

/**
 * The headers of a merger's write of `v`: its version, the delete marker of a tombstone, and (when
 * given) the compare-and-set condition on the key's latest revision.
 */
export function mergerHeaders(
  v: { ts: number; node_id: string; deleted: boolean },
  expectedRev?: number,
): MsgHdrsImpl {
  const h = new MsgHdrsImpl();
  h.set(Headers.ts, String(v.ts));
  h.set(Headers.node, v.node_id);
  if (v.deleted) h.set(Headers.kvOperation, "DEL");
  if (expectedRev !== undefined) h.set(PubHeaders.ExpectedLastSubjectSequenceHdr, String(expectedRev));
  return h;
}

/** Bytes the headers of a merger's write of `v` add to its message (the condition at its widest). */
export function mergerHeaderBytes(v: { ts: number; node_id: string; deleted: boolean }): number {
  return mergerHeaders(v, Number.MAX_SAFE_INTEGER).encode().length;
}

/** A data bucket read through its stream (for the headers), written with version headers. */
export class BucketStore implements BucketStoreLike {
  constructor(
    readonly bucket: string,
    private readonly jsm: JetStreamManager,
    private readonly js: JetStreamClient,
    private readonly direct: boolean,
  ) {}

  /** The latest entry of a key (delete markers included), or null when the subject is empty. */
  async latest(key: string): Promise<BucketEntry | null> {
    const q = { last_by_subj: kvSubject(this.bucket, key) };
    let sm: Awaited<ReturnType<JetStreamManager["streams"]["getMessage"]>>;
    try {
      sm = this.direct
        ? await this.jsm.direct.getMessage(kvStream(this.bucket), q)
        : await this.jsm.streams.getMessage(kvStream(this.bucket), q);
    } catch (err) {
      if (apiCode(err) === ApiCode.noMessageFound) return null;
      throw err;
    }
    if (!sm) return null;
    return {
      rev: sm.seq,
      deleted: isDeleteMarker(sm.header),
      value: sm.data,
      version: versionFromHeaders(sm.header),
    };
  }

  /**
   * Write a replicated value (or tombstone) with its version headers, iff the key's latest
   * entry is still `expectedRev` (0: no entry). Throws a CAS conflict when a write slipped in.
   */
  async write(key: string, v: Versioned, expectedRev: number): Promise<number> {
    const data = v.deleted ? new Uint8Array() : (v.value ?? new Uint8Array());
    try {
      const pa = await this.js.publish(kvSubject(this.bucket, key), data, {
        headers: mergerHeaders(v, expectedRev),
      });
      return pa.seq;
    } catch (err) {
      if (isTooLarge(err)) {
        throw new SyncdError(
          "SYNCD_ERR_TOO_LARGE",
          `key "${key}": value and version headers exceed the bucket's limit`,
        );
      }
      throw err;
    }
  }
}
