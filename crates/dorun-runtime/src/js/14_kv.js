// env.<binding> of a `kv_namespaces` entry: a KVNamespace with workerd's surface (get,
// getWithMetadata, put, delete, list) over one SQLite file per namespace (kv_binding.rs).
// The checks and messages are those of Cloudflare's local implementation (workerd's KV
// client in front of Miniflare's KV server): a refused call rejects with
// `Error: KV <OP> failed: <status> <message>`, a wrong argument with a TypeError.

import { core, primordials } from "ext:core/mod.js";

const {
  ArrayBufferIsView,
  ArrayIsArray,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  DateNow,
  JSONParse,
  JSONStringify,
  MathFloor,
  MathTrunc,
  NumberIsNaN,
  ObjectPrototypeIsPrototypeOf,
  String,
  StringFromCharCode,
  StringPrototypeIndexOf,
  StringPrototypeIsWellFormed,
  Symbol,
  SymbolToStringTag,
  TypeError,
  Uint8Array,
} = primordials;

const { op_dorun_kvns_get, op_dorun_kvns_put, op_dorun_kvns_delete, op_dorun_kvns_list } =
  core.ops;

// Web classes as they were when the glue loaded, not as user code may have replaced them.
const { ArrayBuffer, Map, ReadableStream, Response, btoa } = globalThis;

const MAX_KEY_BYTES = 512;
const MAX_VALUE_BYTES = 25 * 1024 * 1024;
const MAX_METADATA_BYTES = 1024;
const MAX_LIST_KEYS = 1000;
const MAX_BULK_KEYS = 100;
const MIN_TTL_SECONDS = 60;
const MIN_CACHE_TTL_SECONDS = 30;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const kCreate = Symbol("KVNamespace");

/** An answer of the KV server that is not a success: what workerd rejects with. */
function failed(operation, status, message) {
  return new Error(`KV ${operation} failed: ${status} ${message}`);
}

function byteLength(text) {
  return encoder.encode(text).byteLength;
}

/** workerd's own checks of a key, before anything is sent (TypeErrors). */
function checkKeyName(key) {
  if (key === "") throw new TypeError("Key name cannot be empty.");
  if (key === "." || key === "..") throw new TypeError(`"${key}" is not allowed as a key name.`);
}

/** The KV server's checks of a key. */
function checkKey(operation, key) {
  checkKeyName(key);
  if (!StringPrototypeIsWellFormed(key)) {
    // workerd URL-encodes the key; a lone surrogate cannot be decoded again.
    throw failed(operation, 400, "Could not URL-decode key name");
  }
  checkKeyLength(operation, key);
}

function checkKeyLength(operation, key) {
  const length = byteLength(key);
  if (length > MAX_KEY_BYTES) {
    throw failed(
      operation,
      414,
      `UTF-8 encoded length of ${length} exceeds key length limit of ${MAX_KEY_BYTES}.`,
    );
  }
}

/** A key argument as workerd takes it: any value given (undefined too), as a string. */
function keyArgument(method, given, key, type) {
  if (given === 0) {
    throw new TypeError(
      `Failed to execute '${method}' on 'KvNamespace': parameter 1 is not of type '${type}'.`,
    );
  }
  return String(key);
}

/** A number option as workerd converts it: NaN is 0, fractions are cut, int32 only. */
function int32(value) {
  let number = Number(value);
  if (NumberIsNaN(number)) number = 0;
  if (number < -2147483648 || number > 2147483647) {
    throw new TypeError(
      "Value out of range. Must be between -2147483648 and 2147483647 (inclusive).",
    );
  }
  return MathTrunc(number);
}

const TYPES = ["text", "json", "arrayBuffer", "stream"];

/** `get`'s second argument: a type name or `{ type, cacheTtl }`. The type is checked only
 * once a value is found (a missing key is null whatever the type). */
function getOptions(operation, options) {
  let type = "text";
  let cacheTtl;
  if (typeof options === "object" && options !== null) {
    if (options.type !== undefined && options.type !== null) type = String(options.type);
    if (options.cacheTtl !== undefined) cacheTtl = int32(options.cacheTtl);
  } else if (options !== undefined && options !== null) {
    type = String(options);
  }
  if (cacheTtl !== undefined && cacheTtl < MIN_CACHE_TTL_SECONDS) {
    throw failed(
      operation,
      400,
      `Invalid cache_ttl of ${cacheTtl}. Cache TTL must be at least ${MIN_CACHE_TTL_SECONDS}.`,
    );
  }
  return { type, cacheTtl };
}

/** A stored value as the caller asked for it. */
function decode(bytes, type) {
  switch (type) {
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "arrayBuffer":
      return bytes.buffer.byteLength === bytes.byteLength
        ? bytes.buffer
        : bytes.slice().buffer;
    case "stream":
      return new Response(bytes).body;
    case "text":
      return decoder.decode(bytes);
    default:
      throw new TypeError(
        'Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".',
      );
  }
}

function parseMetadata(text) {
  return text === null || text === undefined ? null : JSONParse(text);
}

/** A value `put` accepts, as bytes: strings (and what converts to one: numbers,
 * booleans, null, undefined), ArrayBuffers, views, ReadableStreams. */
async function valueBytes(value) {
  if ((typeof value !== "object" || value === null) && typeof value !== "function") {
    return encoder.encode(String(value));
  }
  if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, value)) return new Uint8Array(value);
  if (ArrayBufferIsView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (ObjectPrototypeIsPrototypeOf(ReadableStream.prototype, value)) {
    return new Uint8Array(await new Response(value).arrayBuffer());
  }
  throw new TypeError(
    "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.",
  );
}

/** The cursor of the page that follows the key `last`: opaque to the caller. */
function cursorAfter(last) {
  let binary = "";
  for (const byte of encoder.encode(last)) binary += StringFromCharCode(byte);
  return btoa(binary);
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** The key a cursor continues after. Decoded leniently, as the KV server does: a cursor
 * that is not base64 still names some key to start after, it is never an error. */
function keyOfCursor(cursor) {
  const bytes = [];
  let bits = 0;
  let count = 0;
  for (const char of cursor) {
    let digit = StringPrototypeIndexOf(BASE64, char);
    if (char === "-") digit = 62;
    if (char === "_") digit = 63;
    if (digit < 0) continue;
    bits = (bits << 6) | digit;
    count += 6;
    if (count >= 8) {
      count -= 8;
      ArrayPrototypePush(bytes, (bits >> count) & 0xff);
    }
  }
  return decoder.decode(new Uint8Array(bytes));
}

class KVNamespace {
  #id;

  constructor(token, id) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#id = id;
  }

  get [SymbolToStringTag]() {
    return "KvNamespace";
  }

  async get(key, options) {
    if (ArrayIsArray(key)) return await this.#getBulk(key, options, false);
    key = keyArgument("get", arguments.length, key, "string or Array");
    const { type } = getOptions("GET", options);
    checkKey("GET", key);
    const [found] = await op_dorun_kvns_get(this.#id, [key]);
    return found === null ? null : decode(found.value, type);
  }

  async getWithMetadata(key, options) {
    if (ArrayIsArray(key)) return await this.#getBulk(key, options, true);
    key = keyArgument("getWithMetadata", arguments.length, key, "string or Array");
    const { type } = getOptions("GET", options);
    checkKey("GET", key);
    const [found] = await op_dorun_kvns_get(this.#id, [key]);
    if (found === null) return { value: null, metadata: null, cacheStatus: null };
    return {
      value: decode(found.value, type),
      metadata: parseMetadata(found.metadata),
      cacheStatus: null,
    };
  }

  async #getBulk(keys, options, withMetadata) {
    const { type } = getOptions("GET_BULK", options);
    if (type !== "text" && type !== "json") {
      throw failed("GET_BULK", 400, `"${type}" is not a valid type. Use "json" or "text"`);
    }
    if (keys.length > MAX_BULK_KEYS) {
      throw failed("GET_BULK", 400, `You can request a maximum of ${MAX_BULK_KEYS} keys`);
    }
    if (keys.length < 1) throw failed("GET_BULK", 400, "You must request a minimum of 1 key");
    keys = ArrayPrototypeMap(keys, (key) => String(key));
    for (const key of keys) {
      if (key === "") throw failed("GET_BULK", 400, "Key names must not be empty");
      if (key === "." || key === "..") {
        throw failed("GET_BULK", 400, `Illegal key name "${key}". Please use a different name.`);
      }
      checkKey("GET_BULK", key);
    }
    const found = await op_dorun_kvns_get(this.#id, keys);
    const result = new Map();
    let total = 0;
    for (let i = 0; i < keys.length; i++) {
      const entry = found[i];
      if (entry === null) {
        result.set(keys[i], null);
        continue;
      }
      total += entry.value.byteLength;
      let value;
      try {
        value = decode(entry.value, type);
      } catch {
        throw failed(
          "GET_BULK",
          400,
          `At least one of the requested keys corresponds to a non-${type} value`,
        );
      }
      result.set(
        keys[i],
        withMetadata ? { value, metadata: parseMetadata(entry.metadata) } : value,
      );
    }
    if (total > MAX_VALUE_BYTES) {
      throw failed("GET_BULK", 413, "Total size of request exceeds the limit of 25MB");
    }
    return result;
  }

  async put(key, value, options) {
    key = keyArgument("put", arguments.length, key, "string");
    if (arguments.length < 2) {
      throw new TypeError(
        "Failed to execute 'put' on 'KvNamespace': parameter 2 is not of type 'string or JsObject'.",
      );
    }
    const ttl = options?.expirationTtl === undefined ? undefined : int32(options.expirationTtl);
    const at = options?.expiration === undefined ? undefined : int32(options.expiration);
    checkKey("PUT", key);
    const now = MathFloor(DateNow() / 1000);
    let expiration = null;
    if (ttl !== undefined) {
      if (ttl <= 0) {
        throw failed(
          "PUT",
          400,
          `Invalid expiration_ttl of ${ttl}. Please specify integer greater than 0.`,
        );
      }
      if (ttl < MIN_TTL_SECONDS) {
        throw failed(
          "PUT",
          400,
          `Invalid expiration_ttl of ${ttl}. Expiration TTL must be at least ${MIN_TTL_SECONDS}.`,
        );
      }
      expiration = now + ttl;
    } else if (at !== undefined) {
      if (at <= now) {
        throw failed(
          "PUT",
          400,
          `Invalid expiration of ${at}. Please specify integer greater than the current number of seconds since the UNIX epoch.`,
        );
      }
      if (at < now + MIN_TTL_SECONDS) {
        throw failed(
          "PUT",
          400,
          `Invalid expiration of ${at}. Expiration times must be at least ${MIN_TTL_SECONDS} seconds in the future.`,
        );
      }
      expiration = at;
    }
    let metadata = null;
    if (options?.metadata !== undefined && options?.metadata !== null) {
      metadata = JSONStringify(options.metadata);
      // Metadata with no JSON form (a function) reaches the KV server as the text
      // "undefined", which it cannot parse.
      if (metadata === undefined) throw failed("PUT", 500, "Internal Server Error");
      const length = byteLength(metadata);
      if (length > MAX_METADATA_BYTES) {
        throw failed(
          "PUT",
          413,
          `Metadata length of ${length} exceeds limit of ${MAX_METADATA_BYTES}.`,
        );
      }
    }
    const bytes = await valueBytes(value);
    if (bytes.byteLength > MAX_VALUE_BYTES) {
      throw failed(
        "PUT",
        413,
        `Value length of ${bytes.byteLength} exceeds limit of ${MAX_VALUE_BYTES}.`,
      );
    }
    await op_dorun_kvns_put(this.#id, key, bytes, { expiration, metadata });
  }

  async delete(key) {
    key = keyArgument("delete", arguments.length, key, "string");
    checkKey("DELETE", key);
    await op_dorun_kvns_delete(this.#id, key);
  }

  async list(options) {
    const prefix = options?.prefix === undefined || options?.prefix === null
      ? ""
      : String(options.prefix);
    // A limit of 0 or less (or not a number) asks for the default page.
    let limit = options?.limit === undefined || options?.limit === null
      ? 0
      : int32(options.limit);
    if (limit <= 0) limit = MAX_LIST_KEYS;
    // workerd sends a list as a GET of the namespace: its failures say GET.
    if (limit > MAX_LIST_KEYS) {
      throw failed(
        "GET",
        400,
        `Invalid key_count_limit of ${limit}. Please specify an integer less than ${MAX_LIST_KEYS}.`,
      );
    }
    checkKeyLength("GET", prefix);
    const cursor = options?.cursor;
    const after = cursor === undefined || cursor === null || cursor === ""
      ? null
      : keyOfCursor(String(cursor));
    const page = await op_dorun_kvns_list(this.#id, { prefix, after, limit });
    const keys = ArrayPrototypeMap(page.keys, (key) => {
      const listed = { name: key.name };
      if (key.expiration !== null) listed.expiration = key.expiration;
      if (key.metadata !== null) listed.metadata = parseMetadata(key.metadata);
      return listed;
    });
    if (!page.more) return { keys, list_complete: true, cacheStatus: null };
    return {
      keys,
      list_complete: false,
      cursor: cursorAfter(keys[keys.length - 1].name),
      cacheStatus: null,
    };
  }
}

/** The binding object of namespace `id`. */
export function createKvNamespace(id) {
  return new KVNamespace(kCreate, id);
}
