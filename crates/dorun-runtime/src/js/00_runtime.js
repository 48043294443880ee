// What the whole glue shares, loaded first: the runtime config from Rust, the console,
// the Durable Object whose code is running now, waitUntil, and the base classes of
// `cloudflare:workers`.

import { core, primordials } from "ext:core/mod.js";

const {
  JSONParse,
  PromisePrototypeThen,
  PromiseResolve,
  SafeSet,
  SetPrototypeAdd,
  SetPrototypeDelete,
} = primordials;

const { op_dorun_log, op_dorun_runtime_config } = core.ops;

/**
 * Vars, namespaces (`{binding, className, sqlite}` by index), object settings and limits,
 * as the isolate thread built them (isolate.rs `runtime_config_json`).
 */
export const config = JSONParse(op_dorun_runtime_config());

// --- console -> tracing -------------------------------------------------------------
const consoleModule = core.loadExtScript("ext:deno_web/01_console.js");
// Log lines are plain text: no ANSI colours in values.
consoleModule.setNoColorFns(() => true, () => true);
export const console = new consoleModule.Console((message, level) => {
  op_dorun_log(level, message);
});

// --- the object whose code is running ---------------------------------------------------
// User code of a Durable Object runs with its live object as V8's async context, which
// V8 carries across awaits, timers and promise continuations. This is the one way to ask
// which object is running now.

/** The live object whose code is running now, or null (Worker code). */
export function currentObject() {
  return core.getAsyncContext() ?? null;
}

/** Runs `callback` as code of `object` (and everything it schedules). */
export function runAs(object, callback) {
  const previous = core.getAsyncContext();
  core.setAsyncContext(object);
  try {
    return callback();
  } finally {
    core.setAsyncContext(previous);
  }
}

/**
 * The output gate of the running object if a confirmed write is not yet durable, else
 * null: outgoing messages (fetch, stub calls, WebSocket sends) wait for it.
 */
export function pendingOutputGate() {
  const object = currentObject();
  return object === null ? null : object.pendingOutputGate();
}

// --- waitUntil ----------------------------------------------------------------------------
/** Promises passed to waitUntil that have not settled; kept so errors are logged. */
export const pendingWaitUntil = new SafeSet();

export function waitUntil(promise) {
  const tracked = PromisePrototypeThen(
    PromiseResolve(promise),
    () => SetPrototypeDelete(pendingWaitUntil, tracked),
    (error) => {
      SetPrototypeDelete(pendingWaitUntil, tracked);
      console.error("Uncaught (in waitUntil)", error);
    },
  );
  SetPrototypeAdd(pendingWaitUntil, tracked);
}

// --- cloudflare:workers base classes ------------------------------------------------------
export class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class RpcTarget {}

/** The Worker's env: vars and secrets, then one DurableObjectNamespace per binding. */
export const env = { ...config.vars };

/**
 * `ctx.exports`: a binding for each of the Worker's own exports (a namespace per Durable
 * Object class, a loopback for each WorkerEntrypoint), filled in once the modules loaded.
 */
export const ctxExports = {};
