// Preloaded into the service processes of bench/startup.ts through
//   NODE_OPTIONS="--import=<this file>"
// When SYNCD_BENCH_MEM_DIR is set it writes, every second, `<site>.<pid>.json` there: the process's
// memory split (process.memoryUsage: rss, V8 heap total/used, external, array buffers) and the V8
// heap spaces' sizes, so a report can tell live data from heap kept and from memory outside V8.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { getHeapSpaceStatistics } from "node:v8";
import { isMainThread } from "node:worker_threads";

const dir = process.env.SYNCD_BENCH_MEM_DIR;
if (dir && isMainThread) {
  const at = process.argv.indexOf("--site");
  const site = at >= 0 ? process.argv[at + 1] : "-";
  const file = join(dir, `${site}.${process.pid}.json`);
  const mb = (n) => Math.round((n / 1048576) * 10) / 10;
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
        }),
      );
    } catch {
      /* the bench removed the dir */
    }
  }, 1000);
  t.unref();
}
