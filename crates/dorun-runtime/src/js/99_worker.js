// The Worker: `cloudflare:workers`, `env`, the fetch handler, and the serve loop that takes
// each event from the isolate thread's mailbox (events.rs) and hands it to its concern.
// Loaded last; the entry point of the glue.

import { core, primordials } from "ext:core/mod.js";
import {
  config,
  console,
  ctxExports,
  DurableObject,
  lifecycle,
  env,
  pendingWaitUntil,
  RpcTarget,
  runInvocation,
  waitUntil,
  WorkerEntrypoint,
  WorkflowEntrypoint,
} from "ext:dorun/00_runtime.js";
import "ext:dorun/01_globals.js";
import { DurableObjectId, DurableObjectNamespace } from "ext:dorun/02_ids.js";
import {
  handleLocalSocketEvent,
  WebSocket,
  WebSocketPair,
  WebSocketRequestResponsePair,
} from "ext:dorun/03_websockets.js";
import {
  fetchDepthOf,
  makeIncomingRequest,
  respondErrorPage,
  respondFailure,
  sendResponse,
  wantsErrorPage,
} from "ext:dorun/05_http.js";
import {
  createServiceBinding,
  deserialize,
  handleExportCall,
  lookupMember,
  releaseExport,
  retainExport,
  RpcStub,
  serializeError,
  serializeResult,
  unmarshal,
} from "ext:dorun/06_rpc.js";
import { evictIdle, handleObjectEvent, live } from "ext:dorun/10_objects.js";
import { createAssetsBinding } from "ext:dorun/11_assets.js";
import { createKvNamespace } from "ext:dorun/14_kv.js";
import { createD1Database } from "ext:dorun/15_d1.js";
import { createR2Bucket } from "ext:dorun/16_r2.js";
import { createLocalBinding } from "ext:dorun/17_local_bindings.js";
import { createQueue, decodeBatch, outcomeOf } from "ext:dorun/18_queues.js";
import { createWorkflow, runWorkflow, workflowsModule } from "ext:dorun/19_workflows.js";
import { socketsModule } from "ext:dorun/20_sockets.js";
import "ext:dorun/12_cache.js";
import { handleAdminEvent } from "ext:dorun/13_admin.js";

const {
  ArrayPrototypePush,
  ArrayPrototypeSlice,
  Error,
  JSONParse,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromiseAll,
  PromiseAllSettled,
  PromisePrototypeThen,
  PromiseRace,
  PromiseResolve,
  ObjectGetOwnPropertyDescriptor,
  ObjectHasOwn,
  ObjectKeys,
  Proxy,
  SymbolFor,
  TypeError,
} = primordials;

const {
  op_dorun_next_event,
  op_dorun_module_bytes,
  op_dorun_done,
  op_dorun_started,
  op_dorun_reply_value,
  op_dorun_reply_error,
} = core.ops;

const { ResponsePrototype } = core.loadExtScript("ext:deno_fetch/23_response.js");

class ExecutionContext {
  props = {};
  get exports() {
    return ctxExports;
  }
  waitUntil(promise) {
    waitUntil(promise);
  }
  passThroughOnException() {}
}

// --- cloudflare:workers and env -----------------------------------------------------------
globalThis[SymbolFor("dorun.cloudflare:workers")] = {
  DurableObject,
  WorkerEntrypoint,
  WorkflowEntrypoint,
  RpcTarget,
  RpcStub,
  env,
  waitUntil,
  exports: ctxExports,
};

for (let index = 0; index < config.namespaces.length; index++) {
  // A class only other workers bind to has a namespace without a binding of its own.
  const binding = config.namespaces[index].binding;
  if (binding !== "") env[binding] = new DurableObjectNamespace(index);
}
if (config.assetsBinding) env[config.assetsBinding] = createAssetsBinding();
for (const { binding, id } of config.kvNamespaces) env[binding] = createKvNamespace(id);
for (const { binding, name } of config.d1Databases) env[binding] = createD1Database(name);
for (const { binding, bucket } of config.r2Buckets) env[binding] = createR2Bucket(bucket);
for (const item of config.localBindings) env[item.binding] = createLocalBinding(item);
for (const { binding, name } of config.workflows) env[binding] = createWorkflow(name, binding);
globalThis[SymbolFor("dorun.cloudflare:workflows")] = workflowsModule;
globalThis[SymbolFor("dorun.cloudflare:sockets")] = socketsModule;
for (const { binding, queue, deliveryDelay } of config.queueProducers) {
  env[binding] = createQueue(queue, deliveryDelay);
}
for (let index = 0; index < config.services.length; index++) {
  env[config.services[index].binding] = createServiceBinding(index, config.services[index]);
}
globalThis.DurableObjectNamespace = DurableObjectNamespace;
globalThis.WebSocket = WebSocket;
globalThis.WebSocketPair = WebSocketPair;
globalThis.WebSocketRequestResponsePair = WebSocketRequestResponsePair;
globalThis.DurableObjectId = DurableObjectId;

globalThis[SymbolFor("dorun.moduleBytes")] = (url) => op_dorun_module_bytes(url).buffer;

// --- the fetch handler ------------------------------------------------------------------------
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

async function handleHttp(handler, incoming) {
  let response;
  try {
    if (handler === null) throw new Error(NO_FETCH_HANDLER);
    const request = makeIncomingRequest(incoming.request);
    response = await runInvocation(
      null,
      fetchDepthOf(incoming.request),
      () => handler(request, new ExecutionContext()),
    );
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError(
        "Incorrect type for Promise: the Promise did not resolve to 'Response'.",
      );
    }
    sendResponse(incoming.id, response);
  } catch (error) {
    console.error(error);
    if (wantsErrorPage(incoming.request)) respondErrorPage(incoming.id, error);
    else respondFailure(incoming.id);
  }
}

// --- cron triggers: scheduled() ----------------------------------------------------------------

/**
 * The event an internal request stands for (crons.rs and queues.rs send them with the
 * process's secret token): `{kind: "scheduled", cron, scheduledTime}` or `{kind: "queue"}`;
 * null for any other request.
 */
function internalEventOf(head) {
  let token = null;
  let kind = null;
  let cron = "";
  let scheduledTime = null;
  let workflow = null;
  let className = null;
  let instance = null;
  for (const { 0: name, 1: value } of head.headers) {
    if (name === "x-dorun-scheduled") {
      token = value;
      kind = "scheduled";
    } else if (name === "x-dorun-queue") {
      token = value;
      kind = "queue";
    } else if (name === "x-dorun-workflow") {
      token = value;
      kind = "workflow";
    } else if (name === "x-dorun-workflow-name") workflow = value;
    else if (name === "x-dorun-workflow-class") className = value;
    else if (name === "x-dorun-workflow-instance") instance = value;
    else if (name === "x-dorun-cron") cron = value;
    else if (name === "x-dorun-scheduled-time") scheduledTime = Number(value);
  }
  if (token === null || token !== config.fetchDepthToken) return null;
  if (kind === "queue") return { kind };
  if (kind === "workflow") return { kind, workflow, className, instance };
  return { kind, cron, scheduledTime: scheduledTime ?? Date.now() };
}

function scheduledHandlerFor(worker) {
  const exported = worker.default;
  if (
    typeof exported === "function" &&
    ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, exported.prototype)
  ) {
    if (typeof exported.prototype.scheduled !== "function") return null;
    return (controller, ctx) => new exported(ctx, env).scheduled(controller);
  }
  if (exported !== null && typeof exported === "object" && typeof exported.scheduled === "function") {
    return (controller, ctx) => exported.scheduled(controller, env, ctx);
  }
  return null;
}

class ScheduledController {
  constructor(cron, scheduledTime) {
    this.cron = cron;
    this.scheduledTime = scheduledTime;
    this.type = "scheduled";
  }
  noRetry() {}
}

/** Runs scheduled(); answers once it and the work it handed to ctx.waitUntil() are done. */
async function handleScheduled(handler, incoming, event) {
  try {
    // Without a scheduled() export there is nothing to run (wrangler dev answers alike).
    if (handler === null) {
      console.warn("scheduled event: the Worker does not export a scheduled() handler");
      sendResponse(incoming.id, new Response("ok"));
      return;
    }
    const pending = [];
    const ctx = new ExecutionContext();
    ctx.waitUntil = (promise) => {
      ArrayPrototypePush(pending, promise);
      waitUntil(promise);
    };
    const controller = new ScheduledController(event.cron, event.scheduledTime);
    await runInvocation(null, 0, () => handler(controller, ctx));
    await PromiseAll(pending);
    sendResponse(incoming.id, new Response("ok"));
  } catch (error) {
    console.error(error);
    const text = `${error?.stack ?? error}`;
    sendResponse(incoming.id, new Response(text, { status: 500 }));
  }
}

// --- queue consumers: queue() ------------------------------------------------------------------

function queueHandlerFor(worker) {
  const exported = worker.default;
  if (
    typeof exported === "function" &&
    ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, exported.prototype)
  ) {
    if (typeof exported.prototype.queue !== "function") return null;
    return (batch, ctx) => new exported(ctx, env).queue(batch);
  }
  if (exported !== null && typeof exported === "object" && typeof exported.queue === "function") {
    return (batch, ctx) => exported.queue(batch, env, ctx);
  }
  return null;
}

/**
 * Runs queue() on the batch the request carries; answers (always 200) with what became of
 * each message once the handler and its waitUntil work are done (queues.rs settles them).
 */
async function handleQueue(handler, incoming) {
  let decoded;
  try {
    decoded = decodeBatch(await makeIncomingRequest(incoming.request).arrayBuffer());
  } catch (error) {
    sendResponse(incoming.id, new Response(`cannot read the batch: ${error}`, { status: 500 }));
    return;
  }
  let failure;
  try {
    if (handler === null) throw new Error("Handler does not export a queue() function.");
    const pending = [];
    const ctx = new ExecutionContext();
    ctx.waitUntil = (promise) => {
      ArrayPrototypePush(pending, promise);
      waitUntil(promise);
    };
    await runInvocation(null, 0, () => handler(decoded.batch, ctx));
    await PromiseAll(pending);
  } catch (error) {
    console.error(error);
    failure = error;
  }
  sendResponse(
    incoming.id,
    new Response(outcomeOf(decoded.result, failure), {
      headers: { "content-type": "application/json" },
    }),
  );
}

// --- workflows: a run of an instance ---------------------------------------------------------

/** Runs a Workflow instance (workflows.rs asks); answers with how the run ended. */
async function handleWorkflow(worker, incoming, event) {
  try {
    const ended = await runWorkflow(
      worker,
      event.workflow,
      event.className,
      event.instance,
      () => new ExecutionContext(),
    );
    sendResponse(incoming.id, new Response(ended));
  } catch (error) {
    console.error(error);
    sendResponse(incoming.id, new Response(`${error?.stack ?? error}`, { status: 500 }));
  }
}

// --- JS RPC through service bindings ---------------------------------------------------------

/** Names workerd keeps for itself on an entrypoint. */
const RESERVED = ["constructor", "dup", "alarm", "webSocketMessage", "webSocketClose", "webSocketError"];

function isEntrypointClass(value) {
  return typeof value === "function" &&
    ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, value.prototype);
}

/**
 * Runs `event.method` of the export `event.entrypoint` (the default export when null): on a
 * fresh instance of a WorkerEntrypoint class, whose `ctx.props` are the binding's props; on
 * an object export, as `method(arg, env, ctx, ...rest)`, as workerd calls it.
 */
async function callEntrypoint(worker, event) {
  const args = unmarshal(deserialize(event.args));
  const ctx = new ExecutionContext();
  if (event.props !== null) ctx.props = JSONParse(event.props);
  const name = event.entrypoint ?? "default";
  const exported = worker[name];
  const method = event.method;
  if (exported === undefined || exported === null) {
    throw new TypeError(`Worker "${config.workerName}" has no export named "${name}".`);
  }
  let target;
  let call;
  if (isEntrypointClass(exported)) {
    target = new exported(ctx, env);
    call = (member) => member.apply(target, args);
  } else if (typeof exported === "object") {
    target = exported;
    call = (member) => member.call(target, args[0], env, ctx, ...ArrayPrototypeSlice(args, 1));
  } else {
    throw new TypeError(
      `The export "${name}" of worker "${config.workerName}" is not a WorkerEntrypoint class ` +
        `or an object, so it cannot be called over RPC.`,
    );
  }
  if (RESERVED.includes(method)) {
    throw new TypeError(`'${method}' is a reserved method and cannot be called over RPC.`);
  }
  // An object export's methods are its own properties; a class's are on its prototypes, read
  // through the instance (a Proxy its constructor returned sees the read), and an instance's
  // own property is not one.
  const found = isEntrypointClass(exported)
    ? !ObjectHasOwn(target, method) && lookupMember(target, method) !== undefined
    : ObjectGetOwnPropertyDescriptor(target, method) !== undefined ||
      lookupMember(target, method) !== undefined;
  if (!found) {
    throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
  }
  const member = target[method];
  if (event.get) return await member;
  if (typeof member !== "function") {
    throw new TypeError(`"${method}" is not a function.`);
  }
  return await runInvocation(null, 0, () => call(member));
}

async function handleEntrypointCall(worker, event) {
  try {
    const result = await callEntrypoint(worker, event);
    op_dorun_reply_value(event.id, serializeResult(result));
  } catch (error) {
    op_dorun_reply_error(event.id, serializeError(error));
  }
}

// --- ctx.exports --------------------------------------------------------------------------------

/**
 * A loopback binding to a WorkerEntrypoint class of this Worker: `fetch()` and RPC methods
 * run on a fresh instance, as a call through a service binding does.
 */
function loopback(Class) {
  const instance = () => new Class(new ExecutionContext(), env);
  return new Proxy({}, {
    get(_target, property) {
      if (typeof property === "symbol" || property === "then") return undefined;
      if (property === "fetch") {
        return (input, init) => PromiseResolve().then(() => instance().fetch(new Request(input, init)));
      }
      return (...args) =>
        PromiseResolve().then(() => {
          const target = instance();
          if (typeof target[property] !== "function") {
            throw new TypeError(`The RPC receiver does not implement the method "${property}".`);
          }
          return target[property](...args);
        });
    },
  });
}

function fillCtxExports(worker) {
  for (let index = 0; index < config.namespaces.length; index++) {
    const namespace = config.namespaces[index];
    if (namespace.foreign || typeof worker[namespace.className] !== "function") continue;
    ctxExports[namespace.className] = namespace.binding !== ""
      ? env[namespace.binding]
      : new DurableObjectNamespace(index);
  }
  for (const name of ObjectKeys(worker)) {
    const value = worker[name];
    if (
      typeof value === "function" &&
      ObjectPrototypeIsPrototypeOf(WorkerEntrypoint.prototype, value.prototype)
    ) {
      ctxExports[name] = loopback(value);
    }
  }
}

// --- the serve loop -----------------------------------------------------------------------------
async function serve(worker) {
  fillCtxExports(worker);
  const handler = fetchHandlerFor(worker);
  const scheduled = scheduledHandlerFor(worker);
  const queue = queueHandlerFor(worker);
  if (handler === null && scheduled === null && queue === null) console.warn(NO_FETCH_HANDLER);
  const eviction = setInterval(
    () => evictIdle(),
    Math.max(10, Math.min(1000, config.idleTimeoutMs / 4)),
  );
  while (true) {
    const incoming = await op_dorun_next_event();
    if (incoming === null) break;
    switch (incoming.kind) {
      case "http": {
        const event = internalEventOf(incoming.request);
        if (event === null) handleHttp(handler, incoming);
        else if (event.kind === "queue") handleQueue(queue, incoming);
        else if (event.kind === "workflow") handleWorkflow(worker, incoming, event);
        else handleScheduled(scheduled, incoming, event);
        break;
      }
      case "objectFetch":
      case "objectRpc":
      case "objectAlarm":
      case "objectSocket":
        handleObjectEvent(worker, incoming);
        break;
      case "localSocket":
        handleLocalSocketEvent(incoming);
        break;
      case "exportCall":
        handleExportCall(incoming);
        break;
      case "entrypointCall":
        handleEntrypointCall(worker, incoming);
        break;
      case "exportRelease":
        releaseExport(incoming.export);
        break;
      case "exportRetain":
        retainExport(incoming.export);
        break;
      case "admin":
        handleAdminEvent(incoming);
        break;
    }
  }
  clearInterval(eviction);
  // Let waitUntil work and pending commits finish (bounded: the pool waits 5 s at most),
  // close every object's storage, then stop even if user timers are still scheduled.
  const settled = [...pendingWaitUntil];
  for (const object of live.values()) {
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
  lifecycle.started = true;
  op_dorun_started();
  PromisePrototypeThen(serve(worker), undefined, (error) => {
    console.error("dorun serve loop failed:", error);
  });
};

// User code sees Workers globals only, not Deno's.
delete globalThis.Deno;
delete globalThis.__bootstrap;

export { ExecutionContext };
