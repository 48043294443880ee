// node:buffer — Buffer as a Uint8Array subclass, with Node's encodings (utf8, utf16le/ucs2,
// latin1/binary, ascii, base64, base64url, hex) and the read/write helpers for integers and
// floats. Not covered: transcode(), Buffer pooling, resolveObjectURL().

const INSPECT = Symbol.for("nodejs.util.inspect.custom");
const encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8");

export const kMaxLength = 2 ** 32;
export const kStringMaxLength = 2 ** 29 - 24;
export const constants = Object.freeze({ MAX_LENGTH: kMaxLength, MAX_STRING_LENGTH: kStringMaxLength });
export let INSPECT_MAX_BYTES = 50;

const ENCODINGS = {
  utf8: "utf8", "utf-8": "utf8",
  ucs2: "utf16le", "ucs-2": "utf16le", utf16le: "utf16le", "utf-16le": "utf16le",
  latin1: "latin1", binary: "latin1",
  ascii: "ascii",
  base64: "base64", base64url: "base64url",
  hex: "hex",
};

function normalizeEncoding(encoding) {
  if (encoding === undefined || encoding === null || encoding === "") return "utf8";
  const found = ENCODINGS[String(encoding).toLowerCase()];
  if (found === undefined) {
    const error = new TypeError(`Unknown encoding: ${encoding}`);
    error.code = "ERR_UNKNOWN_ENCODING";
    throw error;
  }
  return found;
}

// --- base64 -------------------------------------------------------------------------------
const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64_VALUES = new Int16Array(128).fill(-1);
for (let i = 0; i < 64; i++) {
  B64_VALUES[B64.charCodeAt(i)] = i;
  B64_VALUES[B64URL.charCodeAt(i)] = i;
}

function base64Encode(bytes, alphabet, pad) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + alphabet[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + (pad ? "==" : "");
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + (pad ? "=" : "");
  }
  return out;
}

/** Lenient like Node: skips characters outside both alphabets, stops at padding. */
function base64Decode(string) {
  const out = new Uint8Array(Math.ceil((string.length * 3) / 4));
  let length = 0;
  let bits = 0;
  let count = 0;
  for (let i = 0; i < string.length; i++) {
    const code = string.charCodeAt(i);
    if (code === 61) break; // "="
    const value = code < 128 ? B64_VALUES[code] : -1;
    if (value < 0) continue;
    bits = (bits << 6) | value;
    count += 6;
    if (count >= 8) {
      count -= 8;
      out[length++] = (bits >> count) & 255;
    }
  }
  return out.subarray(0, length);
}

function hexDecode(string) {
  const out = new Uint8Array(string.length >>> 1);
  let length = 0;
  for (; length < out.length; length++) {
    const byte = Number.parseInt(string.substr(length * 2, 2), 16);
    if (Number.isNaN(byte) || !/^[0-9a-fA-F]{2}$/.test(string.substr(length * 2, 2))) break;
    out[length] = byte;
  }
  return out.subarray(0, length);
}

function encode(string, encoding) {
  switch (normalizeEncoding(encoding)) {
    case "utf8":
      return encoder.encode(string);
    case "utf16le": {
      const out = new Uint8Array(string.length * 2);
      for (let i = 0; i < string.length; i++) {
        const code = string.charCodeAt(i);
        out[i * 2] = code & 255;
        out[i * 2 + 1] = code >> 8;
      }
      return out;
    }
    case "latin1":
    case "ascii": {
      const out = new Uint8Array(string.length);
      for (let i = 0; i < string.length; i++) out[i] = string.charCodeAt(i) & 255;
      return out;
    }
    case "base64":
    case "base64url":
      return base64Decode(string);
    case "hex":
      return hexDecode(string);
  }
}

function decode(bytes, encoding) {
  switch (normalizeEncoding(encoding)) {
    case "utf8":
      return utf8Decoder.decode(bytes);
    case "utf16le": {
      let out = "";
      for (let i = 0; i + 1 < bytes.length; i += 2) {
        out += String.fromCharCode(bytes[i] | (bytes[i + 1] << 8));
      }
      return out;
    }
    case "latin1":
      return chunkedFromCharCode(bytes, 0xff);
    case "ascii":
      return chunkedFromCharCode(bytes, 0x7f);
    case "base64":
      return base64Encode(bytes, B64, true);
    case "base64url":
      return base64Encode(bytes, B64URL, false);
    case "hex": {
      let out = "";
      for (let i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
      return out;
    }
  }
}

function chunkedFromCharCode(bytes, mask) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    const chunk = Array.from(bytes.subarray(i, i + 4096), (b) => b & mask);
    out += String.fromCharCode(...chunk);
  }
  return out;
}

function rangeError(name, value, range) {
  const error = new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${value}`);
  error.code = "ERR_OUT_OF_RANGE";
  return error;
}

function checkOffset(buffer, offset, size) {
  if (offset === undefined) offset = 0;
  if (!Number.isInteger(offset) || offset < 0 || offset + size > buffer.length) {
    throw rangeError("offset", offset, `>= 0 and <= ${buffer.length - size}`);
  }
  return offset;
}

export class Buffer extends Uint8Array {
  /** Deprecated in Node; kept because old packages still call it. */
  constructor(value, encodingOrOffset, length) {
    if (typeof value === "number") {
      super(value);
    } else if (value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
      super(value, encodingOrOffset ?? 0, length ?? value.byteLength - (encodingOrOffset ?? 0));
    } else {
      const bytes = toBytes(value, encodingOrOffset);
      super(bytes.length);
      this.set(bytes);
    }
  }

  static get [Symbol.species]() {
    return Buffer;
  }

  static from(value, encodingOrOffset, length) {
    if (value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
      const offset = encodingOrOffset ?? 0;
      return new Buffer(value, offset, length ?? value.byteLength - offset);
    }
    if (value === null || value === undefined) {
      throw new TypeError(
        "The first argument must be of type string or an instance of Buffer, ArrayBuffer, or Array or an Array-like Object. Received " + value,
      );
    }
    if (typeof value === "object" && !ArrayBuffer.isView(value) && !Array.isArray(value)) {
      const primitive = value.valueOf?.();
      if (primitive !== undefined && primitive !== value && (typeof primitive === "string" || typeof primitive === "object")) {
        return Buffer.from(primitive, encodingOrOffset, length);
      }
      if (typeof value[Symbol.toPrimitive] === "function") {
        return Buffer.from(value[Symbol.toPrimitive]("string"), encodingOrOffset);
      }
      if (value.type === "Buffer" && Array.isArray(value.data)) return Buffer.from(value.data);
    }
    return fromBytes(toBytes(value, encodingOrOffset));
  }

  static alloc(size, fill = undefined, encoding = undefined) {
    checkSize(size);
    const buffer = new Buffer(size);
    if (fill !== undefined && fill !== 0) buffer.fill(fill, 0, size, encoding);
    return buffer;
  }

  static allocUnsafe(size) {
    checkSize(size);
    return new Buffer(size);
  }

  static allocUnsafeSlow(size) {
    checkSize(size);
    return new Buffer(size);
  }

  static isBuffer(value) {
    return value instanceof Buffer;
  }

  static isEncoding(encoding) {
    return typeof encoding === "string" && encoding.toLowerCase() in ENCODINGS;
  }

  static byteLength(value, encoding = "utf8") {
    if (typeof value !== "string") {
      if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
        return value.byteLength;
      }
      throw new TypeError('The "string" argument must be of type string or an instance of Buffer or ArrayBuffer.');
    }
    return encode(value, encoding).length;
  }

  static concat(list, totalLength = undefined) {
    if (!Array.isArray(list)) throw new TypeError('The "list" argument must be an instance of Array.');
    const total = totalLength ?? list.reduce((sum, item) => sum + item.length, 0);
    const out = Buffer.alloc(total);
    let offset = 0;
    for (const item of list) {
      if (!(item instanceof Uint8Array)) throw new TypeError('The "list" argument must contain only Buffer or Uint8Array instances.');
      if (offset >= total) break;
      const part = item.subarray(0, total - offset);
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  static compare(a, b) {
    return compareBytes(a, b);
  }

  static copyBytesFrom(view, offset = 0, length = undefined) {
    const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    const size = view.BYTES_PER_ELEMENT ?? 1;
    const end = length === undefined ? view.length : offset + length;
    return fromBytes(bytes.slice(offset * size, end * size));
  }

  toString(encoding = "utf8", start = 0, end = this.length) {
    start = Math.max(0, start | 0);
    end = Math.min(this.length, end === undefined ? this.length : end | 0);
    if (end <= start) return "";
    return decode(new Uint8Array(this.buffer, this.byteOffset + start, end - start), encoding);
  }

  toLocaleString(encoding, start, end) {
    return this.toString(encoding, start, end);
  }

  toJSON() {
    return { type: "Buffer", data: Array.from(this) };
  }

  equals(other) {
    if (!(other instanceof Uint8Array)) throw new TypeError('The "otherBuffer" argument must be an instance of Buffer or Uint8Array.');
    return compareBytes(this, other) === 0;
  }

  compare(target, targetStart = 0, targetEnd = target.length, sourceStart = 0, sourceEnd = this.length) {
    return compareBytes(this.subarray(sourceStart, sourceEnd), target.subarray(targetStart, targetEnd));
  }

  copy(target, targetStart = 0, sourceStart = 0, sourceEnd = this.length) {
    const part = this.subarray(sourceStart, Math.min(sourceEnd, sourceStart + target.length - targetStart));
    target.set(part, targetStart);
    return part.length;
  }

  slice(start, end) {
    return this.subarray(start, end);
  }

  write(string, offset = 0, length = undefined, encoding = "utf8") {
    if (typeof offset === "string") {
      encoding = offset;
      offset = 0;
      length = undefined;
    } else if (typeof length === "string") {
      encoding = length;
      length = undefined;
    }
    const bytes = encode(string, encoding);
    let count = Math.min(bytes.length, this.length - offset, length ?? Infinity);
    if (normalizeEncoding(encoding) === "utf8") {
      // Never write part of a character.
      while (count > 0 && count < bytes.length && (bytes[count] & 0xc0) === 0x80) count--;
    }
    this.set(bytes.subarray(0, count), offset);
    return count;
  }

  fill(value, offset = 0, end = this.length, encoding = undefined) {
    if (typeof offset === "string") {
      encoding = offset;
      offset = 0;
      end = this.length;
    } else if (typeof end === "string") {
      encoding = end;
      end = this.length;
    }
    if (typeof value === "number" || typeof value === "boolean") {
      return Uint8Array.prototype.fill.call(this, Number(value) & 255, offset, end);
    }
    const bytes = typeof value === "string" ? encode(value, encoding) : toBytes(value);
    if (bytes.length === 0) return Uint8Array.prototype.fill.call(this, 0, offset, end);
    for (let i = offset, j = 0; i < end; i++, j = (j + 1) % bytes.length) this[i] = bytes[j];
    return this;
  }

  indexOf(value, byteOffset = 0, encoding = undefined) {
    return search(this, value, byteOffset, encoding, false);
  }

  lastIndexOf(value, byteOffset = undefined, encoding = undefined) {
    return search(this, value, byteOffset, encoding, true);
  }

  includes(value, byteOffset = 0, encoding = undefined) {
    return this.indexOf(value, byteOffset, encoding) !== -1;
  }

  swap16() {
    return swap(this, 2);
  }

  swap32() {
    return swap(this, 4);
  }

  swap64() {
    return swap(this, 8);
  }

  [INSPECT](_depth, _options) {
    const shown = Array.from(this.subarray(0, INSPECT_MAX_BYTES), (b) => b.toString(16).padStart(2, "0"));
    const more = this.length > INSPECT_MAX_BYTES ? ` ... ${this.length - INSPECT_MAX_BYTES} more bytes` : "";
    return `<Buffer${shown.length ? " " + shown.join(" ") : ""}${more}>`;
  }
}

// Integer and float accessors: readUInt8, readUint16LE, writeInt32BE, readBigUInt64LE, ...
function view(buffer) {
  return new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

const ACCESSORS = [
  ["UInt8", "Uint8", 1], ["Int8", "Int8", 1],
  ["UInt16", "Uint16", 2], ["Int16", "Int16", 2],
  ["UInt32", "Uint32", 4], ["Int32", "Int32", 4],
  ["Float", "Float32", 4], ["Double", "Float64", 8],
  ["BigUInt64", "BigUint64", 8], ["BigInt64", "BigInt64", 8],
];
for (const [name, dataViewName, size] of ACCESSORS) {
  const endians = size === 1 ? [""] : ["LE", "BE"];
  for (const endian of endians) {
    const little = endian === "LE";
    const read = function (offset = 0) {
      offset = checkOffset(this, offset, size);
      return view(this)[`get${dataViewName}`](offset, little);
    };
    const write = function (value, offset = 0) {
      offset = checkOffset(this, offset, size);
      view(this)[`set${dataViewName}`](offset, value, little);
      return offset + size;
    };
    const names = [name + endian];
    if (name.includes("UInt")) names.push(name.replace("UInt", "Uint") + endian);
    for (const alias of names) {
      Buffer.prototype[`read${alias}`] = read;
      Buffer.prototype[`write${alias}`] = write;
    }
  }
}

function variableRead(little, signed) {
  return function (offset, byteLength) {
    checkOffset(this, offset, byteLength);
    let value = 0;
    for (let i = 0; i < byteLength; i++) {
      const byte = this[offset + (little ? i : byteLength - 1 - i)];
      value += byte * 2 ** (8 * i);
    }
    if (signed && value >= 2 ** (8 * byteLength - 1)) value -= 2 ** (8 * byteLength);
    return value;
  };
}

function variableWrite(little) {
  return function (value, offset, byteLength) {
    checkOffset(this, offset, byteLength);
    let v = value < 0 ? value + 2 ** (8 * byteLength) : value;
    for (let i = 0; i < byteLength; i++) {
      this[offset + (little ? i : byteLength - 1 - i)] = v % 256;
      v = Math.floor(v / 256);
    }
    return offset + byteLength;
  };
}

for (const [suffix, little] of [["LE", true], ["BE", false]]) {
  Buffer.prototype[`readUIntLE`.replace("LE", suffix)] = variableRead(little, false);
  Buffer.prototype[`readUintLE`.replace("LE", suffix)] = variableRead(little, false);
  Buffer.prototype[`readIntLE`.replace("LE", suffix)] = variableRead(little, true);
  Buffer.prototype[`writeUIntLE`.replace("LE", suffix)] = variableWrite(little);
  Buffer.prototype[`writeUintLE`.replace("LE", suffix)] = variableWrite(little);
  Buffer.prototype[`writeIntLE`.replace("LE", suffix)] = variableWrite(little);
}

Buffer.poolSize = 8192;

function checkSize(size) {
  if (typeof size !== "number" || size < 0 || size > kMaxLength || Number.isNaN(size)) {
    throw rangeError("size", size, `>= 0 && <= ${kMaxLength}`);
  }
}

function fromBytes(bytes) {
  return new Buffer(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Bytes of a string, array, array-like or view (copied when they belong to the caller). */
function toBytes(value, encoding) {
  if (typeof value === "string") return encode(value, encoding);
  if (ArrayBuffer.isView(value)) {
    if (value instanceof Uint8Array) return new Uint8Array(value);
    // Node copies typed arrays element by element (truncated to bytes).
    return Uint8Array.from(value.length !== undefined ? value : new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
  }
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0));
  if (Array.isArray(value) || (value !== null && typeof value === "object" && typeof value.length === "number")) {
    return Uint8Array.from(value, (v) => Number(v) & 255);
  }
  throw new TypeError(
    `The first argument must be of type string or an instance of Buffer, ArrayBuffer, or Array or an Array-like Object. Received ${typeof value}`,
  );
}

function compareBytes(a, b) {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

function search(buffer, value, byteOffset, encoding, last) {
  if (typeof byteOffset === "string") {
    encoding = byteOffset;
    byteOffset = undefined;
  }
  let needle;
  if (typeof value === "number") needle = Uint8Array.of(value & 255);
  else if (typeof value === "string") needle = encode(value, encoding);
  else needle = value;
  const length = buffer.length;
  let from = byteOffset === undefined ? (last ? length : 0) : Number(byteOffset);
  if (from < 0) from += length;
  if (needle.length === 0) return Math.min(Math.max(from, 0), length);
  if (last) {
    for (let i = Math.min(from, length - needle.length); i >= 0; i--) {
      if (matchesAt(buffer, needle, i)) return i;
    }
  } else {
    for (let i = Math.max(from, 0); i <= length - needle.length; i++) {
      if (matchesAt(buffer, needle, i)) return i;
    }
  }
  return -1;
}

function matchesAt(buffer, needle, at) {
  for (let j = 0; j < needle.length; j++) if (buffer[at + j] !== needle[j]) return false;
  return true;
}

function swap(buffer, size) {
  if (buffer.length % size !== 0) {
    throw new RangeError(`Buffer size must be a multiple of ${size * 8}-bits`);
  }
  for (let i = 0; i < buffer.length; i += size) {
    for (let j = 0; j < size / 2; j++) {
      const t = buffer[i + j];
      buffer[i + j] = buffer[i + size - 1 - j];
      buffer[i + size - 1 - j] = t;
    }
  }
  return buffer;
}

export function isUtf8(input) {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(input);
    return true;
  } catch {
    return false;
  }
}

export function isAscii(input) {
  const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  return bytes.every((b) => b < 128);
}

export function transcode() {
  throw new Error("buffer.transcode is not implemented in dorun");
}

export const SlowBuffer = Buffer;
export const Blob = globalThis.Blob;
export const File = globalThis.File;
export const atob = globalThis.atob;
export const btoa = globalThis.btoa;

export default {
  Buffer,
  SlowBuffer,
  Blob,
  File,
  atob,
  btoa,
  constants,
  isAscii,
  isUtf8,
  kMaxLength,
  kStringMaxLength,
  transcode,
  INSPECT_MAX_BYTES,
};
