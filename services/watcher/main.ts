/** Entry point of syncd-watcher: `node --import tsx services/watcher/main.ts --site a ...` */
import { runService } from "../lib/runtime.ts";
import { counts, wireWatcher } from "./service.ts";

await runService("watcher", {
  description: "turns local writes of the site's buckets into ops",
  wire: wireWatcher,
  statsData: (ep) => (ep === "status" ? Object.fromEntries(counts) : null),
});
