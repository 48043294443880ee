// What dorun's Node.js built-in modules (node:crypto, node:async_hooks, ...) need from the
// runtime: native hashes and the async context. The modules themselves are ES modules the
// Worker's module loader serves (see node_compat.rs); they reach these through one
// non-enumerable symbol-keyed global.

import { core, primordials } from "ext:core/mod.js";
import {
  enterFrame,
  frameWithStore,
  runInFrame,
  snapshotFrame,
  storeOf,
} from "ext:dorun/00_runtime.js";

const { ObjectDefineProperty, ObjectFreeze, SymbolFor } = primordials;
const { op_node_hash, op_node_hmac, op_node_pbkdf2 } = core.ops;

ObjectDefineProperty(globalThis, SymbolFor("dorun.node"), {
  value: ObjectFreeze({
    hash: (algorithm, data) => op_node_hash(algorithm, data),
    hmac: (algorithm, key, data) => op_node_hmac(algorithm, key, data),
    pbkdf2: (algorithm, password, salt, iterations, length) =>
      op_node_pbkdf2(algorithm, password, salt, iterations, length),
    enterFrame,
    frameWithStore,
    runInFrame,
    snapshotFrame,
    storeOf,
  }),
  enumerable: false,
  configurable: false,
  writable: false,
});
