// Workflows: the binding (`env.<binding>.create/createBatch/get` and an instance's
// `status/pause/resume/terminate/restart/sendEvent`) and the run of a `WorkflowEntrypoint`,
// whose `step.do` / `sleep` / `sleepUntil` / `waitForEvent` record what they did in the
// workflow's file (workflow_binding.rs). A run that stops (a long sleep, an event not yet
// sent, a pause, a restart of the process) starts over later from `run()`: finished steps
// give back their stored results instead of running again. The `dorun` crate's
// `workflows.rs` decides when an instance runs.

import { core, primordials } from "ext:core/mod.js";
import { console, env, runInvocation } from "ext:dorun/00_runtime.js";

const {
  ArrayPrototypeIncludes,
  Date,
  DateNow,
  Error,
  JSONParse,
  JSONStringify,
  MapPrototypeGet,
  MapPrototypeSet,
  MathPow,
  NumberIsFinite,
  ObjectFreeze,
  Promise,
  ObjectDefineProperty,
  ObjectKeys,
  PromiseAll,
  PromisePrototypeThen,
  PromiseRace,
  PromiseResolve,
  SafeWeakSet,
  RegExpPrototypeExec,
  SafeMap,
  StringPrototypeToLowerCase,
  TypeError,
} = primordials;
const {
  op_dorun_workflow_create,
  op_dorun_workflow_get,
  op_dorun_workflow_transition,
  op_dorun_workflow_event,
  op_dorun_workflow_step,
  op_dorun_workflow_put_step,
  op_dorun_workflow_take_event,
} = core.ops;

const randomUUID = globalThis.crypto.randomUUID.bind(globalThis.crypto);
const { DOMException } = globalThis;
const setTimeout = globalThis.setTimeout;

const serialise = (value) => core.serialize(value, { forStorage: true });
const deserialise = (bytes) => core.deserialize(bytes, { forStorage: true });

/** Sleeps up to this long stay in the run; longer ones end it and it starts over later. */
const IN_RUN_SLEEP_MS = 5 * 60 * 1000;

const UNITS = {
  ms: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
  w: 604_800_000,
  week: 604_800_000,
  weeks: 604_800_000,
  y: 31_536_000_000,
  year: 31_536_000_000,
  years: 31_536_000_000,
};

/** A duration (`"10 seconds"`, `"1 minute"`, or a number of ms) in ms. */
function durationMs(duration, what) {
  if (typeof duration === "number" && NumberIsFinite(duration) && duration >= 0) return duration;
  if (typeof duration === "string") {
    const match = RegExpPrototypeExec(/^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$/, duration);
    const unit = match === null ? undefined : UNITS[StringPrototypeToLowerCase(match[2])];
    if (unit !== undefined) return Number(match[1]) * unit;
  }
  throw new TypeError(`${what}: "${duration}" is not a duration (a number of ms, or like "30 seconds")`);
}

/** Error classes that keep their name when an error crosses RPC in workerd. */
const STANDARD_ERRORS = {
  Error,
  TypeError,
  RangeError,
  SyntaxError: globalThis.SyntaxError,
  ReferenceError: globalThis.ReferenceError,
  EvalError: globalThis.EvalError,
  URIError: globalThis.URIError,
};

/**
 * `{message, name}` of an error as it reads after crossing workerd's RPC (Cloudflare's engine
 * runs apart from the Worker): a standard class keeps its name; any other becomes an Error
 * whose message starts with the name (`NonRetryableError: stop now`).
 */
function remoteShape(error) {
  const isError = error !== null && typeof error === "object";
  const name = isError ? `${error.name ?? "Error"}` : "Error";
  const message = isError ? `${error.message ?? ""}` : `${error}`;
  if (STANDARD_ERRORS[name] !== undefined) return { message, name };
  return { message: `${name}: ${message}`, name: "Error" };
}

function errorJson(error) {
  return JSONStringify(remoteShape(error));
}

/** The error a Worker catches: a standard class, marked `remote` as workerd marks it. */
function remoteError(name, message) {
  const shape = remoteShape({ name, message });
  const error = new STANDARD_ERRORS[shape.name](shape.message);
  error.remote = true;
  return error;
}

function errorFrom(json) {
  const { name, message } = JSONParse(json);
  return remoteError(name, message);
}

/** An error with `name` that ends the instance even if `run()` catches it. */
const FATAL = "WorkflowFatalError";

/** `NonRetryableError` of `cloudflare:workflows`: a step that throws it is not retried. */
export class NonRetryableError extends Error {
  constructor(message, name = "NonRetryableError") {
    super(message);
    this.name = name;
  }
}

/** A status change for op_dorun_workflow_transition. */
function change(from, to, wakeAt = null, error = null) {
  return { from, to, wakeAt, error };
}

const ID_PATTERN = /^[a-zA-Z0-9_][a-zA-Z0-9-_]*$/;

// --- the binding ----------------------------------------------------------------------------

const ACTIVE = ["queued", "running", "waiting"];
// `waitingForPause`: paused while a step ran; the run pauses at its next step.

/**
 * The status `status()` reports: wrangler dev reports an instance that is queued, sleeping or
 * waiting for an event as `running` (the file says which).
 */
function reported(status) {
  return status === "queued" || status === "waiting" ? "running" : status;
}

const notFound = () => remoteError("WorkflowError", "(instance.not_found) Instance does not exist");

class InstanceImpl {
  #workflow;
  constructor(workflow, binding, id) {
    this.binding = binding;
    this.id = id;
    this.#workflow = workflow;
  }

  async status() {
    const found = await op_dorun_workflow_get(this.#workflow, this.id);
    if (found === null) throw new Error("instance.not_found");
    return {
      status: reported(found.status),
      __LOCAL_DEV_STEP_OUTPUTS: found.stepOutputs.map((bytes) => {
        if (bytes === null) return undefined;
        let value = deserialise(bytes);
        // A waitForEvent step's output is the event's payload.
        if (
          value !== null && typeof value === "object" && "type" in value && "payload" in value &&
          value.timestamp instanceof Date
        ) value = value.payload;
        // What JSON keeps of it, as wrangler dev's engine logs it.
        const text = JSONStringify(value);
        return text === undefined ? undefined : JSONParse(text);
      }),
      output: found.output === null ? null : deserialise(found.output),
      error: found.error === null ? undefined : JSONParse(found.error),
    };
  }

  async #move(from, to) {
    const moved = await op_dorun_workflow_transition(this.#workflow, this.id, change(from, to), null);
    if (!moved && (await op_dorun_workflow_get(this.#workflow, this.id)) === null) throw notFound();
    return moved;
  }

  async pause() {
    // A step running now finishes first: `waitingForPause` until the run reaches its next step.
    if (await this.#move(["running"], "waitingForPause")) return;
    await op_dorun_workflow_transition(
      this.#workflow, this.id, change(["queued", "waiting"], "paused", DateNow()), null,
    );
  }

  async resume() {
    // Before the pause took hold, the run simply goes on.
    if (await this.#move(["waitingForPause"], "running")) return;
    await this.#move(["paused"], "resume");
  }

  async terminate() {
    if (!(await this.#move([...ACTIVE, "paused", "waitingForPause"], "terminated"))) {
      throw remoteError(
        "WorkflowError",
        "(instance.cannot_terminate) Cannot terminate instance since its on a finite state",
      );
    }
  }

  async restart() {
    await this.#move([], "restart");
  }

  async sendEvent(event) {
    const type = event?.type;
    if (typeof type !== "string" || type === "") {
      throw new TypeError("sendEvent() needs { type, payload } with a non-empty string type");
    }
    if ((await op_dorun_workflow_get(this.#workflow, this.id)) === null) throw notFound();
    await op_dorun_workflow_event(this.#workflow, this.id, type, serialise(event.payload));
  }
}

class WorkflowImpl {
  #workflow;
  #binding;
  constructor(workflow, binding) {
    this.#workflow = workflow;
    this.#binding = binding;
  }

  /** A new instance; an id that exists already gives that instance (as wrangler dev does). */
  async create(options = {}) {
    const id = options?.id === undefined ? randomUUID() : options.id;
    if (typeof id !== "string" || id.length > 100 || RegExpPrototypeExec(ID_PATTERN, id) === null) {
      throw remoteError("WorkflowError", "Workflow instance has invalid id");
    }
    let params;
    try {
      params = serialise(options?.params === undefined ? {} : options.params);
    } catch (error) {
      // As workerd's DOMException reads: its fields are own, enumerable properties.
      const clone = new DOMException(error.message, "DataCloneError");
      for (const key of ["code", "message", "name", "stack"]) {
        ObjectDefineProperty(clone, key, { value: clone[key], enumerable: true, configurable: true, writable: true });
      }
      throw clone;
    }
    await op_dorun_workflow_create(this.#workflow, id, params);
    return new InstanceImpl(this.#workflow, this.#binding, id);
  }

  async createBatch(batch) {
    try {
      if (batch.length === 0) {
        throw remoteError("WorkflowError", "batchCreate should have at least 1 instance");
      }
      return await PromiseAll(batch.map((options) => this.create(options)));
    } catch (error) {
      if (error.remote !== true && error instanceof TypeError) error.remote = true;
      throw error;
    }
  }

  async get(id) {
    if ((await op_dorun_workflow_get(this.#workflow, `${id}`)) === null) {
      throw new Error("instance.not_found");
    }
    return new InstanceImpl(this.#workflow, this.#binding, `${id}`);
  }
}

export function createWorkflow(name, binding) {
  return new WorkflowImpl(name, binding);
}

// --- a run ------------------------------------------------------------------------------------

/** One run of one instance: step keys, and how the run ends early. */
class Run {
  constructor(workflow, id) {
    this.workflow = workflow;
    this.id = id;
    this.counts = new SafeMap();
    /** Errors step.do threw for a NonRetryableError: uncaught, they end the run as fatal. */
    this.nonRetryable = new SafeWeakSet();
    this.suspended = new Promise((resolve) => {
      this.stop = resolve;
    });
  }

  /** [`type:name#n`, n]: the n-th step of this type and name in the run. */
  key(type, name) {
    const base = `${type}:${name}`;
    const n = (MapPrototypeGet(this.counts, base) ?? 0) + 1;
    MapPrototypeSet(this.counts, base, n);
    return [`${base}#${n}`, n];
  }

  /** Ends the instance as errored with `error` however run() goes on. */
  async fatal(message) {
    await op_dorun_workflow_transition(
      this.workflow, this.id, change(["running"], "errored", null, JSONStringify({ message, name: FATAL })), null,
    );
    return this.halt();
  }

  /** Ends the run here (the promise it returns never settles). */
  halt() {
    this.stop({ halted: true });
    return new Promise(() => {});
  }

  /** Goes on only while the instance is to run (not paused, terminated or restarted). */
  async check() {
    const found = await op_dorun_workflow_get(this.workflow, this.id);
    if (found?.status === "waitingForPause") {
      await op_dorun_workflow_transition(
        this.workflow, this.id, change(["waitingForPause"], "paused", DateNow()), null,
      );
      return this.halt();
    }
    if (found === null || found.status !== "running") return this.halt();
  }

  /** Waits until `until` (ms): in the run if soon, else the run ends and starts over then. */
  async waitUntil(until) {
    const remaining = until - DateNow();
    if (remaining <= 0) return;
    const moved = await op_dorun_workflow_transition(
      this.workflow, this.id, change(["running"], "waiting", until), null,
    );
    if (!moved) return this.halt();
    if (remaining > IN_RUN_SLEEP_MS) return this.halt();
    await new Promise((resolve) => setTimeout(resolve, remaining));
    const back = await op_dorun_workflow_transition(
      this.workflow, this.id, change(["waiting"], "running"), null,
    );
    if (!back) return this.halt();
  }

  async put(step) {
    await op_dorun_workflow_put_step(this.workflow, this.id, step);
  }
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const error = new Error(`Execution timed out after ${ms}ms`);
      error.name = "WorkflowTimeoutError";
      reject(error);
    }, ms);
  });
  return PromisePrototypeThen(
    PromiseRace([promise, timeout]),
    (value) => {
      globalThis.clearTimeout(timer);
      return value;
    },
    (error) => {
      globalThis.clearTimeout(timer);
      throw error;
    },
  );
}

/** A step name Cloudflare takes: at most 256 characters, no control characters. */
function checkName(name) {
  const text = `${name}`;
  if (text.length > 256 || RegExpPrototypeExec(/[\u0000-\u001f\u007f]/, text) !== null) {
    throw remoteError(
      FATAL,
      `Step name "${text}" exceeds max length (256 chars) or invalid characters found`,
    );
  }
}

const DEFAULT_CONFIG = { retries: { limit: 5, delay: 1000, backoff: "exponential" }, timeout: "10 minutes" };

function validDuration(value, allowZero) {
  try {
    const ms = durationMs(value, "");
    return allowZero ? ms >= 0 : ms > 0;
  } catch {
    return false;
  }
}

/** A step's config merged over the defaults, or the fatal error of an invalid one. */
function resolveConfig(name, config, explicit) {
  const invalid = () =>
    remoteError(
      FATAL,
      `Step config for "${name}" is in a invalid format. See https://developers.cloudflare.com/workflows/build/sleeping-and-retrying/`,
    );
  if (!explicit) return { retries: { ...DEFAULT_CONFIG.retries }, timeout: DEFAULT_CONFIG.timeout };
  if (config === null || typeof config !== "object") throw invalid();
  for (const key of ObjectKeys(config)) {
    if (key !== "retries" && key !== "timeout") throw invalid();
  }
  let retries = { ...DEFAULT_CONFIG.retries };
  if (config.retries !== undefined) {
    const r = config.retries;
    if (r === null || typeof r !== "object" || r.limit === undefined || r.delay === undefined) throw invalid();
    if (typeof r.limit !== "number" || r.limit < 0 || !NumberIsFinite(r.limit)) throw invalid();
    if (!validDuration(r.delay, true)) throw invalid();
    if (r.backoff !== undefined && !["constant", "linear", "exponential"].includes(r.backoff)) throw invalid();
    retries = { ...r };
    if (retries.backoff === undefined) retries.backoff = "exponential";
  }
  const timeout = config.timeout ?? DEFAULT_CONFIG.timeout;
  if (!validDuration(timeout, false)) throw invalid();
  return { retries, timeout };
}

class WorkflowStep {
  #run;
  constructor(run) {
    this.#run = run;
  }

  async do(name, configOrCallback, maybeCallback) {
    const run = this.#run;
    const explicit = typeof configOrCallback !== "function";
    const stepConfig = explicit ? configOrCallback : {};
    const callback = explicit ? maybeCallback : configOrCallback;
    if (typeof callback !== "function") throw new TypeError(`step.do "${name}" needs a callback`);
    checkName(name);
    const config = resolveConfig(name, stepConfig, explicit);
    const [key, count] = run.key("do", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) {
      if (stored.error !== null) throw errorFrom(stored.error);
      return stored.result === null ? undefined : deserialise(stored.result);
    }
    const timeout = durationMs(config.timeout, "timeout");
    let attempts = stored?.attempts ?? 0;
    while (true) {
      attempts++;
      await run.put({ key, attempts, done: false, result: null, error: null, until: null });
      let result;
      try {
        const argument = { step: { name: `${name}`, count }, attempt: attempts, config };
        result = await withTimeout(
          PromisePrototypeThen(PromiseResolve(), () => callback(argument)),
          timeout,
        );
      } catch (error) {
        const nonRetryable = error?.name === "NonRetryableError";
        if (nonRetryable || attempts > config.retries.limit) {
          await run.put({ key, attempts, done: true, result: null, error: errorJson(error), until: null });
          const thrown = errorFrom(errorJson(error));
          if (nonRetryable) run.nonRetryable.add(thrown);
          throw thrown;
        }
        const base = durationMs(config.retries.delay, "delay");
        const factor = config.retries.backoff === "exponential"
          ? MathPow(2, attempts - 1)
          : config.retries.backoff === "linear"
          ? attempts
          : 1;
        await run.waitUntil(DateNow() + base * factor);
        await run.check();
        continue;
      }
      // The result must survive storage: a value structured clone cannot take ends the
      // instance; one JSON cannot take (a BigInt) fails the step.
      let bytes;
      try {
        bytes = result === undefined ? null : serialise(result);
      } catch {
        return run.fatal(
          `The execution of the Workflow instance was terminated, as the step "${name}" returned a value which is not serialisable`,
        );
      }
      try {
        JSONStringify(result);
      } catch (error) {
        throw remoteError(error.name, error.message);
      }
      await run.put({ key, attempts, done: true, result: bytes, error: null, until: null });
      return result;
    }
  }

  async #sleepUntil(name, until) {
    const run = this.#run;
    checkName(name);
    const [key] = run.key("sleep", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) return;
    const wake = stored?.until ?? until;
    if (stored === null) await run.put({ key, attempts: 0, done: false, result: null, error: null, until: wake });
    await run.waitUntil(wake);
    await run.put({ key, attempts: 0, done: true, result: null, error: null, until: wake });
  }

  sleep(name, duration) {
    // A negative duration wakes at once.
    const ms = typeof duration === "number" && duration < 0 ? 0 : durationMs(duration, `step.sleep "${name}"`);
    return this.#sleepUntil(name, DateNow() + ms);
  }

  async sleepUntil(name, timestamp) {
    const at = timestamp instanceof Date ? timestamp.getTime() : Number(timestamp);
    if (!NumberIsFinite(at)) throw new TypeError(`step.sleepUntil "${name}": not a time`);
    if (at < DateNow()) throw remoteError("Error", "You can't sleep until a time in the past, time-traveler");
    return this.#sleepUntil(name, at);
  }

  async waitForEvent(name, options) {
    const run = this.#run;
    const type = options?.type;
    if (typeof type !== "string") throw new TypeError(`step.waitForEvent "${name}" needs { type }`);
    checkName(name);
    const [key] = run.key("event", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) {
      if (stored.error !== null) throw errorFrom(stored.error);
      return deserialise(stored.result);
    }
    const timeoutMs = durationMs(options?.timeout ?? "24 hours", `step.waitForEvent "${name}" timeout`);
    const deadline = stored?.until ?? DateNow() + timeoutMs;
    if (stored === null) await run.put({ key, attempts: 0, done: false, result: null, error: null, until: deadline });
    const take = () => op_dorun_workflow_take_event(run.workflow, run.id, type, key);
    let taken = await take();
    if (taken === null) {
      if (DateNow() >= deadline) {
        const error = { name: "WorkflowTimeoutError", message: `Execution timed out after ${timeoutMs}ms` };
        await run.put({ key, attempts: 0, done: true, result: null, error: errorJson(error), until: deadline });
        throw remoteError(error.name, error.message);
      }
      // Wait (the run ends) until the event comes or the deadline passes.
      const moved = await op_dorun_workflow_transition(
        run.workflow, run.id, change(["running"], "waiting", deadline), null,
      );
      if (!moved) return run.halt();
      // Sent while we were looking: run again at once.
      taken = await take();
      if (taken !== null) {
        await op_dorun_workflow_transition(run.workflow, run.id, change(["waiting"], "waiting", DateNow()), null);
      }
      return run.halt();
    }
    const event = ObjectFreeze({
      payload: deserialise(taken.payload),
      timestamp: new Date(taken.timestamp),
      type,
    });
    await run.put({ key, attempts: 0, done: true, result: serialise(event), error: null, until: deadline });
    return event;
  }
}

/**
 * Runs instance `id` of `workflow` with the worker's `className` export, from the start
 * (replaying finished steps); records how it ended unless it was halted.
 */
export async function runWorkflow(worker, workflow, className, id, makeContext) {
  const found = await op_dorun_workflow_get(workflow, id);
  if (found?.status === "waitingForPause") {
    await op_dorun_workflow_transition(workflow, id, change(["waitingForPause"], "paused", DateNow()), null);
    return "paused";
  }
  if (found === null || !ArrayPrototypeIncludes(ACTIVE, found.status)) return "idle";
  const started = await op_dorun_workflow_transition(workflow, id, change(ACTIVE, "running"), null);
  if (!started) return "idle";
  const finish = (status, output, error) =>
    op_dorun_workflow_transition(workflow, id, change(["running"], status, null, error), output);
  const Class = worker[className];
  if (typeof Class !== "function" || typeof Class.prototype?.run !== "function") {
    await finish("errored", null, errorJson(new TypeError(
      `Workflow "${workflow}": the worker exports no class "${className}" with a run() method`,
    )));
    return "errored";
  }
  const run = new Run(workflow, id);
  const instance = new Class(makeContext(), env);
  const event = ObjectFreeze({
    payload: deserialise(found.params),
    timestamp: new Date(found.created),
    instanceId: id,
  });
  const ended = await PromiseRace([
    PromisePrototypeThen(
      runInvocation(null, 0, () => instance.run(event, new WorkflowStep(run))),
      (output) => ({ output }),
      (error) => ({ error }),
    ),
    run.suspended,
  ]);
  if (ended.halted) return "halted";
  if ("error" in ended) {
    console.error(`Workflow "${workflow}" instance ${id} failed:`, ended.error);
    const error = run.nonRetryable.has(ended.error)
      ? JSONStringify({
        message: "The execution of the Workflow instance was terminated, as a step threw an NonRetryableError and it was not handled",
        name: FATAL,
      })
      : errorJson(ended.error);
    await finish("errored", null, error);
    return "errored";
  }
  // The output is what JSON keeps of the value (as Cloudflare stores it).
  let output = null;
  try {
    const text = JSONStringify(ended.output);
    output = serialise(text === undefined ? null : JSONParse(text));
  } catch (error) {
    await finish("errored", null, errorJson(error));
    return "errored";
  }
  await finish("complete", output, null);
  return "complete";
}

export const workflowsModule = { NonRetryableError };
