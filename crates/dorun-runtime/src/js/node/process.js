// node:process — what Workers' process object offers: env (the Worker's text vars and
// secrets when nodejs_compat_populate_process_env is on), nextTick, version(s), platform,
// arch, cwd(), argv, hrtime, uptime, memoryUsage, emitWarning and the EventEmitter methods.
// Not covered: exit() (throws, as a Worker cannot exit), stdin, signals, child processes,
// chdir(), umask(), resource usage.

import { EventEmitter } from "node:events";
import populatedEnv from "node:internal/process_env";

const started = performance.now();

class Process extends EventEmitter {}

const process = new Process();
const env = { ...populatedEnv };

function nextTick(callback, ...args) {
  if (typeof callback !== "function") {
    const error = new TypeError(`The "callback" argument must be of type function. Received ${typeof callback}`);
    error.code = "ERR_INVALID_ARG_TYPE";
    throw error;
  }
  queueMicrotask(() => callback(...args));
}

function hrtime(previous = undefined) {
  const now = performance.now();
  const seconds = Math.floor(now / 1000);
  const nanoseconds = Math.floor((now % 1000) * 1e6);
  if (previous === undefined) return [seconds, nanoseconds];
  let s = seconds - previous[0];
  let ns = nanoseconds - previous[1];
  if (ns < 0) {
    s -= 1;
    ns += 1e9;
  }
  return [s, ns];
}
hrtime.bigint = () => BigInt(Math.floor(performance.now() * 1e6));

function writer(log) {
  return {
    write(chunk, encoding, callback) {
      const text = typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
      log(text.endsWith("\n") ? text.slice(0, -1) : text);
      (typeof encoding === "function" ? encoding : callback)?.();
      return true;
    },
    isTTY: false,
    fd: 0,
  };
}

Object.assign(process, {
  title: "node",
  version: "v22.14.0",
  versions: { node: "22.14.0" },
  release: { name: "node" },
  platform: "linux",
  arch: "x64",
  pid: 1,
  ppid: 0,
  argv: ["node"],
  argv0: "node",
  execArgv: [],
  execPath: "/bin/node",
  exitCode: undefined,
  features: { inspector: false },
  config: { variables: {} },
  env,
  nextTick,
  hrtime,
  browser: false,
  cwd: () => "/",
  chdir: (_directory) => {
    const error = new Error("process.chdir() is not supported in Workers");
    error.code = "ERR_METHOD_NOT_IMPLEMENTED";
    throw error;
  },
  umask: () => 0o22,
  uptime: () => (performance.now() - started) / 1000,
  memoryUsage: Object.assign(() => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }), { rss: () => 0 }),
  cpuUsage: () => ({ user: 0, system: 0 }),
  emitWarning: (warning, type = "Warning") => {
    const text = warning instanceof Error ? `${warning.name}: ${warning.message}` : `${typeof type === "string" ? type : type?.type ?? "Warning"}: ${warning}`;
    console.warn(text);
  },
  exit: (code = 0) => {
    throw new Error(`process.exit(${code}) is not supported in Workers`);
  },
  abort: () => {
    throw new Error("process.abort() is not supported in Workers");
  },
  kill: () => {
    throw new Error("process.kill() is not supported in Workers");
  },
  binding: (name) => {
    throw new Error(`No such module: ${name}`);
  },
  getBuiltinModule: (_name) => undefined,
  stdout: writer((text) => console.log(text)),
  stderr: writer((text) => console.error(text)),
});

export default process;
export {
  env,
  hrtime,
  nextTick,
};
export const {
  arch,
  argv,
  argv0,
  chdir,
  cpuUsage,
  cwd,
  emitWarning,
  execArgv,
  exit,
  features,
  memoryUsage,
  pid,
  platform,
  release,
  stderr,
  stdout,
  title,
  uptime,
  version,
  versions,
} = process;
