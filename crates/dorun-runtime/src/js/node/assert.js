// node:assert — the classic and strict assertion functions with AssertionError. Messages
// name the values (via util.inspect) but are shorter than Node's diffs. Not covered:
// CallTracker, assert.partialDeepStrictEqual, diff output.

import { deepEqual, inspect } from "node:util";

export class AssertionError extends Error {
  constructor(options = {}) {
    const { message, actual, expected, operator } = options;
    super(message ?? `${inspect(actual)} ${operator} ${inspect(expected)}`);
    this.name = "AssertionError";
    this.code = "ERR_ASSERTION";
    this.actual = actual;
    this.expected = expected;
    this.operator = operator;
    this.generatedMessage = message === undefined;
  }
}

function fail_(actual, expected, message, operator, defaultMessage) {
  if (message instanceof Error) throw message;
  throw new AssertionError({ actual, expected, operator, message: message ?? defaultMessage });
}

export function fail(message = "Failed") {
  if (message instanceof Error) throw message;
  throw new AssertionError({ message, operator: "fail" });
}

function innerOk(value, message) {
  if (!value) {
    fail_(value, true, message, "==", message === undefined ? "The expression evaluated to a falsy value:\n\n  assert.ok(" + inspect(value) + ")\n" : undefined);
  }
}

export function ok(value, message) {
  if (arguments.length === 0) fail_(undefined, true, "No value argument passed to `assert.ok()`", "==");
  innerOk(value, message);
}

export function equal(actual, expected, message) {
  if (!(actual == expected || (actual !== actual && expected !== expected))) { // eslint-disable-line eqeqeq
    fail_(actual, expected, message, "==");
  }
}

export function notEqual(actual, expected, message) {
  if (actual == expected || (actual !== actual && expected !== expected)) fail_(actual, expected, message, "!="); // eslint-disable-line eqeqeq
}

export function strictEqual(actual, expected, message) {
  if (!Object.is(actual, expected)) {
    fail_(actual, expected, message, "strictEqual", `Expected values to be strictly equal:\n\n${inspect(actual)} !== ${inspect(expected)}\n`);
  }
}

export function notStrictEqual(actual, expected, message) {
  if (Object.is(actual, expected)) {
    fail_(actual, expected, message, "notStrictEqual", `Expected "actual" to be strictly unequal to: ${inspect(expected)}`);
  }
}

export function deepStrictEqual(actual, expected, message) {
  if (!deepEqual(actual, expected, true, new Map())) {
    fail_(actual, expected, message, "deepStrictEqual", `Expected values to be strictly deep-equal:\n${inspect(actual)}\n\nshould equal\n\n${inspect(expected)}`);
  }
}

export function notDeepStrictEqual(actual, expected, message) {
  if (deepEqual(actual, expected, true, new Map())) fail_(actual, expected, message, "notDeepStrictEqual");
}

function deepEqual_(actual, expected, message) {
  if (!deepEqual(actual, expected, false, new Map())) fail_(actual, expected, message, "deepEqual");
}

export function notDeepEqual(actual, expected, message) {
  if (deepEqual(actual, expected, false, new Map())) fail_(actual, expected, message, "notDeepEqual");
}

/** Whether `error` satisfies `expected` (a class, RegExp, validation function or object). */
function matchesExpected(error, expected, message) {
  if (expected === undefined) return;
  if (typeof expected === "function") {
    if (expected.prototype !== undefined && error instanceof expected) return;
    if (Error.isPrototypeOf(expected) || expected === Error) {
      fail_(error, expected, message, "throws", `The error is expected to be an instance of "${expected.name}". Received "${error?.constructor?.name}"`);
    }
    if (expected.call({}, error) === true) return;
    fail_(error, expected, message, "throws", "The validation function is expected to return \"true\"");
  }
  if (expected instanceof RegExp) {
    if (expected.test(String(error))) return;
    fail_(error, expected, message, "throws", `The input did not match the regular expression ${expected}. Input: ${inspect(String(error))}`);
  }
  if (typeof expected === "object" && expected !== null) {
    for (const key of Object.keys(expected)) {
      const want = expected[key];
      const have = error?.[key];
      const good = want instanceof RegExp && typeof have === "string" ? want.test(have) : deepEqual(have, want, true, new Map());
      if (!good) fail_(error, expected, message, "throws", `Expected values to be strictly deep-equal on "${key}": ${inspect(have)} !== ${inspect(want)}`);
    }
  }
}

const NO_ERROR = Symbol("no error");

export function throws(fn, expected, message) {
  if (typeof expected === "string") {
    message = expected;
    expected = undefined;
  }
  let error = NO_ERROR;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  if (error === NO_ERROR) fail_(undefined, expected, message, "throws", "Missing expected exception.");
  matchesExpected(error, expected, message);
}

export function doesNotThrow(fn, expected, message) {
  try {
    fn();
  } catch (error) {
    if (typeof expected === "string") message = expected;
    fail_(error, expected, message, "doesNotThrow", `Got unwanted exception.\nActual message: "${error?.message}"`);
  }
}

export async function rejects(promiseOrFn, expected, message) {
  if (typeof expected === "string") {
    message = expected;
    expected = undefined;
  }
  let error = NO_ERROR;
  try {
    await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    error = e;
  }
  if (error === NO_ERROR) fail_(undefined, expected, message, "rejects", "Missing expected rejection.");
  matchesExpected(error, expected, message);
}

export async function doesNotReject(promiseOrFn, expected, message) {
  try {
    await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
  } catch (error) {
    if (typeof expected === "string") message = expected;
    fail_(error, expected, message, "doesNotReject", `Got unwanted rejection.\nActual message: "${error?.message}"`);
  }
}

export function ifError(value) {
  if (value !== null && value !== undefined) {
    if (value instanceof Error) throw value;
    throw new AssertionError({ actual: value, expected: null, operator: "ifError", message: `ifError got unwanted exception: ${inspect(value)}` });
  }
}

export function match(string, regexp, message) {
  if (typeof string !== "string" || !regexp.test(string)) {
    fail_(string, regexp, message, "match", `The input did not match the regular expression ${regexp}. Input:\n\n${inspect(string)}\n`);
  }
}

export function doesNotMatch(string, regexp, message) {
  if (typeof string !== "string" || regexp.test(string)) {
    fail_(string, regexp, message, "doesNotMatch", `The input was expected to not match the regular expression ${regexp}. Input:\n\n${inspect(string)}\n`);
  }
}

function build(strictMode) {
  const assert = (value, message) => innerOk(value, message);
  Object.assign(assert, {
    AssertionError,
    fail,
    ok,
    equal: strictMode ? strictEqual : equal,
    notEqual: strictMode ? notStrictEqual : notEqual,
    deepEqual: strictMode ? deepStrictEqual : deepEqual_,
    notDeepEqual: strictMode ? notDeepStrictEqual : notDeepEqual,
    strictEqual,
    notStrictEqual,
    deepStrictEqual,
    notDeepStrictEqual,
    throws,
    doesNotThrow,
    rejects,
    doesNotReject,
    ifError,
    match,
    doesNotMatch,
  });
  return assert;
}

export const strict = build(true);
const assert = build(false);
assert.strict = strict;
strict.strict = strict;

export { deepEqual_ as deepEqual };
export default assert;
