/**
 * How the `nats` CLI checks a micro (ADR-32) reply, re-done in TypeScript so a test can hold our
 * services to it without Go:
 *
 *   1. natscli (`cli/service_command.go` parseMessage → jsm.go `api.ParseAndValidateMessage`) decodes
 *      the reply into `struct{ Schema string "schema"; Type string "type" }` to learn its type and
 *      refuses any type but the expected one;
 *   2. it decodes the reply with Go's encoding/json into the nats.go struct for that type
 *      (`micro.Ping`, `micro.Info`, `micro.Stats`, nats.go `micro/service.go`);
 *   3. its validator `json.Marshal`s that struct, `json.Unmarshal`s the result into `any` (numbers
 *      become float64) and checks it against the jsm.go schema (santhosh-tekuri/jsonschema, draft-07,
 *      formats asserted).
 *
 * So the check runs on the Go-normalised JSON: unknown fields are dropped, missing fields become Go
 * zero values ("" / 0 / nil map → null / nil slice → null / zero time), while a value of the wrong JSON
 * type, a fractional or out-of-range integer, or a malformed time fails step 2 before any schema is
 * looked at. This module emulates encoding/json faithfully for exactly the Go types those structs use
 * (string, int, time.Duration, time.Time, map[string]string, json.RawMessage, slices, pointers,
 * structs with embedded ServiceIdentity): case-insensitive field matching (Go's fold, incl. K/ſ),
 * last duplicate key wins (decoding into the value already there, so maps and slice elements merge),
 * null leaves strings/ints/structs/times alone and sets maps/slices/pointers to nil, integers parsed
 * with strconv.ParseInt(s, 10, 64), times with time.Parse(RFC3339) on the raw (unescaped) bytes and
 * re-encoded as RFC3339Nano with Go's MarshalJSON range checks, `omitempty` only where nats.go has it
 * (`data`). Known simplification: slice re-use beyond the current length (Go keeps stale elements in
 * spare capacity when a key is repeated three times with shrinking arrays) is not modelled.
 */
import { readFileSync } from "node:fs";
import { Ajv, type ValidateFunction } from "ajv";
import addFormatsModule from "ajv-formats";

// ---------------------------------------------------------------------------------------------------
// JSON text → syntax tree that keeps raw text (Go's scanner rules: RFC 8259, depth limit 10000)
// ---------------------------------------------------------------------------------------------------

export type JNode =
  | { t: "object"; members: [string, JNode][]; raw: string }
  | { t: "array"; items: JNode[]; raw: string }
  | { t: "string"; value: string; raw: string }
  | { t: "number"; raw: string }
  | { t: "bool"; value: boolean; raw: string }
  | { t: "null"; raw: string };

/** A failure of Go's json.Unmarshal (syntax or type), or of json.Marshal. */
export class GoJsonError extends Error {
  override name = "GoJsonError";
}

const MAX_DEPTH = 10000;

/** Replace lone UTF-16 surrogates by U+FFFD, as Go's unquote does for bad \u escapes. */
function wellFormed(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

class Parser {
  i = 0;
  depth = 0;
  constructor(readonly s: string) {}

  fail(what: string): never {
    const at = this.i < this.s.length ? `character ${JSON.stringify(this.s[this.i])}` : "end of JSON input";
    throw new GoJsonError(`json: invalid ${at} ${what} (offset ${this.i})`);
  }
  ws(): void {
    for (;;) {
      const c = this.s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else return;
    }
  }
  document(): JNode {
    this.ws();
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) this.fail("after top-level value");
    return v;
  }
  value(): JNode {
    const start = this.i;
    const c = this.s[this.i];
    switch (c) {
      case "{":
        return this.object(start);
      case "[":
        return this.array(start);
      case '"': {
        const value = this.string();
        return { t: "string", value, raw: this.s.slice(start, this.i) };
      }
      case "t":
        return this.literal("true", { t: "bool", value: true, raw: "true" });
      case "f":
        return this.literal("false", { t: "bool", value: false, raw: "false" });
      case "n":
        return this.literal("null", { t: "null", raw: "null" });
      default:
        if (c === "-" || (c !== undefined && c >= "0" && c <= "9")) return this.number(start);
        return this.fail("looking for beginning of value");
    }
  }
  literal(word: string, node: JNode): JNode {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return node;
    }
    // advance to the first differing character for the message
    let k = 0;
    while (this.s[this.i + k] === word[k]) k++;
    this.i += k;
    return this.fail(`in literal ${word} (expecting ${JSON.stringify(word[k])})`);
  }
  number(start: number): JNode {
    const s = this.s;
    if (s[this.i] === "-") this.i++;
    const digit = (j: number) => s.charCodeAt(j) >= 48 && s.charCodeAt(j) <= 57;
    if (s[this.i] === "0") this.i++;
    else if (digit(this.i)) while (digit(this.i)) this.i++;
    else this.fail("in numeric literal");
    if (s[this.i] === ".") {
      this.i++;
      if (!digit(this.i)) this.fail("after decimal point in numeric literal");
      while (digit(this.i)) this.i++;
    }
    if (s[this.i] === "e" || s[this.i] === "E") {
      this.i++;
      if (s[this.i] === "+" || s[this.i] === "-") this.i++;
      if (!digit(this.i)) this.fail("in exponent of numeric literal");
      while (digit(this.i)) this.i++;
    }
    return { t: "number", raw: s.slice(start, this.i) };
  }
  string(): string {
    const s = this.s;
    this.i++; // opening quote
    let out = "";
    for (;;) {
      const c = s.charCodeAt(this.i);
      if (Number.isNaN(c)) this.fail("in string literal");
      if (c === 0x22) {
        this.i++;
        return wellFormed(out);
      }
      if (c < 0x20) this.fail("in string literal");
      if (c !== 0x5c) {
        out += s[this.i];
        this.i++;
        continue;
      }
      this.i++;
      const e = s[this.i];
      const simple: Record<string, string> = {
        '"': '"',
        "\\": "\\",
        "/": "/",
        b: "\b",
        f: "\f",
        n: "\n",
        r: "\r",
        t: "\t",
      };
      if (e !== undefined && e in simple) {
        out += simple[e];
        this.i++;
      } else if (e === "u") {
        const hex = s.slice(this.i + 1, this.i + 5);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
          this.i += 1 + (/^[0-9a-fA-F]*/.exec(hex)?.[0].length ?? 0);
          this.fail("in \\u hexadecimal character escape");
        }
        out += String.fromCharCode(Number.parseInt(hex, 16));
        this.i += 5;
      } else {
        this.fail("in string escape code");
      }
    }
  }
  enter(): void {
    if (++this.depth > MAX_DEPTH) throw new GoJsonError("json: exceeded max depth");
  }
  object(start: number): JNode {
    this.enter();
    this.i++;
    const members: [string, JNode][] = [];
    this.ws();
    if (this.s[this.i] === "}") {
      this.i++;
    } else {
      for (;;) {
        this.ws();
        if (this.s[this.i] !== '"') this.fail("looking for beginning of object key string");
        const key = this.string();
        this.ws();
        if (this.s[this.i] !== ":") this.fail("after object key");
        this.i++;
        this.ws();
        members.push([key, this.value()]);
        this.ws();
        if (this.s[this.i] === ",") {
          this.i++;
          continue;
        }
        if (this.s[this.i] === "}") {
          this.i++;
          break;
        }
        this.fail("after object key:value pair");
      }
    }
    this.depth--;
    return { t: "object", members, raw: this.s.slice(start, this.i) };
  }
  array(start: number): JNode {
    this.enter();
    this.i++;
    const items: JNode[] = [];
    this.ws();
    if (this.s[this.i] === "]") {
      this.i++;
    } else {
      for (;;) {
        this.ws();
        items.push(this.value());
        this.ws();
        if (this.s[this.i] === ",") {
          this.i++;
          continue;
        }
        if (this.s[this.i] === "]") {
          this.i++;
          break;
        }
        this.fail("after array element");
      }
    }
    this.depth--;
    return { t: "array", items, raw: this.s.slice(start, this.i) };
  }
}

/**
 * Bytes as Go sees them: invalid UTF-8 becomes U+FFFD inside strings (and a syntax error outside);
 * a byte-order mark is not skipped (Go rejects it).
 */
export function textOf(data: Uint8Array | string): string {
  return typeof data === "string" ? data : new TextDecoder("utf-8", { ignoreBOM: true }).decode(data);
}

/** Parse like Go's checkValid + scanner: throws GoJsonError on any syntax error. */
export function parseJson(data: Uint8Array | string): JNode {
  return new Parser(textOf(data)).document();
}

/** json.Compact of a raw value (insignificant whitespace removed), as Marshal does for RawMessage. */
function compact(raw: string): string {
  let out = "";
  let inStr = false;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i] as string;
    if (inStr) {
      out += c;
      if (c === "\\") {
        out += raw[i + 1] ?? "";
        i++;
      } else if (c === '"') inStr = false;
    } else if (c === '"') {
      inStr = true;
      out += c;
    } else if (c !== " " && c !== "\t" && c !== "\n" && c !== "\r") out += c;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// time.Time: time.Parse(time.RFC3339, …) and MarshalJSON (RFC3339Nano, strict)
// ---------------------------------------------------------------------------------------------------

/** A parsed time in the location it was parsed in (offset in seconds east of UTC). */
export type GoTime = {
  year: number;
  month: number;
  day: number;
  hour: number;
  min: number;
  sec: number;
  nsec: number;
  offset: number;
};

/** time.Time{}: 0001-01-01T00:00:00Z */
export const ZERO_TIME: GoTime = { year: 1, month: 1, day: 1, hour: 0, min: 0, sec: 0, nsec: 0, offset: 0 };

function daysIn(month: number, year: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/**
 * time.Parse("2006-01-02T15:04:05Z07:00", s) as Go does it (which also covers the stricter fast
 * path Time.UnmarshalJSON tries first): 4-digit year, 2-digit month/day/minute/second, 1- or
 * 2-digit hour, optional `.` or `,` fraction (digits past 9 truncated), `Z` or ±hh:mm with hh ≤ 24,
 * mm ≤ 60; day checked against the month. Returns the time or an error message.
 */
export function parseGoRFC3339(value: string): GoTime | string {
  const b = new TextEncoder().encode(value);
  const n = b.length;
  let i = 0;
  const bad = `parsing time ${JSON.stringify(value)} as "2006-01-02T15:04:05Z07:00": cannot parse`;
  const isDigit = (j: number) => j < n && (b[j] as number) >= 48 && (b[j] as number) <= 57;
  const d = (j: number) => (b[j] as number) - 48;
  /** getnum(value, fixed) */
  const getnum = (fixed: boolean): number | undefined => {
    if (!isDigit(i)) return undefined;
    if (!isDigit(i + 1)) {
      if (fixed) return undefined;
      i += 1;
      return d(i - 1);
    }
    i += 2;
    return d(i - 2) * 10 + d(i - 1);
  };
  const lit = (ch: string): boolean => {
    if (i < n && b[i] === ch.charCodeAt(0)) {
      i++;
      return true;
    }
    return false;
  };
  // 2006
  if (n - i < 4 || !isDigit(i) || !isDigit(i + 1) || !isDigit(i + 2) || !isDigit(i + 3)) return bad;
  const year = d(i) * 1000 + d(i + 1) * 100 + d(i + 2) * 10 + d(i + 3);
  i += 4;
  if (!lit("-")) return bad;
  const month = getnum(true);
  if (month === undefined) return bad;
  if (month < 1 || month > 12) return `${bad}: month out of range`;
  if (!lit("-")) return bad;
  const day = getnum(true);
  if (day === undefined) return bad;
  if (!lit("T")) return bad;
  const hour = getnum(false);
  if (hour === undefined) return bad;
  if (hour >= 24) return `${bad}: hour out of range`;
  if (!lit(":")) return bad;
  const min = getnum(true);
  if (min === undefined) return bad;
  if (min >= 60) return `${bad}: minute out of range`;
  if (!lit(":")) return bad;
  const sec = getnum(true);
  if (sec === undefined) return bad;
  if (sec >= 60) return `${bad}: second out of range`;
  let nsec = 0;
  if (n - i >= 2 && (b[i] === 0x2e || b[i] === 0x2c) && isDigit(i + 1)) {
    let k = 2;
    while (i + k < n && isDigit(i + k)) k++;
    const used = Math.min(k, 10);
    let ns = 0;
    for (let j = 1; j < used; j++) ns = ns * 10 + d(i + j);
    for (let j = used; j < 10; j++) ns *= 10;
    nsec = ns;
    i += k;
  }
  let offset = 0;
  if (i < n && b[i] === 0x5a /* Z */) {
    i++;
  } else {
    if (n - i < 6 || b[i + 3] !== 0x3a /* : */) return bad;
    const sign = b[i];
    const two = (j: number) => (isDigit(j) && isDigit(j + 1) ? d(j) * 10 + d(j + 1) : undefined);
    const hh = two(i + 1);
    const mm = two(i + 4);
    if (hh === undefined || mm === undefined) return bad;
    if (hh > 24) return `${bad}: time zone offset hour out of range`;
    if (mm > 60) return `${bad}: time zone offset minute out of range`;
    if (sign !== 0x2b && sign !== 0x2d) return bad;
    offset = (hh * 60 + mm) * 60 * (sign === 0x2d ? -1 : 1);
    i += 6;
  }
  if (i !== n) return `${bad}: extra text`;
  if (day < 1 || day > daysIn(month, year)) return `${bad}: day out of range`;
  return { year, month, day, hour, min, sec, nsec, offset };
}

/** Time.MarshalJSON: RFC3339Nano in the time's own zone; Go refuses offsets of 24h or more. */
export function formatGoTime(t: GoTime): string {
  const p = (v: number, w: number) => String(v).padStart(w, "0");
  let s = `${p(t.year, 4)}-${p(t.month, 2)}-${p(t.day, 2)}T${p(t.hour, 2)}:${p(t.min, 2)}:${p(t.sec, 2)}`;
  if (t.nsec !== 0) s += `.${p(t.nsec, 9).replace(/0+$/, "")}`;
  if (t.offset === 0) return `${s}Z`;
  const zone = Math.trunc(Math.abs(t.offset) / 60);
  if (Math.trunc(zone / 60) >= 24)
    throw new GoJsonError(
      "json: error calling MarshalJSON for type time.Time: timezone hour outside of range [0,23]",
    );
  return `${s}${t.offset < 0 ? "-" : "+"}${p(Math.trunc(zone / 60), 2)}:${p(zone % 60, 2)}`;
}

// ---------------------------------------------------------------------------------------------------
// The Go types of nats.go micro/service.go and their values
// ---------------------------------------------------------------------------------------------------

export type GoType =
  | { k: "string"; go: "string" }
  | { k: "int64"; go: "int" | "time.Duration" }
  | { k: "time"; go: "time.Time" }
  | { k: "raw"; go: "json.RawMessage" }
  | { k: "map"; go: "map[string]string" }
  | { k: "slice"; go: string; elem: GoType }
  | { k: "ptr"; go: string; elem: GoType }
  | { k: "struct"; go: string; fields: GoField[] };
export type GoField = { json: string; type: GoType; omitempty?: boolean };

/** A Go value: string, bigint (int/int64), GoTime, raw JSON text (RawMessage; null = nil), a map, a slice, a pointer target or a struct; null is nil. */
export type GoValue = string | bigint | GoTimeValue | GoRaw | GoMap | GoSlice | GoStruct | null;
export type GoTimeValue = { time: GoTime };
export type GoRaw = { raw: string | null };
export type GoMap = Map<string, string>;
export type GoSlice = GoValue[];
export type GoStruct = { [field: string]: GoValue };

const STRING: GoType = { k: "string", go: "string" };
const INT: GoType = { k: "int64", go: "int" };
const DURATION: GoType = { k: "int64", go: "time.Duration" };
const TIME: GoType = { k: "time", go: "time.Time" };
const RAW: GoType = { k: "raw", go: "json.RawMessage" };
const STRMAP: GoType = { k: "map", go: "map[string]string" };

/** ServiceIdentity, embedded in Ping, Info and Stats: its fields are promoted, in this order. */
const serviceIdentity: GoField[] = [
  { json: "name", type: STRING },
  { json: "id", type: STRING },
  { json: "version", type: STRING },
  { json: "metadata", type: STRMAP },
];

/** micro.Ping */
export const PingType: GoType = {
  k: "struct",
  go: "micro.Ping",
  fields: [...serviceIdentity, { json: "type", type: STRING }],
};

const endpointInfo: GoType = {
  k: "struct",
  go: "micro.EndpointInfo",
  fields: [
    { json: "name", type: STRING },
    { json: "subject", type: STRING },
    { json: "queue_group", type: STRING },
    { json: "metadata", type: STRMAP },
  ],
};

/** micro.Info */
export const InfoType: GoType = {
  k: "struct",
  go: "micro.Info",
  fields: [
    ...serviceIdentity,
    { json: "type", type: STRING },
    { json: "description", type: STRING },
    { json: "endpoints", type: { k: "slice", go: "[]micro.EndpointInfo", elem: endpointInfo } },
  ],
};

const endpointStats: GoType = {
  k: "struct",
  go: "micro.EndpointStats",
  fields: [
    { json: "name", type: STRING },
    { json: "subject", type: STRING },
    { json: "queue_group", type: STRING },
    { json: "num_requests", type: INT },
    { json: "num_errors", type: INT },
    { json: "last_error", type: STRING },
    { json: "processing_time", type: DURATION },
    { json: "average_processing_time", type: DURATION },
    { json: "data", type: RAW, omitempty: true },
  ],
};

/** micro.Stats */
export const StatsType: GoType = {
  k: "struct",
  go: "micro.Stats",
  fields: [
    ...serviceIdentity,
    { json: "type", type: STRING },
    { json: "started", type: TIME },
    {
      json: "endpoints",
      type: {
        k: "slice",
        go: "[]*micro.EndpointStats",
        elem: { k: "ptr", go: "*micro.EndpointStats", elem: endpointStats },
      },
    },
  ],
};

/** jsm.go api.schemaDetector: what natscli decodes first to learn a message's type. */
export const SchemaDetectorType: GoType = {
  k: "struct",
  go: "api.schemaDetector",
  fields: [
    { json: "schema", type: STRING },
    { json: "type", type: STRING },
  ],
};

/** The zero value of a Go type. */
export function zeroOf(t: GoType): GoValue {
  switch (t.k) {
    case "string":
      return "";
    case "int64":
      return 0n;
    case "time":
      return { time: ZERO_TIME };
    case "raw":
      return { raw: null };
    case "map":
    case "slice":
    case "ptr":
      return null;
    case "struct":
      return Object.fromEntries(t.fields.map((f) => [f.json, zeroOf(f.type)]));
  }
}

/** Go's foldName for ASCII field names: upper-case, with the Kelvin sign and long s folding to K and S. */
function fold(s: string): string {
  return s.replace(/[a-z\u212A\u017F]/g, (c) =>
    c === "\u212A" ? "K" : c === "\u017F" ? "S" : c.toUpperCase(),
  );
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

type Ctx = { errors: string[]; structName?: string; path: string[] };

function typeError(ctx: Ctx, what: string, t: GoType): void {
  ctx.errors.push(
    ctx.structName && ctx.path.length > 0
      ? `json: cannot unmarshal ${what} into Go struct field ${ctx.structName.replace(/^\w+\./, "")}.${ctx.path.join(".")} of type ${t.go}`
      : `json: cannot unmarshal ${what} into Go value of type ${t.go}`,
  );
}

function describeNode(n: JNode): string {
  return n.t === "bool" ? "bool" : n.t;
}

/** Decode `n` into a value of type `t` whose current value is `cur` (Go decodes into what is there). */
function decodeInto(t: GoType, n: JNode, cur: GoValue, ctx: Ctx): GoValue {
  // Unmarshalers get the raw bytes of any value, null included.
  if (t.k === "raw") return { raw: n.raw };
  if (t.k === "time") {
    if (n.t === "null") return cur;
    if (n.t !== "string") {
      ctx.errors.push(`${fieldRef(ctx)}Time.UnmarshalJSON: input is not a JSON string`);
      return cur;
    }
    // Go parses the bytes between the quotes without unescaping them.
    const parsed = parseGoRFC3339(n.raw.slice(1, -1));
    if (typeof parsed === "string") {
      ctx.errors.push(`${fieldRef(ctx)}${parsed}`);
      return cur;
    }
    return { time: parsed };
  }
  if (n.t === "null") {
    // nil for maps, slices and pointers; ignored for everything else
    return t.k === "map" || t.k === "slice" || t.k === "ptr" ? null : cur;
  }
  if (t.k === "ptr") {
    const target = cur === null ? zeroOf(t.elem) : cur;
    return decodeInto(t.elem, n, target, ctx);
  }
  switch (n.t) {
    case "bool":
      typeError(ctx, "bool", t);
      return cur;
    case "string":
      if (t.k === "string") return n.value;
      typeError(ctx, "string", t);
      return cur;
    case "number":
      if (t.k === "int64") {
        // strconv.ParseInt(s, 10, 64): digits only (JSON allows a leading '-'), within int64
        if (/^-?\d+$/.test(n.raw)) {
          const v = BigInt(n.raw);
          if (v >= INT64_MIN && v <= INT64_MAX) return v;
        }
        typeError(ctx, `number ${n.raw}`, t);
        return cur;
      }
      typeError(ctx, "number", t);
      return cur;
    case "object": {
      if (t.k === "map") {
        const m: GoMap = cur instanceof Map ? cur : new Map();
        for (const [key, vn] of n.members) {
          // each element is decoded into a fresh zero value, then stored (so null stores "")
          const v = decodeInto(STRING, vn, "", ctx);
          m.set(key, typeof v === "string" ? v : "");
        }
        return m;
      }
      if (t.k === "struct") {
        const s: GoStruct = { ...(cur as GoStruct) };
        for (const [key, vn] of n.members) {
          const f = t.fields.find((x) => x.json === key) ?? t.fields.find((x) => fold(x.json) === fold(key));
          if (!f) continue; // unknown fields are dropped
          s[f.json] = decodeInto(f.type, vn, s[f.json] ?? zeroOf(f.type), {
            errors: ctx.errors,
            structName: t.go,
            path: [...(ctx.structName === undefined ? [] : ctx.path), f.json],
          });
        }
        return s;
      }
      typeError(ctx, "object", t);
      return cur;
    }
    case "array": {
      if (t.k === "slice") {
        const old = Array.isArray(cur) ? cur : [];
        return n.items.map((item, i) =>
          decodeInto(t.elem, item, i < old.length ? (old[i] as GoValue) : zeroOf(t.elem), ctx),
        );
      }
      typeError(ctx, describeNode(n), t);
      return cur;
    }
  }
}

function fieldRef(ctx: Ctx): string {
  return ctx.path.length > 0 ? `field ${ctx.path.join(".")}: ` : "";
}

/** json.Unmarshal(data, &v) for a fresh v of type t: the decoded value, or GoJsonError. */
export function goUnmarshal(t: GoType, data: Uint8Array | string): GoValue {
  const root = parseJson(data);
  const ctx: Ctx = { errors: [], path: [] };
  const v = decodeInto(t, root, zeroOf(t), ctx);
  if (ctx.errors.length > 0) throw new GoJsonError(ctx.errors.join("; "));
  return v;
}

/** json.Marshal(v) for v of type t. */
export function goMarshal(t: GoType, v: GoValue): string {
  switch (t.k) {
    case "string":
      return JSON.stringify(v as string);
    case "int64":
      return (v as bigint).toString();
    case "time":
      return JSON.stringify(formatGoTime((v as GoTimeValue).time));
    case "raw": {
      const raw = (v as GoRaw).raw;
      return raw === null ? "null" : compact(raw);
    }
    case "map": {
      if (v === null) return "null";
      const m = v as GoMap;
      const keys = [...m.keys()].sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(m.get(k))}`).join(",")}}`;
    }
    case "slice":
      return v === null ? "null" : `[${(v as GoSlice).map((e) => goMarshal(t.elem, e)).join(",")}]`;
    case "ptr":
      return v === null ? "null" : goMarshal(t.elem, v);
    case "struct": {
      const s = v as GoStruct;
      const parts: string[] = [];
      for (const f of t.fields) {
        const fv = s[f.json] ?? zeroOf(f.type);
        if (f.omitempty && isEmpty(f.type, fv)) continue;
        parts.push(`${JSON.stringify(f.json)}:${goMarshal(f.type, fv)}`);
      }
      return `{${parts.join(",")}}`;
    }
  }
}

/** encoding/json isEmptyValue for the kinds used here. */
function isEmpty(t: GoType, v: GoValue): boolean {
  switch (t.k) {
    case "string":
      return v === "";
    case "int64":
      return v === 0n;
    case "raw":
      return (v as GoRaw).raw === null || (v as GoRaw).raw === "";
    case "map":
      return v === null || (v as GoMap).size === 0;
    case "slice":
      return v === null || (v as GoSlice).length === 0;
    case "ptr":
      return v === null;
    default:
      return false; // structs and time.Time are never empty for omitempty
  }
}

// ---------------------------------------------------------------------------------------------------
// The whole natscli check
// ---------------------------------------------------------------------------------------------------

export type MicroKind = "ping" | "info" | "stats";

export const ResponseType: Record<MicroKind, string> = {
  ping: "io.nats.micro.v1.ping_response",
  info: "io.nats.micro.v1.info_response",
  stats: "io.nats.micro.v1.stats_response",
};

const GoTypes: Record<MicroKind, GoType> = { ping: PingType, info: InfoType, stats: StatsType };

/** Decode a reply into the nats.go struct and encode it again: the JSON natscli validates. */
export function goRoundTrip(kind: MicroKind, data: Uint8Array | string): string {
  return goMarshal(GoTypes[kind], goUnmarshal(GoTypes[kind], data));
}

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
const fixtures = new URL("./fixtures/micro-schemas/", import.meta.url);
let validators: Record<MicroKind, ValidateFunction> | undefined;

/** The official schemas (test/fixtures/micro-schemas), compiled once: draft-07, formats asserted. */
function schemaValidators(): Record<MicroKind, ValidateFunction> {
  if (!validators) {
    const ajv = new Ajv({ allErrors: true, strict: true });
    addFormats(ajv);
    const load = (f: string) => ajv.compile(JSON.parse(readFileSync(new URL(f, fixtures), "utf8")) as object);
    validators = {
      ping: load("ping_response.json"),
      info: load("info_response.json"),
      stats: load("stats_response.json"),
    };
  }
  return validators;
}

/** The result of checking one reply the way `nats micro` does. */
export type NatsCliCheck =
  | { ok: true; normalized: unknown; json: string }
  | { ok: false; stage: "type" | "decode" | "encode" | "schema"; errors: string[]; json?: string };

/**
 * json.Unmarshal into float64 then santhosh-tekuri's big.Rat(fmt.Sprint(f)): what natscli compares
 * against the schema's int64 bounds. Values near ±2^63 round to ±9223372036854776000 and fail.
 */
function float64Int64Problems(t: GoType, v: GoValue, path: string, out: string[]): void {
  if (v === null) return;
  switch (t.k) {
    case "int64": {
      const seen = BigInt(String(Number(v as bigint)));
      if (seen > INT64_MAX || seen < INT64_MIN)
        out.push(`${path}: ${String(v)} is ${seen} as a float64, outside the schema's int64 range`);
      return;
    }
    case "ptr":
      float64Int64Problems(t.elem, v, path, out);
      return;
    case "slice":
      (v as GoSlice).forEach((e, i) => float64Int64Problems(t.elem, e, `${path}/${i}`, out));
      return;
    case "struct":
      for (const f of t.fields)
        float64Int64Problems(f.type, (v as GoStruct)[f.json] ?? null, `${path}/${f.json}`, out);
      return;
    default:
      return;
  }
}

/** Check one $SRV.<verb> reply as `nats micro ls|info|stats` does (see the top of this file). */
export function checkLikeNatsCli(kind: MicroKind, data: Uint8Array | string): NatsCliCheck {
  // 1. the type, from api.schemaDetector
  let detected: GoStruct;
  try {
    detected = goUnmarshal(SchemaDetectorType, data) as GoStruct;
  } catch (e) {
    return { ok: false, stage: "decode", errors: [(e as Error).message] };
  }
  const type = (detected.type as string) || (detected.schema as string) || "io.nats.unknown_message";
  if (type !== ResponseType[kind])
    return {
      ok: false,
      stage: "type",
      errors: [`invalid response type ${type} (want ${ResponseType[kind]})`],
    };
  // 2. decode into the nats.go struct
  let value: GoValue;
  try {
    value = goUnmarshal(GoTypes[kind], data);
  } catch (e) {
    return { ok: false, stage: "decode", errors: [(e as Error).message] };
  }
  // 3. encode, decode as any, validate
  let json: string;
  try {
    json = goMarshal(GoTypes[kind], value);
  } catch (e) {
    return { ok: false, stage: "encode", errors: [(e as Error).message] };
  }
  const normalized: unknown = JSON.parse(json);
  const validate = schemaValidators()[kind];
  const errors: string[] = [];
  if (!validate(normalized))
    for (const e of validate.errors ?? []) errors.push(`${e.instancePath || "/"} ${e.message ?? e.keyword}`);
  float64Int64Problems(GoTypes[kind], value, "", errors);
  if (errors.length > 0) return { ok: false, stage: "schema", errors, json };
  return { ok: true, normalized, json };
}
