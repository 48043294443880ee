// node:path — the POSIX flavour (Workers have no Windows paths). The working directory is
// "/" as on Cloudflare, so resolve() makes paths absolute from there. Not covered:
// path.win32 (undefined here).

export const sep = "/";
export const delimiter = ":";

function checkString(value, name) {
  if (typeof value !== "string") {
    const error = new TypeError(`The "${name}" argument must be of type string. Received ${typeof value}`);
    error.code = "ERR_INVALID_ARG_TYPE";
    throw error;
  }
}

/** Resolves "." and ".." segments; keeps leading ".." of relative paths. */
function normalizeSegments(path, absolute) {
  const out = [];
  for (const segment of path.split("/")) {
    if (segment === "" || segment === ".") continue;
    if (segment === "..") {
      if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
      else if (!absolute) out.push("..");
    } else {
      out.push(segment);
    }
  }
  return out.join("/");
}

export function normalize(path) {
  checkString(path, "path");
  if (path === "") return ".";
  const absolute = path.startsWith("/");
  const trailing = path.endsWith("/");
  let out = normalizeSegments(path, absolute);
  if (out === "" && !absolute) out = ".";
  if (out !== "" && trailing) out += "/";
  return (absolute ? "/" : "") + out;
}

export function join(...paths) {
  for (const p of paths) checkString(p, "path");
  const joined = paths.filter((p) => p !== "").join("/");
  return joined === "" ? "." : normalize(joined);
}

export function resolve(...paths) {
  let resolved = "";
  for (let i = paths.length - 1; i >= 0 && !resolved.startsWith("/"); i--) {
    checkString(paths[i], "paths[" + i + "]");
    if (paths[i] === "") continue;
    resolved = resolved === "" ? paths[i] : `${paths[i]}/${resolved}`;
  }
  if (!resolved.startsWith("/")) resolved = `/${resolved}`;
  return "/" + normalizeSegments(resolved, true);
}

export function isAbsolute(path) {
  checkString(path, "path");
  return path.startsWith("/");
}

export function relative(from, to) {
  checkString(from, "from");
  checkString(to, "to");
  const a = resolve(from).split("/").filter(Boolean);
  const b = resolve(to).split("/").filter(Boolean);
  let common = 0;
  while (common < a.length && common < b.length && a[common] === b[common]) common++;
  return [...Array(a.length - common).fill(".."), ...b.slice(common)].join("/");
}

export function dirname(path) {
  checkString(path, "path");
  if (path === "") return ".";
  const trimmed = path.replace(/\/+$/, "");
  if (trimmed === "") return "/";
  const index = trimmed.lastIndexOf("/");
  if (index === -1) return ".";
  if (index === 0) return "/";
  return trimmed.slice(0, index).replace(/\/+$/, "") || "/";
}

export function basename(path, suffix = undefined) {
  checkString(path, "path");
  const trimmed = path.replace(/\/+$/, "");
  const base = trimmed.slice(trimmed.lastIndexOf("/") + 1);
  if (suffix !== undefined && base !== suffix && base.endsWith(suffix)) {
    return base.slice(0, base.length - suffix.length);
  }
  return base;
}

export function extname(path) {
  checkString(path, "path");
  const base = basename(path);
  const index = base.lastIndexOf(".");
  if (index <= 0 || (index === 1 && base === "..")) return "";
  return base.slice(index);
}

export function parse(path) {
  checkString(path, "path");
  const root = path.startsWith("/") ? "/" : "";
  if (path === "" || path === "/") return { root, dir: root, base: "", ext: "", name: "" };
  const base = basename(path);
  const ext = extname(path);
  let dir = dirname(path);
  if (dir === "." && !path.startsWith(".")) dir = "";
  return { root, dir, base, ext, name: ext === "" ? base : base.slice(0, base.length - ext.length) };
}

export function format(pathObject) {
  if (pathObject === null || typeof pathObject !== "object") {
    throw new TypeError('The "pathObject" argument must be of type object');
  }
  const dir = pathObject.dir || pathObject.root || "";
  const base = pathObject.base || `${pathObject.name || ""}${pathObject.ext ? (pathObject.ext.startsWith(".") ? "" : ".") + pathObject.ext : ""}`;
  if (dir === "") return base;
  return dir === pathObject.root ? `${dir}${base}` : `${dir}/${base}`;
}

export function matchesGlob(_path, _pattern) {
  throw new Error("path.matchesGlob is not implemented in dorun");
}

export function toNamespacedPath(path) {
  return path;
}

const path = {
  sep,
  delimiter,
  normalize,
  join,
  resolve,
  isAbsolute,
  relative,
  dirname,
  basename,
  extname,
  parse,
  format,
  matchesGlob,
  toNamespacedPath,
};
path.posix = path;
path.win32 = undefined;
export const posix = path;
export const win32 = undefined;
export default path;
