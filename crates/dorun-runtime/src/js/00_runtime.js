// What the whole glue shares, loaded first: the runtime config from Rust, the console,
// the Durable Object whose code is running now, waitUntil, and the base classes of
// `cloudflare:workers`.

import { core, primordials } from "ext:core/mod.js";

const {
  DateNow,
  JSONParse,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeSet,
  ObjectFreeze,
  ReflectApply,
  SafeMap,
  SafeWeakMap,
  PromisePrototypeThen,
  PromiseResolve,
  SafeSet,
  SetPrototypeAdd,
  SetPrototypeClear,
  SetPrototypeDelete,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
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
  // Tagged with the object whose code logs (class and id), if any.
  const object = currentObject();
  op_dorun_log(level, message, object?.className ?? "", object?.hex ?? "");
});

// --- the async context: the object whose code is running, AsyncLocalStorage stores -------
// V8 carries one value across awaits, promise continuations and timers (its
// continuation-preserved embedder data, `core.getAsyncContext`). It holds an immutable frame
// with both consumers: the live Durable Object the code runs for (output gate, exports,
// sockets) and the stores of node:async_hooks' AsyncLocalStorage. Entering an object or a
// store makes a new frame, so each continuation sees the frame of its own chain. This is
// the one way to ask which object is running now.

class ContextFrame {
  constructor(object, stores, invocation) {
    this.object = object;
    this.stores = stores;
    /** The event being served: `{ depth, subrequests }`, or null outside one. */
    this.invocation = invocation;
    ObjectFreeze(this);
  }
}

function currentFrame() {
  const frame = core.getAsyncContext();
  return frame instanceof ContextFrame ? frame : null;
}

/** The live object whose code is running now, or null (Worker code). */
export function currentObject() {
  return currentFrame()?.object ?? null;
}

/** Runs `callback(...args)` with `frame` as the async context, then restores the previous. */
export function runInFrame(frame, callback, args = []) {
  const previous = core.getAsyncContext();
  core.setAsyncContext(frame);
  try {
    return callback(...args);
  } finally {
    core.setAsyncContext(previous);
  }
}

/** Runs `callback` as code of `object` (keeping the caller's AsyncLocalStorage stores). */
export function runAs(object, callback) {
  const frame = currentFrame();
  return runInFrame(
    new ContextFrame(object, frame?.stores ?? null, frame?.invocation ?? null),
    callback,
  );
}

/**
 * Runs `callback` as the start of an event (an HTTP request, an object's call) that came
 * `depth` Worker fetches deep: its fetch() calls are counted against the subrequest limits.
 */
export function runInvocation(object, depth, callback) {
  const invocation = { depth, subrequests: 0 };
  return runInFrame(
    new ContextFrame(object, currentFrame()?.stores ?? null, invocation),
    callback,
  );
}

/** The event the running code serves, or null. */
export function currentInvocation() {
  return currentFrame()?.invocation ?? null;
}

/** The current frame with `key`'s store set to `value` (`undefined` removes it). */
export function frameWithStore(key, value) {
  const frame = currentFrame();
  const stores = new SafeMap();
  frame?.stores?.forEach((stored, storeKey) => stores.set(storeKey, stored));
  if (value === undefined) stores.delete(key);
  else stores.set(key, value);
  return new ContextFrame(
    frame?.object ?? null,
    stores.size === 0 ? null : stores,
    frame?.invocation ?? null,
  );
}

/** The store `key` holds in the current frame. */
export function storeOf(key) {
  return currentFrame()?.stores?.get(key);
}

/** The current frame, to run code in later (AsyncResource, AsyncLocalStorage.snapshot). */
export function snapshotFrame() {
  return core.getAsyncContext();
}

export function enterFrame(frame) {
  core.setAsyncContext(frame);
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

// --- timers charged to their owner ----------------------------------------------------------
// A timer callback runs outside any event, so the CPU limit of events does not see it. Its
// time is charged to an account: the live object whose code set it (the budget starts
// again with each event the object gets, as Cloudflare's per-event CPU budget does), or,
// for Worker code, the chain of timers it belongs to. Past the CPU limit the account's
// timers are cleared, and an object is reset.

const objectAccounts = new SafeWeakMap();
/** The account of the timer callback running now, if any. */
let runningAccount = null;
/** Timer id -> its account, so clearTimeout forgets it. */
const timerAccounts = new SafeMap();

function newAccount(object) {
  return { object, spentMs: 0, timers: new SafeSet(), stopped: false };
}

function currentAccount() {
  const object = currentObject();
  if (object === null) return runningAccount ?? newAccount(null);
  let account = WeakMapPrototypeGet(objectAccounts, object);
  if (account === undefined) {
    account = newAccount(object);
    WeakMapPrototypeSet(objectAccounts, object, account);
  }
  return account;
}

/** An event reached `object`: its timers' CPU budget starts again. */
export function chargeReset(object) {
  const account = WeakMapPrototypeGet(objectAccounts, object);
  if (account !== undefined) account.spentMs = 0;
}

function stopAccount(account, clear) {
  account.stopped = true;
  for (const id of account.timers) {
    MapPrototypeDelete(timerAccounts, id);
    clear(id);
  }
  SetPrototypeClear(account.timers);
  if (account.object === null) {
    console.error(
      `Timers of the Worker used more than the CPU time limit (${config.cpuLimitMs} ms) and were stopped.`,
    );
  } else {
    account.object.reset(
      new Error("Durable Object exceeded its CPU time limit and was reset."),
    );
  }
}

/** setTimeout/setInterval/clear* over deno's timers, charging callbacks to accounts. */
export function chargedTimers(timers) {
  // deno's timers refuse a `this` other than globalThis or undefined.
  const { setTimeout, setInterval, clearTimeout } = timers;
  const clear = (id) => {
    const account = MapPrototypeGet(timerAccounts, id);
    if (account !== undefined) {
      SetPrototypeDelete(account.timers, id);
      MapPrototypeDelete(timerAccounts, id);
    }
    clearTimeout(id);
  };
  const schedule = (set, repeat, callback, delay, args) => {
    if (typeof callback !== "function") return set(callback, delay, ...args);
    const account = currentAccount();
    let id;
    const charged = function (...callArgs) {
      if (account.stopped) return;
      const previous = runningAccount;
      runningAccount = account;
      const start = DateNow();
      try {
        return ReflectApply(callback, this, callArgs);
      } finally {
        runningAccount = previous;
        account.spentMs += DateNow() - start;
        if (!repeat) {
          SetPrototypeDelete(account.timers, id);
          MapPrototypeDelete(timerAccounts, id);
        }
        if (account.spentMs > config.cpuLimitMs && !account.stopped) stopAccount(account, clear);
      }
    };
    id = set(charged, delay, ...args);
    SetPrototypeAdd(account.timers, id);
    MapPrototypeSet(timerAccounts, id, account);
    return id;
  };
  return {
    setTimeout: (callback, delay = 0, ...args) =>
      schedule(setTimeout, false, callback, delay, args),
    setInterval: (callback, delay = 0, ...args) =>
      schedule(setInterval, true, callback, delay, args),
    clearTimeout: clear,
    clearInterval: clear,
  };
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

/** Set once the Worker's modules have loaded and its serve loop runs. */
export const lifecycle = { started: false };

/** The Worker's env: vars and secrets, then one DurableObjectNamespace per binding. */
export const env = { ...config.vars };

/**
 * `ctx.exports`: a binding for each of the Worker's own exports (a namespace per Durable
 * Object class, a loopback for each WorkerEntrypoint), filled in once the modules loaded.
 */
export const ctxExports = {};
