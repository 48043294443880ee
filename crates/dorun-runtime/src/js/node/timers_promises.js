// node:timers/promises — promise-returning setTimeout/setImmediate, an async-iterable
// setInterval, and scheduler.wait/yield; all honour `{ signal }`.

function abortError(signal) {
  const error = new DOMException("The operation was aborted", "AbortError");
  error.cause = signal?.reason;
  return error;
}

export function setTimeout(delay = 1, value = undefined, options = {}) {
  const signal = options?.signal;
  if (signal?.aborted) return Promise.reject(abortError(signal));
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      globalThis.clearTimeout(id);
      reject(abortError(signal));
    };
    const id = globalThis.setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(value);
    }, delay);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function setImmediate(value = undefined, options = {}) {
  return setTimeout(0, value, options);
}

export async function* setInterval(delay = 1, value = undefined, options = {}) {
  const signal = options?.signal;
  if (signal?.aborted) throw abortError(signal);
  let pending = 0;
  let wake = null;
  const id = globalThis.setInterval(() => {
    pending++;
    wake?.();
  }, delay);
  const onAbort = () => wake?.();
  signal?.addEventListener("abort", onAbort);
  try {
    while (true) {
      if (pending === 0) await new Promise((resolve) => (wake = resolve));
      wake = null;
      if (signal?.aborted) throw abortError(signal);
      if (pending > 0) {
        pending--;
        yield value;
      }
    }
  } finally {
    globalThis.clearInterval(id);
    signal?.removeEventListener("abort", onAbort);
  }
}

export const scheduler = {
  wait: (delay, options = {}) => setTimeout(delay, undefined, options),
  yield: () => setImmediate(),
};

export default { scheduler, setImmediate, setInterval, setTimeout };
