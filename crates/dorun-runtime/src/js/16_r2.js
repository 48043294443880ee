// env.<binding> of an `r2_buckets` entry: an R2Bucket with workerd's surface (head, get,
// put, delete, list, multipart uploads) over a directory of body files and a SQLite index
// (r2_binding.rs). Bodies stream in and out in chunks. Conditions, ranges, metadata and
// messages follow Cloudflare's local implementation (workerd's R2 client in front of
// Miniflare's R2 server): a refused call rejects with `Error: <op>: <text> (<code>)`.

import { core, primordials } from "ext:core/mod.js";
import {
  getReadableStreamResourceBacking,
  isReadableStreamDisturbed,
  isReadableStreamLocked,
  readableStreamDisturb,
  readableStreamForRid,
} from "ext:dorun/05_http.js";

const {
  ArrayBufferIsView,
  ArrayIsArray,
  ArrayPrototypeIncludes,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  JSONParse,
  JSONStringify,
  MathMax,
  MathMin,
  NumberIsInteger,
  NumberIsNaN,
  ObjectDefineProperty,
  ObjectEntries,
  ObjectGetOwnPropertyDescriptor,
  ObjectGetOwnPropertyNames,
  ObjectPrototypeIsPrototypeOf,
  String,
  StringPrototypeToLowerCase,
  Symbol,
  TypeError,
  RangeError,
  Uint8Array,
} = primordials;

const {
  op_dorun_r2_head,
  op_dorun_r2_writer,
  op_dorun_r2_write,
  op_dorun_r2_write_resource,
  op_dorun_r2_discard,
  op_dorun_r2_commit,
  op_dorun_r2_open,
  op_dorun_r2_delete,
  op_dorun_r2_list,
  op_dorun_r2_create_upload,
  op_dorun_r2_commit_part,
  op_dorun_r2_complete,
  op_dorun_r2_abort,
} = core.ops;

const { ArrayBuffer, Blob, Date, Error, Headers, ReadableStream, Response } = globalThis;

const kCreate = Symbol("R2");
const encoder = new TextEncoder();
const MAX_KEY_BYTES = 1024;
const MAX_METADATA_BYTES = 2048;
const MAX_LIST = 1000;
const CHUNK = 256 * 1024;

/** An error of the R2 server: `<op>: <text> (<code>)`. */
function r2Error(operation, text, code) {
  return new Error(`${operation}: ${text} (${code})`);
}

/** An op's failure ("text|code" for the server's own errors) as R2 words it. */
function opError(operation, error) {
  const message = error?.message ?? String(error);
  const bar = message.lastIndexOf("|");
  if (bar >= 0) return r2Error(operation, message.slice(0, bar), message.slice(bar + 1));
  return r2Error(operation, message, 10001);
}

/** A key argument as workerd takes it: any value given, as a string. */
function keyArgument(method, given, key, type) {
  if (given === 0) {
    throw new TypeError(
      `Failed to execute '${method}' on 'R2Bucket': parameter 1 is not of type '${type}'.`,
    );
  }
  return ArrayIsArray(key) ? key : wellFormed(String(key));
}

/** A key with lone surrogates as the R2 server ends up with them: each one's three
 * UTF-8-style bytes read back as three replacement characters. */
function wellFormed(key) {
  if (key.isWellFormed()) return key;
  let out = "";
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i);
    const next = key.charCodeAt(i + 1);
    if (code >= 0xd800 && code <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      out += key[i] + key[i + 1];
      i++;
    } else if (code >= 0xd800 && code <= 0xdfff) {
      out += "\ufffd\ufffd\ufffd";
    } else {
      out += key[i];
    }
  }
  return out;
}

/** The range of a whole body, as head() reports it. */
function whole(object) {
  return { offset: 0, length: object.size };
}

function checkKey(operation, key) {
  if (encoder.encode(key).byteLength > MAX_KEY_BYTES) {
    throw r2Error(operation, "The specified object name is not valid.", 10020);
  }
}

// --- metadata -----------------------------------------------------------------------------

const HTTP_FIELDS = [
  ["contentType", "content-type"],
  ["contentLanguage", "content-language"],
  ["contentDisposition", "content-disposition"],
  ["contentEncoding", "content-encoding"],
  ["cacheControl", "cache-control"],
  ["cacheExpiry", "expires"],
];

/** `httpMetadata` as given (an object or Headers) to what is stored. */
function httpMetadataOf(given) {
  const out = {};
  if (given === undefined || given === null) return out;
  if (ObjectPrototypeIsPrototypeOf(Headers.prototype, given)) {
    for (const [field, header] of HTTP_FIELDS) {
      const value = given.get(header);
      if (value === null) continue;
      if (field === "cacheExpiry") {
        // An Expires that is not a date means "already expired": the epoch.
        const at = new Date(value).getTime();
        out.cacheExpiry = NumberIsNaN(at) ? 0 : at;
      } else {
        out[field] = value;
      }
    }
    return out;
  }
  for (const [field] of HTTP_FIELDS) {
    const value = given[field];
    if (value === undefined || value === null) continue;
    if (field === "cacheExpiry") {
      out.cacheExpiry = ObjectPrototypeIsPrototypeOf(Date.prototype, value)
        ? value.getTime()
        : Number(value);
    } else {
      out[field] = String(value);
    }
  }
  return out;
}

/** Stored HTTP metadata as the API gives it back (`cacheExpiry` as a Date). */
function httpMetadataOut(stored) {
  const out = {};
  for (const [field] of HTTP_FIELDS) {
    if (stored[field] === undefined) continue;
    out[field] = field === "cacheExpiry" ? new Date(stored[field]) : stored[field];
  }
  return out;
}

function customMetadataOf(given) {
  const out = {};
  if (given === undefined || given === null) return out;
  for (const [name, value] of ObjectEntries(given)) out[name] = String(value);
  return out;
}

// --- objects --------------------------------------------------------------------------------

const HASHES = ["md5", "sha1", "sha256", "sha384", "sha512"];

function bytesOfHex(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return bytes.buffer;
}

function hexOf(buffer) {
  let hex = "";
  for (const byte of new Uint8Array(buffer)) hex += (byte < 16 ? "0" : "") + byte.toString(16);
  return hex;
}

class Checksums {
  constructor(token, hexes) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    for (const name of HASHES) {
      if (hexes[name] !== undefined) this[name] = bytesOfHex(hexes[name]);
    }
  }

  toJSON() {
    const out = {};
    for (const name of HASHES) if (this[name] !== undefined) out[name] = hexOf(this[name]);
    return out;
  }
}

/** An object's metadata (what head() and put() give). */
class HeadResult {
  constructor(token, object, range) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.checksums = new Checksums(kCreate, JSONParse(object.checksums));
    this.customMetadata = JSONParse(object.customMetadata);
    this.etag = object.etag;
    this.httpEtag = `"${object.etag}"`;
    this.httpMetadata = httpMetadataOut(JSONParse(object.httpMetadata));
    this.key = object.key;
    this.range = range;
    this.size = object.size;
    this.ssecKeyMd5 = undefined;
    this.storageClass = "";
    this.uploaded = new Date(object.uploaded);
    this.version = object.version;
  }

  writeHttpMetadata(headers) {
    for (const [field, header] of HTTP_FIELDS) {
      const value = this.httpMetadata[field];
      if (value === undefined) continue;
      headers.set(header, field === "cacheExpiry" ? value.toUTCString() : value);
    }
  }
}

/** An object with its body (what get() gives). */
class GetResult extends HeadResult {
  #response;

  constructor(token, object, range, body) {
    super(token, object, range);
    this.#response = new Response(body);
  }

  get body() {
    return this.#response.body;
  }

  get bodyUsed() {
    return this.#response.bodyUsed;
  }

  #unused() {
    if (this.#response.bodyUsed) {
      throw new TypeError(
        "Body has already been used. It can only be used once. Use tee() first if you need to read it twice.",
      );
    }
    return this.#response;
  }

  async arrayBuffer() {
    return await this.#unused().arrayBuffer();
  }

  async bytes() {
    return await this.#unused().bytes();
  }

  async text() {
    return await this.#unused().text();
  }

  async json() {
    return await this.#unused().json();
  }

  async blob() {
    const bytes = await this.#unused().arrayBuffer();
    return new Blob([bytes], { type: this.httpMetadata.contentType ?? "" });
  }
}

// workerd's API objects show their methods and accessors to for-in.
for (const Class of [HeadResult, GetResult]) {
  for (const name of ObjectGetOwnPropertyNames(Class.prototype)) {
    if (name === "constructor") continue;
    const descriptor = ObjectGetOwnPropertyDescriptor(Class.prototype, name);
    descriptor.enumerable = true;
    ObjectDefineProperty(Class.prototype, name, descriptor);
  }
}

/**
 * A body read from its file in chunks, as it is consumed: a stream backed by the body's
 * resource, so a Response that returns it untouched is sent from the file by the front
 * door without the chunks passing through JS.
 */
function bodyStream(rid) {
  return readableStreamForRid(rid);
}

// --- conditions and ranges -----------------------------------------------------------------

/** `onlyIf` (an object or Headers) as { etagMatches, etagDoesNotMatch, uploadedBefore,
 * uploadedAfter } with etags unquoted. */
function conditionsOf(onlyIf) {
  if (onlyIf === undefined || onlyIf === null) return null;
  const conditions = {};
  const etags = (value, header) => {
    if (value === undefined || value === null) return undefined;
    if (header) {
      const list = [];
      for (let part of String(value).split(",")) {
        part = part.trim();
        if (part === "*") {
          ArrayPrototypePush(list, "*");
          continue;
        }
        if (part.startsWith("W/")) part = part.slice(2);
        if (!(part.startsWith('"') && part.endsWith('"'))) {
          throw new Error(`Invalid ETag in ${header} header`);
        }
        ArrayPrototypePush(list, part.slice(1, -1));
      }
      return list;
    }
    const text = String(value);
    if (text.startsWith('"')) {
      throw new TypeError(`Conditional ETag should not be wrapped in quotes (${text}).`);
    }
    return [text];
  };
  if (ObjectPrototypeIsPrototypeOf(Headers.prototype, onlyIf)) {
    conditions.etagMatches = etags(onlyIf.get("if-match"), "if-match");
    conditions.etagDoesNotMatch = etags(onlyIf.get("if-none-match"), "if-none-match");
    // A date that does not parse is ignored, as HTTP says.
    const since = new Date(onlyIf.get("if-modified-since") ?? NaN).getTime();
    if (!NumberIsNaN(since)) conditions.uploadedAfter = since;
    const unmodified = new Date(onlyIf.get("if-unmodified-since") ?? NaN).getTime();
    if (!NumberIsNaN(unmodified)) conditions.uploadedBefore = unmodified;
    return conditions;
  }
  for (const field of ["etagMatches", "etagDoesNotMatch"]) {
    const value = onlyIf[field];
    if (value !== undefined && typeof value !== "string") {
      throw new TypeError(
        `Incorrect type for the '${field}' field on 'Conditional': the provided value is not of type 'string'.`,
      );
    }
    conditions[field] = etags(value);
  }
  for (const field of ["uploadedBefore", "uploadedAfter"]) {
    const value = onlyIf[field];
    if (value === undefined) continue;
    if (!ObjectPrototypeIsPrototypeOf(Date.prototype, value)) {
      throw new TypeError(
        `Incorrect type for the '${field}' field on 'Conditional': the provided value is not of type 'date'.`,
      );
    }
    conditions[field] = value.getTime();
  }
  return conditions;
}

/** Whether `object` (or a missing one, null) meets the conditions (HTTP's rules: an etag
 * condition that holds overrides the date condition paired with it). */
function conditionsHold(conditions, object) {
  if (conditions === null) return true;
  const { etagMatches, etagDoesNotMatch, uploadedBefore, uploadedAfter } = conditions;
  const matches = (list) =>
    object !== null && list.some((etag) => etag === "*" || etag === object.etag);
  if (object === null) {
    if (etagMatches !== undefined || uploadedAfter !== undefined) return false;
    return true;
  }
  const uploaded = MathMax(0, object.uploaded - (object.uploaded % 1000));
  if (etagMatches !== undefined) {
    if (!matches(etagMatches)) return false;
  } else if (uploadedBefore !== undefined && !(uploaded < uploadedBefore)) {
    return false;
  }
  if (etagDoesNotMatch !== undefined) {
    if (matches(etagDoesNotMatch)) return false;
  } else if (uploadedAfter !== undefined && !(uploaded > uploadedAfter)) {
    return false;
  }
  return true;
}

function checkRangeNumber(name, value) {
  if (value === undefined) return;
  if (!NumberIsInteger(value)) {
    throw new RangeError(
      `Invalid range. ${name} (${value}) must be an integer, not floating point.`,
    );
  }
  if (value < 0) {
    throw new RangeError(`Invalid range. ${name} (${value}) must be greater than or equal to 0.`);
  }
}

/** `range` (an object or Headers) checked, as { offset, length, suffix } or null. */
function rangeOf(range) {
  if (range === undefined || range === null) return null;
  if (ObjectPrototypeIsPrototypeOf(Headers.prototype, range)) {
    const header = range.get("range");
    if (header === null) return null;
    // One range of bytes; anything else is ignored and the whole body comes back.
    const match = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header.trim());
    if (match === null || (match[1] === "" && match[2] === "")) return null;
    if (match[1] === "") return { suffix: Number(match[2]), header: true };
    const offset = Number(match[1]);
    if (match[2] === "") return { offset, header: true };
    const end = Number(match[2]);
    if (end < offset) return null;
    return { offset, length: end - offset + 1, header: true };
  }
  const number = (value) => (typeof value === "string" ? Number(value) : value);
  const [offset, length, suffix] = [number(range.offset), number(range.length), number(range.suffix)];
  if (suffix !== undefined) {
    if (offset !== undefined) throw new TypeError("Suffix is incompatible with offset.");
    if (length !== undefined) throw new TypeError("Suffix is incompatible with length.");
    if (!NumberIsInteger(suffix)) {
      throw new RangeError(`Invalid suffix. Suffix (${suffix}) must be an integer, not floating point.`);
    }
    if (suffix < 0) {
      throw new RangeError(`Invalid suffix. Suffix (${suffix}) must be greater than or equal to 0.`);
    }
    return { suffix };
  }
  checkRangeNumber("Starting offset", offset);
  checkRangeNumber("Length", length);
  return { offset, length };
}

/** The bytes a range covers of a body of `size`, or null if it cannot be satisfied. */
function resolveRange(range, size) {
  if (range === null) return { offset: 0, length: size };
  if (range.suffix !== undefined) {
    if (range.suffix === 0 || size === 0) return range.header ? { offset: 0, length: size } : null;
    const length = MathMin(range.suffix, size);
    return { offset: size - length, length };
  }
  const offset = range.offset ?? 0;
  if (offset >= size || range.length === 0) {
    return range.header ? { offset: 0, length: size } : null;
  }
  const length = range.length === undefined ? size - offset : MathMin(range.length, size - offset);
  return { offset, length };
}

// --- writing bodies ------------------------------------------------------------------------

/** The chunks of a value `put` accepts; null for one it does not. */
function chunksOf(value) {
  if (value === null || value === undefined) return [];
  if (typeof value === "string") return [encoder.encode(value)];
  if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, value)) return [new Uint8Array(value)];
  if (ArrayBufferIsView(value)) {
    return [new Uint8Array(value.buffer, value.byteOffset, value.byteLength)];
  }
  if (ObjectPrototypeIsPrototypeOf(Blob.prototype, value)) return value.stream();
  if (ObjectPrototypeIsPrototypeOf(ReadableStream.prototype, value)) return value;
  return null;
}

/** Writes `chunks` (an array or a stream) to a new body; its writer id. */
async function writeBody(bucket, chunks, algorithm) {
  const writer = await op_dorun_r2_writer(bucket, algorithm);
  try {
    const backing = ArrayIsArray(chunks) ? undefined : getReadableStreamResourceBacking(chunks);
    if (ArrayIsArray(chunks)) {
      for (const chunk of chunks) await writeChunk(writer, chunk);
    } else if (backing && !isReadableStreamLocked(chunks) && !isReadableStreamDisturbed(chunks)) {
      // A request body (or another R2 body) handed over untouched: read in Rust.
      readableStreamDisturb(chunks);
      await op_dorun_r2_write_resource(writer, backing.rid);
    } else {
      const reader = chunks.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        await writeChunk(writer, value);
      }
    }
  } catch (error) {
    op_dorun_r2_discard(writer);
    throw error;
  }
  return writer;
}

async function writeChunk(writer, chunk) {
  const bytes = ArrayBufferIsView(chunk)
    ? new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)
    : new Uint8Array(chunk);
  for (let at = 0; at < bytes.byteLength; at += CHUNK) {
    await op_dorun_r2_write(writer, bytes.subarray(at, at + CHUNK));
  }
}

/** The one checksum `put` was given, as [algorithm, hex], or null. */
function expectedChecksum(options) {
  let found = null;
  for (const name of HASHES) {
    const value = options?.[name];
    if (value === undefined) continue;
    if (found !== null) throw new TypeError("You cannot specify multiple hashing algorithms.");
    const lengths = { md5: 16, sha1: 20, sha256: 32, sha384: 48, sha512: 64 };
    const label = name === "md5" ? "MD5" : `SHA-${name.slice(3)}`;
    let hex;
    if (typeof value === "string") {
      if (value.length !== lengths[name] * 2) {
        throw new TypeError(`${label} is ${lengths[name] * 2} hex characters, not ${value.length}`);
      }
      if (!/^[0-9a-fA-F]*$/.test(value)) throw new TypeError(`Provided ${label} wasn't a valid hex string`);
      hex = StringPrototypeToLowerCase(value);
    } else {
      const bytes = ArrayBufferIsView(value)
        ? new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
        : new Uint8Array(value);
      if (bytes.byteLength !== lengths[name]) {
        throw new TypeError(`${label} is ${lengths[name]} bytes, not ${bytes.byteLength}`);
      }
      hex = hexOf(bytes);
    }
    found = [name, hex];
  }
  return found;
}

// --- the bucket ------------------------------------------------------------------------------

const INCLUDES = ["httpMetadata", "customMetadata"];

class R2MultipartUpload {
  #bucket;

  constructor(token, bucket, key, uploadId) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#bucket = bucket;
    this.key = key;
    this.uploadId = uploadId;
  }

  async uploadPart(partNumber, value) {
    const number = Number(partNumber);
    if (!(number >= 1 && number <= 10000)) {
      throw new TypeError(
        `Part number must be between 1 and 10000 (inclusive). Actual value was: ${partNumber}`,
      );
    }
    const chunks = value === null || value === undefined ? null : chunksOf(value);
    if (chunks === null) {
      throw new TypeError(
        "Failed to execute 'uploadPart' on 'R2MultipartUpload': parameter 2 is not of type 'ReadableStream or ArrayBuffer or ArrayBufferView or string or Blob'.",
      );
    }
    const writer = await writeBody(this.#bucket, chunks, "");
    try {
      const etag = await op_dorun_r2_commit_part(writer, this.key, this.uploadId, MathMax(1, number | 0));
      return { partNumber: number | 0, etag };
    } catch (error) {
      throw opError("uploadPart", error);
    }
  }

  async abort() {
    try {
      await op_dorun_r2_abort(this.#bucket, this.key, this.uploadId);
    } catch (error) {
      throw opError("abortMultipartUpload", error);
    }
  }

  async complete(parts) {
    try {
      const object = await op_dorun_r2_complete(
        this.#bucket,
        this.key,
        this.uploadId,
        ArrayPrototypeMap(parts, (p) => ({ partNumber: Number(p.partNumber), etag: String(p.etag) })),
      );
      return new HeadResult(kCreate, object, undefined);
    } catch (error) {
      throw opError("completeMultipartUpload", error);
    }
  }
}

class R2Bucket {
  #name;

  constructor(token, name) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#name = name;
  }

  async head(key) {
    key = keyArgument("head", arguments.length, key, "string");
    checkKey("head", key);
    const object = await op_dorun_r2_head(this.#name, key);
    return object === null ? null : new HeadResult(kCreate, object, whole(object));
  }

  async get(key, options) {
    key = keyArgument("get", arguments.length, key, "string");
    const conditions = conditionsOf(options?.onlyIf);
    const range = rangeOf(options?.range);
    checkKey("get", key);
    const object = await op_dorun_r2_head(this.#name, key);
    if (object === null) return null;
    if (!conditionsHold(conditions, object)) return new HeadResult(kCreate, object, whole(object));
    const covered = resolveRange(range, object.size);
    if (covered === null) throw r2Error("get", "The requested range is not satisfiable", 10039);
    const reader = await op_dorun_r2_open(
      this.#name,
      key,
      object.version,
      covered.offset,
      covered.length,
    );
    if (reader === null) return null;
    return new GetResult(kCreate, object, covered, bodyStream(reader));
  }

  async put(key, value, options) {
    key = wellFormed(String(key));
    const chunks = chunksOf(value);
    if (chunks === null || arguments.length < 2) {
      throw new TypeError(
        "Failed to execute 'put' on 'R2Bucket': parameter 2 is not of type 'ReadableStream or ArrayBuffer or ArrayBufferView or string or Blob'.",
      );
    }
    const expected = expectedChecksum(options);
    const conditions = conditionsOf(options?.onlyIf);
    checkKey("put", key);
    const httpMetadata = httpMetadataOf(options?.httpMetadata);
    const customMetadata = customMetadataOf(options?.customMetadata);
    let metadataBytes = 0;
    for (const [name, value] of ObjectEntries(customMetadata)) {
      metadataBytes += encoder.encode(name).byteLength + encoder.encode(value).byteLength;
    }
    if (metadataBytes > MAX_METADATA_BYTES) {
      throw r2Error("put", "Your metadata headers exceed the maximum allowed metadata size.", 10012);
    }
    if (conditions !== null) {
      const current = await op_dorun_r2_head(this.#name, key);
      if (!conditionsHold(conditions, current)) return null;
    }
    const writer = await writeBody(this.#name, chunks, expected?.[0] ?? "");
    try {
      const object = await op_dorun_r2_commit(writer, {
        key,
        httpMetadata: JSONStringify(httpMetadata),
        customMetadata: JSONStringify(customMetadata),
        expected,
      });
      return new HeadResult(kCreate, object, undefined);
    } catch (error) {
      throw opError("put", error);
    }
  }

  async delete(keys) {
    keyArgument("delete", arguments.length, keys, "string or Array");
    const list = ArrayIsArray(keys)
      ? ArrayPrototypeMap(keys, (key) => String(key))
      : [String(keys)];
    for (const key of list) checkKey("delete", key);
    await op_dorun_r2_delete(this.#name, list);
  }

  async list(options) {
    const include = options?.include;
    if (include !== undefined && include !== null) {
      if (!ArrayIsArray(include)) {
        throw new TypeError(
          "Incorrect type for the 'include' field on 'ListOptions': the provided value is not of type 'Array'.",
        );
      }
      for (const value of include) {
        if (!ArrayPrototypeIncludes(INCLUDES, value)) {
          throw new RangeError(`Unsupported include value ${value}`);
        }
      }
    }
    let limit = MAX_LIST;
    // A negative limit asks for the default page.
    if (options?.limit !== undefined && !(Number(options.limit) < 0)) {
      limit = Number(options.limit);
      if (NumberIsNaN(limit) || limit < 1 || limit > MAX_LIST) {
        throw r2Error("list", "MaxKeys params must be positive integer <= 1000.", 10022);
      }
      limit = limit | 0;
      if (limit < 1) throw r2Error("list", "MaxKeys params must be positive integer <= 1000.", 10022);
    }
    const prefix = options?.prefix === undefined ? "" : String(options.prefix);
    const delimiter = options?.delimiter === undefined ? null : String(options.delimiter);
    let after = options?.startAfter === undefined ? null : String(options.startAfter);
    if (options?.cursor !== undefined && options?.cursor !== null && options.cursor !== "") {
      const fromCursor = cursorKey(String(options.cursor));
      if (after === null || fromCursor > after) after = fromCursor;
    }
    const keep = include ?? [];
    // Pages that carry metadata hold at most 100 objects.
    if (keep.length > 0) limit = MathMin(limit, 100);
    const page = await op_dorun_r2_list(this.#name, { prefix, after, limit, delimiter });
    const objects = ArrayPrototypeMap(page.objects, (object) => {
      const listed = new HeadResult(kCreate, object, undefined);
      if (!ArrayPrototypeIncludes(keep, "httpMetadata")) listed.httpMetadata = {};
      if (!ArrayPrototypeIncludes(keep, "customMetadata")) listed.customMetadata = {};
      return listed;
    });
    const result = { objects, delimitedPrefixes: page.prefixes };
    if (page.next !== null) {
      result.truncated = true;
      result.cursor = cursorOf(page.next);
    } else {
      result.truncated = false;
    }
    return result;
  }

  async createMultipartUpload(key, options) {
    key = keyArgument("createMultipartUpload", arguments.length, key, "string");
    checkKey("createMultipartUpload", key);
    const uploadId = await op_dorun_r2_create_upload(
      this.#name,
      key,
      JSONStringify(httpMetadataOf(options?.httpMetadata)),
      JSONStringify(customMetadataOf(options?.customMetadata)),
    );
    return new R2MultipartUpload(kCreate, this.#name, key, uploadId);
  }

  resumeMultipartUpload(key, uploadId) {
    key = keyArgument("resumeMultipartUpload", arguments.length, key, "string");
    return new R2MultipartUpload(kCreate, this.#name, key, String(uploadId));
  }
}

/** The cursor after `key`: base64 of its UTF-8 bytes. */
function cursorOf(key) {
  let binary = "";
  for (const byte of encoder.encode(key)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** The key a cursor continues after, decoded leniently (a bogus cursor names some key). */
function cursorKey(cursor) {
  const bytes = [];
  let bits = 0;
  let count = 0;
  for (const char of cursor) {
    const digit = BASE64.indexOf(char);
    if (digit < 0) continue;
    bits = ((bits << 6) | digit) & 0xffffff;
    count += 6;
    if (count >= 8) {
      count -= 8;
      ArrayPrototypePush(bytes, (bits >> count) & 0xff);
    }
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** The binding object of bucket `name`. */
export function createR2Bucket(name) {
  return new R2Bucket(kCreate, name);
}
