// RPC between isolates: V8 serialization of arguments, results and errors; stubs of Durable
// Objects (`stub.fetch()` and `stub.method()`), with promise pipelining; functions and
// RpcTargets passed by reference (exported where they live, called back through stubs);
// ReadableStreams passed as channels.

import { core, primordials } from "ext:core/mod.js";
import {
  config,
  currentInvocation,
  currentObject,
  pendingOutputGate,
  RpcTarget,
  runAs,
} from "ext:dorun/00_runtime.js";
import { fetchDepthValue } from "ext:dorun/01_globals.js";
import { DurableObjectId, idParts, setStubMaker } from "ext:dorun/02_ids.js";
import {
  WebSocketInternals,
  WorkersResponse as Response,
} from "ext:dorun/03_websockets.js";

const {
  ArrayBufferIsView,
  ArrayIsArray,
  ArrayPrototypePush,
  Error,
  JSONStringify,
  MapPrototype,
  MapPrototypeDelete,
  MapPrototypeGet,
  MapPrototypeSet,
  FunctionPrototypeToString,
  ObjectDefineProperty,
  ObjectGetOwnPropertyDescriptor,
  StringPrototypeIncludes,
  ObjectGetPrototypeOf,
  ObjectHasOwn,
  ObjectIsFrozen,
  ObjectKeys,
  ObjectSetPrototypeOf,
  ObjectPrototype,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseResolve,
  Proxy,
  RegExpPrototypeExec,
  RangeError,
  SafeMap,
  SafeSet,
  SafeWeakMap,
  SetPrototype,
  String,
  SymbolFor,
  TypeError,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
} = primordials;

const {
  op_dorun_object_rpc,
  op_dorun_object_fetch,
  op_dorun_service_fetch,
  op_dorun_service_call,
  op_dorun_reply_value,
  op_dorun_reply_error,
  op_dorun_thread_index,
  op_dorun_export_call,
  op_dorun_export_release,
  op_dorun_export_retain,
  op_dorun_stream_export,
  op_dorun_stream_import,
} = core.ops;

const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const { Request, RequestPrototype, toInnerRequest } = core.loadExtScript(
  "ext:deno_fetch/23_request.js",
);
const { ResponsePrototype } = core.loadExtScript("ext:deno_fetch/23_response.js");
const { Headers } = core.loadExtScript("ext:deno_fetch/20_headers.js");
const HeadersPrototype = Headers.prototype;
const SymbolDispose = globalThis.Symbol.dispose ?? SymbolFor("Symbol.dispose");
const workerName = config.workerName;

// --- serialization across isolates -------------------------------------------------------

// --- serialization across isolates -------------------------------------------------------

export function serialize(value) {
  return core.serialize(value, { forStorage: false });
}

export function deserialize(bytes) {
  return core.deserialize(bytes, { forStorage: false });
}

/**
 * An error as it crosses RPC in workerd: the built-in classes (and DOMException, with its
 * name and code) keep their class; any other becomes an Error whose message starts with its
 * name; a thrown non-error becomes an Error of its text.
 */
export function serializeError(error) {
  const isError = error !== null && typeof error === "object" && "message" in error;
  const DOMExceptionClass = globalThis.DOMException;
  const isDom = DOMExceptionClass !== undefined && error instanceof DOMExceptionClass;
  let name = isError ? String(error.name ?? "Error") : "Error";
  let message = isError
    ? String(error.message)
    : error !== null && typeof error === "object"
    ? `#<${ObjectGetPrototypeOf(error)?.constructor?.name ?? "Object"}>`
    : String(error);
  if (!isDom && ERROR_TYPES[name] === undefined) {
    message = `${name}: ${message}`;
    name = "Error";
  }
  const plain = {
    dorunError: true,
    name,
    message,
    dom: isDom,
    code: isDom ? error.code : undefined,
    stack: isError && typeof error.stack === "string" ? error.stack : undefined,
  };
  return serialize(plain);
}

const ERROR_TYPES = {
  Error,
  TypeError,
  RangeError,
  SyntaxError: globalThis.SyntaxError,
  ReferenceError: globalThis.ReferenceError,
  EvalError: globalThis.EvalError,
  URIError: globalThis.URIError,
  AggregateError: globalThis.AggregateError,
};

function deserializeError(bytes, objectId) {
  let plain;
  try {
    plain = deserialize(bytes);
  } catch {
    plain = { name: "Error", message: "unreadable error from Durable Object" };
  }
  let error;
  if (plain.dom) {
    error = new globalThis.DOMException(plain.message, plain.name);
    domOwnFields(error);
  } else {
    const Ctor = ERROR_TYPES[plain.name] ?? Error;
    error = plain.name === "AggregateError" ? new Ctor([], plain.message) : new Ctor(plain.message);
    if (plain.name === "AggregateError") delete error.errors;
    if (error.name !== plain.name) error.name = plain.name;
  }
  error.remote = true;
  if (objectId !== undefined) error.durableObjectId = objectId;
  if (plain.stack) error.stack = plain.stack;
  return error;
}

/** workerd's DOMExceptions have their fields as own, enumerable properties. */
function domOwnFields(error) {
  for (const key of ["code", "message", "name", "stack"]) {
    ObjectDefineProperty(error, key, {
      value: error[key],
      enumerable: true,
      configurable: true,
      writable: true,
    });
  }
  return error;
}

/** An RPC call's result, serialized; a DataCloneError if it cannot cross. */
export function serializeResult(result) {
  try {
    return serialize(marshal(result));
  } catch (error) {
    if (error?.name === "DataCloneError") throw error;
    throw dataCloneError(error.message);
  }
}

/** A value structured clone cannot take, as workerd reports it. */
export function dataCloneError(message) {
  return domOwnFields(new globalThis.DOMException(message, "DataCloneError"));
}

/** A call that never got an answer (the object was reset or the server is stopping). */
function disconnected(error, objectId) {
  error.retryable = true;
  error.durableObjectReset = true;
  error.durableObjectId = objectId;
  return error;
}

// --- stubs of Durable Objects ---------------------------------------------------------------

/** The value of a call's reply (`{kind: "value" | "error", payload}`), or its error thrown. */
function replyValue(reply, objectId = undefined) {
  if (reply.kind === "error") throw deserializeError(reply.payload, objectId);
  return disposable(unmarshal(deserialize(reply.payload)));
}

/**
 * Sends `fetch(input, init)` on through `send(method, url, headers, bodyRid, cf)` (an op)
 * and makes a Response of its answer: an object's `stub.fetch()` and a service binding's.
 */
async function forwardFetch(input, init, send, objectId = undefined) {
  let request;
  try {
    request = new Request(input, init);
  } catch (error) {
    // As workerd words it: `Invalid URL: /relative`.
    const match = typeof error?.message === "string" &&
      RegExpPrototypeExec(/^Invalid URL: '(.*)'$/s, error.message);
    if (match) throw new TypeError(`Invalid URL: ${match[1]}`);
    throw error;
  }
  // The callee sees the same request.cf (from init, or the Request passed on).
  const cf = init?.cf ?? (ObjectPrototypeIsPrototypeOf(RequestPrototype, input) ? input.cf : undefined);
  const inner = toInnerRequest(request);
  let bodyRid = null;
  if (request.body !== null) {
    bodyRid = streams.resourceForReadableStream(request.body);
  }
  // The callee's request is as many Worker fetches deep as the caller's.
  const invocation = currentInvocation();
  if (invocation !== null) {
    ArrayPrototypePush(inner.headerList, [
      config.fetchDepthHeader,
      fetchDepthValue(invocation.depth),
    ]);
  }
  const gate = pendingOutputGate();
  if (gate !== null) await gate;
  const head = await send(
    request.method,
    request.url,
    inner.headerList,
    bodyRid,
    cf === undefined || cf === null ? null : JSONStringify(cf),
  );
  if (head.kind === "error") throw deserializeError(head.payload, objectId);
  if (head.webSocket !== null) {
    return new Response(null, {
      status: 101,
      headers: head.headers,
      webSocket: WebSocketInternals.remote(head.webSocket),
    });
  }
  const body = head.bodyRid === null ? null : streams.readableStreamForRid(head.bodyRid);
  return new Response(body, {
    status: head.status,
    statusText: head.statusText,
    headers: head.headers,
  });
}

function stubFetch(worker, namespace, hex, name, input, init) {
  const send = async (...args) => {
    try {
      const target = { worker, namespace, id: hex, name: name ?? null };
      return await op_dorun_object_fetch(target, ...args);
    } catch (error) {
      throw disconnected(error, hex);
    }
  };
  return forwardFetch(input, init, send, hex);
}

// --- service bindings ------------------------------------------------------------------------

/** `env.<binding>.fetch()` of a service binding: the bound worker's fetch handler answers. */
function serviceFetch(index, input, init) {
  return forwardFetch(input, init, (...args) => op_dorun_service_fetch(index, ...args));
}

async function serviceCall(index, method, get, args) {
  const bytes = await outgoingArgs(args);
  return replyValue(await op_dorun_service_call(index, method, get, bytes));
}

/**
 * `env.<binding>` of a `services` entry: `fetch()` reaches the bound worker's fetch handler
 * (as a request from the front door would, for the default export without props; else
 * through its entrypoint class, with `ctx.props`), and any other member is JS RPC to the
 * entrypoint: a fresh instance per call, pipelined like a Durable Object stub.
 */
class Fetcher {}

/** What a Fetcher answers itself rather than over RPC (it is an object of its own). */
const FETCHER_LOCAL = {
  toString: () => () => "[object Fetcher]",
  hasOwnProperty: () => () => false,
  valueOf: (binding) => () => binding,
  constructor: () => () => {
    throw new TypeError("Illegal constructor");
  },
  connect: () => (address) => {
    if (typeof address !== "string" && (address === null || typeof address !== "object")) {
      throw new TypeError(
        "Failed to execute 'connect' on 'Fetcher': parameter 1 is not of type 'SocketAddress or string'.",
      );
    }
    throw new TypeError("connect() through a service binding is not served by dorun");
  },
};

export function createServiceBinding(index, item) {
  const named = (item.entrypoint !== null && item.entrypoint !== "default") || item.props !== null;
  const binding = new Proxy(new Fetcher(), {
    get(_target, property) {
      if (typeof property === "symbol" || property === "then") return undefined;
      if (ObjectHasOwn(FETCHER_LOCAL, property)) return FETCHER_LOCAL[property](binding);
      if (property === "fetch") {
        if (!named) return (input, init) => serviceFetch(index, input, init);
        return (input, init) =>
          PromiseResolve().then(() => serviceCall(index, "fetch", false, [new Request(input, init)]));
      }
      return pipelined(
        () => serviceCall(index, property, true, []),
        (args) => serviceCall(index, property, false, args),
      );
    },
  });
  return binding;
}

/** Serializes call arguments, then waits for the caller's output gate (if any). */
async function outgoingArgs(args) {
  let bytes;
  try {
    bytes = serialize(marshal(args));
  } catch (error) {
    if (error?.name === "DataCloneError") throw error;
    throw dataCloneError(error.message);
  }
  const gate = pendingOutputGate();
  if (gate !== null) await gate;
  return bytes;
}

async function rpcCall(worker, namespace, hex, name, method, get, args) {
  const bytes = await outgoingArgs(args);
  let reply;
  try {
    reply = await op_dorun_object_rpc(worker, namespace, hex, name ?? null, method, get, bytes);
  } catch (error) {
    throw disconnected(error, hex);
  }
  return replyValue(reply, hex);
}

/**
 * A member of a stub: calling it calls the method over RPC, awaiting it reads the
 * property; either way the result can be used before it arrives (pipelining).
 */
function rpcProperty(worker, namespace, hex, name, method) {
  return pipelined(
    () => rpcCall(worker, namespace, hex, name, method, true, []),
    (args) => rpcCall(worker, namespace, hex, name, method, false, args),
  );
}

/**
 * Promise pipelining: a thenable for a value still on its way whose members can already
 * be called or read (`stub.getCounter().increment()`), each step waiting for the one
 * before. `read` makes the promise of the value, only when someone awaits it; `call`,
 * if given, is what calling the pipelined value itself does.
 */
/** The class of the stubs a Worker receives for functions and RpcTargets (cloudflare:workers). */
export class RpcStub {}
/** The class of what an RPC call returns before it is awaited. */
export class RpcPromise {}

/** A callable Proxy target whose prototype is `proto`. */
function callableOf(proto) {
  const target = function () {};
  ObjectSetPrototypeOf(target, proto);
  return target;
}

function pipelined(read, call = null) {
  let promise = null;
  const value = () => (promise ??= read());
  return new Proxy(callableOf(RpcPromise.prototype), {
    apply(_target, _this, args) {
      const result = call === null
        ? PromisePrototypeThen(value(), (v) => {
          if (typeof v !== "function") throw new TypeError("The RPC result is not a function.");
          return v(...args);
        })
        : call(args);
      return pipelined(() => result);
    },
    get(_target, property) {
      if (property === "then") {
        return (resolve, reject) => PromisePrototypeThen(value(), resolve, reject);
      }
      if (property === "catch") {
        return (reject) => PromisePrototypeThen(value(), undefined, reject);
      }
      if (property === "finally") return (f) => value().finally(f);
      // `using x = stub.method()`: disposes of the result once it arrives.
      if (property === SymbolDispose) {
        return () => {
          PromisePrototypeThen(value(), (v) => v?.[SymbolDispose]?.(), () => {});
        };
      }
      if (typeof property === "symbol") return undefined;
      return pipelined(
        () => PromisePrototypeThen(value(), (v) => v[property]),
        (args) =>
          PromisePrototypeThen(value(), (v) => {
            if (typeof v?.[property] !== "function") {
              const error = new TypeError(`"${property}" is not a function.`);
              error.remote = true;
              throw error;
            }
            return v[property](...args);
          }),
      );
    },
  });
}

// --- functions, RpcTargets and stubs across RPC ----------------------------------------
// Functions and RpcTarget instances in arguments or results stay where they are and are
// exported; the other side gets a stub that calls back over the same channels as RPC.
// Stubs of Durable Objects travel as their ids. An export lives until every stub of it
// is garbage-collected (each side releases its stubs through a FinalizationRegistry).
const STUB_KEY = "__dorunRpcStub";
const OBJECT_STUB_KEY = "__dorunObjectStub";
const STREAM_KEY = "__dorunStream";
const FETCH_KEY = "__dorunFetchObject";

/** A body crossing RPC: a stream token, or null. */
function marshalBody(body) {
  if (body === null) return null;
  if (streams.isReadableStreamLocked(body) || streams.isReadableStreamDisturbed(body)) {
    throw new TypeError("A Request or Response whose body was already used cannot be sent over RPC.");
  }
  return op_dorun_stream_export(streams.resourceForReadableStream(body));
}

function unmarshalBody(token) {
  return token === null ? null : streams.readableStreamForRid(op_dorun_stream_import(token));
}

/**
 * Request, Response and Headers cross RPC as workerd sends them: their head by value, their
 * body as a stream read as it is produced. null if `value` is none of them.
 */
function marshalFetchObject(value) {
  if (ObjectPrototypeIsPrototypeOf(HeadersPrototype, value)) {
    return { [FETCH_KEY]: { type: "headers", headers: [...value] } };
  }
  if (ObjectPrototypeIsPrototypeOf(RequestPrototype, value)) {
    return {
      [FETCH_KEY]: {
        type: "request",
        url: value.url,
        method: value.method,
        headers: [...value.headers],
        redirect: value.redirect,
        body: marshalBody(value.body),
      },
    };
  }
  if (ObjectPrototypeIsPrototypeOf(ResponsePrototype, value)) {
    if (value.status === 101) {
      throw new TypeError("A WebSocket Response cannot be sent over RPC; use stub.fetch().");
    }
    return {
      [FETCH_KEY]: {
        type: "response",
        status: value.status,
        statusText: value.statusText,
        headers: [...value.headers],
        body: marshalBody(value.body),
      },
    };
  }
  return null;
}

function unmarshalFetchObject(plain) {
  if (plain.type === "headers") return new Headers(plain.headers);
  if (plain.type === "request") {
    const body = unmarshalBody(plain.body);
    return new Request(plain.url, {
      method: plain.method,
      headers: plain.headers,
      redirect: plain.redirect,
      body,
      ...(body === null ? {} : { duplex: "half" }),
    });
  }
  return new Response(unmarshalBody(plain.body), {
    status: plain.status,
    statusText: plain.statusText,
    headers: plain.headers,
  });
}
const threadIndex = op_dorun_thread_index();
/** id -> { value, refs, object } */
const exportsById = new SafeMap();
const exportIds = new SafeWeakMap();
let nextExport = 0;
/**
 * A stub of an export -> [thread, export id, kind, worker]: thread indexes mean something
 * only inside their worker, so calls through a stub from another worker go back through
 * that worker's threads.
 */
const remoteIdentity = new SafeWeakMap();
/** A Durable Object stub -> [namespace, hex, name, worker] (the namespace index is the worker's). */
const objectStubIdentity = new SafeWeakMap();
const releases = new FinalizationRegistry(([thread, id, worker]) => {
  if (thread === threadIndex && worker === workerName) releaseExport(id);
  else op_dorun_export_release(worker, thread, id);
});

export function retainExport(id) {
  const entry = MapPrototypeGet(exportsById, id);
  if (entry !== undefined) entry.refs++;
}

export function releaseExport(id) {
  const entry = MapPrototypeGet(exportsById, id);
  if (entry !== undefined && --entry.refs <= 0) {
    MapPrototypeDelete(exportsById, id);
    exportIds.delete(entry.value);
  }
}

function exportValue(value, kind) {
  let id = WeakMapPrototypeGet(exportIds, value);
  if (id === undefined) {
    id = ++nextExport;
    // Calls back into it run as code of the object that exported it, if any.
    MapPrototypeSet(exportsById, id, { value, refs: 0, object: currentObject() });
    WeakMapPrototypeSet(exportIds, value, id);
  }
  MapPrototypeGet(exportsById, id).refs++;
  return { [STUB_KEY]: [threadIndex, id, kind, workerName] };
}

function isPlainObject(value) {
  const prototype = ObjectGetPrototypeOf(value);
  return prototype === ObjectPrototype || prototype === null;
}

/** `value` with functions, RpcTargets and stubs replaced by what crosses RPC. */
export function marshal(value, seen = null) {
  const type = typeof value;
  if (value === null || (type !== "object" && type !== "function")) return value;
  const remote = WeakMapPrototypeGet(remoteIdentity, value);
  if (remote !== undefined) {
    // Forwarding a stub: its owner counts one more holder (sent before our own release).
    if (remote[0] === threadIndex && remote[3] === workerName) {
      const entry = MapPrototypeGet(exportsById, remote[1]);
      if (entry !== undefined) entry.refs++;
    } else {
      op_dorun_export_retain(remote[3], remote[0], remote[1]);
    }
    return { [STUB_KEY]: remote };
  }
  const objectStub = WeakMapPrototypeGet(objectStubIdentity, value);
  if (objectStub !== undefined) return { [OBJECT_STUB_KEY]: objectStub };
  if (type === "function") return exportValue(value, "function");
  if (ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, value)) {
    // A byte stream crosses as a channel: the receiver reads it as it is produced.
    if (streams.isReadableStreamLocked(value)) {
      throw new TypeError("A locked ReadableStream cannot be sent over RPC.");
    }
    return { [STREAM_KEY]: op_dorun_stream_export(streams.resourceForReadableStream(value)) };
  }
  if (ObjectPrototypeIsPrototypeOf(RpcTarget.prototype, value)) return exportValue(value, "target");
  const fetchObject = marshalFetchObject(value);
  if (fetchObject !== null) return fetchObject;
  seen ??= new SafeMap();
  const done = MapPrototypeGet(seen, value);
  if (done !== undefined) return done;
  if (ArrayIsArray(value)) {
    const out = [];
    MapPrototypeSet(seen, value, out);
    // Holes stay holes.
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = marshal(value[i], seen);
    out.length = value.length;
    return out;
  }
  if (ObjectPrototypeIsPrototypeOf(MapPrototype, value)) {
    const out = new Map();
    MapPrototypeSet(seen, value, out);
    for (const [k, v] of value) out.set(marshal(k, seen), marshal(v, seen));
    return out;
  }
  if (ObjectPrototypeIsPrototypeOf(SetPrototype, value)) {
    const out = new Set();
    MapPrototypeSet(seen, value, out);
    for (const v of value) out.add(marshal(v, seen));
    return out;
  }
  if (isPlainObject(value)) {
    const out = {};
    MapPrototypeSet(seen, value, out);
    for (const key of ObjectKeys(value)) out[key] = marshal(value[key], seen);
    return out;
  }
  // An instance of a class of the Worker's own does not cross RPC (workerd refuses it too);
  // built-in values (Dates, errors, typed arrays, ...) do, by structured clone.
  // Subclasses of the built-ins structured clone knows (a Buffer, an Error class) cross as
  // their base.
  if (
    ArrayBufferIsView(value) || value instanceof Error || value instanceof Date ||
    value instanceof RegExp || value instanceof ArrayBuffer
  ) {
    return value;
  }
  const constructor = ObjectGetPrototypeOf(value)?.constructor;
  if (typeof constructor === "function" && !isBuiltin(constructor)) {
    throw dataCloneError(
      `Could not serialize object of type "${constructor.name}". This type does not support serialization.`,
    );
  }
  return value;
}

/** Whether `constructor` is a class of the JavaScript or Web platform, not the Worker's. */
function isBuiltin(constructor) {
  return globalThis[constructor.name] === constructor &&
    StringPrototypeIncludes(FunctionPrototypeToString(constructor), "[native code]");
}

/** The reverse of `marshal`, in place on a freshly deserialized value. */
export function unmarshal(value, seen = null) {
  if (value === null || typeof value !== "object") return value;
  seen ??= new SafeMap();
  if (MapPrototypeGet(seen, value) !== undefined) return value;
  MapPrototypeSet(seen, value, true);
  if (ArrayIsArray(value)) {
    for (let i = 0; i < value.length; i++) if (i in value) value[i] = unmarshal(value[i], seen);
    return value;
  }
  if (ObjectPrototypeIsPrototypeOf(MapPrototype, value)) {
    const entries = [...value];
    value.clear();
    for (const [k, v] of entries) value.set(unmarshal(k, seen), unmarshal(v, seen));
    return value;
  }
  if (ObjectPrototypeIsPrototypeOf(SetPrototype, value)) {
    const items = [...value];
    value.clear();
    for (const v of items) value.add(unmarshal(v, seen));
    return value;
  }
  if (isPlainObject(value)) {
    const keys = ObjectKeys(value);
    if (keys.length === 1 && keys[0] === STUB_KEY) return remoteStub(value[STUB_KEY]);
    if (keys.length === 1 && keys[0] === STREAM_KEY) {
      return streams.readableStreamForRid(op_dorun_stream_import(value[STREAM_KEY]));
    }
    if (keys.length === 1 && keys[0] === FETCH_KEY) return unmarshalFetchObject(value[FETCH_KEY]);
    if (keys.length === 1 && keys[0] === OBJECT_STUB_KEY) {
      const [namespace, hex, name, worker] = value[OBJECT_STUB_KEY];
      return makeStub(new DurableObjectId(namespace, hex, name ?? undefined), worker);
    }
    for (const key of keys) value[key] = unmarshal(value[key], seen);
  }
  return value;
}

async function exportCall(worker, thread, id, method, get, args) {
  const bytes = await outgoingArgs(args);
  return replyValue(await op_dorun_export_call(worker, thread, id, method, get, bytes));
}

/** A stub for a function or RpcTarget exported by isolate thread `thread` of `worker`. */
function remoteStub(identity) {
  const [thread, id, kind, worker] = identity;
  let disposed = false;
  const live = () => {
    if (disposed) throw new Error("RPC stub used after being disposed.");
  };
  const dispose = () => {
    if (disposed) return;
    disposed = true;
    releases.unregister(stub);
    if (thread === threadIndex && worker === workerName) releaseExport(id);
    else op_dorun_export_release(worker, thread, id);
  };
  const dup = () => {
    live();
    if (thread === threadIndex && worker === workerName) retainExport(id);
    else op_dorun_export_retain(worker, thread, id);
    return remoteStub(identity);
  };
  const stub = new Proxy(callableOf(RpcStub.prototype), {
    apply(_target, _this, args) {
      live();
      if (kind !== "function") throw new TypeError("The RPC stub is not a function.");
      const result = exportCall(worker, thread, id, null, false, args);
      return pipelined(() => result);
    },
    get(_target, property) {
      if (property === SymbolDispose) return dispose;
      if (property === "dup") return dup;
      // Not thenable: awaiting a stub gives the stub.
      if (typeof property === "symbol" || property === "then") return undefined;
      if (kind === "function") return undefined;
      live();
      return pipelined(
        () => exportCall(worker, thread, id, property, true, []),
        (args) => exportCall(worker, thread, id, property, false, args),
      );
    },
  });
  WeakMapPrototypeSet(remoteIdentity, stub, identity);
  releases.register(stub, [thread, id, worker], stub);
  return stub;
}

/**
 * An RPC result as workerd hands it over: an object or array result has its own
 * `Symbol.dispose`, which disposes of the stubs inside it.
 */
function disposable(value) {
  if (value === null || typeof value !== "object" || WeakMapPrototypeGet(remoteIdentity, value)) {
    return value;
  }
  if (ObjectIsFrozen(value) || ObjectHasOwn(value, SymbolDispose)) return value;
  ObjectDefineProperty(value, SymbolDispose, {
    value: () => disposeWithin(value, new SafeSet()),
    configurable: true,
    writable: true,
  });
  return value;
}

function disposeWithin(value, seen) {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) return;
  if (seen.has(value)) return;
  seen.add(value);
  if (WeakMapPrototypeGet(remoteIdentity, value) !== undefined) {
    value[SymbolDispose]();
    return;
  }
  if (typeof value !== "object" || !(ArrayIsArray(value) || isPlainObject(value))) return;
  for (const key of ObjectKeys(value)) disposeWithin(value[key], seen);
}

/** A call through a stub to something this isolate exported. */
export async function handleExportCall(event) {
  const entry = MapPrototypeGet(exportsById, event.export);
  try {
    if (entry === undefined) {
      throw new Error("This RPC stub's target no longer exists (it was released).");
    }
    const args = unmarshal(deserialize(event.args));
    const invoke = () => {
      const target = entry.value;
      if (event.method === null) {
        if (typeof target !== "function") throw new TypeError("The RPC stub is not a function.");
        return target(...args);
      }
      const descriptor = lookupMember(target, event.method);
      if (descriptor === undefined) {
        throw new TypeError(`The RPC receiver does not implement the method "${event.method}".`);
      }
      const member = descriptor.get !== undefined ? descriptor.get.call(target) : descriptor.value;
      if (event.get) return member;
      if (typeof member !== "function") {
        throw new TypeError(`"${event.method}" is not a function.`);
      }
      return member.apply(target, args);
    };
    const object = entry.object;
    const result = object !== null ? await runAs(object, invoke) : await invoke();
    if (object !== null) await object.storage.outputGate();
    op_dorun_reply_value(event.id, serializeResult(result));
  } catch (error) {
    op_dorun_reply_error(event.id, serializeError(error));
  }
}

/** A stub of the object `id`; of a namespace of worker `worker` when it came from there. */
export function makeStub(id, worker = workerName) {
  const [namespace, hex, name] = idParts(id);
  const target = { id, name };
  const route = worker === workerName ? null : worker;
  const fetch = (input, init) => stubFetch(route, namespace, hex, name, input, init);
  const stub = new Proxy(target, {
    get(target, property) {
      if (property === "id" || property === "name") return target[property];
      if (property === "fetch") return fetch;
      if (property === SymbolDispose) return () => {};
      if (typeof property === "symbol" || property === "then") return undefined;
      return rpcProperty(route, namespace, hex, name, property);
    },
  });
  WeakMapPrototypeSet(objectStubIdentity, stub, [namespace, hex, name ?? null, worker]);
  return stub;
}
setStubMaker(makeStub);

/** The own or inherited (not from Object.prototype) property descriptor of `method`. */
export function lookupMember(instance, method) {
  let prototype = ObjectGetPrototypeOf(instance);
  while (prototype !== null && prototype !== ObjectPrototype) {
    const descriptor = ObjectGetOwnPropertyDescriptor(prototype, method);
    if (descriptor !== undefined) return descriptor;
    prototype = ObjectGetPrototypeOf(prototype);
  }
  return undefined;
}
