// The globals nodejs_compat (v2) adds: Buffer, process, global, setImmediate and
// clearImmediate, and what process.getBuiltinModule() returns. Imported first by the entry module, before the Worker's modules run.

import { Buffer } from "node:buffer";
import process from "node:process";
import { clearImmediate, setImmediate } from "node:timers";
import * as assert from "node:assert";
import * as asyncHooks from "node:async_hooks";
import * as buffer from "node:buffer";
import * as crypto from "node:crypto";
import * as diagnosticsChannel from "node:diagnostics_channel";
import * as events from "node:events";
import * as path from "node:path";
import * as processModule from "node:process";
import * as querystring from "node:querystring";
import * as stream from "node:stream";
import * as stringDecoder from "node:string_decoder";
import * as timers from "node:timers";
import * as url from "node:url";
import * as util from "node:util";

// process.getBuiltinModule(name) (bundles made by wrangler or vite call it at load time):
// the module as require() would give it.
const builtins = new Map(
  Object.entries({
    assert,
    async_hooks: asyncHooks,
    buffer,
    crypto,
    diagnostics_channel: diagnosticsChannel,
    events,
    path,
    process: processModule,
    querystring,
    stream,
    string_decoder: stringDecoder,
    timers,
    url,
    util,
  }).map(([name, namespace]) => [name, namespace.default ?? namespace]),
);
process.getBuiltinModule = (name) => builtins.get(String(name).replace(/^node:/, ""));

const hidden = (value) => ({ value, writable: true, configurable: true, enumerable: false });
Object.defineProperties(globalThis, {
  Buffer: hidden(Buffer),
  process: hidden(process),
  global: hidden(globalThis),
  setImmediate: hidden(setImmediate),
  clearImmediate: hidden(clearImmediate),
});
