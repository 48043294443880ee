// node:timers — the runtime's timers, plus setImmediate/clearImmediate (a zero-delay timer).
// Timer handles are the runtime's numeric ids, not Node's Timeout objects (no ref/unref,
// refresh, hasRef). timers.promises is node:timers/promises.

import promises from "node:timers/promises";

export const setTimeout = globalThis.setTimeout;
export const clearTimeout = globalThis.clearTimeout;
export const setInterval = globalThis.setInterval;
export const clearInterval = globalThis.clearInterval;

export function setImmediate(callback, ...args) {
  return globalThis.setTimeout(callback, 0, ...args);
}

export function clearImmediate(id) {
  globalThis.clearTimeout(id);
}

export { promises };

export default {
  clearImmediate,
  clearInterval,
  clearTimeout,
  promises,
  setImmediate,
  setInterval,
  setTimeout,
};
