// The Cache API as Workers have it: `caches.default`, `caches.open(name)`, and a Cache's
// put / match / delete, keyed by the request's full URL. What is stored, for how long, and
// how a match answers is decided in cache.rs; bodies are read whole.

import { core, primordials } from "ext:core/mod.js";
import "ext:dorun/03_websockets.js";

const {
  ArrayPrototypePush,
  ObjectDefineProperty,
  ObjectPrototypeIsPrototypeOf,
  String,
  Symbol,
  SymbolToStringTag,
  TypeError,
} = primordials;

const { op_dorun_cache_check, op_dorun_cache_put, op_dorun_cache_match, op_dorun_cache_delete } =
  core.ops;

// The Workers Response (03_websockets.js) and deno's Request, as they were at load.
const Response = globalThis.Response;
const Request = globalThis.Request;
const ResponsePrototype = Response.prototype;
const RequestPrototype = Request.prototype;

const kCreate = Symbol("Cache");

/** A Request for a cache key: Requests as they are, strings and URLs as a GET of that URL. */
function toRequest(input) {
  if (ObjectPrototypeIsPrototypeOf(RequestPrototype, input)) return input;
  return new Request(String(input));
}

function headerList(headers) {
  const list = [];
  for (const pair of headers) ArrayPrototypePush(list, pair);
  return list;
}

/** True when `request` may be looked up: a GET, or any method with `ignoreMethod`. */
function methodMatches(request, options) {
  return request.method === "GET" || (options != null && !!options.ignoreMethod);
}

class Cache {
  #name;

  constructor(token, name) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#name = name;
  }

  get [SymbolToStringTag]() {
    return "Cache";
  }

  async put(request, response) {
    request = toRequest(request);
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError("Cache.put() requires a Response as its second argument.");
    }
    if (response.webSocket) throw new TypeError("Cannot cache WebSocket upgrade response.");
    const headers = headerList(response.headers);
    op_dorun_cache_check(request.method, response.status, headers);
    if (response.bodyUsed) {
      throw new TypeError("Cannot cache a response whose body is already used.");
    }
    // Cloudflare's put consumes the response whether or not it is stored; callers that
    // still need it pass response.clone().
    const body = new Uint8Array(await response.arrayBuffer());
    await op_dorun_cache_put(this.#name, request.url, response.status, headers, body);
  }

  async match(request, options) {
    request = toRequest(request);
    if (!methodMatches(request, options)) return undefined;
    const reply = await op_dorun_cache_match(
      this.#name,
      request.url,
      request.headers.get("if-none-match"),
    );
    if (reply === null) return undefined;
    return new Response(reply.body ?? null, { status: reply.status, headers: reply.headers });
  }

  async delete(request, options) {
    request = toRequest(request);
    if (!methodMatches(request, options)) return false;
    return await op_dorun_cache_delete(this.#name, request.url);
  }
}

class CacheStorage {
  #default = new Cache(kCreate, "default");

  constructor(token) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
  }

  get [SymbolToStringTag]() {
    return "CacheStorage";
  }

  /** The zone's cache. */
  get default() {
    return this.#default;
  }

  /** A named cache, separate from `default` and from every other name. */
  async open(name) {
    return new Cache(kCreate, "named:" + String(name));
  }
}

const caches = new CacheStorage(kCreate);

for (const [name, value] of [
  ["caches", caches],
  ["Cache", Cache],
  ["CacheStorage", CacheStorage],
]) {
  ObjectDefineProperty(globalThis, name, {
    value,
    writable: true,
    enumerable: false,
    configurable: true,
  });
}
