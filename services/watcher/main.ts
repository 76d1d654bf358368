/** Entry point of syncd-watcher: `node services/run.mjs watcher --site a ...` */
import { runService } from "../lib/runtime.ts";
import { watcherService } from "./service.ts";

await runService("watcher", watcherService);
