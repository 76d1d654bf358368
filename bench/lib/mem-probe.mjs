// Preloaded into the service processes of bench/startup.ts through
//   NODE_OPTIONS="--import=<this file>"
// When SYNCD_BENCH_MEM_DIR is set it writes, every second, `<site>.<pid>.json` there: the process's
// memory split (process.memoryUsage: rss, V8 heap total/used, external, array buffers) and the V8
// heap spaces' sizes, so a report can tell live data from heap kept and from memory outside V8.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { getHeapSpaceStatistics } from "node:v8";
import { isMainThread } from "node:worker_threads";

const dir = process.env.SYNCD_BENCH_MEM_DIR;
if (dir && isMainThread) {
  const at = process.argv.indexOf("--site");
  const site = at >= 0 ? process.argv[at + 1] : "-";
  const file = join(dir, `${site}.${process.pid}.json`);
  const mb = (n) => Math.round((n / 1048576) * 10) / 10;
  // RSS by mapping (/proc/self/smaps): the brk heap (glibc's main arena), anonymous mappings by
  // size (V8's pages are 256 KB each, large objects bigger; glibc's thread arenas reserve 64 MB),
  // and file-backed (the node binary, libraries)
  const maps = () => {
    const out = { brk: 0, anonSmall: 0, anonMid: 0, anonArena: 0, anonHuge: 0, file: 0 };
    let cls = "file";
    for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s*(.*)$/.exec(line);
      if (m) {
        const size = Number.parseInt(m[2], 16) - Number.parseInt(m[1], 16);
        const name = m[4];
        if (name === "[heap]") cls = "brk";
        else if (name === "" || name.startsWith("[anon")) {
          if (size <= 1048576) cls = "anonSmall";
          else if (size < 32 * 1048576) cls = "anonMid";
          else if (size <= 132 * 1048576) cls = "anonArena";
          else cls = "anonHuge";
        } else cls = "file";
        continue;
      }
      if (line.startsWith("Rss:")) out[cls] += Number(line.split(/\s+/)[1]) * 1024;
    }
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, mb(v)]));
  };
  const t = setInterval(() => {
    const m = process.memoryUsage();
    const spaces = Object.fromEntries(
      getHeapSpaceStatistics().map((s) => [
        s.space_name,
        { size: mb(s.space_size), used: mb(s.space_used_size) },
      ]),
    );
    try {
      writeFileSync(
        file,
        JSON.stringify({
          rss: mb(m.rss),
          heapTotal: mb(m.heapTotal),
          heapUsed: mb(m.heapUsed),
          external: mb(m.external),
          arrayBuffers: mb(m.arrayBuffers),
          spaces,
          maps: maps(),
        }),
      );
    } catch {
      /* the bench removed the dir */
    }
  }, 1000);
  t.unref();
}
