// node:string_decoder — decodes Buffers chunk by chunk without splitting multi-byte
// characters (utf8, utf16le) or base64 groups across chunks.

import { Buffer } from "node:buffer";

const NORMAL = { "utf-8": "utf8", ucs2: "utf16le", "ucs-2": "utf16le", "utf-16le": "utf16le", binary: "latin1" };

export class StringDecoder {
  constructor(encoding = "utf8") {
    const lower = String(encoding).toLowerCase();
    this.encoding = NORMAL[lower] ?? lower;
    if (!Buffer.isEncoding(this.encoding)) {
      const error = new TypeError(`Unknown encoding: ${encoding}`);
      error.code = "ERR_UNKNOWN_ENCODING";
      throw error;
    }
    if (this.encoding === "utf8" || this.encoding === "utf16le") {
      this.decoder = new TextDecoder(this.encoding === "utf8" ? "utf-8" : "utf-16le");
    }
    this.pending = new Uint8Array(0);
  }

  write(chunk) {
    if (typeof chunk === "string") return chunk;
    const bytes = chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk);
    if (this.decoder) return this.decoder.decode(bytes, { stream: true });
    if (this.encoding === "base64" || this.encoding === "base64url") {
      const all = concat(this.pending, bytes);
      const whole = all.length - (all.length % 3);
      this.pending = all.slice(whole);
      return Buffer.from(all.buffer, all.byteOffset, whole).toString(this.encoding);
    }
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString(this.encoding);
  }

  end(chunk = undefined) {
    let out = chunk === undefined ? "" : this.write(chunk);
    if (this.decoder) {
      out += this.decoder.decode();
    } else if (this.pending.length > 0) {
      out += Buffer.from(this.pending).toString(this.encoding);
      this.pending = new Uint8Array(0);
    }
    return out;
  }

  text(chunk, offset) {
    return this.write(chunk.subarray(offset));
  }
}

function concat(a, b) {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export default { StringDecoder };
