// Unit tests of 07_gates.js, run by src/gates_tests.rs in a bare isolate.
import { InputGate, OutputGate } from "ext:dorun_gates_test/07_gates.js";

// Each check records [name, passed, detail]; the Rust test reads the list.
globalThis.gateTests = async function gateTests() {
const results = [];
const check = (name, passed, detail = "") => results.push([name, !!passed, String(detail)]);
const deferred = () => {
  let resolve, reject;
  const promise = new Promise((a, b) => { resolve = a; reject = b; });
  return { promise, resolve, reject };
};
// Lets every pending promise reaction run (no timers in a bare isolate).
const tick = async () => {
  for (let i = 0; i < 20; i++) await null;
};

// --- input gate ---
{
  const gate = new InputGate();
  check("an open gate lets an event in at once", gate.wait() === null && gate.idle);
  gate.close();
  gate.close();
  check("closing nests", gate.depth === 2 && !gate.idle);
  const entered = [];
  for (const name of ["a", "b", "c"]) gate.wait().then(() => entered.push(name));
  gate.open();
  await tick();
  check("one open of two closes keeps it closed", entered.length === 0, entered);
  gate.open();
  await tick();
  check("waiting events enter in arrival order", entered.join() === "a,b,c", entered);
  check("an opened gate is idle again", gate.idle && gate.depth === 0);
  gate.close();
  const late = gate.wait();
  check("an event arriving while closed waits", late !== null);
  gate.open();
  await late;
  check("and enters once it opens", gate.wait() === null);
}

// --- output gate ---
{
  const failures = [];
  const gate = new OutputGate((error) => failures.push(error.message));
  gate.hold();
  check("holding without a pending commit holds nothing", gate.pending() === null);

  const first = deferred();
  gate.track(first.promise);
  check("a tracked commit is pending", gate.committing);
  check("an unconfirmed write does not hold the gate", gate.pending() === null);
  let synced = false;
  gate.sync().then(() => (synced = true));
  gate.hold();
  let released = false;
  gate.pending().then(() => (released = true));
  await tick();
  check("a confirmed write holds outgoing messages", !released && !synced);
  first.resolve();
  await tick();
  check("they are released once the commit is durable", released && synced);
  check("a settled commit leaves the gate open", gate.pending() === null && !gate.committing);

  const second = deferred();
  gate.track(second.promise);
  gate.hold();
  const waiting = gate.wait();
  second.reject(new Error("disk full"));
  let error = null;
  try {
    await waiting;
  } catch (e) {
    error = e;
  }
  check("a failed commit fails what waits on it", error?.message === "disk full", error);
  check("and is reported once", failures.join() === "disk full", failures);
  check("a failed commit does not hold the gate afterwards", gate.pending() === null);

  const written = deferred();
  const durable = deferred();
  gate.track(written.promise, durable.promise);
  gate.hold();
  let out = false;
  gate.pending().then(() => (out = true));
  written.resolve();
  await tick();
  check("a written commit takes no more writes", !gate.committing);
  check("but holds outgoing messages until it is durable", !out);
  durable.resolve();
  await tick();
  check("which are released once it is", out && gate.pending() === null);
}
return JSON.stringify(results);
};
