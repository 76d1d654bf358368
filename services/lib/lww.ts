/**
 * The Last-Writer-Wins rule (DESIGN §1). A version is `(ts, node_id)`; higher ts wins, equal ts →
 * higher node_id (byte order). Equal `(ts, node_id)` with different contents (only a hand-made op can
 * do that) still resolves the same everywhere: a tombstone wins, then the greater value bytes.
 */

/** What the rule compares: a version and, for the final tie-break, the contents. */
export type Versioned = {
  ts: number;
  node_id: string;
  deleted: boolean;
  /** value bytes; only consulted when ts, node_id and deleted are all equal */
  value?: Uint8Array | undefined;
};

import { createHash } from "node:crypto";

const enc = new TextEncoder();

/** The value hash kept with a put's version (`vh`): first 8 bytes of SHA-256, hex. */
export function valueHash(value: Uint8Array): string {
  return createHash("sha256").update(value).digest("hex").slice(0, 16);
}

/** Byte-order comparison of two strings (UTF-8), as Go and the NATS server compare them. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** Compare node ids by their UTF-8 bytes. */
export function compareNodeIds(a: string, b: string): number {
  if (a === b) return 0;
  return compareBytes(enc.encode(a), enc.encode(b));
}

/**
 * Compare the versions only: negative when a loses to b, 0 when `(ts, node_id)` are equal.
 */
export function compareVersions(
  a: { ts: number; node_id: string },
  b: { ts: number; node_id: string },
): number {
  if (a.ts !== b.ts) return a.ts < b.ts ? -1 : 1;
  return compareNodeIds(a.node_id, b.node_id);
}

/**
 * The total order of the register: versions first, then tombstone over value, then value bytes.
 * 0 means the two are the same write.
 */
export function compare(a: Versioned, b: Versioned): number {
  const v = compareVersions(a, b);
  if (v !== 0) return v;
  if (a.deleted !== b.deleted) return a.deleted ? 1 : -1;
  if (a.deleted) return 0;
  return compareBytes(a.value ?? new Uint8Array(), b.value ?? new Uint8Array());
}

/** The merge of two register states: the greater one. Commutative, associative, idempotent. */
export function merge<T extends Versioned>(a: T, b: T): T {
  return compare(a, b) >= 0 ? a : b;
}

/** True when `incoming` must replace `current` (current may be absent). */
export function wins(incoming: Versioned, current: Versioned | null | undefined): boolean {
  return current == null || compare(incoming, current) > 0;
}
