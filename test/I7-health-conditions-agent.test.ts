/**
 * I7 in the agent (#13.1): every condition of I7-health-conditions again, with each site's four
 * services in one process sharing one health list (services/lib/health.ts `health.as(service)`): each
 * condition is shown once, by the service that raised it, and cleared by it. Runs against
 * $NATS_SERVER like the file it imports.
 */
import { describe } from "node:test";

process.env.SYNCD_TEST_AGENT = "1";
describe("I7 with each site's services in one agent process", async () => {
  await import("./I7-health-conditions.test.ts");
});
