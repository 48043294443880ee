// node:events — EventEmitter with Node's semantics: synchronous emit in registration order,
// "error" throws without a listener, "newListener"/"removeListener" events, once wrappers,
// max-listener warnings, and the promise helpers once() and on(). Not covered:
// captureRejections, EventEmitterAsyncResource, domain support.

const kWrapped = Symbol("listener");
export const errorMonitor = Symbol("events.errorMonitor");
export const captureRejectionSymbol = Symbol.for("nodejs.rejection");
let defaultMaxListeners = 10;

function checkListener(listener) {
  if (typeof listener !== "function") {
    const error = new TypeError(`The "listener" argument must be of type function. Received ${typeof listener}`);
    error.code = "ERR_INVALID_ARG_TYPE";
    throw error;
  }
}

/**
 * A plain function rather than a class, like Node's: older packages inherit with
 * `EventEmitter.call(this)` and `util.inherits`, which a class constructor would refuse.
 */
export function EventEmitter(_options = undefined) {
  EventEmitter.init.call(this);
}

EventEmitter.init = function init() {
  if (this._events === undefined || this._events === Object.getPrototypeOf(this)._events) {
    this._events = Object.create(null);
    this._eventsCount = 0;
  }
  this._maxListeners ??= undefined;
};

Object.defineProperty(EventEmitter, "defaultMaxListeners", {
  get: () => defaultMaxListeners,
  set: (n) => {
    defaultMaxListeners = n;
  },
  enumerable: true,
});

class Methods {
  setMaxListeners(n) {
    this._maxListeners = n;
    return this;
  }

  getMaxListeners() {
    return this._maxListeners ?? defaultMaxListeners;
  }

  emit(type, ...args) {
    const events = this._events ?? {};
    if (type === "error") {
      if (events[errorMonitor] !== undefined) this.emit(errorMonitor, ...args);
      if (events.error === undefined) {
        const error = args[0];
        if (error instanceof Error) throw error;
        const wrapped = new Error(`Unhandled error. (${String(error)})`);
        wrapped.code = "ERR_UNHANDLED_ERROR";
        wrapped.context = error;
        throw wrapped;
      }
    }
    const handlers = events[type];
    if (handlers === undefined) return false;
    for (const handler of [...handlers]) Reflect.apply(handler, this, args);
    return true;
  }

  addListener(type, listener) {
    return addListener(this, type, listener, false);
  }

  on(type, listener) {
    return addListener(this, type, listener, false);
  }

  prependListener(type, listener) {
    return addListener(this, type, listener, true);
  }

  once(type, listener) {
    checkListener(listener);
    return this.on(type, onceWrapper(this, type, listener));
  }

  prependOnceListener(type, listener) {
    checkListener(listener);
    return this.prependListener(type, onceWrapper(this, type, listener));
  }

  removeListener(type, listener) {
    checkListener(listener);
    const events = this._events;
    const list = events?.[type];
    if (list === undefined) return this;
    for (let i = list.length - 1; i >= 0; i--) {
      if (list[i] === listener || list[i][kWrapped] === listener) {
        const [removed] = list.splice(i, 1);
        if (list.length === 0) {
          delete events[type];
          this._eventsCount--;
        }
        if (events.removeListener !== undefined) {
          this.emit("removeListener", type, removed[kWrapped] ?? removed);
        }
        break;
      }
    }
    return this;
  }

  off(type, listener) {
    return this.removeListener(type, listener);
  }

  removeAllListeners(type = undefined) {
    const events = this._events;
    if (events === undefined) return this;
    const types = type === undefined ? Reflect.ownKeys(events).filter((t) => t !== "removeListener") : [type];
    for (const t of types) {
      const list = events[t];
      if (list === undefined) continue;
      for (let i = list.length - 1; i >= 0; i--) this.removeListener(t, list[i]);
    }
    if (type === undefined && events.removeListener !== undefined) {
      for (const listener of [...events.removeListener]) this.removeListener("removeListener", listener);
    }
    return this;
  }

  listeners(type) {
    return (this._events?.[type] ?? []).map((l) => l[kWrapped] ?? l);
  }

  rawListeners(type) {
    return [...(this._events?.[type] ?? [])];
  }

  listenerCount(type, listener = undefined) {
    const list = this._events?.[type] ?? [];
    if (listener === undefined) return list.length;
    return list.filter((l) => l === listener || l[kWrapped] === listener).length;
  }

  eventNames() {
    return this._events === undefined ? [] : Reflect.ownKeys(this._events);
  }

}

for (const key of Reflect.ownKeys(Methods.prototype)) {
  if (key === "constructor") continue;
  Object.defineProperty(EventEmitter.prototype, key, {
    ...Object.getOwnPropertyDescriptor(Methods.prototype, key),
    enumerable: false,
  });
}

function addListener(target, type, listener, prepend) {
  checkListener(listener);
  if (target._events === undefined) EventEmitter.init.call(target);
  const events = target._events;
  if (events.newListener !== undefined) {
    target.emit("newListener", type, listener[kWrapped] ?? listener);
  }
  let list = events[type];
  if (list === undefined) {
    list = events[type] = [];
    target._eventsCount++;
  }
  if (prepend) list.unshift(listener);
  else list.push(listener);
  const max = target.getMaxListeners();
  if (max > 0 && list.length > max && !list.warned) {
    list.warned = true;
    console.warn(
      `MaxListenersExceededWarning: Possible EventEmitter memory leak detected. ${list.length} ${String(type)} listeners added. Use emitter.setMaxListeners() to increase limit`,
    );
  }
  return target;
}

function onceWrapper(target, type, listener) {
  let fired = false;
  const wrapper = function (...args) {
    if (fired) return undefined;
    fired = true;
    target.removeListener(type, wrapper);
    return Reflect.apply(listener, this, args);
  };
  wrapper[kWrapped] = listener;
  return wrapper;
}

function abortError(signal) {
  const error = new DOMException("The operation was aborted", "AbortError");
  error.cause = signal?.reason;
  return error;
}

/** Resolves with the arguments of the next `name` event (rejects on "error"). */
export function once(emitter, name, options = {}) {
  const signal = options?.signal;
  if (signal?.aborted) return Promise.reject(abortError(signal));
  return new Promise((resolve, reject) => {
    if (typeof emitter.addEventListener === "function" && typeof emitter.on !== "function") {
      emitter.addEventListener(name, (...args) => resolve(args), { once: true, signal });
      return;
    }
    const onEvent = (...args) => {
      if (name !== "error") emitter.removeListener("error", onError);
      signal?.removeEventListener("abort", onAbort);
      resolve(args);
    };
    const onError = (error) => {
      emitter.removeListener(name, onEvent);
      signal?.removeEventListener("abort", onAbort);
      reject(error);
    };
    const onAbort = () => {
      emitter.removeListener(name, onEvent);
      emitter.removeListener("error", onError);
      reject(abortError(signal));
    };
    emitter.once(name, onEvent);
    if (name !== "error") emitter.once("error", onError);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** An async iterator over the arguments of `name` events. */
export function on(emitter, name, options = {}) {
  const queue = [];
  const waiting = [];
  let error = null;
  let done = false;
  const onEvent = (...args) => {
    const next = waiting.shift();
    if (next) next.resolve({ value: args, done: false });
    else queue.push(args);
  };
  const onError = (e) => {
    error = e;
    const next = waiting.shift();
    if (next) next.reject(e);
  };
  const finish = () => {
    done = true;
    emitter.removeListener(name, onEvent);
    emitter.removeListener("error", onError);
    for (const w of waiting.splice(0)) w.resolve({ value: undefined, done: true });
    return Promise.resolve({ value: undefined, done: true });
  };
  emitter.on(name, onEvent);
  if (name !== "error") emitter.on("error", onError);
  options?.signal?.addEventListener("abort", () => {
    onError(abortError(options.signal));
  }, { once: true });
  return {
    next() {
      if (queue.length > 0) return Promise.resolve({ value: queue.shift(), done: false });
      if (error !== null) {
        const e = error;
        error = null;
        finish();
        return Promise.reject(e);
      }
      if (done) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    return: finish,
    throw(e) {
      onError(e);
      return finish();
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

export function getEventListeners(emitter, name) {
  if (typeof emitter.listeners === "function") return emitter.listeners(name);
  return [];
}

export function getMaxListeners(emitter) {
  return typeof emitter.getMaxListeners === "function" ? emitter.getMaxListeners() : defaultMaxListeners;
}

export function setMaxListeners(n = defaultMaxListeners, ...targets) {
  if (targets.length === 0) defaultMaxListeners = n;
  for (const target of targets) target.setMaxListeners?.(n);
}

export function listenerCount(emitter, type) {
  return emitter.listenerCount(type);
}

/** Adds an abort listener that runs even if the signal's listeners are stopped. */
export function addAbortListener(signal, listener) {
  if (signal.aborted) {
    queueMicrotask(() => listener());
  } else {
    signal.addEventListener("abort", listener, { once: true });
  }
  return { [Symbol.dispose ?? Symbol.for("dispose")]: () => signal.removeEventListener("abort", listener) };
}

EventEmitter.prototype._events = undefined;
EventEmitter.prototype._eventsCount = 0;
EventEmitter.prototype._maxListeners = undefined;
EventEmitter.EventEmitter = EventEmitter;
EventEmitter.once = once;
EventEmitter.on = on;
EventEmitter.errorMonitor = errorMonitor;
EventEmitter.captureRejectionSymbol = captureRejectionSymbol;
EventEmitter.getEventListeners = getEventListeners;
EventEmitter.getMaxListeners = getMaxListeners;
EventEmitter.setMaxListeners = setMaxListeners;
EventEmitter.addAbortListener = addAbortListener;
EventEmitter.listenerCount = listenerCount;
EventEmitter.captureRejections = false;
EventEmitter.usingDomains = false;

export default EventEmitter;
