// node:querystring — parse/decode and stringify/encode with custom separators and maxKeys;
// repeated keys become arrays, as in Node. Percent-decoding of malformed sequences keeps
// the text as is (Node's unescapeBuffer fallback is not reproduced byte for byte).

export function unescape(string) {
  try {
    return decodeURIComponent(string);
  } catch {
    return string.replace(/%([0-9a-fA-F]{2})/g, (match, hex) => {
      const code = Number.parseInt(hex, 16);
      return code < 128 ? String.fromCharCode(code) : match;
    });
  }
}

export function escape(string) {
  return encodeURIComponent(string).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function parse(string, sep = "&", eq = "=", options = {}) {
  const result = Object.create(null);
  if (typeof string !== "string" || string.length === 0) return result;
  const decode = options?.decodeURIComponent ?? unescape;
  const maxKeys = options?.maxKeys ?? 1000;
  let parts = string.split(sep || "&");
  if (maxKeys > 0) parts = parts.slice(0, maxKeys);
  for (const part of parts) {
    if (part === "") continue;
    const index = part.indexOf(eq || "=");
    const rawKey = index >= 0 ? part.slice(0, index) : part;
    const rawValue = index >= 0 ? part.slice(index + (eq || "=").length) : "";
    const key = decode(rawKey.replace(/\+/g, " "));
    const value = decode(rawValue.replace(/\+/g, " "));
    if (!(key in result)) result[key] = value;
    else if (Array.isArray(result[key])) result[key].push(value);
    else result[key] = [result[key], value];
  }
  return result;
}

function stringifyPrimitive(value) {
  if (typeof value === "string") return value;
  if ((typeof value === "number" && Number.isFinite(value)) || typeof value === "bigint") return String(value);
  if (typeof value === "boolean") return value ? "true" : "false";
  return "";
}

export function stringify(object, sep = "&", eq = "=", options = {}) {
  if (object === null || typeof object !== "object") return "";
  const encode = options?.encodeURIComponent ?? escape;
  const parts = [];
  for (const key of Object.keys(object)) {
    const value = object[key];
    const encodedKey = encode(stringifyPrimitive(key)) + (eq || "=");
    if (Array.isArray(value)) {
      for (const item of value) parts.push(encodedKey + encode(stringifyPrimitive(item)));
    } else {
      parts.push(encodedKey + encode(stringifyPrimitive(value)));
    }
  }
  return parts.join(sep || "&");
}

export const decode = parse;
export const encode = stringify;
export const unescapeBuffer = (string) => new TextEncoder().encode(unescape(string));

export default { decode, encode, escape, parse, stringify, unescape, unescapeBuffer };
