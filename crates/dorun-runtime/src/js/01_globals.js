// Installs the Web platform that Workers code sees, from deno's ext crates.
// Runs once per isolate, before any user module. Builtins are captured here (primordials)
// so user code patching prototypes cannot change how the runtime behaves.

import { core, internals, primordials } from "ext:core/mod.js";
import {
  chargedTimers,
  config,
  console,
  currentInvocation,
  lifecycle,
  pendingOutputGate,
} from "ext:dorun/00_runtime.js";

const {
  ArrayBufferIsView,
  MathCeil,
  NumberIsSafeInteger,
  ObjectDefineProperty,
  ObjectDefineProperties,
  ReflectConstruct,
  Symbol,
} = primordials;

// deno_fetch reports spans to Deno's OpenTelemetry layer, which dorun does not ship:
// tracing stays off, so these are never called with a span.
const DID_NOT_ENTER = Symbol("DID_NOT_ENTER");
internals.__telemetry ??= {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  DID_NOT_ENTER,
  builtinTracer: () => undefined,
  ContextManager: { active: () => undefined },
  enterSpan: () => DID_NOT_ENTER,
  exitSpan: () => {},
  restoreSnapshot: () => {},
};
internals.__telemetryUtil ??= {
  updateSpanFromClientResponse: () => {},
  updateSpanFromError: () => {},
  updateSpanFromRequest: () => {},
};

const webidl = core.loadExtScript("ext:deno_webidl/00_webidl.js");
const url = core.loadExtScript("ext:deno_web/00_url.js");
const urlPattern = core.loadExtScript("ext:deno_web/01_urlpattern.js");
const domException = core.loadExtScript("ext:deno_web/01_dom_exception.js");
const event = core.loadExtScript("ext:deno_web/02_event.js");
const structuredCloneModule = core.loadExtScript("ext:deno_web/02_structured_clone.js");
const timers = core.loadExtScript("ext:deno_web/02_timers.js");
// The timers user code gets: zero delays without a floor (below), and every callback
// charged to its owner's CPU budget (00_runtime.js).
const userTimers = chargedTimers({
  setTimeout: setTimeoutNoFloor,
  setInterval: timers.setInterval,
  clearTimeout: clearTimeoutNoFloor,
});
const abortSignal = core.loadExtScript("ext:deno_web/03_abort_signal.js");
const base64 = core.loadExtScript("ext:deno_web/05_base64.js");
const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const encoding = core.loadExtScript("ext:deno_web/08_text_encoding.js");
const file = core.loadExtScript("ext:deno_web/09_file.js");
const messagePort = core.loadExtScript("ext:deno_web/13_message_port.js");
const compression = core.loadExtScript("ext:deno_web/14_compression.js");
const performanceModule = core.loadExtScript("ext:deno_web/15_performance.js");
const cryptoModule = core.loadExtScript("ext:deno_crypto/00_crypto.js");
const headers = core.loadExtScript("ext:deno_fetch/20_headers.js");
const formData = core.loadExtScript("ext:deno_fetch/21_formdata.js");
const request = core.loadExtScript("ext:deno_fetch/23_request.js");
const response = core.loadExtScript("ext:deno_fetch/23_response.js");
const fetchModule = core.loadExtScript("ext:deno_fetch/26_fetch.js");

// --- errors nobody caught are logged, never fatal to the isolate ------------------
const globalEvents = new event.EventTarget();
event.saveGlobalThisReference(globalEvents);
globalEvents.addEventListener("error", (e) => {
  console.error("Uncaught", e.error);
  e.preventDefault();
});
core.setUnhandledPromiseRejectionHandler((_promise, reason) => {
  // While the Worker's modules load, a rejection (a top-level throw is one) stops startup
  // with the error, as on Cloudflare; afterwards it is logged and the isolate goes on.
  if (!lifecycle.started) return false;
  console.error("Uncaught (in promise)", reason);
  return true;
});

// --- outbound fetch: http and https only, as on Cloudflare -------------------------
// A fetch made by a Durable Object after a write waits for that write to be durable
// (the output gate).

/** Set by 07_websockets.js: connects a `fetch` that asks for `Upgrade: websocket`. */
let fetchWebSocket = null;
function setFetchWebSocket(f) {
  fetchWebSocket = f;
}

/** Outgoing fetches one event may make (Cloudflare's paid plan allows 10,000). */
const MAX_SUBREQUESTS = 10000;
/** How many Worker fetches deep a chain may go (a Worker fetching itself in a loop). */
export const MAX_FETCH_DEPTH = 16;

/** The header value that carries `depth` to the request a fetch reaches (events.rs). */
export function fetchDepthValue(depth) {
  return `${depth};${config.fetchDepthToken}`;
}
function fetch(input, init = undefined) {
  let target;
  try {
    target = new request.Request(input, init);
  } catch (error) {
    return Promise.reject(error);
  }
  const invocation = currentInvocation();
  if (invocation !== null) {
    if (++invocation.subrequests > MAX_SUBREQUESTS) {
      return Promise.reject(new Error("Too many subrequests."));
    }
    if (invocation.depth >= MAX_FETCH_DEPTH) {
      return Promise.reject(
        new Error(
          `Subrequest depth limit exceeded: this request is already ${invocation.depth} Worker fetches deep (a Worker fetching itself in a loop?).`,
        ),
      );
    }
    target.headers.set(config.fetchDepthHeader, fetchDepthValue(invocation.depth + 1));
  }
  const scheme = new url.URL(target.url).protocol;
  if (scheme !== "http:" && scheme !== "https:") {
    return Promise.reject(
      new TypeError(`Fetch API cannot load: ${target.url}`),
    );
  }
  // A WebSocket handshake: the runtime connects and answers 101 with `webSocket`.
  const send = fetchWebSocket !== null &&
      (target.headers.get("upgrade") ?? "").toLowerCase() === "websocket"
    ? () => fetchWebSocket(target)
    : () => fetchModule.fetch(target);
  const gate = pendingOutputGate();
  if (gate !== null) return gate.then(send);
  return send();
}

// workerd's ReadableStreamBYOBReader.readAtLeast(minBytes, view): a BYOB read that resolves
// once at least `minBytes` bytes are in `view` (or the stream ended), i.e. the standard
// read(view, { min }) with min counted in bytes. One difference at the end of the stream:
// where the standard read answers the last, shorter chunk with `done: true`, workerd
// answers it with `done: false` and only the next read with `done: true` (and an empty
// view). Code written for workerd loops `while (!done)` and keeps only the values of
// reads that were not done, so the last chunk must come with `done: false`.
ObjectDefineProperty(streams.ReadableStreamBYOBReader.prototype, "readAtLeast", {
  value: function readAtLeast(minBytes, view) {
    const elementSize = view?.BYTES_PER_ELEMENT ?? 1;
    return PromisePrototypeThen(
      this.read(view, { min: MathCeil(minBytes / elementSize) }),
      (result) =>
        result.done && result.value !== undefined && result.value.byteLength > 0
          ? { value: result.value, done: false }
          : result,
    );
  },
  writable: true,
  enumerable: false,
  configurable: true,
});

// workerd's crypto.subtle.digest also takes "MD5" (S3 and R2 ETags are MD5s).
{
  const { op_dorun_md5 } = core.ops;
  const digest = cryptoModule.SubtleCrypto.prototype.digest;
  ObjectDefineProperty(cryptoModule.SubtleCrypto.prototype, "digest", {
    value: function digestWithMd5(algorithm, data) {
      const name = typeof algorithm === "string" ? algorithm : algorithm?.name;
      if (typeof name === "string" && name.toUpperCase() === "MD5") {
        try {
          const bytes = ArrayBufferIsView(data)
            ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
            : new Uint8Array(data);
          return Promise.resolve(op_dorun_md5(bytes).buffer);
        } catch (error) {
          return Promise.reject(error);
        }
      }
      return ReflectApply(digest, this, [algorithm, data]);
    },
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

// workerd's byte streams: IdentityTransformStream passes bytes through; FixedLengthStream
// also checks that exactly the promised number of bytes passed.
function byteChunk(chunk) {
  if (ArrayBufferIsView(chunk)) return chunk;
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  throw new TypeError(
    "This TransformStream is being used as a byte stream, but received an object of non-ArrayBuffer/ArrayBufferView type on its writable side.",
  );
}

class IdentityTransformStream extends streams.TransformStream {
  constructor(transformer = {
    transform(chunk, controller) {
      controller.enqueue(byteChunk(chunk));
    },
  }) {
    super(transformer);
  }
}

class FixedLengthStream extends IdentityTransformStream {
  constructor(expectedLength) {
    const length = Number(expectedLength);
    if (!(length >= 0) || !NumberIsSafeInteger(length)) {
      throw new TypeError("FixedLengthStream requires a non-negative integer expected length.");
    }
    let seen = 0;
    super({
      transform(chunk, controller) {
        const bytes = byteChunk(chunk);
        seen += bytes.byteLength;
        if (seen > length) {
          controller.error(
            new TypeError("Attempt to write too many bytes through a FixedLengthStream."),
          );
          return;
        }
        controller.enqueue(bytes);
      },
      flush(controller) {
        if (seen < length) {
          controller.error(
            new TypeError("FixedLengthStream did not see all expected bytes before close()."),
          );
        }
      },
    });
  }
}

// `new Request(request)` keeps `request.cf` (or takes `init.cf`), as in workerd, so a
// request passed on to an object (`stub.fetch(new Request(request))`) still has it.
const WorkersRequest = new Proxy(request.Request, {
  construct(target, args, newTarget) {
    const made = ReflectConstruct(target, args, newTarget);
    const [input, init] = args;
    const cf = init?.cf ?? (input !== null && typeof input === "object" ? input.cf : undefined);
    if (cf !== undefined && cf !== null) {
      ObjectDefineProperty(made, "cf", { value: cf, enumerable: true });
    }
    return made;
  },
});

const navigator = {};
ObjectDefineProperty(navigator, "userAgent", {
  value: "Cloudflare-Workers",
  enumerable: true,
});
ObjectDefineProperty(navigator, "hardwareConcurrency", {
  value: 1,
  enumerable: true,
});
ObjectDefineProperty(navigator, "language", {
  value: "en",
  enumerable: true,
});

performanceModule.setTimeOrigin();

const scheduler = {
  wait(ms, options) {
    return new Promise((resolve, reject) => {
      const signal = options?.signal;
      if (signal?.aborted) return reject(signal.reason);
      // Not `timers.setTimeout(...)`: deno's timers refuse a `this` other than globalThis.
      const id = userTimers.setTimeout(resolve, ms);
      signal?.addEventListener("abort", () => {
        userTimers.clearTimeout(id);
        reject(signal.reason);
      });
    });
  },
};

// --- zero-delay timers ------------------------------------------------------------
// deno's core timers round every delay up to 1 ms and then wait for the next tick of the
// tokio timer wheel, so setTimeout(fn, 0) took 1-2 ms. A delay of 0 (or less) here fires
// on the next turn of the event loop instead (op_defer resolves on the next poll, after
// the turn's I/O), as in workerd; other delays keep deno's millisecond timers. Ids come
// from a range deno's counter never reaches, so clearTimeout tells the two apart.
const { op_defer } = core.ops;
const { PromisePrototypeThen, ReflectApply, SafeMap, indirectEval } = primordials;
const zeroTimers = new SafeMap();
let nextZeroTimerId = 1_000_000_000;

function setTimeoutNoFloor(callback, timeout = 0, ...args) {
  const delay = webidl.converters.long(timeout);
  if (delay > 0) return ReflectApply(timers.setTimeout, undefined, [callback, delay, ...args]);
  if (typeof callback !== "function") {
    const source = webidl.converters.DOMString(callback);
    callback = () => indirectEval(source);
  }
  const id = nextZeroTimerId++;
  zeroTimers.set(id, callback);
  PromisePrototypeThen(op_defer(), () => {
    const fn = zeroTimers.get(id);
    if (fn === undefined) return;
    zeroTimers.delete(id);
    try {
      ReflectApply(fn, globalThis, args);
    } catch (e) {
      event.reportException(e);
    }
  });
  return id;
}

function clearTimeoutNoFloor(id = 0) {
  if (!zeroTimers.delete(id)) ReflectApply(timers.clearTimeout, undefined, [id]);
}

function nonEnumerable(value) {
  return { value, writable: true, enumerable: false, configurable: true };
}
function readOnly(value) {
  return { value, writable: false, enumerable: true, configurable: true };
}

ObjectDefineProperties(globalThis, {
  // Fetch
  fetch: nonEnumerable(fetch),
  Request: nonEnumerable(WorkersRequest),
  Response: nonEnumerable(response.Response),
  Headers: nonEnumerable(headers.Headers),
  FormData: nonEnumerable(formData.FormData),
  // Files
  Blob: nonEnumerable(file.Blob),
  File: nonEnumerable(file.File),
  // URLs
  URL: nonEnumerable(url.URL),
  URLSearchParams: nonEnumerable(url.URLSearchParams),
  URLPattern: nonEnumerable(urlPattern.URLPattern),
  // Streams
  ReadableStream: nonEnumerable(streams.ReadableStream),
  ReadableStreamDefaultReader: nonEnumerable(streams.ReadableStreamDefaultReader),
  ReadableStreamBYOBReader: nonEnumerable(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: nonEnumerable(streams.ReadableStreamBYOBRequest),
  ReadableByteStreamController: nonEnumerable(streams.ReadableByteStreamController),
  ReadableStreamDefaultController: nonEnumerable(streams.ReadableStreamDefaultController),
  WritableStream: nonEnumerable(streams.WritableStream),
  WritableStreamDefaultWriter: nonEnumerable(streams.WritableStreamDefaultWriter),
  WritableStreamDefaultController: nonEnumerable(streams.WritableStreamDefaultController),
  TransformStream: nonEnumerable(streams.TransformStream),
  IdentityTransformStream: nonEnumerable(IdentityTransformStream),
  FixedLengthStream: nonEnumerable(FixedLengthStream),
  TransformStreamDefaultController: nonEnumerable(streams.TransformStreamDefaultController),
  ByteLengthQueuingStrategy: nonEnumerable(streams.ByteLengthQueuingStrategy),
  CountQueuingStrategy: nonEnumerable(streams.CountQueuingStrategy),
  CompressionStream: nonEnumerable(compression.CompressionStream),
  DecompressionStream: nonEnumerable(compression.DecompressionStream),
  // Encoding
  TextEncoder: nonEnumerable(encoding.TextEncoder),
  TextDecoder: nonEnumerable(encoding.TextDecoder),
  TextEncoderStream: nonEnumerable(encoding.TextEncoderStream),
  TextDecoderStream: nonEnumerable(encoding.TextDecoderStream),
  atob: nonEnumerable(base64.atob),
  btoa: nonEnumerable(base64.btoa),
  // Crypto
  crypto: readOnly(cryptoModule.crypto),
  Crypto: nonEnumerable(cryptoModule.Crypto),
  CryptoKey: nonEnumerable(cryptoModule.CryptoKey),
  SubtleCrypto: nonEnumerable(cryptoModule.SubtleCrypto),
  // Timers and scheduling
  setTimeout: nonEnumerable(userTimers.setTimeout),
  setInterval: nonEnumerable(userTimers.setInterval),
  clearTimeout: nonEnumerable(userTimers.clearTimeout),
  clearInterval: nonEnumerable(userTimers.clearInterval),
  scheduler: nonEnumerable(scheduler),
  structuredClone: nonEnumerable(structuredCloneModule.structuredClone),
  // Events
  AbortController: nonEnumerable(abortSignal.AbortController),
  AbortSignal: nonEnumerable(abortSignal.AbortSignal),
  Event: nonEnumerable(event.Event),
  EventTarget: nonEnumerable(event.EventTarget),
  CustomEvent: nonEnumerable(event.CustomEvent),
  ErrorEvent: nonEnumerable(event.ErrorEvent),
  MessageEvent: nonEnumerable(event.MessageEvent),
  CloseEvent: nonEnumerable(event.CloseEvent),
  PromiseRejectionEvent: nonEnumerable(event.PromiseRejectionEvent),
  DOMException: nonEnumerable(domException.DOMException),
  MessageChannel: nonEnumerable(messagePort.MessageChannel),
  MessagePort: nonEnumerable(messagePort.MessagePort),
  addEventListener: nonEnumerable((...args) => globalEvents.addEventListener(...args)),
  removeEventListener: nonEnumerable((...args) => globalEvents.removeEventListener(...args)),
  dispatchEvent: nonEnumerable((e) => globalEvents.dispatchEvent(e)),
  reportError: nonEnumerable(event.reportError ?? ((e) => console.error(e))),
  // Misc
  performance: nonEnumerable(performanceModule.performance),
  Performance: nonEnumerable(performanceModule.Performance),
  navigator: nonEnumerable(navigator),
  console: nonEnumerable(console),
  self: nonEnumerable(globalThis),
  WebAssembly: nonEnumerable(globalThis.WebAssembly),
});

export { setFetchWebSocket };
