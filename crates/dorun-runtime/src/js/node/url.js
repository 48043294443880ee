// node:url — the WHATWG URL and URLSearchParams (the runtime's), fileURLToPath,
// pathToFileURL, urlToHttpOptions, domainToASCII/Unicode, and the legacy parse/format/resolve
// for ordinary URLs. Not covered: the legacy parser's quirks for malformed input
// (`slashesDenoteHost`, backslashes), Windows paths.

import querystring from "node:querystring";

export const URL = globalThis.URL;
export const URLSearchParams = globalThis.URLSearchParams;

function invalidArg(message) {
  const error = new TypeError(message);
  error.code = "ERR_INVALID_ARG_TYPE";
  return error;
}

export function fileURLToPath(url) {
  const parsed = typeof url === "string" ? new URL(url) : url;
  if (!(parsed instanceof URL)) throw invalidArg('The "path" argument must be of type string or an instance of URL');
  if (parsed.protocol !== "file:") {
    const error = new TypeError("The URL must be of scheme file");
    error.code = "ERR_INVALID_URL_SCHEME";
    throw error;
  }
  if (parsed.hostname !== "") {
    const error = new TypeError(`File URL host must be "localhost" or empty on linux`);
    error.code = "ERR_INVALID_FILE_URL_HOST";
    throw error;
  }
  if (/%2f/i.test(parsed.pathname)) {
    const error = new TypeError("File URL path must not include encoded / characters");
    error.code = "ERR_INVALID_FILE_URL_PATH";
    throw error;
  }
  return decodeURIComponent(parsed.pathname);
}

export function pathToFileURL(path) {
  let absolute = path.startsWith("/") ? path : `/${path}`;
  const url = new URL("file://");
  url.pathname = absolute.replace(/%/g, "%25").replace(/\\/g, "%5C").replace(/\n/g, "%0A").replace(/\r/g, "%0D").replace(/\t/g, "%09");
  return url;
}

export function urlToHttpOptions(url) {
  return {
    protocol: url.protocol,
    hostname: url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname,
    hash: url.hash,
    search: url.search,
    pathname: url.pathname,
    path: `${url.pathname || ""}${url.search || ""}`,
    href: url.href,
    ...(url.port !== "" ? { port: Number(url.port) } : {}),
    ...(url.username || url.password ? { auth: `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}` } : {}),
  };
}

export function domainToASCII(domain) {
  try {
    return new URL(`http://${domain}`).hostname;
  } catch {
    return "";
  }
}

export function domainToUnicode(domain) {
  return domain;
}

/** The legacy `url.parse()` result. */
export function Url() {
  this.protocol = null;
  this.slashes = null;
  this.auth = null;
  this.host = null;
  this.port = null;
  this.hostname = null;
  this.hash = null;
  this.search = null;
  this.query = null;
  this.pathname = null;
  this.path = null;
  this.href = null;
}

const PROTOCOL = /^([a-z0-9.+-]+:)/i;

export function parse(input, parseQueryString = false, _slashesDenoteHost = false) {
  if (typeof input !== "string") throw invalidArg('The "url" argument must be of type string');
  const result = new Url();
  let rest = input.trim();
  const hashIndex = rest.indexOf("#");
  if (hashIndex !== -1) {
    result.hash = rest.slice(hashIndex);
    rest = rest.slice(0, hashIndex);
  }
  const queryIndex = rest.indexOf("?");
  if (queryIndex !== -1) {
    result.search = rest.slice(queryIndex);
    result.query = rest.slice(queryIndex + 1);
    rest = rest.slice(0, queryIndex);
  }
  const protocol = PROTOCOL.exec(rest);
  if (protocol) {
    result.protocol = protocol[1].toLowerCase();
    rest = rest.slice(protocol[1].length);
  }
  if (rest.startsWith("//")) {
    result.slashes = true;
    rest = rest.slice(2);
    const end = rest.search(/[/]/);
    let authority = end === -1 ? rest : rest.slice(0, end);
    rest = end === -1 ? "" : rest.slice(end);
    const at = authority.lastIndexOf("@");
    if (at !== -1) {
      result.auth = decodeURIComponent(authority.slice(0, at));
      authority = authority.slice(at + 1);
    }
    const port = /:(\d*)$/.exec(authority);
    if (port) {
      if (port[1] !== "") result.port = port[1];
      authority = authority.slice(0, authority.length - port[0].length);
    }
    result.hostname = authority.toLowerCase();
    result.host = result.hostname + (result.port ? `:${result.port}` : "");
    if (rest === "" && result.protocol !== null) rest = "/";
  }
  result.pathname = rest === "" ? null : rest;
  if (parseQueryString) result.query = querystring.parse(result.query ?? "");
  result.path = `${result.pathname ?? ""}${result.search ?? ""}` || null;
  result.href = format(result);
  return result;
}

export function format(urlObject, _options = undefined) {
  if (typeof urlObject === "string") urlObject = parse(urlObject);
  if (urlObject instanceof URL) return urlObject.href;
  const protocol = urlObject.protocol ? (urlObject.protocol.endsWith(":") ? urlObject.protocol : `${urlObject.protocol}:`) : "";
  let host = "";
  if (urlObject.host) {
    host = urlObject.host;
  } else if (urlObject.hostname) {
    host = urlObject.hostname.includes(":") ? `[${urlObject.hostname}]` : urlObject.hostname;
    if (urlObject.port) host += `:${urlObject.port}`;
  }
  const auth = urlObject.auth ? `${encodeURIComponent(urlObject.auth).replace(/%3A/i, ":")}@` : "";
  let pathname = urlObject.pathname ?? "";
  let search = urlObject.search ?? "";
  if (!search && urlObject.query && typeof urlObject.query === "object") {
    const query = querystring.stringify(urlObject.query);
    if (query) search = `?${query}`;
  } else if (!search && typeof urlObject.query === "string" && urlObject.query) {
    search = `?${urlObject.query}`;
  }
  if (search && !search.startsWith("?")) search = `?${search}`;
  let hash = urlObject.hash ?? "";
  if (hash && !hash.startsWith("#")) hash = `#${hash}`;
  const slashes = urlObject.slashes || host !== "" || ["http:", "https:", "ftp:", "file:", "ws:", "wss:"].includes(protocol);
  if (slashes && host !== "" && pathname && !pathname.startsWith("/")) pathname = `/${pathname}`;
  return `${protocol}${slashes ? "//" : ""}${auth}${host}${pathname}${search}${hash}`;
}

export function resolve(from, to) {
  const resolved = new URL(to, new URL(from, "resolve://"));
  if (resolved.protocol === "resolve:") {
    const { pathname, search, hash } = resolved;
    return pathname + search + hash;
  }
  return resolved.toString();
}

export function resolveObject(from, to) {
  return parse(resolve(from, to));
}

export default {
  URL,
  URLSearchParams,
  Url,
  domainToASCII,
  domainToUnicode,
  fileURLToPath,
  format,
  parse,
  pathToFileURL,
  resolve,
  resolveObject,
  urlToHttpOptions,
};
