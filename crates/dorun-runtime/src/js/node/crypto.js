// node:crypto — hashes and HMACs (md5, sha1, sha224, sha256, sha384, sha512; computed
// natively), pbkdf2, random values, timingSafeEqual, and the Web Crypto API (webcrypto,
// subtle, getRandomValues). Not covered: ciphers (createCipheriv...), key objects and
// signatures (createSign, generateKeyPair...), Diffie-Hellman, scrypt, hkdf, X509; they
// throw "not implemented" errors. Use crypto.subtle for those.

import { Buffer } from "node:buffer";

const internals = globalThis[Symbol.for("dorun.node")];
const HASHES = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];
const ALIASES = { "sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512", "rsa-sha256": "sha256" };

function algorithmName(algorithm) {
  const lower = String(algorithm).toLowerCase();
  const name = ALIASES[lower] ?? lower;
  if (!HASHES.includes(name)) {
    const error = new Error(`Digest method not supported: ${algorithm}`);
    error.code = "ERR_CRYPTO_INVALID_DIGEST";
    throw error;
  }
  return name;
}

function toBytes(data, encoding) {
  if (typeof data === "string") return Buffer.from(data, encoding);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const error = new TypeError('The "data" argument must be of type string or an instance of Buffer, TypedArray, or DataView.');
  error.code = "ERR_INVALID_ARG_TYPE";
  throw error;
}

function output(bytes, encoding) {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return encoding === undefined || encoding === "buffer" ? buffer : buffer.toString(encoding);
}

/** Collects the data and digests it once (hashing is one native call). */
class Digestible {
  #chunks = [];
  #finished = false;

  _update(data, encoding) {
    if (this.#finished) {
      const error = new Error("Digest already called");
      error.code = "ERR_CRYPTO_HASH_FINALIZED";
      throw error;
    }
    this.#chunks.push(Uint8Array.from(toBytes(data, encoding)));
    return this;
  }

  _data() {
    if (this.#finished) {
      const error = new Error("Digest already called");
      error.code = "ERR_CRYPTO_HASH_FINALIZED";
      throw error;
    }
    this.#finished = true;
    return Buffer.concat(this.#chunks);
  }

  _chunks() {
    return this.#chunks;
  }
}

export class Hash extends Digestible {
  #algorithm;

  constructor(algorithm, _options = undefined) {
    super();
    this.#algorithm = algorithmName(algorithm);
  }

  update(data, encoding = undefined) {
    return this._update(data, encoding);
  }

  digest(encoding = undefined) {
    return output(internals.hash(this.#algorithm, this._data()), encoding);
  }

  copy() {
    const copy = new Hash(this.#algorithm);
    for (const chunk of this._chunks()) copy.update(chunk);
    return copy;
  }
}

export class Hmac extends Digestible {
  #algorithm;
  #key;

  constructor(algorithm, key, _options = undefined) {
    super();
    this.#algorithm = algorithmName(algorithm);
    this.#key = Uint8Array.from(toBytes(key?.export?.() ?? key));
  }

  update(data, encoding = undefined) {
    return this._update(data, encoding);
  }

  digest(encoding = undefined) {
    return output(internals.hmac(this.#algorithm, this.#key, this._data()), encoding);
  }
}

export function createHash(algorithm, options = undefined) {
  return new Hash(algorithm, options);
}

export function createHmac(algorithm, key, options = undefined) {
  return new Hmac(algorithm, key, options);
}

/** One-shot hash (Node 21.7+). */
export function hash(algorithm, data, outputEncoding = "hex") {
  return output(internals.hash(algorithmName(algorithm), toBytes(data)), outputEncoding);
}

export function getHashes() {
  return [...HASHES];
}

export function getCiphers() {
  return [];
}

export function getCurves() {
  return [];
}

export function pbkdf2Sync(password, salt, iterations, keylen, digest) {
  return output(internals.pbkdf2(algorithmName(digest), toBytes(password), toBytes(salt), iterations, keylen));
}

export function pbkdf2(password, salt, iterations, keylen, digest, callback) {
  let result;
  try {
    result = pbkdf2Sync(password, salt, iterations, keylen, digest);
  } catch (error) {
    queueMicrotask(() => callback(error));
    return;
  }
  queueMicrotask(() => callback(null, result));
}

export const webcrypto = globalThis.crypto;
export const subtle = globalThis.crypto.subtle;

export function getRandomValues(array) {
  return globalThis.crypto.getRandomValues(array);
}

export function randomUUID(_options = undefined) {
  return globalThis.crypto.randomUUID();
}

export function randomFillSync(buffer, offset = 0, size = undefined) {
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer) : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const end = size === undefined ? bytes.length : offset + size;
  for (let i = offset; i < end; i += 65536) {
    globalThis.crypto.getRandomValues(bytes.subarray(i, Math.min(end, i + 65536)));
  }
  return buffer;
}

export function randomFill(buffer, offset, size, callback) {
  if (typeof offset === "function") [callback, offset, size] = [offset, 0, undefined];
  else if (typeof size === "function") [callback, size] = [size, undefined];
  randomFillSync(buffer, offset, size);
  queueMicrotask(() => callback(null, buffer));
}

export function randomBytes(size, callback = undefined) {
  if (!Number.isInteger(size) || size < 0 || size > 2 ** 31 - 1) {
    const error = new RangeError(`The value of "size" is out of range. It must be >= 0 && <= 2147483647. Received ${size}`);
    error.code = "ERR_OUT_OF_RANGE";
    throw error;
  }
  const buffer = randomFillSync(Buffer.alloc(size));
  if (typeof callback === "function") {
    queueMicrotask(() => callback(null, buffer));
    return undefined;
  }
  return buffer;
}
export const pseudoRandomBytes = randomBytes;

/** A uniform random integer in [min, max), without modulo bias. */
export function randomInt(min, max = undefined, callback = undefined) {
  if (typeof max === "function" || max === undefined) [callback, max, min] = [max, min, 0];
  if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || max <= min || max - min > 2 ** 48) {
    const error = new RangeError(`The value of "max" is out of range. It must be greater than "min" (${min}) and the range at most 2^48. Received ${max}`);
    error.code = "ERR_OUT_OF_RANGE";
    throw error;
  }
  const range = max - min;
  const limit = 2 ** 48 - (2 ** 48 % range);
  let value;
  do {
    const bytes = randomFillSync(new Uint8Array(6));
    value = bytes.reduce((n, b) => n * 256 + b, 0);
  } while (value >= limit);
  const result = min + (value % range);
  if (typeof callback === "function") {
    queueMicrotask(() => callback(null, result));
    return undefined;
  }
  return result;
}

export function timingSafeEqual(a, b) {
  const x = toBytes(a);
  const y = toBytes(b);
  if (x.byteLength !== y.byteLength) {
    const error = new RangeError("Input buffers must have the same byte length");
    error.code = "ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH";
    throw error;
  }
  let difference = 0;
  for (let i = 0; i < x.length; i++) difference |= x[i] ^ y[i];
  return difference === 0;
}

function notImplemented(name) {
  return () => {
    const error = new Error(`crypto.${name} is not implemented in dorun; use crypto.subtle`);
    error.code = "ERR_METHOD_NOT_IMPLEMENTED";
    throw error;
  };
}

export const createCipheriv = notImplemented("createCipheriv");
export const createDecipheriv = notImplemented("createDecipheriv");
export const createSign = notImplemented("createSign");
export const createVerify = notImplemented("createVerify");
export const createPublicKey = notImplemented("createPublicKey");
export const createPrivateKey = notImplemented("createPrivateKey");
export const createSecretKey = notImplemented("createSecretKey");
export const generateKeyPair = notImplemented("generateKeyPair");
export const generateKeyPairSync = notImplemented("generateKeyPairSync");
export const createDiffieHellman = notImplemented("createDiffieHellman");
export const createECDH = notImplemented("createECDH");
export const scrypt = notImplemented("scrypt");
export const scryptSync = notImplemented("scryptSync");
export const hkdf = notImplemented("hkdf");
export const hkdfSync = notImplemented("hkdfSync");
export const sign = notImplemented("sign");
export const verify = notImplemented("verify");
export const constants = Object.freeze({});

export default {
  Hash,
  Hmac,
  constants,
  createCipheriv,
  createDecipheriv,
  createDiffieHellman,
  createECDH,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  createSecretKey,
  createSign,
  createVerify,
  generateKeyPair,
  generateKeyPairSync,
  getCiphers,
  getCurves,
  getHashes,
  getRandomValues,
  hash,
  hkdf,
  hkdfSync,
  pbkdf2,
  pbkdf2Sync,
  pseudoRandomBytes,
  randomBytes,
  randomFill,
  randomFillSync,
  randomInt,
  randomUUID,
  scrypt,
  scryptSync,
  sign,
  subtle,
  timingSafeEqual,
  verify,
  webcrypto,
};
