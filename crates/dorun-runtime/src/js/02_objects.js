// Durable Objects in JS: namespaces, ids and stubs on the calling side; on the side of the
// thread an object is pinned to, the live instances, their input gate, their storage with
// its implicit transaction and output gate, and idle eviction.

import { core, primordials } from "ext:core/mod.js";
import { currentObject, runAsObject } from "ext:dorun/async_context.js";
import {
  hibernationApi,
  runHibernatableEvent,
  WebSocketInternals,
} from "ext:dorun/03_websockets.js";

const {
  ArrayIsArray,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  ArrayPrototypeShift,
  ArrayPrototypeSort,
  DateNow,
  DatePrototype,
  DatePrototypeGetTime,
  Error,
  MathFloor,
  MathMax,
  MapPrototypeGet,
  NumberIsFinite,
  MapPrototypeSet,
  MapPrototypeDelete,
  ObjectGetOwnPropertyDescriptor,
  ObjectGetPrototypeOf,
  ObjectKeys,
  ObjectPrototype,
  ObjectPrototypeIsPrototypeOf,
  MapPrototype,
  SetPrototype,
  Promise,
  PromisePrototypeThen,
  PromiseRace,
  PromiseReject,
  PromiseResolve,
  Proxy,
  RangeError,
  SafeMap,
  SafeWeakMap,
  String,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
  SymbolFor,
  SymbolIterator,
  TypeError,
} = primordials;

const {
  op_dorun_id_from_name,
  op_dorun_new_unique_id,
  op_dorun_id_from_string,
  op_dorun_object_rpc,
  op_dorun_object_fetch,
  op_dorun_reply_response,
  op_dorun_reply_payload,
  op_dorun_reply_value,
  op_dorun_event_args,
  op_dorun_storage_open,
  op_dorun_storage_close,
  op_dorun_storage_rollback,
  op_dorun_storage_commit,
  op_dorun_storage_in_transaction,
  op_dorun_storage_savepoint,
  op_dorun_kv_get,
  op_dorun_kv_put,
  op_dorun_kv_delete,
  op_dorun_kv_list,
  op_dorun_kv_delete_all,
  op_dorun_alarm_get,
  op_dorun_alarm_set,
  op_dorun_alarm_done,
  op_dorun_thread_index,
  op_dorun_export_call,
  op_dorun_export_release,
  op_dorun_export_retain,
  op_dorun_stream_export,
  op_dorun_stream_import,
  op_dorun_sql_exec,
  op_dorun_sql_database_size,
} = core.ops;

const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const SymbolDispose = globalThis.Symbol.dispose ?? SymbolFor("Symbol.dispose");
const OUTPUT_GATE = SymbolFor("dorun.outputGate");
const pendingOutputGate = globalThis[SymbolFor("dorun.pendingOutputGate")];
delete globalThis[SymbolFor("dorun.pendingOutputGate")];
const { toInnerRequest } = core.loadExtScript("ext:deno_fetch/23_request.js");

// --- serialization across isolates -------------------------------------------------------

function serialize(value) {
  return core.serialize(value, { forStorage: false });
}

function deserialize(bytes) {
  return core.deserialize(bytes, { forStorage: false });
}

function serializeError(error) {
  const isError = error !== null && typeof error === "object" && "message" in error;
  const plain = {
    dorunError: true,
    name: isError ? String(error.name ?? "Error") : "Error",
    message: isError ? String(error.message) : String(error),
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
};

function deserializeError(bytes, objectId) {
  let plain;
  try {
    plain = deserialize(bytes);
  } catch {
    plain = { name: "Error", message: "unreadable error from Durable Object" };
  }
  const Ctor = ERROR_TYPES[plain.name] ?? Error;
  const error = new Ctor(plain.message);
  if (error.name !== plain.name) error.name = plain.name;
  error.remote = true;
  if (objectId !== undefined) error.durableObjectId = objectId;
  if (plain.stack) error.stack = plain.stack;
  return error;
}

/** A call that never got an answer (the object was reset or the server is stopping). */
function disconnected(error, objectId) {
  error.retryable = true;
  error.durableObjectReset = true;
  error.durableObjectId = objectId;
  return error;
}

const EMPTY_PAYLOAD = new Uint8Array(0);
const MAX_BCW_DEPTH = 64;
const BCW_TIMEOUT =
  "A call to blockConcurrencyWhile() in a Durable Object waited for too long. The call was canceled and the Durable Object was reset.";

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

export function createObjectSystem({
  DurableObject,
  env,
  waitUntil,
  makeRequest,
  sendResponse,
  console,
  idleTimeoutMs,
  alarmMaxRetries,
  deleteAllDeletesAlarm,
  blockConcurrencyTimeoutMs,
  RpcTarget,
  workerName,
}) {
  // --- ids ----------------------------------------------------------------------------------
  let idParts;
  class DurableObjectId {
    #namespace;
    #hex;
    #name;
    constructor(namespace, hex, name) {
      this.#namespace = namespace;
      this.#hex = hex;
      this.#name = name;
    }
    toString() {
      return this.#hex;
    }
    equals(other) {
      return other instanceof DurableObjectId && other.#hex === this.#hex;
    }
    get name() {
      return this.#name;
    }
    get jurisdiction() {
      return undefined;
    }
    static {
      idParts = (id) => [id.#namespace, id.#hex, id.#name];
    }
  }

  // --- stubs --------------------------------------------------------------------------------
  function replyKind(handle) {
    return handle & 3;
  }
  function replyHandle(handle) {
    return handle >>> 2;
  }

  async function stubFetch(namespace, hex, name, input, init) {
    const request = new Request(input, init);
    const inner = toInnerRequest(request);
    let bodyRid = null;
    if (request.body !== null) {
      bodyRid = streams.resourceForReadableStream(request.body);
    }
    const gate = pendingOutputGate();
    if (gate !== null) await gate;
    let handle;
    try {
      handle = await op_dorun_object_fetch(
        namespace,
        hex,
        name ?? "",
        request.method,
        request.url,
        inner.headerList,
        bodyRid,
      );
    } catch (error) {
      throw disconnected(error, hex);
    }
    if (replyKind(handle) === 2) {
      throw deserializeError(op_dorun_reply_payload(replyHandle(handle)), hex);
    }
    const head = op_dorun_reply_response(replyHandle(handle));
    if (head.webSocket !== null && head.webSocket !== undefined) {
      return new Response(null, {
        status: 101,
        headers: head.headers,
        webSocket: WebSocketInternals.remote(head.webSocket),
      });
    }
    const body = head.bodyRid === null || head.bodyRid === undefined
      ? null
      : streams.readableStreamForRid(head.bodyRid);
    return new Response(body, { status: head.status, headers: head.headers });
  }

  async function rpcCall(namespace, hex, name, method, get, args) {
    let bytes;
    try {
      bytes = serialize(marshal(args));
    } catch (error) {
      throw new TypeError(`Could not serialize RPC arguments: ${error.message}`);
    }
    const gate = pendingOutputGate();
    if (gate !== null) await gate;
    let handle;
    try {
      handle = await op_dorun_object_rpc(namespace, hex, name ?? "", method, get, bytes);
    } catch (error) {
      throw disconnected(error, hex);
    }
    const payload = op_dorun_reply_payload(replyHandle(handle));
    if (replyKind(handle) === 2) throw deserializeError(payload, hex);
    return unmarshal(deserialize(payload));
  }

  /**
   * A member of a stub: calling it calls the method over RPC, awaiting it reads the
   * property; either way the result can be used before it arrives (pipelining).
   */
  function rpcProperty(namespace, hex, name, method) {
    return pipelined(
      () => rpcCall(namespace, hex, name, method, true, []),
      (args) => rpcCall(namespace, hex, name, method, false, args),
    );
  }

  /**
   * Promise pipelining: a thenable for a value still on its way whose members can already
   * be called or read (`stub.getCounter().increment()`), each step waiting for the one
   * before. `read` makes the promise of the value, only when someone awaits it; `call`,
   * if given, is what calling the pipelined value itself does.
   */
  function pipelined(read, call = null) {
    let promise = null;
    const value = () => (promise ??= read());
    return new Proxy(function pipelinedValue() {}, {
      apply(_target, _this, args) {
        if (call === null) throw new TypeError("The RPC result is not a function.");
        const result = call(args);
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
        if (typeof property === "symbol") return undefined;
        return pipelined(
          () => PromisePrototypeThen(value(), (v) => v[property]),
          (args) => PromisePrototypeThen(value(), (v) => v[property](...args)),
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
  const threadIndex = op_dorun_thread_index();
  /**
   * Thread indexes and namespace indexes mean something only inside one worker; a stub
   * that reaches another worker (script_name) is refused with a clear error.
   */
  function checkSameWorker(identity) {
    const from = identity[3];
    if (from !== workerName) {
      throw new TypeError(
        `dorun cannot pass functions, RpcTargets or Durable Object stubs between different workers yet (from worker '${from}' to '${workerName}').`,
      );
    }
  }
  /** id -> { value, refs, object } */
  const exportsById = new SafeMap();
  const exportIds = new SafeWeakMap();
  let nextExport = 0;
  /** A stub of an export -> [thread, export id, kind]. */
  const remoteIdentity = new SafeWeakMap();
  /** A Durable Object stub -> [namespace, hex, name]. */
  const objectStubIdentity = new SafeWeakMap();
  const releases = new FinalizationRegistry(([thread, id]) => {
    if (thread === threadIndex) releaseExport(id);
    else op_dorun_export_release(thread, id);
  });

  function retainExport(id) {
    const entry = MapPrototypeGet(exportsById, id);
    if (entry !== undefined) entry.refs++;
  }

  function releaseExport(id) {
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
      const current = currentObject();
      MapPrototypeSet(exportsById, id, {
        value,
        refs: 0,
        object: current instanceof LiveObject ? current : null,
      });
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
  function marshal(value, seen = null) {
    const type = typeof value;
    if (value === null || (type !== "object" && type !== "function")) return value;
    const remote = WeakMapPrototypeGet(remoteIdentity, value);
    if (remote !== undefined) {
      // Forwarding a stub: its owner counts one more holder (sent before our own release).
      if (remote[0] === threadIndex) {
        const entry = MapPrototypeGet(exportsById, remote[1]);
        if (entry !== undefined) entry.refs++;
      } else {
        op_dorun_export_retain(remote[0], remote[1]);
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
    seen ??= new SafeMap();
    const done = MapPrototypeGet(seen, value);
    if (done !== undefined) return done;
    if (ArrayIsArray(value)) {
      const out = [];
      MapPrototypeSet(seen, value, out);
      for (let i = 0; i < value.length; i++) out[i] = marshal(value[i], seen);
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
    return value;
  }

  /** The reverse of `marshal`, in place on a freshly deserialized value. */
  function unmarshal(value, seen = null) {
    if (value === null || typeof value !== "object") return value;
    seen ??= new SafeMap();
    if (MapPrototypeGet(seen, value) !== undefined) return value;
    MapPrototypeSet(seen, value, true);
    if (ArrayIsArray(value)) {
      for (let i = 0; i < value.length; i++) value[i] = unmarshal(value[i], seen);
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
      if (keys.length === 1 && keys[0] === STUB_KEY) {
        checkSameWorker(value[STUB_KEY]);
        return remoteStub(value[STUB_KEY]);
      }
      if (keys.length === 1 && keys[0] === STREAM_KEY) {
        return streams.readableStreamForRid(op_dorun_stream_import(value[STREAM_KEY]));
      }
      if (keys.length === 1 && keys[0] === OBJECT_STUB_KEY) {
        checkSameWorker(value[OBJECT_STUB_KEY]);
        const [namespace, hex, name] = value[OBJECT_STUB_KEY];
        return makeStub(new DurableObjectId(namespace, hex, name ?? undefined));
      }
      for (const key of keys) value[key] = unmarshal(value[key], seen);
    }
    return value;
  }

  async function exportCall(thread, id, method, get, args) {
    let bytes;
    try {
      bytes = serialize(marshal(args));
    } catch (error) {
      throw new TypeError(`Could not serialize RPC arguments: ${error.message}`);
    }
    const gate = pendingOutputGate();
    if (gate !== null) await gate;
    const handle = await op_dorun_export_call(thread, id, method, get, bytes);
    const payload = op_dorun_reply_payload(replyHandle(handle));
    if (replyKind(handle) === 2) throw deserializeError(payload);
    return unmarshal(deserialize(payload));
  }

  /** A stub for a function or RpcTarget exported by isolate thread `thread`. */
  function remoteStub(identity) {
    const [thread, id, kind] = identity;
    let stub;
    if (kind === "function") {
      // Not thenable: awaiting a function stub gives the stub.
      stub = (...args) => {
        const result = exportCall(thread, id, "", false, args);
        return pipelined(() => result);
      };
    } else {
      stub = new Proxy({}, {
        get(_target, property) {
          if (property === SymbolDispose) return () => {};
          if (typeof property === "symbol" || property === "then") return undefined;
          return pipelined(
            () => exportCall(thread, id, property, true, []),
            (args) => exportCall(thread, id, property, false, args),
          );
        },
      });
    }
    WeakMapPrototypeSet(remoteIdentity, stub, identity);
    releases.register(stub, [thread, id]);
    return stub;
  }

  /** A call through a stub to something this isolate exported. */
  async function handleExportEvent(incoming) {
    const entry = MapPrototypeGet(exportsById, incoming.exportId);
    try {
      if (entry === undefined) {
        throw new Error("This RPC stub's target no longer exists (it was released).");
      }
      const args = unmarshal(deserialize(op_dorun_event_args(incoming.id)));
      const invoke = () => {
        const target = entry.value;
        if (incoming.rpcMethod === "") {
          if (typeof target !== "function") throw new TypeError("The RPC stub is not a function.");
          return target(...args);
        }
        const descriptor = lookupMember(target, incoming.rpcMethod);
        if (descriptor === undefined) {
          throw new TypeError(
            `The RPC receiver does not implement the method "${incoming.rpcMethod}".`,
          );
        }
        const member = descriptor.get !== undefined ? descriptor.get.call(target) : descriptor.value;
        if (incoming.rpcGet) return member;
        if (typeof member !== "function") {
          throw new TypeError(`"${incoming.rpcMethod}" is not a method of the RPC receiver.`);
        }
        return member.apply(target, args);
      };
      const object = entry.object;
      const result = object !== null ? await runAs(object, invoke) : await invoke();
      if (object !== null) await object.storage.outputGate();
      op_dorun_reply_value(incoming.id, false, serialize(marshal(result)));
    } catch (error) {
      op_dorun_reply_value(incoming.id, true, serializeError(error));
    }
  }

  function makeStub(id) {
    const [namespace, hex, name] = idParts(id);
    const target = { id, name };
    const fetch = (input, init) => stubFetch(namespace, hex, name, input, init);
    const stub = new Proxy(target, {
      get(target, property) {
        if (property === "id" || property === "name") return target[property];
        if (property === "fetch") return fetch;
        if (typeof property === "symbol" || property === "then") return undefined;
        return rpcProperty(namespace, hex, name, property);
      },
    });
    WeakMapPrototypeSet(objectStubIdentity, stub, [namespace, hex, name ?? null, workerName]);
    return stub;
  }

  const NOT_IMPLEMENTED_JURISDICTION = "Jurisdiction restrictions are not implemented in dorun.";

  class DurableObjectNamespace {
    #index;
    constructor(index) {
      this.#index = index;
    }
    idFromName(name) {
      name = String(name);
      return new DurableObjectId(this.#index, op_dorun_id_from_name(this.#index, name), name);
    }
    newUniqueId(options = undefined) {
      if (options?.jurisdiction != null) throw new Error(NOT_IMPLEMENTED_JURISDICTION);
      return new DurableObjectId(this.#index, op_dorun_new_unique_id(this.#index), undefined);
    }
    idFromString(text) {
      return new DurableObjectId(
        this.#index,
        op_dorun_id_from_string(this.#index, String(text)),
        undefined,
      );
    }
    get(id, options = undefined) {
      if (!(id instanceof DurableObjectId)) {
        throw new TypeError("Failed to execute 'get' on 'DurableObjectNamespace': parameter 1 is not of type 'DurableObjectId'.");
      }
      if (idParts(id)[0] !== this.#index) {
        throw new TypeError("ID is not for this Durable Object class.");
      }
      const mode = options?.routingMode;
      if (mode !== undefined && mode !== "primary-only") {
        throw new RangeError(`unknown routingMode: ${mode}`);
      }
      return makeStub(id);
    }
    getByName(name, options = undefined) {
      return this.get(this.idFromName(name), options);
    }
    jurisdiction(jurisdiction) {
      if (jurisdiction != null) throw new Error(NOT_IMPLEMENTED_JURISDICTION);
      return this;
    }
  }

  // --- storage ------------------------------------------------------------------------------
  const MAX_KEYS = 128;
  const MAX_KEY_BYTES = 2048;
  const MAX_VALUE_BYTES = 131072;
  const encoder = new TextEncoder();

  function checkKeyCount(count) {
    if (count > MAX_KEYS) {
      throw new RangeError(
        `Maximum number of key value pairs is ${MAX_KEYS}. ${count} pairs were provided.`,
      );
    }
  }

  function sortKeys(keys) {
    return ArrayPrototypeSort(keys, (a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  function listArgs(options = {}) {
    if (options.start !== undefined && options.startAfter !== undefined) {
      throw new TypeError("list() cannot be called with both start and startAfter values.");
    }
    if (options.limit !== undefined && !(options.limit > 0)) {
      throw new TypeError("List limit must be positive.");
    }
    const start = options.startAfter !== undefined
      ? String(options.startAfter) + "\0"
      : options.start === undefined ? undefined : String(options.start);
    return {
      start,
      end: options.end === undefined ? undefined : String(options.end),
      prefix: options.prefix === undefined ? undefined : String(options.prefix),
      reverse: !!options.reverse,
      limit: options.limit === undefined ? undefined : options.limit >>> 0,
    };
  }

  const SQL_DISABLED =
    "SQL is not enabled for this Durable Object class. To enable it, change `new_classes` to `new_sqlite_classes` within the 'migrations' field in your wrangler.jsonc or wrangler.toml file.";
  const KV_DISABLED =
    "The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects, which can be enabled by changing `new_classes` to `new_sqlite_classes` within the 'migrations' field in your wrangler.jsonc or wrangler.toml file.";

  class SqlStorageCursor {
    #columns;
    #rows;
    #index = 0;
    #rowsWritten;
    constructor(columns, rows, rowsWritten) {
      this.#columns = columns;
      this.#rows = rows;
      this.#rowsWritten = rowsWritten;
    }
    #object(row) {
      const out = {};
      for (let i = 0; i < this.#columns.length; i++) out[this.#columns[i]] = row[i];
      return out;
    }
    next() {
      if (this.#index < this.#rows.length) {
        return { done: false, value: this.#object(this.#rows[this.#index++]) };
      }
      return { done: true, value: undefined };
    }
    [SymbolIterator]() {
      return this;
    }
    toArray() {
      const out = [];
      while (this.#index < this.#rows.length) {
        ArrayPrototypePush(out, this.#object(this.#rows[this.#index++]));
      }
      return out;
    }
    one() {
      const remaining = this.#rows.length - this.#index;
      if (remaining === 0) {
        throw new Error("Expected exactly one result from SQL query, but got no results.");
      }
      if (remaining > 1) {
        throw new Error("Expected exactly one result from SQL query, but got multiple results.");
      }
      return this.next().value;
    }
    raw() {
      const cursor = this;
      const rows = this.#rows;
      return {
        next() {
          if (cursor.#index < rows.length) return { done: false, value: rows[cursor.#index++] };
          return { done: true, value: undefined };
        },
        [SymbolIterator]() {
          return this;
        },
        toArray() {
          const out = [];
          while (cursor.#index < rows.length) ArrayPrototypePush(out, rows[cursor.#index++]);
          return out;
        },
      };
    }
    get columnNames() {
      return [...this.#columns];
    }
    get rowsRead() {
      return this.#index;
    }
    get rowsWritten() {
      return this.#rowsWritten;
    }
  }

  class DurableObjectStorage {
    #object;
    #handle = 0;
    /** The commit of the writes made in the current turn, if one is pending. */
    #commit = null;
    /** The pending commit that outgoing messages must wait for (the output gate). */
    #gate = null;
    #depth = 0;
    constructor(object) {
      this.#object = object;
    }

    /** The database handle, creating the file on first use. */
    #db() {
      if (this.#handle === 0) {
        this.#handle = op_dorun_storage_open(
          this.#object.namespace,
          this.#object.hex,
          this.#object.name ?? "",
          true,
        );
      }
      return this.#handle;
    }

    /** The database handle for a read; 0 if the object has never written anything. */
    #dbIfExists() {
      if (this.#handle === 0) {
        this.#handle = op_dorun_storage_open(
          this.#object.namespace,
          this.#object.hex,
          this.#object.name ?? "",
          false,
        );
      }
      return this.#handle;
    }

    /**
     * After a write: commit at the end of this turn. Unless the write was made with
     * `allowUnconfirmed`, the output gate is held until that commit is durable.
     */
    #wrote(options = undefined) {
      if (this.#commit === null && op_dorun_storage_in_transaction(this.#handle)) {
        const commit = op_dorun_storage_commit(this.#handle);
        this.#commit = commit;
        PromisePrototypeThen(
          commit,
          () => {
            if (this.#commit === commit) this.#commit = null;
            if (this.#gate === commit) this.#gate = null;
          },
          (error) => {
            if (this.#commit === commit) this.#commit = null;
            if (this.#gate === commit) this.#gate = null;
            this.#object.reset(error);
          },
        );
      }
      if (this.#commit !== null && options?.allowUnconfirmed !== true) {
        this.#gate = this.#commit;
      }
    }

    /** Resolves when every confirmed write so far is durable; rejects if a commit failed. */
    async outputGate() {
      while (this.#gate !== null) await this.#gate;
    }

    /** The output gate if a confirmed write is not yet durable, else null. */
    pendingGate() {
      return this.#gate === null ? null : this.outputGate();
    }

    /** Resolves when every write so far, confirmed or not, is durable. */
    async sync() {
      while (this.#commit !== null) await this.#commit;
    }

    close() {
      if (this.#handle !== 0) {
        const handle = this.#handle;
        this.#handle = 0;
        op_dorun_storage_close(handle);
      }
    }

    rollbackAndClose() {
      if (this.#handle !== 0) {
        const handle = this.#handle;
        this.#handle = 0;
        try {
          op_dorun_storage_rollback(handle);
        } finally {
          op_dorun_storage_close(handle);
        }
      }
    }

    #read(key) {
      const handle = this.#dbIfExists();
      if (handle === 0) return undefined;
      const bytes = op_dorun_kv_get(handle, String(key));
      return bytes === null || bytes === undefined
        ? undefined
        : core.deserialize(bytes, { forStorage: true });
    }

    #write(key, value) {
      if (value === undefined) throw new TypeError("put() called with undefined value.");
      key = String(key);
      const bytes = core.serialize(value, { forStorage: true });
      if (!this.#object.sqlite) {
        // KV-backed classes (new_classes) have Cloudflare's KV limits.
        const keySize = encoder.encode(key).byteLength;
        if (keySize > MAX_KEY_BYTES) {
          throw new RangeError(
            `Keys cannot be larger than ${MAX_KEY_BYTES} bytes. A key of size ${keySize} was provided.`,
          );
        }
        if (bytes.byteLength > MAX_VALUE_BYTES + 34) {
          throw new RangeError(
            `Values cannot be larger than ${MAX_VALUE_BYTES} bytes. A value of size ${bytes.byteLength} was provided.`,
          );
        }
      }
      op_dorun_kv_put(this.#db(), key, bytes);
    }

    getSync(keys) {
      if (ArrayIsArray(keys)) {
        checkKeyCount(keys.length);
        const result = new SafeMap();
        for (const key of sortKeys([...keys])) {
          const value = this.#read(key);
          if (value !== undefined) MapPrototypeSet(result, String(key), value);
        }
        return new Map(result);
      }
      return this.#read(keys);
    }

    putSync(keyOrEntries, value, options = undefined) {
      if (keyOrEntries !== null && typeof keyOrEntries === "object") {
        const keys = ObjectKeys(keyOrEntries);
        checkKeyCount(keys.length);
        for (const key of keys) {
          if (keyOrEntries[key] !== undefined) this.#write(key, keyOrEntries[key]);
        }
      } else {
        this.#write(keyOrEntries, value);
      }
      this.#wrote(options);
    }

    deleteSync(keys, options = undefined) {
      if (ArrayIsArray(keys)) checkKeyCount(keys.length);
      const handle = this.#dbIfExists();
      if (handle === 0) return ArrayIsArray(keys) ? 0 : false;
      let result;
      if (ArrayIsArray(keys)) {
        checkKeyCount(keys.length);
        result = 0;
        for (const key of keys) if (op_dorun_kv_delete(handle, String(key))) result++;
      } else {
        result = op_dorun_kv_delete(handle, String(keys));
      }
      this.#wrote(options);
      return result;
    }

    listSync(options) {
      const args = listArgs(options ?? {});
      const handle = this.#dbIfExists();
      if (handle === 0) return new Map();
      const flat = op_dorun_kv_list(handle, args);
      const result = new Map();
      for (let i = 0; i < flat.length; i += 2) {
        result.set(flat[i], core.deserialize(flat[i + 1], { forStorage: true }));
      }
      return result;
    }

    // Asynchronous KV API: SQLite reads are synchronous, so results are already settled
    // promises and no other event can run in between (the input gate holds trivially).
    get(keys, _options) {
      try {
        return PromiseResolve(this.getSync(keys));
      } catch (error) {
        return PromiseReject(error);
      }
    }
    put(keyOrEntries, value, options) {
      try {
        const entries = keyOrEntries !== null && typeof keyOrEntries === "object";
        if (entries && value !== undefined && (value === null || typeof value !== "object")) {
          throw new TypeError(
            "put() may only be called with a single key-value pair and optional options as put(key, value, options) or with multiple key-value pairs and optional options as put(entries, options)",
          );
        }
        if (entries) this.putSync(keyOrEntries, undefined, value);
        else this.putSync(keyOrEntries, value, options);
        return PromiseResolve();
      } catch (error) {
        return PromiseReject(error);
      }
    }
    delete(keys, options) {
      try {
        return PromiseResolve(this.deleteSync(keys, options));
      } catch (error) {
        return PromiseReject(error);
      }
    }
    list(options = {}) {
      try {
        return PromiseResolve(this.listSync(options));
      } catch (error) {
        return PromiseReject(error);
      }
    }
    deleteAll(_options) {
      try {
        if (this.#depth > 0) throw new Error("Cannot call deleteAll() within a transaction");
        op_dorun_kv_delete_all(this.#db(), !deleteAllDeletesAlarm);
        this.#wrote();
        return PromiseResolve();
      } catch (error) {
        return PromiseReject(error);
      }
    }

    transactionSync(callback) {
      const handle = this.#db();
      const name = `_cf_sync_savepoint_${this.#depth}`;
      op_dorun_storage_savepoint(handle, name, 0);
      this.#wrote();
      this.#depth++;
      try {
        const result = callback();
        op_dorun_storage_savepoint(handle, name, 1);
        return result;
      } catch (error) {
        op_dorun_storage_savepoint(handle, name, 2);
        throw error;
      } finally {
        this.#depth--;
      }
    }

    async transaction(closure) {
      const storage = this;
      return await this.#object.blockConcurrencyWhile(async () => {
        const handle = storage.#db();
        const name = `_cf_savepoint_${storage.#depth}`;
        op_dorun_storage_savepoint(handle, name, 0);
        storage.#wrote();
        storage.#depth++;
        let rolledBack = false;
        const txn = {
          get: (k, o) => storage.get(k, o),
          put: (k, v, o) => storage.put(k, v, o),
          delete: (k, o) => storage.delete(k, o),
          list: (o) => storage.list(o),
          getAlarm: (o) => storage.getAlarm(o),
          setAlarm: (t, o) => storage.setAlarm(t, o),
          deleteAlarm: (o) => storage.deleteAlarm(o),
          deleteAll: () => PromiseReject(new Error("Cannot call deleteAll() within a transaction")),
          rollback: () => {
            rolledBack = true;
          },
        };
        try {
          const result = await closure(txn);
          op_dorun_storage_savepoint(handle, name, rolledBack ? 2 : 1);
          return result;
        } catch (error) {
          op_dorun_storage_savepoint(handle, name, 2);
          throw error;
        } finally {
          storage.#depth--;
        }
      }, { resetOnError: false });
    }

    // --- alarms: stored in the object's database (committed with the writes around
    // them) and scheduled by the runtime's alarm scheduler once committed.

    /** The stored alarm time, or null. */
    storedAlarm() {
      const handle = this.#dbIfExists();
      if (handle === 0) return null;
      return op_dorun_alarm_get(handle) ?? null;
    }

    getAlarm(_options) {
      try {
        const time = this.storedAlarm();
        // While alarm() runs, its own alarm reads as null (unless it set a new one).
        if (time !== null && time === this.#object.runningAlarm) return PromiseResolve(null);
        return PromiseResolve(time);
      } catch (error) {
        return PromiseReject(error);
      }
    }

    setAlarm(scheduledTime, options = undefined) {
      try {
        let time;
        if (ObjectPrototypeIsPrototypeOf(DatePrototype, scheduledTime)) {
          time = DatePrototypeGetTime(scheduledTime);
        } else if (typeof scheduledTime === "number") {
          time = scheduledTime;
        } else {
          throw new TypeError(
            "Failed to execute 'setAlarm' on 'DurableObjectStorage': parameter 1 is not of type 'Date or number'.",
          );
        }
        if (!NumberIsFinite(time)) throw new TypeError("setAlarm() requires a finite time.");
        if (time <= 0) {
          throw new TypeError("setAlarm() cannot be called with an alarm time <= 0");
        }
        if (
          this.#object.instance !== null &&
          typeof this.#object.instance.alarm !== "function"
        ) {
          throw new TypeError(
            "Your Durable Object class must have an alarm() handler in order to call setAlarm()",
          );
        }
        time = MathFloor(MathMax(time, DateNow()));
        const current = this.storedAlarm();
        if (current === time && current !== this.#object.runningAlarm) return PromiseResolve();
        op_dorun_alarm_set(this.#db(), time);
        this.#wrote(options);
        return PromiseResolve();
      } catch (error) {
        return PromiseReject(error);
      }
    }

    deleteAlarm(options = undefined) {
      try {
        if (this.storedAlarm() !== null) {
          op_dorun_alarm_set(this.#db(), -1);
          this.#wrote(options);
        }
        return PromiseResolve();
      } catch (error) {
        return PromiseReject(error);
      }
    }

    get kv() {
      if (!this.#object.sqlite) throw new Error(KV_DISABLED);
      const storage = this;
      return {
        get: (key) => storage.getSync(String(key)),
        put: (key, value) => storage.putSync(String(key), value),
        delete: (key) => storage.deleteSync(String(key)),
        list: (options) => storage.listSync(options).entries(),
      };
    }

    get sql() {
      const storage = this;
      const object = this.#object;
      return {
        exec(query, ...bindings) {
          if (!object.sqlite) throw new Error(SQL_DISABLED);
          const handle = storage.#db();
          let result;
          try {
            result = op_dorun_sql_exec(handle, String(query), bindings);
          } finally {
            storage.#wrote();
          }
          return new SqlStorageCursor(result[0], result[1], result[3]);
        },
        get databaseSize() {
          if (!object.sqlite) throw new Error(SQL_DISABLED);
          return op_dorun_sql_database_size(storage.#db());
        },
      };
    }
  }

  // --- live objects --------------------------------------------------------------------------
  const live = new SafeMap();

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
      this.locked = 0;
      this.waiting = [];
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
          if (object.locked >= MAX_BCW_DEPTH) {
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
        ...hibernationApi(this),
      };
    }

    [OUTPUT_GATE]() {
      return this.storage.pendingGate();
    }

    /**
     * Runs `callback` with the input gate closed: no other event starts until it settles.
     * Past the timeout (30 s, as on Cloudflare) the object is reset.
     */
    async blockConcurrencyWhile(callback, { resetOnError = true } = {}) {
      this.locked++;
      let timer;
      try {
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(BCW_TIMEOUT)), blockConcurrencyTimeoutMs);
        });
        return await PromiseRace([callback(), timeout]);
      } catch (error) {
        if (resetOnError || error?.message === BCW_TIMEOUT) this.reset(error);
        throw error;
      } finally {
        clearTimeout(timer);
        this.locked--;
        this.#release();
      }
    }

    #release() {
      while (this.locked === 0 && this.waiting.length > 0) {
        ArrayPrototypeShift(this.waiting)();
      }
    }

    /** Waits for the input gate to open. */
    gate() {
      if (this.locked === 0 && this.waiting.length === 0) return null;
      return new Promise((resolve) => ArrayPrototypePush(this.waiting, resolve));
    }

    construct(worker) {
      const Class = worker[this.className];
      if (typeof Class !== "function") {
        throw new Error(
          `Durable Object class "${this.className}" is not exported from the Worker's main module.`,
        );
      }
      this.locked++;
      try {
        this.instance = runAs(this, () => new Class(this.ctx, env));
      } finally {
        this.locked--;
      }
      this.#release();
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

  /** Runs user code with `object` as its async context (followed across awaits by V8). */
  function runAs(object, callback) {
    return runAsObject(object, callback);
  }

  function lookupMember(instance, method) {
    let prototype = ObjectGetPrototypeOf(instance);
    while (prototype !== null && prototype !== ObjectPrototype) {
      const descriptor = ObjectGetOwnPropertyDescriptor(prototype, method);
      if (descriptor !== undefined) return descriptor;
      prototype = ObjectGetPrototypeOf(prototype);
    }
    return undefined;
  }

  async function runRpc(object, incoming) {
    const method = incoming.rpcMethod;
    const args = unmarshal(deserialize(op_dorun_event_args(incoming.id)));
    const instance = object.instance;
    if (!ObjectPrototypeIsPrototypeOf(DurableObject.prototype, instance)) {
      throw new TypeError(
        "The receiving Durable Object does not support RPC, because its class was not declared with `extends DurableObject`. In order to enable RPC, make sure your class extends the special class `DurableObject`, which can be imported from the module \"cloudflare:workers\".",
      );
    }
    if (ArrayPrototypeIncludes(RESERVED_METHODS, method)) {
      throw new TypeError(`'${method}' is a reserved method and cannot be called over RPC.`);
    }
    const descriptor = lookupMember(instance, method);
    if (descriptor === undefined) {
      throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
    }
    const value = descriptor.get !== undefined ? descriptor.get.call(instance) : descriptor.value;
    if (incoming.rpcGet) return await value;
    if (typeof value !== "function") {
      throw new TypeError(`"${method}" is not a method of the RPC receiver.`);
    }
    return await value.apply(instance, args);
  }

  const ALARM_DONE = 0;
  const ALARM_RETRY = 1;
  const ALARM_STALE = 2;

  /** Runs a due alarm and tells the scheduler what comes next. */
  async function runAlarm(object, incoming) {
    const scheduled = incoming.alarmScheduled;
    const retryCount = incoming.alarmRetries;
    const storage = object.storage;
    const stored = storage.storedAlarm();
    if (stored !== scheduled) {
      // The scheduler's record is stale (from the index after a crash): go by the object's.
      op_dorun_alarm_done(incoming.id, ALARM_STALE, stored ?? -1);
      return;
    }
    const instance = object.instance;
    if (typeof instance.alarm !== "function") {
      console.error(
        "Attempted to run a scheduled alarm without a handler, did you remember to export an alarm() function?",
      );
      await storage.deleteAlarm();
      await storage.outputGate();
      op_dorun_alarm_done(incoming.id, ALARM_DONE, -1);
      return;
    }
    let failed = null;
    object.runningAlarm = scheduled;
    try {
      await runAs(
        object,
        () => instance.alarm({ scheduledTime: scheduled, retryCount, isRetry: retryCount > 0 }),
      );
    } catch (error) {
      failed = error;
      console.error(`alarm() of Durable Object ${object.className} ${object.hex} threw:`, error);
    } finally {
      object.runningAlarm = null;
    }
    if (object.broken !== null) {
      op_dorun_alarm_done(incoming.id, object.noAlarmRetry ? ALARM_DONE : ALARM_RETRY, -1);
      return;
    }
    const after = storage.storedAlarm();
    let outcome = ALARM_DONE;
    if (after === scheduled) {
      if (failed === null || object.noAlarmRetry || retryCount >= alarmMaxRetries) {
        if (failed !== null) {
          console.error(
            `alarm() of Durable Object ${object.className} ${object.hex} gave up after ${retryCount} retries`,
          );
        }
        // Done with this alarm (a new one set by the handler would differ from `scheduled`).
        await storage.deleteAlarm();
      } else {
        outcome = ALARM_RETRY;
      }
    }
    await storage.outputGate();
    op_dorun_alarm_done(incoming.id, outcome, -1);
  }

  async function handleObjectEvent(worker, incoming, classInfo) {
    const key = `${incoming.namespace}:${incoming.objectId}`;
    let object = MapPrototypeGet(live, key);
    try {
      if (object === undefined) {
        object = new LiveObject(
          incoming.namespace,
          incoming.objectId,
          incoming.objectName ?? undefined,
          classInfo,
        );
        MapPrototypeSet(live, key, object);
        try {
          object.construct(worker);
        } catch (error) {
          MapPrototypeDelete(live, key);
          throw error;
        }
      }
      object.inFlight++;
      object.lastActive = DateNow();
      try {
        const wait = object.gate();
        if (wait !== null) await wait;
        if (object.broken !== null) throw object.broken;
        if (incoming.kind === 3) {
          await runAlarm(object, incoming);
        } else if (incoming.kind === 4) {
          try {
            await runAs(object, () => runHibernatableEvent(object, incoming));
          } catch (error) {
            console.error(`WebSocket handler of Durable Object ${object.className} threw:`, error);
          }
          await object.storage.outputGate();
          op_dorun_reply_value(incoming.id, false, EMPTY_PAYLOAD);
        } else if (incoming.kind === 1) {
          const instance = object.instance;
          if (typeof instance.fetch !== "function") {
            throw new Error("Handler does not export a fetch() function.");
          }
          const response = await runAs(object, () => instance.fetch(makeRequest(incoming)));
          if (!(response instanceof Response)) {
            throw new TypeError(
              "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
            );
          }
          await object.storage.outputGate();
          sendResponse(incoming.id, response);
        } else {
          const result = await runAs(object, () => runRpc(object, incoming));
          await object.storage.outputGate();
          let bytes;
          try {
            bytes = serialize(marshal(result));
          } catch (error) {
            throw new TypeError(`Could not serialize the RPC result: ${error.message}`);
          }
          op_dorun_reply_value(incoming.id, false, bytes);
        }
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
      op_dorun_reply_value(incoming.id, true, serializeError(error));
    }
  }

  function evictIdle() {
    const now = DateNow();
    for (const object of live.values()) {
      if (
        object.inFlight === 0 && object.locked === 0 && object.waiting.length === 0 &&
        object.localSockets === 0 &&
        now - object.lastActive >= idleTimeoutMs
      ) {
        MapPrototypeDelete(live, object.key);
        PromisePrototypeThen(object.storage.outputGate(), () => object.storage.close(), () => {});
      }
    }
  }

  return {
    DurableObjectNamespace,
    DurableObjectId,
    handleObjectEvent,
    handleExportEvent,
    releaseExport,
    retainExport,
    evictIdle,
    live,
    runAs,
  };
}
