/**
 * Output for people: aligned columns (numbers to the right), human durations and ages.
 */

/** A cell: text, or a number (right-aligned). */
export type Cell = string | number | null | undefined;

/**
 * Render rows under a header as aligned columns separated by two spaces. `null`/`undefined` cells
 * show as "-". Trailing spaces are trimmed.
 */
export function table(header: string[], rows: Cell[][]): string {
  const text = (c: Cell) => (c === null || c === undefined ? "-" : String(c));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => text(r[i]).length)));
  const right = header.map(
    (_, i) => rows.some((r) => typeof r[i] === "number") && rows.every((r) => isNumeric(r[i])),
  );
  const line = (cells: Cell[], isHeader: boolean) =>
    cells
      .map((c, i) => {
        const t = text(c);
        const w = widths[i] ?? t.length;
        return right[i] && !isHeader ? t.padStart(w) : t.padEnd(w);
      })
      .join("  ")
      .trimEnd();
  return [line(header, true), ...rows.map((r) => line(r, false))].join("\n");
}

function isNumeric(c: Cell): boolean {
  return typeof c === "number" || c === null || c === undefined;
}

/** A duration in nanoseconds as people read it: 850ns, 12.30µs, 4.56ms, 1.20s. */
export function nanosText(ns: number): string {
  if (!Number.isFinite(ns)) return "-";
  if (ns < 1e3) return `${Math.round(ns)}ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(2)}µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(2)}ms`;
  return `${(ns / 1e9).toFixed(2)}s`;
}

/** How long ago an ISO time was: 3s ago, 5m ago, 2h ago, 4d ago. */
export function ago(iso: string | undefined, now: number = Date.now()): string {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/** Shorten text to `max` characters (with an ellipsis), on one line. */
export function clip(s: string, max = 40): string {
  const one = s.replace(/\s+/g, " ");
  return one.length <= max ? one : `${one.slice(0, Math.max(1, max - 1))}…`;
}
