/** Entry point of syncd-clock: `node services/run.mjs clock --site a ...` */
import { runService } from "../lib/runtime.ts";
import { clockService } from "./service.ts";

await runService("clock", clockService);
