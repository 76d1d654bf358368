/** Entry point of syncd-clock: `node --import tsx services/clock/main.ts --site a ...` */
import { runService } from "../lib/runtime.ts";
import { counts, wireClock } from "./service.ts";

await runService("clock", {
  description: "the site's persisted hybrid logical (or Lamport) clock",
  wire: wireClock,
  statsData: (ep) => (ep === "tick" ? { ...counts } : null),
});
