// Preloaded into the service processes of the bench's profile run through
//   NODE_OPTIONS="--import=<this file>"   (Node 20 refuses --cpu-prof in NODE_OPTIONS)
// When SYNCD_BENCH_CPUPROF_DIR is set it starts the V8 CPU profiler in the main thread (the same
// profiler and file format as `node --cpu-prof`) and writes `<instance>.<pid>.cpuprofile` there when
// the process exits (the services exit through process.exit on SIGTERM). Plain JS: it runs before
// tsx is registered. File name: `<site>.<instance>.<pid>.cpuprofile` (site from `--site`).
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { join } from "node:path";
import { isMainThread } from "node:worker_threads";

const dir = process.env.SYNCD_BENCH_CPUPROF_DIR;
if (dir && isMainThread) {
  const interval = Number(process.env.SYNCD_BENCH_CPUPROF_INTERVAL_US ?? 500);
  const session = new Session();
  session.connect();
  // an in-thread session dispatches synchronously: each callback runs before post() returns
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", { interval });
  session.post("Profiler.start");
  process.on("exit", () => {
    session.post("Profiler.stop", (err, res) => {
      if (err || !res) return;
      const at = process.argv.indexOf("--site");
      const site = at >= 0 ? process.argv[at + 1] : "-";
      const name = `${site}.${process.env.SYNCD_INSTANCE ?? "node"}.${process.pid}.cpuprofile`;
      try {
        writeFileSync(join(dir, name), JSON.stringify(res.profile));
      } catch {
        /* nothing to do at exit */
      }
    });
  });
}
