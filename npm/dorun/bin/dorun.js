#!/usr/bin/env node
"use strict";
// The `dorun` command: runs the platform package's binary with the same arguments, standard
// streams and environment, passes the signals a terminal or a process manager sends on to it,
// and exits as it exits (same code, or the same signal).

const { spawn } = require("node:child_process");
const { DorunBinaryError, binaryPath, explainSpawnError } = require("../lib/binary.js");

let binary;
try {
  binary = binaryPath();
} catch (error) {
  if (!(error instanceof DorunBinaryError)) throw error;
  process.stderr.write(`dorun: ${error.message}\n`);
  process.exit(1);
}

const child = spawn(binary, process.argv.slice(2), {
  stdio: "inherit",
  // dorun stops by itself once this process is gone, however it ended (even SIGKILL).
  env: { ...process.env, DORUN_PARENT_PID: String(process.pid) },
});

// Ctrl-C in a terminal reaches both processes (one process group); dorun takes a second
// SIGINT during its drain as a no-op, so passing it on as well is harmless.
const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR2"];
const handlers = new Map();
for (const signal of FORWARDED) {
  const handler = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  handlers.set(signal, handler);
  process.on(signal, handler);
}

// Whatever started this wrapper may go away without passing a signal on: `npx` stopped with
// SIGTERM takes its `sh -c` down but not this process. Re-parented, stop dorun as on SIGTERM.
const parent = process.ppid;
const parentWatch = setInterval(() => {
  if (process.ppid !== parent) {
    clearInterval(parentWatch);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  }
}, 250);
parentWatch.unref();

child.on("error", (error) => {
  process.stderr.write(`dorun: ${explainSpawnError(binary, error)}\n`);
  process.exit(1);
});

child.on("exit", (code, signal) => {
  clearInterval(parentWatch);
  for (const [name, handler] of handlers) process.off(name, handler);
  if (signal !== null) {
    // Die of the same signal, so that the caller sees what dorun saw.
    process.kill(process.pid, signal);
    // Signals that do not end a process by default: exit as a shell would report it.
    setTimeout(() => process.exit(128 + (require("node:os").constants.signals[signal] || 0)), 100);
    return;
  }
  process.exit(code === null ? 1 : code);
});
