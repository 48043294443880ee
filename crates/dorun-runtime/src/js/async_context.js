// The async context: what V8 carries across awaits, promise continuations and timers
// (its continuation-preserved embedder data, `core.getAsyncContext`). One frame holds both
// consumers: the Durable Object the code runs for (output gate, exports, sockets) and the
// stores of `AsyncLocalStorage` (node:async_hooks). Frames are immutable: entering an object
// or a store makes a new frame, so a continuation always sees the frame of its own chain.

import { core, primordials } from "ext:core/mod.js";

const { ObjectFreeze, SafeMap } = primordials;

class ContextFrame {
  /** @param {object | null} object  @param {Map<object, unknown> | null} stores */
  constructor(object, stores) {
    this.object = object;
    this.stores = stores;
    ObjectFreeze(this);
  }
}

function currentFrame() {
  const frame = core.getAsyncContext();
  return frame instanceof ContextFrame ? frame : null;
}

/** The Durable Object the running code belongs to, or null. */
function currentObject() {
  return currentFrame()?.object ?? null;
}

/** Runs `callback` with `frame` as the async context, then restores the previous one. */
function runInFrame(frame, callback, args = []) {
  const previous = core.getAsyncContext();
  core.setAsyncContext(frame);
  try {
    return callback(...args);
  } finally {
    core.setAsyncContext(previous);
  }
}

/** Runs user code for `object` (keeping the caller's AsyncLocalStorage stores). */
function runAsObject(object, callback) {
  return runInFrame(new ContextFrame(object, currentFrame()?.stores ?? null), callback);
}

/** The frame with `key`'s store set to `value` (`undefined` removes it). */
function frameWithStore(key, value) {
  const frame = currentFrame();
  const stores = new SafeMap();
  frame?.stores?.forEach((stored, storeKey) => stores.set(storeKey, stored));
  if (value === undefined) stores.delete(key);
  else stores.set(key, value);
  return new ContextFrame(frame?.object ?? null, stores.size === 0 ? null : stores);
}

/** The store `key` holds in the current frame. */
function storeOf(key) {
  return currentFrame()?.stores?.get(key);
}

/** The current frame, to run code in later (AsyncResource, AsyncLocalStorage.snapshot). */
function snapshotFrame() {
  return core.getAsyncContext();
}

function enterFrame(frame) {
  core.setAsyncContext(frame);
}

export {
  currentObject,
  enterFrame,
  frameWithStore,
  runAsObject,
  runInFrame,
  snapshotFrame,
  storeOf,
};
