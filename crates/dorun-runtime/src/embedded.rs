//! The extensions' JavaScript, embedded in the binary by `build.rs`: [`embed`] rewrites an
//! extension's file lists (which deno_core records as build-time paths read at startup) to
//! the embedded sources, so a dorun binary runs without its source tree or Cargo registry.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use deno_core::{Extension, ExtensionFileSource, ExtensionFileSourceCode};

include!(concat!(env!("OUT_DIR"), "/embedded_js.rs"));

/// Embedded sources by path tail, shared by every isolate.
fn sources() -> &'static HashMap<&'static str, Arc<str>> {
    static SOURCES: OnceLock<HashMap<&'static str, Arc<str>>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        FILES
            .iter()
            .map(|(key, source)| (*key, Arc::from(*source)))
            .collect()
    })
}

/// The embedded source of build-time path `path`: the longest tail of it that was embedded.
pub fn lookup(path: &str) -> Option<Arc<str>> {
    let sources = sources();
    let mut rest = path;
    loop {
        if let Some(source) = sources.get(rest) {
            return Some(source.clone());
        }
        rest = &rest[rest.find('/')? + 1..];
    }
}

fn embed_files(files: Cow<'static, [ExtensionFileSource]>) -> Cow<'static, [ExtensionFileSource]> {
    #[allow(
        deprecated,
        reason = "deno_core's extension! still produces this variant"
    )]
    let on_disk = |file: &ExtensionFileSource| match &file.code {
        ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(path) => Some(*path),
        _ => None,
    };
    if !files.iter().any(|f| on_disk(f).is_some()) {
        return files;
    }
    let embedded = files
        .iter()
        .map(|file| match on_disk(file).and_then(lookup) {
            Some(code) => {
                ExtensionFileSource::new_computed(file.specifier, adjusted(file.specifier, code))
            }
            None => file.clone(),
        })
        .collect::<Vec<_>>();
    Cow::Owned(embedded)
}

/// The bad-port check of deno_fetch's `fetch()` (the WHATWG list: 1, 25, 5060, 6000, ...).
const BAD_PORT_CHECK: &str = r#"url.port !== "" && BAD_PORTS[url.port] === true"#;

/// `code` of `specifier` as dorun runs it: workerd's `fetch()` reaches any port (an app
/// monitoring an SMTP or X11 port does), so deno_fetch's browser-style bad-port check is
/// turned off.
fn adjusted(specifier: &str, code: Arc<str>) -> Arc<str> {
    if specifier.ends_with("26_fetch.js") && code.contains(BAD_PORT_CHECK) {
        return Arc::from(code.replace(BAD_PORT_CHECK, "false"));
    }
    code
}

/// `extension` with every JS file it loads from disk replaced by its embedded source.
pub fn embed(mut extension: Extension) -> Extension {
    extension.js_files = embed_files(std::mem::take(&mut extension.js_files));
    extension.esm_files = embed_files(std::mem::take(&mut extension.esm_files));
    extension.lazy_loaded_esm_files =
        embed_files(std::mem::take(&mut extension.lazy_loaded_esm_files));
    extension.lazy_loaded_js_files =
        embed_files(std::mem::take(&mut extension.lazy_loaded_js_files));
    extension
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_file_is_embedded() {
        for extension in [
            deno_webidl::deno_webidl::init(),
            deno_crypto::deno_crypto::init(None),
            deno_net::deno_net::init(None, None),
            crate::node_compat::dorun_node::init(),
        ] {
            let name = extension.name;
            let extension = embed(extension);
            for file in extension.esm_files.iter().chain(extension.js_files.iter()) {
                #[allow(deprecated, reason = "checking that none is left")]
                let on_disk = matches!(
                    file.code,
                    ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(_)
                );
                assert!(!on_disk, "{name}: {} is not embedded", file.specifier);
            }
        }
        assert!(lookup("/elsewhere/dorun-runtime/src/js/00_runtime.js").is_some());
        // deno_fetch still has the bad-port check this build turns off.
        let fetch = lookup("deno_fetch/26_fetch.js").or_else(|| {
            FILES
                .iter()
                .find(|(key, _)| key.ends_with("26_fetch.js"))
                .map(|(_, source)| Arc::from(*source))
        });
        let fetch = fetch.expect("26_fetch.js is embedded");
        assert!(
            fetch.contains(BAD_PORT_CHECK),
            "deno_fetch changed its bad-port check"
        );
        assert!(!adjusted("ext:deno_fetch/26_fetch.js", fetch).contains(BAD_PORT_CHECK));
        assert!(lookup("/nowhere/file.js").is_none());
    }
}
