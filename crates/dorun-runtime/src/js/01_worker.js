// The Worker glue: the `cloudflare:workers` classes, `env`, and the serve loop that turns
// requests queued by the front door into calls of the Worker's fetch handler.

import { core, primordials } from "ext:core/mod.js";
import "ext:dorun/00_globals.js";
import { createObjectSystem } from "ext:dorun/02_objects.js";
import {
  handleLocalSocketEvent,
  responseSocketToken,
  WebSocket,
  WebSocketPair,
  WebSocketRequestResponsePair,
} from "ext:dorun/03_websockets.js";
import { createAssetsBinding } from "ext:dorun/04_assets.js";

const {
  ArrayPrototypePush,
  Error,
  Promise,
  PromiseAllSettled,
  PromiseRace,
  JSONParse,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseResolve,
  SafeSet,
  SetPrototypeAdd,
  SetPrototypeDelete,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeGetByteLength,
} = primordials;

const {
  op_dorun_next_event,
  op_dorun_respond,
  op_dorun_respond_stream,
  op_dorun_env,
  op_dorun_module_bytes,
  op_dorun_done,
} = core.ops;

const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");
const { fromInnerRequest, newInnerRequest } = core.loadExtScript(
  "ext:deno_fetch/23_request.js",
);
const { ResponsePrototype, toInnerResponse } = core.loadExtScript(
  "ext:deno_fetch/23_response.js",
);
const console = globalThis[SymbolFor("dorun.console")];
delete globalThis[SymbolFor("dorun.console")];

// --- env and waitUntil ---------------------------------------------------------------
const config = JSONParse(op_dorun_env());
/** The Worker's env: vars and secrets, then one DurableObjectNamespace per binding. */
const env = { ...config.vars };

/** Promises passed to waitUntil that have not settled; kept so errors are logged. */
const pendingWaitUntil = new SafeSet();
function waitUntil(promise) {
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

class ExecutionContext {
  props = {};
  waitUntil(promise) {
    waitUntil(promise);
  }
  passThroughOnException() {}
}

// --- cloudflare:workers ----------------------------------------------------------------
class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

class RpcTarget {}

globalThis[SymbolFor("dorun.cloudflare:workers")] = {
  DurableObject,
  WorkerEntrypoint,
  WorkflowEntrypoint,
  RpcTarget,
  RpcStub: undefined,
  env,
  waitUntil,
};

const objects = createObjectSystem({
  DurableObject,
  env,
  waitUntil,
  makeRequest: (incoming) => makeRequest(incoming),
  sendResponse: (id, response) => sendResponse(id, response),
  console,
  idleTimeoutMs: config.idleTimeoutMs,
  alarmMaxRetries: config.alarmMaxRetries,
  deleteAllDeletesAlarm: config.deleteAllDeletesAlarm,
  blockConcurrencyTimeoutMs: config.blockConcurrencyTimeoutMs,
  RpcTarget,
  workerName: config.workerName,
});
for (let index = 0; index < config.namespaces.length; index++) {
  // A class only other workers bind to has a namespace without a binding of its own.
  const binding = config.namespaces[index].binding;
  if (binding !== "") env[binding] = new objects.DurableObjectNamespace(index);
}
if (config.assetsBinding) env[config.assetsBinding] = createAssetsBinding();
globalThis.DurableObjectNamespace = objects.DurableObjectNamespace;
globalThis.WebSocket = WebSocket;
globalThis.WebSocketPair = WebSocketPair;
globalThis.WebSocketRequestResponsePair = WebSocketRequestResponsePair;
globalThis.DurableObjectId = objects.DurableObjectId;

globalThis[SymbolFor("dorun.moduleBytes")] = (url) => op_dorun_module_bytes(url).buffer;

// --- handlers --------------------------------------------------------------------------
const encoder = new TextEncoder();
const NO_FETCH_HANDLER = "Handler does not export a fetch() function.";

/** Picks how to call the Worker from its module namespace. */
function fetchHandlerFor(worker) {
  const exported = worker.default;
  if (
    typeof exported === "function" &&
    ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, exported.prototype)
  ) {
    if (typeof exported.prototype.fetch !== "function") return null;
    return (request, ctx) => new exported(ctx, env).fetch(request);
  }
  if (exported !== null && typeof exported === "object" && typeof exported.fetch === "function") {
    return (request, ctx) => exported.fetch(request, env, ctx);
  }
  return null;
}

function makeRequest(incoming) {
  const body = incoming.bodyRid === null || incoming.bodyRid === undefined
    ? null
    : new InnerBody(streams.readableStreamForRid(incoming.bodyRid));
  const inner = newInnerRequest(
    incoming.method,
    incoming.url,
    () => incoming.headers,
    body,
    false,
  );
  return fromInnerRequest(inner, "immutable");
}

function respondError(id, status, message) {
  op_dorun_respond(
    id,
    status,
    [["content-type", "text/plain;charset=UTF-8"]],
    encoder.encode(message),
    0,
  );
}

function sendResponse(id, response) {
  const inner = toInnerResponse(response);
  const status = inner.status;
  const headers = inner.headerList;
  const body = inner.body;
  // A WebSocket response hands its socket to the front door.
  const socket = responseSocketToken(response);
  if (body === null) {
    op_dorun_respond(id, status, headers, null, socket);
    return;
  }
  const source = body.streamOrStatic;
  if (!ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, source)) {
    const bytes = typeof source.body === "string" ? encoder.encode(source.body) : source.body;
    source.consumed = true;
    op_dorun_respond(id, status, headers, bytes, 0);
    return;
  }
  if (streams.isReadableStreamLocked(source) || streams.isReadableStreamDisturbed(source)) {
    throw new TypeError("The response body has already been used.");
  }
  const rid = streams.resourceForReadableStream(source);
  PromisePrototypeThen(op_dorun_respond_stream(id, status, headers, rid), undefined, (error) => {
    console.error("Error while streaming the response body:", error);
  });
}

async function handle(handler, incoming) {
  let response;
  try {
    if (handler === null) throw new Error(NO_FETCH_HANDLER);
    const request = makeRequest(incoming);
    response = await handler(request, new ExecutionContext());
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError(
        "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
      );
    }
    sendResponse(incoming.id, response);
  } catch (error) {
    console.error(error);
    respondError(incoming.id, 500, "Internal Server Error");
  }
}

async function serve(worker) {
  const handler = fetchHandlerFor(worker);
  if (handler === null) console.warn(NO_FETCH_HANDLER);
  const eviction = setInterval(
    () => objects.evictIdle(),
    Math.max(10, Math.min(1000, config.idleTimeoutMs / 4)),
  );
  while (true) {
    const incoming = await op_dorun_next_event();
    if (incoming === null || incoming === undefined) break;
    if (incoming.kind === 0) {
      handle(handler, incoming);
    } else if (incoming.kind === 5) {
      handleLocalSocketEvent(incoming, objects.runAs);
    } else if (incoming.kind === 6) {
      objects.handleExportEvent(incoming);
    } else if (incoming.kind === 7) {
      objects.releaseExport(incoming.exportId);
    } else if (incoming.kind === 8) {
      objects.retainExport(incoming.exportId);
    } else {
      objects.handleObjectEvent(worker, incoming, config.namespaces[incoming.namespace]);
    }
  }
  clearInterval(eviction);
  // Let waitUntil work and pending commits finish (bounded: the pool waits 5 s at most),
  // close every object's storage, then stop even if user timers are still scheduled.
  const settled = [...pendingWaitUntil];
  for (const object of objects.live.values()) {
    ArrayPrototypePush(
      settled,
      PromisePrototypeThen(object.storage.outputGate(), () => object.storage.close(), () => {}),
    );
  }
  let timer;
  await PromiseRace([
    PromiseAllSettled(settled),
    new Promise((resolve) => {
      timer = setTimeout(resolve, 4000);
    }),
  ]);
  clearTimeout(timer);
  op_dorun_done();
}

globalThis[SymbolFor("dorun.start")] = (worker) => {
  delete globalThis[SymbolFor("dorun.start")];
  PromisePrototypeThen(serve(worker), undefined, (error) => {
    console.error("dorun serve loop failed:", error);
  });
};

// User code sees Workers globals only, not Deno's.
delete globalThis.Deno;
delete globalThis.__bootstrap;

export { ExecutionContext, env, waitUntil };
