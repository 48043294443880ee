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
  PromisePrototypeThen,
  PromiseRace,
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

function errorJson(error) {
  const isError = error !== null && typeof error === "object";
  return JSONStringify({
    name: isError ? `${error.name ?? "Error"}` : "Error",
    message: isError ? `${error.message ?? ""}` : `${error}`,
  });
}

function errorFrom(json) {
  const { name, message } = JSONParse(json);
  const error = new Error(message);
  error.name = name;
  return error;
}

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

class WorkflowInstance {
  #workflow;
  constructor(workflow, id) {
    this.id = id;
    this.#workflow = workflow;
  }

  async status() {
    const found = await op_dorun_workflow_get(this.#workflow, this.id);
    if (found === null) throw new Error("instance.not_found");
    const status = {
      status: found.status,
      output: found.output === null ? null : deserialise(found.output),
    };
    if (found.error !== null) status.error = JSONParse(found.error);
    return status;
  }

  async #move(from, to) {
    const moved = await op_dorun_workflow_transition(this.#workflow, this.id, change(from, to), null);
    if (!moved && (await op_dorun_workflow_get(this.#workflow, this.id)) === null) {
      throw new Error("instance.not_found");
    }
    return moved;
  }

  async pause() {
    await this.#move(ACTIVE, "paused");
  }

  async resume() {
    await this.#move(["paused"], "queued");
  }

  async terminate() {
    await this.#move([...ACTIVE, "paused"], "terminated");
  }

  async restart() {
    await this.#move([], "restart");
  }

  async sendEvent(event) {
    const type = event?.type;
    if (typeof type !== "string" || type === "") {
      throw new TypeError("sendEvent() needs { type, payload } with a non-empty string type");
    }
    if ((await op_dorun_workflow_get(this.#workflow, this.id)) === null) {
      throw new Error("instance.not_found");
    }
    await op_dorun_workflow_event(this.#workflow, this.id, type, serialise(event.payload));
  }
}

class Workflow {
  #workflow;
  constructor(workflow) {
    this.#workflow = workflow;
  }

  async create(options = {}) {
    const id = options?.id ?? randomUUID();
    if (typeof id !== "string" || id.length > 100 || RegExpPrototypeExec(ID_PATTERN, id) === null) {
      throw new Error("Workflow instance has invalid id");
    }
    const params = serialise(options?.params ?? {});
    if (!(await op_dorun_workflow_create(this.#workflow, id, params))) {
      throw new Error(`instance.already_exists: a Workflow instance with id "${id}" exists`);
    }
    return new WorkflowInstance(this.#workflow, id);
  }

  async createBatch(batch) {
    if (!batch || batch.length === 0) {
      throw new Error("WorkflowError: batchCreate should have at least 1 instance");
    }
    const created = [];
    for (const options of batch) created.push(await this.create(options));
    return created;
  }

  async get(id) {
    if ((await op_dorun_workflow_get(this.#workflow, `${id}`)) === null) {
      throw new Error("instance.not_found");
    }
    return new WorkflowInstance(this.#workflow, `${id}`);
  }
}

export function createWorkflow(name) {
  return new Workflow(name);
}

// --- a run ------------------------------------------------------------------------------------

/** One run of one instance: step keys, and how the run ends early. */
class Run {
  constructor(workflow, id) {
    this.workflow = workflow;
    this.id = id;
    this.counts = new SafeMap();
    this.suspended = new Promise((resolve) => {
      this.stop = resolve;
    });
  }

  /** `type:name#n`: the n-th step of this type and name in the run. */
  key(type, name) {
    const base = `${type}:${name}`;
    const n = (MapPrototypeGet(this.counts, base) ?? 0) + 1;
    MapPrototypeSet(this.counts, base, n);
    return `${base}#${n}`;
  }

  /** Ends the run here (the promise it returns never settles). */
  halt() {
    this.stop({ halted: true });
    return new Promise(() => {});
  }

  /** Goes on only while the instance is to run (not paused, terminated or restarted). */
  async check() {
    const found = await op_dorun_workflow_get(this.workflow, this.id);
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

function withTimeout(promise, ms, name) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`step.do "${name}" did not finish within ${ms} ms`)),
      ms,
    );
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

class WorkflowStep {
  #run;
  constructor(run) {
    this.#run = run;
  }

  async do(name, configOrCallback, maybeCallback) {
    const run = this.#run;
    const [stepConfig, callback] = typeof configOrCallback === "function"
      ? [{}, configOrCallback]
      : [configOrCallback ?? {}, maybeCallback];
    if (typeof callback !== "function") throw new TypeError(`step.do "${name}" needs a callback`);
    const key = run.key("do", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) {
      if (stored.error !== null) throw errorFrom(stored.error);
      return stored.result === null ? undefined : deserialise(stored.result);
    }
    const retries = { limit: 5, delay: 10_000, backoff: "exponential", ...stepConfig.retries };
    const timeout = durationMs(stepConfig.timeout ?? "10 minutes", `step.do "${name}" timeout`);
    let attempts = stored?.attempts ?? 0;
    while (true) {
      attempts++;
      await run.put({ key, attempts, done: false, result: null, error: null, until: null });
      try {
        const result = await withTimeout(
          PromisePrototypeThen(Promise.resolve(), () => callback({ attempt: attempts })),
          timeout,
          name,
        );
        const bytes = result === undefined ? null : serialise(result);
        await run.put({ key, attempts, done: true, result: bytes, error: null, until: null });
        return result;
      } catch (error) {
        const final = error?.name === "NonRetryableError" || error instanceof NonRetryableError ||
          attempts > retries.limit;
        if (final) {
          await run.put({ key, attempts, done: true, result: null, error: errorJson(error), until: null });
          throw error;
        }
        const base = durationMs(retries.delay, `step.do "${name}" retries.delay`);
        const factor = retries.backoff === "exponential"
          ? MathPow(2, attempts - 1)
          : retries.backoff === "linear"
          ? attempts
          : 1;
        await run.waitUntil(DateNow() + base * factor);
        await run.check();
      }
    }
  }

  async #sleepUntil(name, until) {
    const run = this.#run;
    const key = run.key("sleep", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) return;
    const wake = stored?.until ?? until;
    if (stored === null) await run.put({ key, attempts: 0, done: false, result: null, error: null, until: wake });
    await run.waitUntil(wake);
    await run.put({ key, attempts: 0, done: true, result: null, error: null, until: wake });
  }

  sleep(name, duration) {
    return this.#sleepUntil(name, DateNow() + durationMs(duration, `step.sleep "${name}"`));
  }

  sleepUntil(name, timestamp) {
    const at = timestamp instanceof Date ? timestamp.getTime() : Number(timestamp);
    if (!NumberIsFinite(at)) throw new TypeError(`step.sleepUntil "${name}": not a time`);
    return this.#sleepUntil(name, at);
  }

  async waitForEvent(name, options) {
    const run = this.#run;
    const type = options?.type;
    if (typeof type !== "string") throw new TypeError(`step.waitForEvent "${name}" needs { type }`);
    const key = run.key("event", name);
    await run.check();
    const stored = await op_dorun_workflow_step(run.workflow, run.id, key);
    if (stored?.done) {
      if (stored.error !== null) throw errorFrom(stored.error);
      return deserialise(stored.result);
    }
    const deadline = stored?.until ??
      DateNow() + durationMs(options?.timeout ?? "24 hours", `step.waitForEvent "${name}" timeout`);
    if (stored === null) await run.put({ key, attempts: 0, done: false, result: null, error: null, until: deadline });
    const take = () => op_dorun_workflow_take_event(run.workflow, run.id, type, key);
    let taken = await take();
    if (taken === null) {
      if (DateNow() >= deadline) {
        const error = new Error(`step.waitForEvent "${name}" timed out waiting for an event of type "${type}"`);
        error.name = "WorkflowTimeoutError";
        await run.put({ key, attempts: 0, done: true, result: null, error: errorJson(error), until: deadline });
        throw error;
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
    await finish("errored", null, errorJson(ended.error));
    return "errored";
  }
  let output = null;
  try {
    output = ended.output === undefined ? null : serialise(ended.output);
  } catch (error) {
    await finish("errored", null, errorJson(error));
    return "errored";
  }
  await finish("complete", output, null);
  return "complete";
}

export const workflowsModule = { NonRetryableError };
