// The live-object lifecycle: one LiveObject per (namespace, id) on the thread the object is
// pinned to: constructed on its first event with the input gate closed, fed events through
// that gate, reset when its code or a commit fails, evicted when idle.

import { core, primordials } from "ext:core/mod.js";
import {
  chargeReset,
  config,
  console,
  ctxExports,
  DurableObject,
  env,
  runAs,
  runInvocation,
  waitUntil,
} from "ext:dorun/00_runtime.js";
import { DurableObjectId } from "ext:dorun/02_ids.js";
import { hibernationApi, runHibernatableEvent } from "ext:dorun/04_hibernation.js";
import { fetchDepthOf, makeRequest, sendResponse } from "ext:dorun/05_http.js";
import {
  deserialize,
  lookupMember,
  marshal,
  serialize,
  serializeError,
  serializeResult,
  unmarshal,
} from "ext:dorun/06_rpc.js";
import { InputGate } from "ext:dorun/07_gates.js";
import { DurableObjectStorage } from "ext:dorun/08_storage.js";
import { runAlarm } from "ext:dorun/09_alarms.js";

const {
  ObjectHasOwn,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  ArrayPrototypeSort,
  DateNow,
  Error,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeHas,
  MapPrototypeSet,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromisePrototypeThen,
  PromiseRace,
  SafeMap,
  TypeError,
} = primordials;

const {
  op_dorun_event_entered,
  op_dorun_object_metric,
  op_dorun_reply_error,
  op_dorun_reply_value,
  op_dorun_storage_pressure,
  op_dorun_storage_sweep_idle,
} = core.ops;

const EMPTY_PAYLOAD = new Uint8Array(0);
const MAX_BCW_DEPTH = 64;
const BCW_TIMEOUT =
  "A call to blockConcurrencyWhile() in a Durable Object waited for too long. The call was canceled and the Durable Object was reset.";
const encoder = new TextEncoder();

const RESERVED_METHODS = [
  "fetch",
  "connect",
  "alarm",
  "webSocketMessage",
  "webSocketClose",
  "webSocketError",
  "dup",
  "constructor",
];

/** The live objects of this thread, by `namespace:id`. */
export const live = new SafeMap();

class LiveObject {
  constructor(namespace, hex, name, classInfo) {
    this.key = `${namespace}:${hex}`;
    this.namespace = namespace;
    this.hex = hex;
    this.name = name;
    this.className = classInfo.className;
    this.sqlite = classInfo.sqlite;
    this.instance = null;
    this.broken = null;
    this.inputGate = new InputGate();
    this.inFlight = 0;
    this.lastActive = DateNow();
    /** The scheduled time of the alarm whose alarm() is running, or null. */
    this.runningAlarm = null;
    /** JS WebSockets of this object's hibernatable sockets, by registry id. */
    this.sockets = new SafeMap();
    /** Standard (accept()) WebSockets open in this object: they pin it in memory. */
    this.localSockets = 0;
    /** Set by ctx.abort(reason, { retryAlarm: false }). */
    this.noAlarmRetry = false;
    this.storage = new DurableObjectStorage(this);
    const object = this;
    // As on Cloudflare, ctx.id.name is kept only for names up to 1024 bytes.
    const idName = name !== undefined && encoder.encode(name).byteLength <= 1024
      ? name
      : undefined;
    this.ctx = {
      id: new DurableObjectId(namespace, hex, idName),
      storage: this.storage,
      blockConcurrencyWhile: (callback) => {
        if (object.inputGate.depth >= MAX_BCW_DEPTH) {
          throw new Error("blockConcurrencyWhile() calls are nested too deeply.");
        }
        return object.blockConcurrencyWhile(callback);
      },
      waitUntil: (promise) => waitUntil(promise),
      abort: (reason, options = undefined) => {
        if (options?.retryAlarm === false) object.noAlarmRetry = true;
        const error = new Error(reason ?? "Application called abort() to reset Durable Object.");
        object.reset(error);
        throw error;
      },
      props: {},
      exports: ctxExports,
      ...hibernationApi(this),
    };
  }

  /** See 00_runtime.js `pendingOutputGate`. */
  pendingOutputGate() {
    return this.storage.pendingGate();
  }

  /**
   * Runs `callback` with the input gate closed: no other event starts until it settles.
   * Past the timeout (30 s, as on Cloudflare) the object is reset.
   */
  async blockConcurrencyWhile(callback, { resetOnError = true } = {}) {
    this.inputGate.close();
    let timer;
    try {
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(BCW_TIMEOUT)),
          config.blockConcurrencyTimeoutMs,
        );
      });
      return await PromiseRace([callback(), timeout]);
    } catch (error) {
      if (resetOnError || error?.message === BCW_TIMEOUT) this.reset(error);
      throw error;
    } finally {
      clearTimeout(timer);
      this.inputGate.open();
    }
  }

  construct(worker) {
    const Class = worker[this.className];
    if (typeof Class !== "function") {
      throw new Error(
        `Durable Object class "${this.className}" is not exported from the Worker's main module.`,
      );
    }
    this.inputGate.close();
    try {
      this.instance = runAs(this, () => new Class(this.ctx, env));
    } finally {
      this.inputGate.open();
    }
  }

  reset(error) {
    if (this.broken !== null) return;
    this.broken = error;
    try {
      this.storage.rollbackAndClose();
    } catch (closeError) {
      console.error("closing storage of a reset object failed:", closeError);
    }
    if (MapPrototypeGet(live, this.key) === this) MapPrototypeDelete(live, this.key);
    console.error(`Durable Object ${this.className} ${this.hex} reset:`, error);
  }
}

async function runRpc(object, incoming) {
  const method = incoming.method;
  const args = unmarshal(deserialize(incoming.args));
  const instance = object.instance;
  if (!ObjectPrototypeIsPrototypeOf(DurableObject.prototype, instance)) {
    throw new TypeError(
      "The receiving Durable Object does not support RPC, because its class was not declared with `extends DurableObject`. In order to enable RPC, make sure your class extends the special class `DurableObject`, which can be imported from the module \"cloudflare:workers\".",
    );
  }
  if (ArrayPrototypeIncludes(RESERVED_METHODS, method)) {
    throw new TypeError(`'${method}' is a reserved method and cannot be called over RPC.`);
  }
  // Methods and getters of the class (its prototypes), read through the instance (a Proxy
  // returned by the constructor sees the read); an instance's own property is not one.
  if (ObjectHasOwn(instance, method) || lookupMember(instance, method) === undefined) {
    throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
  }
  const value = instance[method];
  if (incoming.get) return await value;
  if (typeof value !== "function") {
    throw new TypeError(`"${method}" is not a function.`);
  }
  return await value.apply(instance, args);
}

/** Gets the live object an event is for, constructing it on its first event. */
function liveObject(worker, target) {
  const key = `${target.namespace}:${target.id}`;
  let object = MapPrototypeGet(live, key);
  if (object === undefined) {
    const excess = op_dorun_storage_pressure();
    if (excess > 0) evictLeastRecentlyUsed(excess);
    const classInfo = config.namespaces[target.namespace];
    object = new LiveObject(target.namespace, target.id, target.name ?? undefined, classInfo);
    MapPrototypeSet(live, key, object);
    try {
      object.construct(worker);
      op_dorun_object_metric("activation");
    } catch (error) {
      MapPrototypeDelete(live, key);
      throw error;
    }
  }
  return object;
}

/** Runs one object event once the input gate lets it in, then answers it. */
async function runEvent(object, incoming) {
  switch (incoming.kind) {
    case "objectAlarm":
      await runAlarm(object, incoming);
      return;
    case "objectSocket":
      try {
        await runAs(object, () => runHibernatableEvent(object, incoming));
      } catch (error) {
        console.error(`WebSocket handler of Durable Object ${object.className} threw:`, error);
      }
      await object.storage.outputGate();
      op_dorun_reply_value(incoming.id, EMPTY_PAYLOAD);
      return;
    case "objectFetch": {
      const instance = object.instance;
      if (typeof instance.fetch !== "function") {
        throw new Error("Handler does not export a fetch() function.");
      }
      const request = makeRequest(incoming.request);
      const depth = fetchDepthOf(incoming.request);
      const response = await runInvocation(object, depth, () => instance.fetch(request));
      if (!(response instanceof Response)) {
        throw new TypeError(
          "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
        );
      }
      await object.storage.outputGate();
      sendResponse(incoming.id, response);
      return;
    }
    case "objectRpc": {
      const result = await runInvocation(object, 0, () => runRpc(object, incoming));
      await object.storage.outputGate();
      op_dorun_reply_value(incoming.id, serializeResult(result));
      return;
    }
  }
}

/** An event for an object pinned to this thread (`objectFetch`, `objectRpc`, ...). */
export async function handleObjectEvent(worker, incoming) {
  let object;
  try {
    // A reset of the isolate delivers a call again unless the object's code ran for it:
    // its constructor (below, for a new object) or its handler (once the gate lets it in).
    const key = `${incoming.object.namespace}:${incoming.object.id}`;
    if (!MapPrototypeHas(live, key)) op_dorun_event_entered(incoming.id);
    object = liveObject(worker, incoming.object);
    chargeReset(object);
    object.inFlight++;
    object.lastActive = DateNow();
    try {
      const wait = object.inputGate.wait();
      if (wait !== null) await wait;
      op_dorun_event_entered(incoming.id);
      if (object.broken !== null) throw object.broken;
      await runEvent(object, incoming);
    } finally {
      object.inFlight--;
      object.lastActive = DateNow();
    }
  } catch (error) {
    // Writes made before the failure are still committed (as on Cloudflare), and the
    // error is only released once they are durable.
    try {
      await object?.storage.outputGate();
    } catch {
      // The commit failed: the object was reset; report the original error.
    }
    op_dorun_reply_error(incoming.id, serializeError(error));
  }
}

function isIdle(object) {
  return object.inFlight === 0 && object.inputGate.idle && object.localSockets === 0;
}

/** Drops a live object; its storage closes once its writes are durable. */
function evict(object) {
  MapPrototypeDelete(live, object.key);
  op_dorun_object_metric("eviction");
  const gate = object.storage.pendingGate();
  if (gate === null) {
    object.storage.close();
  } else {
    PromisePrototypeThen(gate, () => object.storage.close(), () => {});
  }
}

/**
 * Drops objects idle for longer than the idle timeout (storage closed after its commit),
 * and lets storage trim idle connections or close them beyond the idle limit.
 */
export function evictIdle() {
  const now = DateNow();
  for (const object of live.values()) {
    if (isIdle(object) && now - object.lastActive >= config.idleTimeoutMs) evict(object);
  }
  op_dorun_storage_sweep_idle();
}

/**
 * The thread's connection cache is full: evict the `count` least recently used idle
 * objects that hold open files, whole, so live objects keep their files open.
 */
function evictLeastRecentlyUsed(count) {
  const idle = [];
  for (const object of live.values()) {
    if (object.storage.isOpen && isIdle(object)) ArrayPrototypePush(idle, object);
  }
  ArrayPrototypeSort(idle, (a, b) => a.lastActive - b.lastActive);
  for (let i = 0; i < idle.length && i < count; i++) evict(idle[i]);
}

