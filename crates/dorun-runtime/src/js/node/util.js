// node:util — format, inspect, promisify, callbackify, inherits, deprecate, types,
// isDeepStrictEqual, TextEncoder/TextDecoder. inspect() prints Node's shapes for common
// values (objects, arrays, Map, Set, errors, functions, class instances, circular
// references, `[util.inspect.custom]`) but not colors, getters, `showProxy`, `sorted` or
// Node's line-breaking heuristics beyond `breakLength`. Not covered: parseArgs, MIMEType,
// debuglog output (it is a no-op), styleText colors.

const customInspect = Symbol.for("nodejs.util.inspect.custom");
const customPromisify = Symbol.for("nodejs.util.promisify.custom");

// --- types ---------------------------------------------------------------------------------
const TypedArray = Object.getPrototypeOf(Uint8Array);
const tag = (value) => Object.prototype.toString.call(value).slice(8, -1);
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
const GeneratorFunction = Object.getPrototypeOf(function* () {}).constructor;
const AsyncGeneratorFunction = Object.getPrototypeOf(async function* () {}).constructor;

export const types = {
  isPromise: (v) => v instanceof Promise,
  isDate: (v) => v instanceof Date,
  isRegExp: (v) => v instanceof RegExp,
  isMap: (v) => v instanceof Map,
  isSet: (v) => v instanceof Set,
  isWeakMap: (v) => v instanceof WeakMap,
  isWeakSet: (v) => v instanceof WeakSet,
  isMapIterator: (v) => tag(v) === "Map Iterator",
  isSetIterator: (v) => tag(v) === "Set Iterator",
  isTypedArray: (v) => v instanceof TypedArray,
  isUint8Array: (v) => v instanceof Uint8Array,
  isUint8ClampedArray: (v) => v instanceof Uint8ClampedArray,
  isUint16Array: (v) => v instanceof Uint16Array,
  isUint32Array: (v) => v instanceof Uint32Array,
  isInt8Array: (v) => v instanceof Int8Array,
  isInt16Array: (v) => v instanceof Int16Array,
  isInt32Array: (v) => v instanceof Int32Array,
  isFloat32Array: (v) => v instanceof Float32Array,
  isFloat64Array: (v) => v instanceof Float64Array,
  isBigInt64Array: (v) => v instanceof BigInt64Array,
  isBigUint64Array: (v) => v instanceof BigUint64Array,
  isArrayBuffer: (v) => v instanceof ArrayBuffer,
  isSharedArrayBuffer: (v) => typeof SharedArrayBuffer !== "undefined" && v instanceof SharedArrayBuffer,
  isAnyArrayBuffer: (v) => v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && v instanceof SharedArrayBuffer),
  isArrayBufferView: (v) => ArrayBuffer.isView(v),
  isDataView: (v) => v instanceof DataView,
  isAsyncFunction: (v) => v instanceof AsyncFunction || v instanceof AsyncGeneratorFunction,
  isGeneratorFunction: (v) => v instanceof GeneratorFunction || v instanceof AsyncGeneratorFunction,
  isGeneratorObject: (v) => tag(v) === "Generator",
  isNativeError: (v) => v instanceof Error,
  isBoxedPrimitive: (v) =>
    v instanceof Number || v instanceof String || v instanceof Boolean || v instanceof BigInt || v instanceof Symbol,
  isNumberObject: (v) => v instanceof Number,
  isStringObject: (v) => v instanceof String,
  isBooleanObject: (v) => v instanceof Boolean,
  isBigIntObject: (v) => v instanceof BigInt,
  isSymbolObject: (v) => v instanceof Symbol,
  isProxy: (_v) => false,
  isModuleNamespaceObject: (v) => tag(v) === "Module",
  isWeakRef: (v) => v instanceof WeakRef,
  isKeyObject: (_v) => false,
  isCryptoKey: (v) => typeof CryptoKey !== "undefined" && v instanceof CryptoKey,
  isExternal: (_v) => false,
  isArgumentsObject: (v) => tag(v) === "Arguments",
};

// --- inspect -------------------------------------------------------------------------------
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

function quote(string) {
  const q = !string.includes("'") ? "'" : !string.includes('"') ? '"' : !string.includes("`") ? "`" : "'";
  const escaped = string
    .replace(/\\/g, "\\\\")
    .replace(/\n/g, "\\n")
    .replace(/\t/g, "\\t")
    .replace(/\r/g, "\\r")
    .replace(new RegExp(q, "g"), `\\${q}`);
  return q + escaped + q;
}

function formatKey(key) {
  if (typeof key === "symbol") return `[${key.toString()}]`;
  return IDENTIFIER.test(key) ? key : quote(key);
}

function constructorName(value) {
  let proto = Object.getPrototypeOf(value);
  if (proto === null) return null;
  while (proto !== null) {
    const descriptor = Object.getOwnPropertyDescriptor(proto, "constructor");
    if (descriptor !== undefined && typeof descriptor.value === "function" && descriptor.value.name !== "") {
      return descriptor.value.name;
    }
    proto = Object.getPrototypeOf(proto);
  }
  return "";
}

function formatPrimitive(value, ctx, nested) {
  switch (typeof value) {
    case "string":
      return nested ? quote(value) : value;
    case "number":
      return Object.is(value, -0) ? "-0" : String(value);
    case "bigint":
      return `${value}n`;
    case "symbol":
      return value.toString();
    case "undefined":
      return "undefined";
    case "boolean":
      return String(value);
  }
  return value === null ? "null" : undefined;
}

function wrap(open, items, close, ctx, indentation) {
  if (items.length === 0) return `${open}${close}`;
  const single = `${open} ${items.join(", ")} ${close}`;
  if (single.length + indentation <= ctx.breakLength && !items.some((i) => i.includes("\n"))) {
    return single;
  }
  const pad = " ".repeat(indentation + 2);
  return `${open}\n${pad}${items.join(`,\n${pad}`)}\n${" ".repeat(indentation)}${close}`;
}

function formatValue(value, ctx, depth, nested) {
  const primitive = formatPrimitive(value, ctx, nested);
  if (primitive !== undefined) return primitive;
  if (ctx.customInspect && typeof value[customInspect] === "function" && value[customInspect] !== inspect) {
    const result = value[customInspect](ctx.depth - depth, { ...ctx, stylize: (s) => s }, inspect);
    if (result !== value) return typeof result === "string" ? result : formatValue(result, ctx, depth, nested);
  }
  if (ctx.seen.includes(value)) return "[Circular *1]";
  const indentation = ctx.indentation;

  if (typeof value === "function") {
    const kind = /^class\s/.test(Function.prototype.toString.call(value))
      ? "class"
      : types.isAsyncFunction(value)
      ? "AsyncFunction"
      : types.isGeneratorFunction(value)
      ? "GeneratorFunction"
      : "Function";
    const base = kind === "class"
      ? `[class ${value.name || "(anonymous)"}]`
      : `[${kind}${value.name ? `: ${value.name}` : " (anonymous)"}]`;
    const keys = Object.keys(value);
    if (keys.length === 0 || depth > ctx.depth) return base;
    return formatEntries(value, keys, base, ctx, depth);
  }
  if (value instanceof Error) {
    const stack = value.stack ?? `${value.name}: ${value.message}`;
    const keys = Object.keys(value).filter((k) => k !== "stack" && k !== "message");
    const text = nested ? `[${stack}]` : stack;
    return keys.length === 0 ? text : formatEntries(value, keys, text, ctx, depth);
  }
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString();
  if (value instanceof RegExp) return value.toString();
  if (value instanceof Promise) return "Promise { <unknown> }";
  if (value instanceof WeakMap) return "WeakMap { <items unknown> }";
  if (value instanceof WeakSet) return "WeakSet { <items unknown> }";
  if (types.isBoxedPrimitive(value)) {
    return `[${constructorName(value)}: ${formatPrimitive(value.valueOf(), ctx, true)}]`;
  }

  if (depth > ctx.depth) {
    return Array.isArray(value) ? "[Array]" : `[${constructorName(value) || "Object"}]`;
  }

  ctx.seen.push(value);
  ctx.indentation += 2;
  try {
    let items;
    let open;
    let close;
    let prefix = "";
    const name = constructorName(value);
    if (Array.isArray(value) || types.isTypedArray(value)) {
      items = [];
      const shown = Math.min(value.length, ctx.maxArrayLength);
      let holes = 0;
      for (let i = 0; i < shown; i++) {
        if (!(i in value)) {
          holes++;
          continue;
        }
        if (holes > 0) {
          items.push(`<${holes} empty item${holes > 1 ? "s" : ""}>`);
          holes = 0;
        }
        items.push(formatValue(value[i], ctx, depth + 1, true));
      }
      if (holes > 0) items.push(`<${holes} empty item${holes > 1 ? "s" : ""}>`);
      if (value.length > shown) items.push(`... ${value.length - shown} more item${value.length - shown > 1 ? "s" : ""}`);
      for (const key of Object.keys(value)) {
        if (!/^\d+$/.test(key)) items.push(`${formatKey(key)}: ${formatValue(value[key], ctx, depth + 1, true)}`);
      }
      if (name !== "Array") prefix = `${name}(${value.length}) `;
      open = "[";
      close = "]";
    } else if (value instanceof Map) {
      items = [...value].map(([k, v]) => `${formatValue(k, ctx, depth + 1, true)} => ${formatValue(v, ctx, depth + 1, true)}`);
      prefix = `${name}(${value.size}) `;
      open = "{";
      close = "}";
    } else if (value instanceof Set) {
      items = [...value].map((v) => formatValue(v, ctx, depth + 1, true));
      prefix = `${name}(${value.size}) `;
      open = "[";
      close = "]";
    } else if (value instanceof ArrayBuffer) {
      const bytes = [...new Uint8Array(value).subarray(0, 50)].map((b) => b.toString(16).padStart(2, "0"));
      return `ArrayBuffer { [Uint8Contents]: <${bytes.join(" ")}${value.byteLength > 50 ? " ..." : ""}>, byteLength: ${value.byteLength} }`;
    } else {
      const keys = [...Object.keys(value), ...Object.getOwnPropertySymbols(value).filter((s) => Object.getOwnPropertyDescriptor(value, s).enumerable)];
      items = keys.map((key) => `${formatKey(key)}: ${formatValue(value[key], ctx, depth + 1, true)}`);
      const toStringTag = value[Symbol.toStringTag];
      if (name === null) prefix = `[Object: null prototype] `;
      else if (name !== "Object") prefix = `${name} `;
      if (typeof toStringTag === "string" && toStringTag !== name) prefix = `${prefix || "Object "}[${toStringTag}] `;
      open = "{";
      close = "}";
    }
    return prefix + wrap(open, items, close, ctx, indentation);
  } finally {
    ctx.seen.pop();
    ctx.indentation -= 2;
  }
}

function formatEntries(value, keys, base, ctx, depth) {
  ctx.seen.push(value);
  try {
    const items = keys.map((key) => `${formatKey(key)}: ${formatValue(value[key], ctx, depth + 1, true)}`);
    return `${base} ${wrap("{", items, "}", ctx, ctx.indentation)}`;
  } finally {
    ctx.seen.pop();
  }
}

export function inspect(value, options = {}) {
  if (typeof options !== "object" || options === null) options = {};
  const ctx = {
    depth: options.depth === null ? Infinity : options.depth ?? inspect.defaultOptions.depth,
    breakLength: options.breakLength ?? inspect.defaultOptions.breakLength,
    maxArrayLength: options.maxArrayLength ?? inspect.defaultOptions.maxArrayLength,
    customInspect: options.customInspect ?? true,
    colors: false,
    seen: [],
    indentation: 0,
  };
  return formatValue(value, ctx, 0, false);
}
inspect.custom = customInspect;
inspect.defaultOptions = { depth: 2, breakLength: 80, maxArrayLength: 100, colors: false };
inspect.colors = {};
inspect.styles = {};

// --- format --------------------------------------------------------------------------------
export function formatWithOptions(options, ...args) {
  const first = args[0];
  let out = "";
  let index = 1;
  if (typeof first === "string") {
    if (args.length === 1) return first;
    let last = 0;
    for (let i = 0; i < first.length - 1; i++) {
      if (first.charCodeAt(i) !== 37) continue; // "%"
      const next = first[i + 1];
      let replacement;
      if (next === "%") {
        out += first.slice(last, i) + "%";
        last = i + 2;
        i++;
        continue;
      }
      if (index >= args.length) continue;
      const arg = args[index];
      switch (next) {
        case "s":
          replacement = typeof arg === "string"
            ? arg
            : typeof arg === "bigint"
            ? `${arg}n`
            : typeof arg === "object" && arg !== null
            ? inspect(arg, { ...options, depth: 0 })
            : String(arg);
          break;
        case "d":
        case "i": {
          const n = typeof arg === "bigint" ? arg : typeof arg === "symbol" ? NaN : Number(arg);
          replacement = typeof n === "bigint" ? `${n}n` : String(next === "i" ? Math.trunc(n) : n);
          break;
        }
        case "f":
          replacement = typeof arg === "symbol" ? "NaN" : String(Number.parseFloat(arg));
          break;
        case "j":
          try {
            replacement = JSON.stringify(arg);
          } catch {
            replacement = "[Circular]";
          }
          break;
        case "o":
          replacement = inspect(arg, { ...options, showHidden: true, depth: 4 });
          break;
        case "O":
          replacement = inspect(arg, options);
          break;
        case "c":
          replacement = "";
          break;
        default:
          continue;
      }
      out += first.slice(last, i) + replacement;
      last = i + 2;
      i++;
      index++;
    }
    out += first.slice(last);
  } else {
    index = 0;
  }
  for (; index < args.length; index++) {
    const arg = args[index];
    const text = typeof arg === "string" ? arg : inspect(arg, options);
    out += (out.length > 0 || index > 0 ? " " : "") + text;
  }
  return out;
}

export function format(...args) {
  return formatWithOptions({}, ...args);
}

// --- functions -----------------------------------------------------------------------------
export function promisify(original) {
  if (typeof original !== "function") {
    throw new TypeError('The "original" argument must be of type function');
  }
  if (typeof original[customPromisify] === "function") return original[customPromisify];
  function promisified(...args) {
    return new Promise((resolve, reject) => {
      Reflect.apply(original, this, [
        ...args,
        (error, ...values) => (error ? reject(error) : resolve(values.length > 1 ? values : values[0])),
      ]);
    });
  }
  Object.setPrototypeOf(promisified, Object.getPrototypeOf(original));
  Object.defineProperty(promisified, customPromisify, { value: promisified });
  return Object.defineProperties(promisified, Object.getOwnPropertyDescriptors(original));
}
promisify.custom = customPromisify;

export function callbackify(original) {
  if (typeof original !== "function") {
    throw new TypeError('The "original" argument must be of type function');
  }
  return function (...args) {
    const callback = args.pop();
    if (typeof callback !== "function") throw new TypeError("The last argument must be of type function");
    Reflect.apply(original, this, args).then(
      (value) => queueMicrotask(() => callback(null, value)),
      (reason) => {
        if (!reason) {
          const error = new Error("Promise was rejected with a falsy value");
          error.reason = reason;
          reason = error;
        }
        queueMicrotask(() => callback(reason));
      },
    );
  };
}

export function inherits(ctor, superCtor) {
  if (typeof ctor !== "function" || typeof superCtor !== "function" || superCtor.prototype === undefined) {
    throw new TypeError("inherits: both arguments must be constructors");
  }
  Object.defineProperty(ctor, "super_", { value: superCtor, writable: true, configurable: true });
  Object.setPrototypeOf(ctor.prototype, superCtor.prototype);
}

const warned = new Set();
export function deprecate(fn, message, code = undefined) {
  return function (...args) {
    const key = code ?? message;
    if (!warned.has(key)) {
      warned.add(key);
      console.warn(`[${code ?? "DEP"}] DeprecationWarning: ${message}`);
    }
    return new.target ? Reflect.construct(fn, args, new.target) : Reflect.apply(fn, this, args);
  };
}

export function debuglog(_section, _callback) {
  const log = () => {};
  log.enabled = false;
  return log;
}
export const debug = debuglog;

// --- deep equality (shared with node:assert) -----------------------------------------------
export function isDeepStrictEqual(a, b) {
  return deepEqual(a, b, true, new Map());
}

/** Node's deep equality: strict compares prototypes and uses Object.is on primitives. */
export function deepEqual(a, b, strict, memo) {
  if (strict ? Object.is(a, b) : a == b || (a !== a && b !== b)) return true; // eslint-disable-line eqeqeq
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return false;
  }
  if (strict && Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (tag(a) !== tag(b)) return false;
  if (memo.get(a) === b) return true;
  memo.set(a, b);
  if (a instanceof Date) return a.getTime() === b.getTime();
  if (a instanceof RegExp) return String(a) === String(b) && a.lastIndex === b.lastIndex;
  if (a instanceof Error && (a.message !== b.message || a.name !== b.name)) return false;
  if (types.isBoxedPrimitive(a)) return Object.is(a.valueOf(), b.valueOf());
  if (ArrayBuffer.isView(a)) {
    if (a.byteLength !== b.byteLength) return false;
    const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    if (!x.every((v, i) => v === y[i])) return false;
  }
  if (a instanceof ArrayBuffer) {
    if (!deepEqual(new Uint8Array(a), new Uint8Array(b), strict, memo)) return false;
  }
  if (a instanceof Map) {
    if (a.size !== b.size) return false;
    for (const [key, value] of a) {
      if (!b.has(key) || !deepEqual(value, b.get(key), strict, memo)) return false;
    }
  } else if (a instanceof Set) {
    if (a.size !== b.size) return false;
    outer: for (const value of a) {
      if (b.has(value)) continue;
      if (typeof value === "object" && value !== null) {
        for (const other of b) if (deepEqual(value, other, strict, memo)) continue outer;
      }
      return false;
    }
  }
  const keysA = ownEnumerableKeys(a, strict);
  const keysB = ownEnumerableKeys(b, strict);
  if (keysA.length !== keysB.length) return false;
  for (const key of keysA) {
    if (!Object.prototype.propertyIsEnumerable.call(b, key)) return false;
    if (!deepEqual(a[key], b[key], strict, memo)) return false;
  }
  return true;
}

function ownEnumerableKeys(value, strict) {
  const keys = Object.keys(value);
  if (strict) {
    for (const symbol of Object.getOwnPropertySymbols(value)) {
      if (Object.prototype.propertyIsEnumerable.call(value, symbol)) keys.push(symbol);
    }
  }
  return keys;
}

// --- small helpers -------------------------------------------------------------------------
export const isArray = Array.isArray;
export const isBoolean = (v) => typeof v === "boolean";
export const isNull = (v) => v === null;
export const isNullOrUndefined = (v) => v === null || v === undefined;
export const isNumber = (v) => typeof v === "number";
export const isString = (v) => typeof v === "string";
export const isSymbol = (v) => typeof v === "symbol";
export const isUndefined = (v) => v === undefined;
export const isRegExp = types.isRegExp;
export const isObject = (v) => v !== null && typeof v === "object";
export const isDate = types.isDate;
export const isError = types.isNativeError;
export const isFunction = (v) => typeof v === "function";
export const isPrimitive = (v) => v === null || (typeof v !== "object" && typeof v !== "function");

export function stripVTControlCharacters(string) {
  // deno-lint-ignore no-control-regex
  return string.replace(/[\u001B\u009B][[\]()#;?]*(?:(?:(?:;[-a-zA-Z\d/#&.:=?%@~_]+)*|[a-zA-Z\d]+(?:;[-a-zA-Z\d/#&.:=?%@~_]*)*)?\u0007|(?:\d{1,4}(?:;\d{0,4})*)?[\dA-PR-TZcf-ntqry=><~])/g, "");
}

export function toUSVString(string) {
  return String(string).toWellFormed?.() ?? String(string);
}

export function styleText(_format, text) {
  return text;
}

export function getSystemErrorName(code) {
  return `Unknown system error ${code}`;
}

export function aborted(signal, _resource) {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

export const TextEncoder = globalThis.TextEncoder;
export const TextDecoder = globalThis.TextDecoder;

export default {
  TextDecoder,
  TextEncoder,
  aborted,
  callbackify,
  debug,
  debuglog,
  deprecate,
  format,
  formatWithOptions,
  getSystemErrorName,
  inherits,
  inspect,
  isArray,
  isBoolean,
  isDate,
  isDeepStrictEqual,
  isError,
  isFunction,
  isNull,
  isNullOrUndefined,
  isNumber,
  isObject,
  isPrimitive,
  isRegExp,
  isString,
  isSymbol,
  isUndefined,
  promisify,
  stripVTControlCharacters,
  styleText,
  toUSVString,
  types,
};
