// node:async_hooks — AsyncLocalStorage and AsyncResource. Stores ride on V8's async context
// (see js/00_runtime.js): they follow awaits, promise continuations, timers and
// queueMicrotask. The low-level hook API (createHook, executionAsyncId) is not provided
// beyond inert stand-ins, as on Cloudflare.

const internals = globalThis[Symbol.for("dorun.node")];

export class AsyncLocalStorage {
  #enabled = false;

  /** Runs `callback(...args)` with `store` as this storage's value. */
  run(store, callback, ...args) {
    this.#enabled = true;
    return internals.runInFrame(internals.frameWithStore(this, store), callback, args);
  }

  /** Runs `callback(...args)` outside this storage (getStore() is undefined). */
  exit(callback, ...args) {
    return internals.runInFrame(internals.frameWithStore(this, undefined), callback, args);
  }

  /** The store of the current async context, or undefined. */
  getStore() {
    return this.#enabled ? internals.storeOf(this) : undefined;
  }

  /** Sets the store for the rest of the current synchronous execution and its continuations. */
  enterWith(store) {
    this.#enabled = true;
    internals.enterFrame(internals.frameWithStore(this, store));
  }

  disable() {
    this.#enabled = false;
  }

  /** A function that runs its callback in the async context of this call. */
  static snapshot() {
    const frame = internals.snapshotFrame();
    return (callback, ...args) => internals.runInFrame(frame, callback, args);
  }

  /** `fn` bound to the current async context. */
  static bind(fn) {
    return AsyncResource.bind(fn);
  }
}

export class AsyncResource {
  #frame;
  type;

  constructor(type = "AsyncResource", _options = undefined) {
    this.type = type;
    this.#frame = internals.snapshotFrame();
  }

  /** Runs `fn` with `thisArg` in the async context the resource was created in. */
  runInAsyncScope(fn, thisArg, ...args) {
    return internals.runInFrame(this.#frame, () => Reflect.apply(fn, thisArg, args));
  }

  bind(fn, thisArg = undefined) {
    const resource = this;
    const bound = function (...args) {
      return resource.runInAsyncScope(fn, thisArg ?? this, ...args);
    };
    Object.defineProperty(bound, "length", { value: fn.length });
    return bound;
  }

  static bind(fn, type = undefined, thisArg = undefined) {
    return new AsyncResource(type ?? (fn.name || "bound-anonymous-fn")).bind(fn, thisArg);
  }

  emitDestroy() {
    return this;
  }

  asyncId() {
    return 0;
  }

  triggerAsyncId() {
    return 0;
  }
}

/** Inert: Workers do not expose async hooks. */
export function createHook(_callbacks) {
  return { enable() { return this; }, disable() { return this; } };
}

export function executionAsyncId() {
  return 0;
}

export function triggerAsyncId() {
  return 0;
}

export function executionAsyncResource() {
  return {};
}

export const asyncWrapProviders = Object.freeze({ __proto__: null });

export default {
  AsyncLocalStorage,
  AsyncResource,
  asyncWrapProviders,
  createHook,
  executionAsyncId,
  executionAsyncResource,
  triggerAsyncId,
};
