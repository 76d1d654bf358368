/**
 * Compact per-key storage shared by the `_meta` cache (meta-cache.ts), the reconciler's version
 * tree and its map of what the bucket holds (reconciler/tree.ts, versions.ts): a slot per key in
 * typed-array columns that grow together, 8-byte value hashes kept as bytes, node ids interned.
 * Each user keeps its own key → slot map (the cache's is in least-recently-used order).
 */

type TypedArray = Float64Array | Int32Array | Uint32Array | Uint8Array;

/** Slots allocated before the first growth. */
export const MIN_CAPACITY = 256;

/** One column: `width` elements per slot in `a`, which is replaced (copied) when the columns grow. */
export class Column<T extends TypedArray> {
  a: T;
  constructor(
    private readonly make: (n: number) => T,
    readonly width: number,
  ) {
    this.a = make(0);
  }

  /** Reallocate for `cap` slots, keeping what is there. */
  resize(cap: number): void {
    const b = this.make(cap * this.width);
    b.set(this.a.subarray(0, Math.min(this.a.length, b.length)));
    this.a = b;
  }
}

/**
 * Typed-array columns indexed by slot. `alloc` hands out a released slot first, else the next one,
 * doubling every column's capacity when full; `release` gives a slot back (its contents are the
 * caller's to clear).
 */
export class Columns {
  private readonly cols: Column<TypedArray>[] = [];
  private readonly free: number[] = [];
  private cap = 0;
  private used = 0;

  /** Slots in use (allocated and not released). */
  get live(): number {
    return this.used - this.free.length;
  }

  /** Slots the columns have room for. */
  get capacity(): number {
    return this.cap;
  }

  f64(width = 1): Column<Float64Array> {
    return this.add(new Column((n) => new Float64Array(n), width));
  }

  i32(width = 1): Column<Int32Array> {
    return this.add(new Column((n) => new Int32Array(n), width));
  }

  u32(width = 1): Column<Uint32Array> {
    return this.add(new Column((n) => new Uint32Array(n), width));
  }

  u8(width = 1): Column<Uint8Array> {
    return this.add(new Column((n) => new Uint8Array(n), width));
  }

  /** A free slot (zeroed only when never used before). */
  alloc(): number {
    const s = this.free.pop();
    if (s !== undefined) return s;
    if (this.used === this.cap) {
      this.cap = Math.max(MIN_CAPACITY, this.cap * 2);
      for (const c of this.cols) c.resize(this.cap);
    }
    return this.used++;
  }

  /** Give a slot back for reuse. */
  release(s: number): void {
    this.free.push(s);
  }

  private add<T extends TypedArray>(c: Column<T>): Column<T> {
    if (this.cap > 0) c.resize(this.cap);
    this.cols.push(c as unknown as Column<TypedArray>);
    return c;
  }
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
/** The 16 lower-case hex chars of a value hash (services/lib/lww.ts valueHash). */
export const HASH8_RE = /^[0-9a-f]{16}$/;

/** Lower-case hex of `n` bytes of `a` from `off`. */
export function bytesToHex(a: Uint8Array, off: number, n: number): string {
  let h = "";
  for (let i = off; i < off + n; i++) h += HEX[a[i]!]!;
  return h;
}

/** The value of byte `i` of a hex string. */
export function hexByte(hex: string, i: number): number {
  return Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
}

/** Write a hex string's bytes into `out` at `off`. */
export function hexToBytes(hex: string, out: Uint8Array, off: number): void {
  for (let i = 0; i < hex.length >> 1; i++) out[off + i] = hexByte(hex, i);
}

/**
 * A value hash per slot: 8 bytes when it is 16 lower-case hex chars (as valueHash makes it), else
 * (hand-made) the string as it came. Whether a slot has one at all is its owner's flag.
 */
export class Hash8Column {
  private readonly bytes: Column<Uint8Array>;
  private readonly odd = new Map<number, string>();

  constructor(cols: Columns) {
    this.bytes = cols.u8(8);
  }

  set(s: number, h: string): void {
    if (HASH8_RE.test(h)) {
      this.odd.delete(s);
      hexToBytes(h, this.bytes.a, s * 8);
    } else this.odd.set(s, h);
  }

  get(s: number): string {
    return this.odd.get(s) ?? bytesToHex(this.bytes.a, s * 8, 8);
  }

  /** Whether the slot's hash is `h` (`set` was called on it). */
  equals(s: number, h: string): boolean {
    const odd = this.odd.get(s);
    if (odd !== undefined) return odd === h;
    if (!HASH8_RE.test(h)) return false;
    const a = this.bytes.a;
    for (let i = 0; i < 8; i++) if (a[s * 8 + i] !== hexByte(h, i)) return false;
    return true;
  }

  /** Forget a slot's hand-made hash (its bytes are overwritten by the next `set`). */
  clear(s: number): void {
    this.odd.delete(s);
  }
}

/** Strings (node ids) as small integers: one copy of each, looked up both ways. */
export class Interner {
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [];

  /** The id of `s`, assigned on first sight. */
  id(s: string): number {
    const have = this.ids.get(s);
    if (have !== undefined) return have;
    this.ids.set(s, this.names.length);
    this.names.push(s);
    return this.names.length - 1;
  }

  /** The string of an id handed out by `id`. */
  name(i: number): string {
    const s = this.names[i];
    if (s === undefined) throw new RangeError(`no interned string ${i}`);
    return s;
  }

  get size(): number {
    return this.names.length;
  }
}
