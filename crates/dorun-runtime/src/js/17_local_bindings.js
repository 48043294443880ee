// The bindings dorun serves without a store of their own (config/local_bindings.rs):
// `version_metadata`, rate limits, Hyperdrive's connection details from
// `localConnectionString`, and the bindings that exist only on Cloudflare, whose first use
// throws an Error that names the binding.

import { core, primordials } from "ext:core/mod.js";
import { config, console } from "ext:dorun/00_runtime.js";

const { Error, ObjectFreeze, Proxy, Symbol, TypeError } = primordials;
const { op_dorun_ratelimit, op_dorun_email_write } = core.ops;


function notAvailable(item) {
  return new Error(
    `env.${item.binding} (${item.what}, \`${item.key}\` in the config) is not available locally: ` +
      `it exists only on Cloudflare, and dorun cannot serve it. Guard its use, or give the Worker ` +
      `another binding to test with.`,
  );
}

/**
 * A binding that exists only on Cloudflare: any method call (or calling it) throws. Reads that
 * feature checks, printing and awaiting do stay quiet.
 */
function cloudOnly(item) {
  const quiet = new Set(["then", "toJSON", "constructor", "asymmetricMatch", "nodeType", "$$typeof"]);
  const fail = () => {
    throw notAvailable(item);
  };
  return new Proxy(fail, {
    get(target, name) {
      if (typeof name === "symbol") {
        if (name === Symbol.toStringTag) return `${item.what} (not available locally)`;
        return undefined;
      }
      if (quiet.has(name)) return undefined;
      // Printing it is not a use.
      if (name === "toString") return () => `[${item.what}: not available locally]`;
      return fail;
    },
    apply: fail,
    construct: fail,
    set: () => true,
  });
}

class RateLimit {
  #namespace;
  #limit;
  #period;

  constructor(item) {
    this.#namespace = item.namespace;
    this.#limit = item.limit;
    this.#period = item.period;
  }

  /** `{ key }`: whether this call is within the limit of its window. */
  async limit(options) {
    if (typeof options !== "object" || options === null || typeof options.key !== "string") {
      throw new TypeError("limit() expects an object with a string `key`");
    }
    return { success: op_dorun_ratelimit(this.#namespace, options.key, this.#limit, this.#period) };
  }
}

/** `send_email`: messages go to the outbox directory instead of out (as in wrangler dev). */
class SendEmail {
  #item;
  constructor(item) {
    this.#item = item;
  }

  async send(message) {
    const { from, to, raw } = message ?? {};
    if (typeof from !== "string" || typeof to !== "string" || raw === undefined) {
      throw new TypeError("send() expects an EmailMessage(from, to, raw) from cloudflare:email");
    }
    const item = this.#item;
    const allowed = item.destination !== null
      ? [item.destination]
      : item.allowed;
    if (allowed !== null && !allowed.includes(to)) {
      throw new Error(`email to ${to} not allowed (env.${item.binding} may send to ${allowed.join(", ")})`);
    }
    const bytes = typeof raw === "string"
      ? new TextEncoder().encode(raw)
      : new Uint8Array(await new Response(raw).arrayBuffer());
    const path = op_dorun_email_write(bytes);
    console.log(`send_email: env.${item.binding} message from ${from} to ${to} written to ${path}`);
  }
}

/** `secrets_store_secrets`: `get()` gives the secret's value from .dev.vars or the environment. */
class StoreSecret {
  #item;
  constructor(item) {
    this.#item = item;
  }

  async get() {
    const item = this.#item;
    if (item.value === null) {
      throw new Error(
        `Secret "${item.secretName}" (env.${item.binding}) has no local value: set ${item.secretName} ` +
          `in .dev.vars, .env or the environment of dorun`,
      );
    }
    return item.value;
  }
}

export function createLocalBinding(item) {
  switch (item.kind) {
    case "send_email":
      return new SendEmail(item);
    case "secret":
      return new StoreSecret(item);
    case "version_metadata":
      return ObjectFreeze({
        id: config.versionMetadata.id,
        tag: config.versionMetadata.tag,
        timestamp: new Date(config.versionMetadata.timestampMs).toISOString(),
      });
    case "ratelimit":
      return new RateLimit(item);
    case "analytics_engine":
      // As `wrangler dev` simulates it: data points are accepted and go nowhere.
      return ObjectFreeze({
        writeDataPoint(point) {
          if (point !== undefined && (typeof point !== "object" || point === null)) {
            throw new TypeError("writeDataPoint() expects an object");
          }
        },
      });
    case "hyperdrive":
      return ObjectFreeze({
        connectionString: item.connectionString,
        host: item.host,
        port: item.port,
        user: item.user,
        password: item.password,
        database: item.database,
      });
    default:
      return cloudOnly(item);
  }
}
