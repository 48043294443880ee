// The globals nodejs_compat (v2) adds: Buffer, process, global, setImmediate and
// clearImmediate. Imported first by the entry module, before the Worker's modules run.

import { Buffer } from "node:buffer";
import process from "node:process";
import { clearImmediate, setImmediate } from "node:timers";

const hidden = (value) => ({ value, writable: true, configurable: true, enumerable: false });
Object.defineProperties(globalThis, {
  Buffer: hidden(Buffer),
  process: hidden(process),
  global: hidden(globalThis),
  setImmediate: hidden(setImmediate),
  clearImmediate: hidden(clearImmediate),
});
