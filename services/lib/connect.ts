/**
 * The NATS connection of a service: auth and TLS from the config, endless reconnects.
 */
import { readFileSync } from "node:fs";
import { type NatsConnection, credsAuthenticator, nkeyAuthenticator } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import type { Config } from "./config.ts";

export type { NatsConnection };

/** Connect with the config's servers and credentials. Waits for the first connect. */
export async function connectNats(config: Config, name: string): Promise<NatsConnection> {
  const a = config.auth;
  const authenticator = a.creds
    ? credsAuthenticator(readFileSync(a.creds))
    : a.nkeySeedFile
      ? nkeyAuthenticator(new TextEncoder().encode(readFileSync(a.nkeySeedFile, "utf8").trim()))
      : undefined;
  const tls =
    a.tlsCa || a.tlsCert
      ? {
          ...(a.tlsCa ? { caFile: a.tlsCa } : {}),
          ...(a.tlsCert ? { certFile: a.tlsCert } : {}),
          ...(a.tlsKey ? { keyFile: a.tlsKey } : {}),
        }
      : undefined;
  return connect({
    servers: config.natsUrl,
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    // no stack-trace Error per request: a third of the services' CPU on the hot path (bench profile)
    noAsyncTraces: true,
    ...(a.user ? { user: a.user, pass: a.password ?? "" } : {}),
    ...(a.token ? { token: a.token } : {}),
    ...(authenticator ? { authenticator } : {}),
    ...(tls ? { tls } : {}),
  });
}
