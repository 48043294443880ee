//! Node.js built-in modules (`node:buffer`, `node:events`, ...) as Cloudflare Workers provide
//! them behind the `nodejs_compat` / `nodejs_als` compatibility flags.
//!
//! The modules are dorun's own compact ES modules (`src/js/node/*.js`), embedded in the binary
//! and handed to V8 by the module loader like user modules. Only what JavaScript cannot do
//! well is native: the hashes of `node:crypto` (`op_node_hash`, `op_node_hmac`,
//! `op_node_pbkdf2`). `AsyncLocalStorage` rides on V8's continuation-preserved embedder data,
//! shared with the Durable Object context through `js/00_runtime.js`.
//!
//! Modes, as wrangler and workerd decide them:
//! - `nodejs_als` alone: only `node:async_hooks`.
//! - `nodejs_compat` before 2024-09-23 ("v1"): `node:` specifiers only, no globals.
//! - `nodejs_compat` from 2024-09-23, or `nodejs_compat_v2` ("v2"): bare specifiers too
//!   (`import { Buffer } from "buffer"`), and the globals `Buffer`, `process`, `global`,
//!   `setImmediate`.
//!
//! `process.env` holds the Worker's text vars and secrets when `nodejs_compat_populate_process_env`
//! is on (the default with nodejs_compat from 2025-04-01).

use deno_core::op2;
use deno_error::JsErrorBox;
use hmac::{Hmac, Mac};
use sha2::Digest;

use crate::spec::WorkerSpec;

deno_core::extension!(
    dorun_node,
    deps = [dorun],
    ops = [op_node_hash, op_node_hmac, op_node_pbkdf2],
    esm_entry_point = "ext:dorun_node/internals.js",
    esm = [dir "src/js/node", "internals.js"],
);

/// Which Node.js compatibility a Worker's flags turn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeCompat {
    Off,
    /// `nodejs_als`: only `node:async_hooks`.
    AsyncLocalStorageOnly,
    /// `nodejs_compat` before 2024-09-23: `node:` specifiers, no globals.
    V1,
    /// `node:` and bare specifiers, and the Node globals.
    V2,
}

impl NodeCompat {
    pub fn of(spec: &WorkerSpec) -> Self {
        let has = |flag: &str| spec.compatibility_flags.iter().any(|f| f == flag);
        if has("nodejs_compat_v2") {
            NodeCompat::V2
        } else if has("nodejs_compat") {
            if spec.compat_flag("nodejs_compat_v2", "no_nodejs_compat_v2", "2024-09-23") {
                NodeCompat::V2
            } else {
                NodeCompat::V1
            }
        } else if has("nodejs_als") {
            NodeCompat::AsyncLocalStorageOnly
        } else {
            NodeCompat::Off
        }
    }
}

/// Built-in modules dorun provides: name (without `node:`) and source.
const MODULES: &[(&str, &str)] = &[
    ("assert", include_str!("js/node/assert.js")),
    ("assert/strict", include_str!("js/node/assert_strict.js")),
    ("async_hooks", include_str!("js/node/async_hooks.js")),
    ("buffer", include_str!("js/node/buffer.js")),
    ("crypto", include_str!("js/node/crypto.js")),
    ("diagnostics_channel", include_str!("js/node/diagnostics_channel.js")),
    ("events", include_str!("js/node/events.js")),
    ("path", include_str!("js/node/path.js")),
    ("path/posix", "export * from \"node:path\";\nimport path from \"node:path\";\nexport default path;\n"),
    ("process", include_str!("js/node/process.js")),
    ("querystring", include_str!("js/node/querystring.js")),
    ("stream", include_str!("js/node/stream.js")),
    ("stream/promises", "import stream from \"node:stream\";\nexport const { pipeline, finished } = stream.promises;\nexport default stream.promises;\n"),
    ("stream/web", include_str!("js/node/stream_web.js")),
    ("string_decoder", include_str!("js/node/string_decoder.js")),
    ("timers", include_str!("js/node/timers.js")),
    ("timers/promises", include_str!("js/node/timers_promises.js")),
    ("url", include_str!("js/node/url.js")),
    ("util", include_str!("js/node/util.js")),
    ("util/types", "import util from \"node:util\";\nexport const types = util.types;\nexport default util.types;\nexport const { isPromise, isDate, isRegExp, isMap, isSet, isTypedArray, isUint8Array, isArrayBuffer, isAnyArrayBuffer, isNativeError, isAsyncFunction, isGeneratorFunction } = util.types;\n"),
];

/// Internal module setting the Node globals (`Buffer`, `process`, ...) in V2 mode.
const GLOBALS_MODULE: &str = "internal/globals";
/// Internal module exporting `process.env`'s contents.
const ENV_MODULE: &str = "internal/process_env";

/// Every Node.js built-in module name, for the "not provided" and "needs the flag" errors.
const NODE_BUILTINS: &[&str] = &[
    "assert",
    "assert/strict",
    "async_hooks",
    "buffer",
    "child_process",
    "cluster",
    "console",
    "constants",
    "crypto",
    "dgram",
    "diagnostics_channel",
    "dns",
    "dns/promises",
    "domain",
    "events",
    "fs",
    "fs/promises",
    "http",
    "http2",
    "https",
    "inspector",
    "module",
    "net",
    "os",
    "path",
    "path/posix",
    "path/win32",
    "perf_hooks",
    "process",
    "punycode",
    "querystring",
    "readline",
    "readline/promises",
    "repl",
    "sqlite",
    "stream",
    "stream/consumers",
    "stream/promises",
    "stream/web",
    "string_decoder",
    "sys",
    "test",
    "timers",
    "timers/promises",
    "tls",
    "trace_events",
    "tty",
    "url",
    "util",
    "util/types",
    "v8",
    "vm",
    "wasi",
    "worker_threads",
    "zlib",
];

/// The module name of a Node built-in specifier (`node:fs` or `fs`), if it names one.
fn builtin_name(specifier: &str) -> Option<&str> {
    let name = specifier.strip_prefix("node:").unwrap_or(specifier);
    NODE_BUILTINS.contains(&name).then_some(name)
}

/// How a bare specifier (`buffer`, not `node:buffer`) resolves: to the `node:` URL when the
/// Worker has V2 compatibility, else `None` (it goes to `node_modules`, as with esbuild).
pub fn resolve_bare(specifier: &str, spec: &WorkerSpec) -> Option<url::Url> {
    if specifier.starts_with("node:") || builtin_name(specifier).is_none() {
        return None;
    }
    if NodeCompat::of(spec) == NodeCompat::V2 {
        url::Url::parse(&format!("node:{specifier}")).ok()
    } else {
        None
    }
}

/// The error for a bare built-in name that is not in `node_modules` either, or `None` if the
/// specifier is not a Node built-in.
pub fn missing_bare_error(specifier: &str) -> Option<String> {
    builtin_name(specifier)?;
    Some(format!(
        "The package \"{specifier}\" wasn't found on the file system but is built into node. \
         Add \"nodejs_compat\" to \"compatibility_flags\" in your wrangler config (with a \
         compatibility_date of 2024-09-23 or later for imports without the \"node:\" prefix)"
    ))
}

/// The source of `node:<name>`. `from_builtin` is true when a built-in module imports it
/// (allowed whatever the flags: `node:async_hooks` may use internals in ALS-only mode).
pub fn load(specifier: &url::Url, spec: &WorkerSpec, from_builtin: bool) -> Result<String, String> {
    let name = specifier.path();
    let mode = NodeCompat::of(spec);
    if name == ENV_MODULE {
        return Ok(process_env_source(spec, mode));
    }
    if name == GLOBALS_MODULE {
        return Ok(include_str!("js/node/globals.js").to_string());
    }
    let allowed = from_builtin
        || match mode {
            NodeCompat::Off => false,
            NodeCompat::AsyncLocalStorageOnly => name == "async_hooks",
            NodeCompat::V1 | NodeCompat::V2 => true,
        };
    if !allowed {
        let needed = if name == "async_hooks" {
            "\"nodejs_compat\" (or \"nodejs_als\")"
        } else {
            "\"nodejs_compat\""
        };
        return Err(format!(
            "cannot import \"{specifier}\": Node.js built-in modules need the {needed} \
             compatibility flag; add it to \"compatibility_flags\" in your wrangler config"
        ));
    }
    match MODULES.iter().find(|(n, _)| *n == name) {
        Some((_, source)) => Ok(source.to_string()),
        None => Err(format!(
            "No such module \"{specifier}\". dorun provides these Node.js built-ins: {}",
            MODULES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Whether `require("node:<name>")` can be served for this Worker: dorun has the module and
/// the compatibility flags allow it.
pub fn provides(name: &str, spec: &WorkerSpec) -> bool {
    let allowed = match NodeCompat::of(spec) {
        NodeCompat::Off => false,
        NodeCompat::AsyncLocalStorageOnly => name == "async_hooks",
        NodeCompat::V1 | NodeCompat::V2 => true,
    };
    allowed && MODULES.iter().any(|(n, _)| *n == name)
}

/// Lines to put first in the synthetic entry module: installs the Node globals in V2 mode.
pub fn entry_prelude(spec: &WorkerSpec) -> &'static str {
    if NodeCompat::of(spec) == NodeCompat::V2 {
        "import \"node:internal/globals\";\n"
    } else {
        ""
    }
}

/// `process.env`: the text vars and secrets when `nodejs_compat_populate_process_env` is on.
fn process_env_source(spec: &WorkerSpec, mode: NodeCompat) -> String {
    let populate = mode >= NodeCompat::V1
        && spec.compat_flag(
            "nodejs_compat_populate_process_env",
            "nodejs_compat_do_not_populate_process_env",
            "2025-04-01",
        );
    let mut env = serde_json::Map::new();
    if populate {
        for (key, value) in &spec.vars {
            if let serde_json::Value::String(text) = value {
                env.insert(key.clone(), serde_json::Value::String(text.clone()));
            }
        }
    }
    format!("export default {};\n", serde_json::Value::Object(env))
}

fn unknown_algorithm(algorithm: &str) -> JsErrorBox {
    JsErrorBox::type_error(format!("Digest method not supported: {algorithm}"))
}

/// The digest of `data` with `algorithm` (md5, sha1, sha256, sha384, sha512, sha224).
#[op2]
#[buffer]
pub fn op_node_hash(
    #[string] algorithm: &str,
    #[anybuffer] data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    Ok(match algorithm {
        "md5" => md5::Md5::digest(data).to_vec(),
        "sha1" => sha1::Sha1::digest(data).to_vec(),
        "sha224" => sha2::Sha224::digest(data).to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha384" => sha2::Sha384::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        _ => return Err(unknown_algorithm(algorithm)),
    })
}

fn hmac_of<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The HMAC of `data` under `key` with `algorithm`.
#[op2]
#[buffer]
pub fn op_node_hmac(
    #[string] algorithm: &str,
    #[anybuffer] key: &[u8],
    #[anybuffer] data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    Ok(match algorithm {
        "md5" => hmac_of::<Hmac<md5::Md5>>(key, data),
        "sha1" => hmac_of::<Hmac<sha1::Sha1>>(key, data),
        "sha224" => hmac_of::<Hmac<sha2::Sha224>>(key, data),
        "sha256" => hmac_of::<Hmac<sha2::Sha256>>(key, data),
        "sha384" => hmac_of::<Hmac<sha2::Sha384>>(key, data),
        "sha512" => hmac_of::<Hmac<sha2::Sha512>>(key, data),
        _ => return Err(unknown_algorithm(algorithm)),
    })
}

/// PBKDF2 (RFC 8018) with HMAC-`algorithm`.
#[op2]
#[buffer]
pub fn op_node_pbkdf2(
    #[string] algorithm: &str,
    #[anybuffer] password: &[u8],
    #[anybuffer] salt: &[u8],
    iterations: u32,
    length: u32,
) -> Result<Vec<u8>, JsErrorBox> {
    pbkdf2(algorithm, password, salt, iterations, length as usize)
}

fn pbkdf2(
    algorithm: &str,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    length: usize,
) -> Result<Vec<u8>, JsErrorBox> {
    fn derive<M: Mac + hmac::digest::KeyInit + Clone>(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        length: usize,
    ) -> Vec<u8> {
        let prf = <M as hmac::digest::KeyInit>::new_from_slice(password).expect("any key");
        let mut out = Vec::with_capacity(length);
        let mut block = 1u32;
        while out.len() < length {
            let mut mac = prf.clone();
            mac.update(salt);
            mac.update(&block.to_be_bytes());
            let mut u = mac.finalize().into_bytes().to_vec();
            let mut t = u.clone();
            for _ in 1..iterations {
                let mut mac = prf.clone();
                mac.update(&u);
                u = mac.finalize().into_bytes().to_vec();
                t.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
            }
            out.extend_from_slice(&t);
            block += 1;
        }
        out.truncate(length);
        out
    }
    if iterations == 0 {
        return Err(JsErrorBox::range_error(
            "pbkdf2: iterations must be at least 1",
        ));
    }
    Ok(match algorithm {
        "md5" => derive::<Hmac<md5::Md5>>(password, salt, iterations, length),
        "sha1" => derive::<Hmac<sha1::Sha1>>(password, salt, iterations, length),
        "sha224" => derive::<Hmac<sha2::Sha224>>(password, salt, iterations, length),
        "sha256" => derive::<Hmac<sha2::Sha256>>(password, salt, iterations, length),
        "sha384" => derive::<Hmac<sha2::Sha384>>(password, salt, iterations, length),
        "sha512" => derive::<Hmac<sha2::Sha512>>(password, salt, iterations, length),
        _ => return Err(unknown_algorithm(algorithm)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc6070_vector() {
        let out = pbkdf2("sha1", b"password", b"salt", 2, 20).unwrap();
        assert_eq!(hex(&out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
    }

    #[test]
    fn bare_builtin_needs_v2() {
        assert_eq!(builtin_name("node:fs"), Some("fs"));
        assert_eq!(builtin_name("lodash"), None);
        assert!(missing_bare_error("buffer")
            .unwrap()
            .contains("nodejs_compat"));
    }
}
