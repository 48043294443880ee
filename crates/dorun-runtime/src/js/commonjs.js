// The CommonJS runtime, served by the loader as `dorun:commonjs` (see commonjs.rs).
//
// Registration modules call `define` with a CommonJS file's function and the table of what
// each literal `require` in it reaches; facades call `load`. A file's function runs once, on
// its first `require` or `load`; a `require` that reaches a file still running returns its
// partial `module.exports`, as in Node.

const ObjectCreate = Object.create;
const ObjectDefineProperty = Object.defineProperty;
const ObjectKeys = Object.keys;
const ObjectHasOwn = Object.hasOwn;
const ReflectApply = Reflect.apply;
const SafeMap = Map;
const SafeWeakMap = WeakMap;
const MapPrototypeGet = Map.prototype.get;
const MapPrototypeSet = Map.prototype.set;
const MapPrototypeDelete = Map.prototype.delete;
const WeakMapPrototypeGet = WeakMap.prototype.get;
const WeakMapPrototypeSet = WeakMap.prototype.set;
const StringPrototypeLastIndexOf = String.prototype.lastIndexOf;
const StringPrototypeSlice = String.prototype.slice;
const ErrorConstructor = Error;
const TypeErrorConstructor = TypeError;

/** url -> { filename, requires, factory } */
const definitions = new SafeMap();
/** url -> the `module` object of a file that ran or is running */
const records = new SafeMap();
/** filename -> module, what `require.cache` shows */
const cache = ObjectCreate(null);
/** ES module namespace -> the object `require` returns for it */
const interopObjects = new SafeWeakMap();

export function define(url, filename, requires, factory) {
  ReflectApply(MapPrototypeSet, definitions, [url, { filename, requires, factory }]);
}

/** Runs the file at `url` unless it ran already; returns its `module.exports`. */
export function load(url) {
  return instantiate(url, null).exports;
}

function instantiate(url, parent) {
  const existing = ReflectApply(MapPrototypeGet, records, [url]);
  if (existing !== undefined) return existing;
  const definition = ReflectApply(MapPrototypeGet, definitions, [url]);
  if (definition === undefined) {
    throw new ErrorConstructor(`dorun: the CommonJS module ${url} was not loaded`);
  }
  const filename = definition.filename;
  const slash = ReflectApply(StringPrototypeLastIndexOf, filename, ["/"]);
  const dirname = slash > 0 ? ReflectApply(StringPrototypeSlice, filename, [0, slash]) : "/";
  const module = {
    id: filename,
    path: dirname,
    filename,
    exports: {},
    loaded: false,
    parent,
    children: [],
    paths: [],
  };
  module.require = makeRequire(module, definition.requires);
  ReflectApply(MapPrototypeSet, records, [url, module]);
  cache[filename] = module;
  let ran = false;
  try {
    ReflectApply(definition.factory, module.exports, [
      module.exports,
      module.require,
      module,
      filename,
      dirname,
    ]);
    ran = true;
  } finally {
    if (!ran) {
      // As in Node: a file that threw is run again by the next require.
      ReflectApply(MapPrototypeDelete, records, [url]);
      delete cache[filename];
    }
  }
  module.loaded = true;
  return module;
}

function notFound(specifier, filename, reason) {
  const error = new ErrorConstructor(
    `Cannot find module '${specifier}' required from ${filename}: ${reason}`,
  );
  error.code = "MODULE_NOT_FOUND";
  return error;
}

function makeRequire(module, requires) {
  const lookup = (specifier, what) => {
    if (typeof specifier !== "string") {
      throw new TypeErrorConstructor(
        `${what}() expects a string, got ${typeof specifier} (in ${module.filename})`,
      );
    }
    if (!ObjectHasOwn(requires, specifier)) {
      throw notFound(
        specifier,
        module.filename,
        "dorun loads the modules a file requires before it runs, and finds only " +
          "require() calls with a string literal; this one was not among them",
      );
    }
    const target = requires[specifier];
    if (target.kind === "missing") {
      throw notFound(specifier, module.filename, target.reason);
    }
    return target;
  };
  const require = function require(specifier) {
    const target = lookup(specifier, "require");
    switch (target.kind) {
      case "commonjs": {
        const child = instantiate(target.url, module);
        module.children[module.children.length] = child;
        return child.exports;
      }
      case "module":
        return interopObject(target.namespace);
      case "value":
        return target.namespace.default;
      case "builtin":
        return ObjectHasOwn(target.namespace, "default")
          ? target.namespace.default
          : interopObject(target.namespace);
      default:
        throw notFound(
          specifier,
          module.filename,
          "it was only passed to require.resolve(), so dorun did not load it",
        );
    }
  };
  require.resolve = function resolve(specifier) {
    return lookup(specifier, "require.resolve").path;
  };
  require.resolve.paths = () => null;
  require.cache = cache;
  require.main = undefined;
  return require;
}

/** What `require` of an ES module returns: its exports plus `__esModule`, as esbuild does. */
function interopObject(namespace) {
  let object = ReflectApply(WeakMapPrototypeGet, interopObjects, [namespace]);
  if (object !== undefined) return object;
  object = ObjectCreate(null);
  ObjectDefineProperty(object, "__esModule", { value: true });
  const names = ObjectKeys(namespace);
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    ObjectDefineProperty(object, name, {
      enumerable: true,
      get: () => namespace[name],
    });
  }
  ReflectApply(WeakMapPrototypeSet, interopObjects, [namespace, object]);
  return object;
}
