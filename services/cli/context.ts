/**
 * What every command gets and returns.
 */
import type { NatsConnection } from "@nats-io/nats-core";
import type { Cli } from "./args.ts";
import type { MeshClient } from "./nats.ts";

/** A command's inputs: the connection and the parsed command line. */
export type Ctx = {
  nc: NatsConnection;
  /** every site of the mesh, directly or through the hub relay */
  mesh: MeshClient;
  cli: Cli;
  /** a note for people on stderr (not part of the output) */
  warn(message: string): void;
};

/** A command's result: `data` is printed with --json, `text` otherwise; exit code 0 unless set. */
export type Output = { data: unknown; text: string; exitCode?: number };
