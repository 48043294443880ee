"use strict";
// dorun/test: start `dorun serve` for a test suite, and drive it through its admin listener.
//
//   const dorun = await startDorun({ config: "wrangler.toml" });
//   await dorun.fetch("/counter/a");          // the app, over HTTP, as on Cloudflare
//   await dorun.admin.objects("COUNTER");     // what its Durable Objects hold
//   await dorun.reset();                      // every object, alarm, KV key... gone
//   await dorun.stop();                       // SIGTERM; ephemeral state removed
//
// Works with any test runner: nothing here depends on one.

const { spawn } = require("node:child_process");
const { createInterface } = require("node:readline");
const { binaryPath, explainSpawnError } = require("../lib/binary.js");

const ID = /^[0-9a-f]{64}$/i;

class DorunAdminError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = "DorunAdminError";
    this.status = status;
    this.body = body;
  }
}

/**
 * A client of dorun's admin listener (`dorun serve --admin-port ...`).
 * `ns` arguments take a namespace's key (`<worker>-<Class>`), its binding name or its class
 * name; `object` arguments take an id (64 hex digits), a name (any other string: the id
 * `idFromName(name)` gives), or `{ id }` / `{ name }`.
 */
function connectDorun(adminUrl, options = {}) {
  if (typeof adminUrl !== "string" || adminUrl === "") {
    throw new TypeError("connectDorun(adminUrl): adminUrl must be the admin listener's URL");
  }
  const base = adminUrl.replace(/\/+$/, "");
  const token = options.token ?? process.env.DORUN_ADMIN_TOKEN;
  let namespaceList = null;
  const ids = new Map();

  async function request(method, path, body) {
    const headers = { accept: "application/json" };
    // The listener takes a state change only with a header a web page cannot send alone.
    if (method !== "GET" && method !== "HEAD") headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let value;
    try {
      value = text === "" ? null : JSON.parse(text);
    } catch {
      value = text;
    }
    if (!response.ok) {
      const message = value && typeof value === "object" && value.error ? value.error : text;
      throw new DorunAdminError(
        `dorun admin: ${method} ${path}: ${response.status} ${message}`,
        response.status,
        value,
      );
    }
    return value;
  }

  async function namespaces() {
    return await request("GET", "/api/namespaces");
  }

  async function namespaceKey(ns) {
    if (typeof ns !== "string" || ns === "") {
      throw new TypeError("a namespace: its key (<worker>-<Class>), binding or class name");
    }
    namespaceList ??= await namespaces();
    for (const field of ["key", "binding", "class"]) {
      const found = namespaceList.filter((n) => n[field] === ns);
      if (found.length === 1) return found[0].key;
      if (found.length > 1) {
        throw new Error(
          `'${ns}' names ${found.length} namespaces (${found.map((n) => n.key).join(", ")}): ` +
            "pass one of those keys",
        );
      }
    }
    throw new Error(
      `no Durable Object namespace '${ns}' (there are: ` +
        `${namespaceList.map((n) => `${n.key} (binding ${n.binding})`).join(", ") || "none"})`,
    );
  }

  async function idFromName(ns, name) {
    const key = await namespaceKey(ns);
    const cacheKey = `${key}\0${name}`;
    let id = ids.get(cacheKey);
    if (id === undefined) {
      const query = new URLSearchParams({ name: String(name) });
      id = (await request("GET", `/api/namespaces/${encodeURIComponent(key)}/id?${query}`)).id;
      ids.set(cacheKey, id);
    }
    return id;
  }

  async function objectPath(ns, object) {
    const key = await namespaceKey(ns);
    let id;
    if (object && typeof object === "object") {
      if (typeof object.id === "string") id = object.id;
      else if (typeof object.name === "string") id = await idFromName(key, object.name);
    } else if (typeof object === "string") {
      id = ID.test(object) ? object : await idFromName(key, object);
    }
    if (id === undefined) {
      throw new TypeError("an object: its id (64 hex digits), its name, { id } or { name }");
    }
    return `/api/objects/${encodeURIComponent(key)}/${id.toLowerCase()}`;
  }

  return {
    url: base,
    request,
    namespaces,
    idFromName,
    async objects(ns) {
      return await request("GET", `/api/namespaces/${encodeURIComponent(await namespaceKey(ns))}/objects`);
    },
    async object(ns, object) {
      return await request("GET", await objectPath(ns, object));
    },
    async kv(ns, object, { prefix, start, limit } = {}) {
      const query = new URLSearchParams();
      if (prefix !== undefined) query.set("prefix", prefix);
      if (start !== undefined) query.set("start", start);
      if (limit !== undefined) query.set("limit", String(limit));
      const suffix = query.toString() === "" ? "" : `?${query}`;
      return (await request("GET", `${await objectPath(ns, object)}/kv${suffix}`)).entries;
    },
    async get(ns, object, key) {
      const query = new URLSearchParams({ start: key, limit: "1" });
      const { entries } = await request("GET", `${await objectPath(ns, object)}/kv?${query}`);
      return entries.length > 0 && entries[0].key === key ? entries[0].value : undefined;
    },
    async sql(ns, object, query) {
      return await request("POST", `${await objectPath(ns, object)}/sql`, { query });
    },
    async alarm(ns, object) {
      return (await request("GET", `${await objectPath(ns, object)}/alarm`)).alarm;
    },
    async runAlarm(ns, object) {
      return await request("POST", `${await objectPath(ns, object)}/alarm/run`);
    },
    async deleteAlarm(ns, object) {
      return await request("DELETE", `${await objectPath(ns, object)}/alarm`);
    },
    async evict(ns, object) {
      return await request("POST", `${await objectPath(ns, object)}/evict`);
    },
    async reset(ns) {
      if (ns === undefined) return await request("POST", "/api/reset");
      const key = encodeURIComponent(await namespaceKey(ns));
      return await request("POST", `/api/namespaces/${key}/reset`);
    },
  };
}

function configArgs(config) {
  if (config === undefined || config === null) return [];
  if (Array.isArray(config)) return config.map(String);
  return [String(config)];
}

/**
 * Starts `dorun serve` on free ports (the app on 127.0.0.1, the admin listener beside it)
 * and resolves once both listen.
 */
async function startDorun(options = {}) {
  const {
    config,
    ephemeral = options.dataDir === undefined,
    dataDir,
    args = [],
    env = {},
    cwd,
    port = 0,
    adminPort = 0,
    timeoutMs = 30_000,
    output = false,
  } = options;
  const binary = options.binary ?? binaryPath();
  if (ephemeral && dataDir !== undefined) {
    throw new TypeError("startDorun: give either ephemeral: true or a dataDir, not both");
  }
  const argv = [
    "serve",
    ...configArgs(config),
    "--port",
    String(port),
    "--admin-port",
    String(adminPort),
    ...(ephemeral ? ["--ephemeral"] : []),
    ...(dataDir !== undefined ? ["--data-dir", String(dataDir)] : []),
    ...args.map(String),
  ];
  const child = spawn(binary, argv, {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    // dorun stops by itself if this process dies without stopping it.
    env: { ...process.env, ...env, DORUN_PARENT_PID: String(process.pid) },
  });
  let logs = "";
  const collect = (chunk) => {
    logs += chunk;
    if (output === true) process.stderr.write(chunk);
    else if (typeof output === "function") output(String(chunk));
  };
  child.stderr.setEncoding("utf8").on("data", collect);
  // A test run that ends without stop(): do not leave dorun behind.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      process.off("exit", killOnExit);
      resolve(code ?? signal);
    });
  });

  let addresses;
  try {
    addresses = await new Promise((resolve, reject) => {
      const found = {};
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`dorun did not start within ${timeoutMs} ms:\n${logs}`));
      }, timeoutMs);
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(new Error(explainSpawnError(binary, error)));
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`dorun serve exited (${code ?? signal}) before listening:\n${logs}`));
      });
      // dorun prints one line per listener on stdout, for scripts and tests.
      createInterface({ input: child.stdout }).on("line", (line) => {
        collect(`${line}\n`);
        const admin = /^dorun: admin on (\S+)$/.exec(line);
        const listening = /^dorun: listening on (\S+)$/.exec(line);
        if (admin) found.adminUrl = admin[1];
        if (listening) found.url = listening[1];
        if (found.adminUrl && found.url && !found.done) {
          found.done = true;
          clearTimeout(timer);
          resolve(found);
        }
      });
    });
  } catch (error) {
    process.off("exit", killOnExit);
    throw error;
  }

  const { url, adminUrl } = addresses;
  const admin = connectDorun(adminUrl, { token: env.DORUN_ADMIN_TOKEN });
  let stopping = null;
  const server = {
    url,
    adminUrl,
    admin,
    process: child,
    /** fetch() against dorun: a path ("/x") is taken relative to its URL. */
    fetch(input, init) {
      const target = typeof input === "string" && input.startsWith("/") ? url + input : input;
      return fetch(target, init);
    },
    /**
     * Every object, alarm, socket, KV key, D1 row, R2 object and queued message gone; with a
     * namespace, only its objects, their alarms and sockets.
     */
    reset(ns) {
      return admin.reset(ns);
    },
    /** What dorun wrote on stdout and stderr so far. */
    logs() {
      return logs;
    },
    /**
     * SIGTERM: requests in flight drain, storage is committed, the ephemeral state removed.
     * Resolves to the exit code (0) or the signal's name; SIGKILL after `timeoutMs`.
     */
    stop({ timeoutMs: stopTimeout = 10_000 } = {}) {
      if (stopping === null) {
        if (child.exitCode !== null || child.signalCode !== null) {
          stopping = exited;
        } else {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), stopTimeout);
          stopping = exited.finally(() => clearTimeout(timer));
        }
      }
      return stopping;
    },
  };
  if (Symbol.asyncDispose) server[Symbol.asyncDispose] = () => server.stop();
  return server;
}

module.exports = { startDorun, connectDorun, DorunAdminError };
