//! Embeds every extension's JavaScript in the binary.
//!
//! deno_core 0.413's `extension!` records `esm = [...]` files by their absolute build-time
//! path and reads them from disk when an isolate starts (the design assumes a startup
//! snapshot). A dorun binary must run anywhere, so this script lists the JS of dorun's own
//! glue (`src/js`) and of the deno ext crates it uses, found in the same Cargo registry the
//! build compiles them from, and includes each with `include_str!`. At startup
//! (`embedded.rs`) each extension's file list is rewritten to the embedded sources, matched
//! by the path's tail (`<crate dir>/<file>`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The deno ext crates whose JS the isolates load.
const DENO_CRATES: &[&str] = &[
    "deno_webidl",
    "deno_web",
    "deno_crypto",
    "deno_fetch",
    "deno_net",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let lock = manifest.join("../../Cargo.lock");
    println!("cargo:rerun-if-changed=src/js");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    let mut files = Vec::new();
    let own = manifest.file_name().unwrap().to_string_lossy().into_owned();
    collect(
        &manifest.join("src/js"),
        &format!("{own}/src/js"),
        &mut files,
    );
    let lock = std::fs::read_to_string(&lock).expect("Cargo.lock beside the workspace");
    let registries = registry_roots();
    for name in DENO_CRATES {
        let version =
            locked_version(&lock, name).unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
        let dir_name = format!("{name}-{version}");
        let dir = registries
            .iter()
            .map(|root| root.join(&dir_name))
            .find(|dir| dir.join("Cargo.toml").is_file())
            .unwrap_or_else(|| {
                panic!(
                    "cannot find the sources of {dir_name} under {registries:?} (set CARGO_HOME)"
                )
            });
        collect(&dir, &dir_name, &mut files);
    }
    let mut out = String::from("/// (path tail, source) of every embedded JS file.\npub static FILES: &[(&str, &str)] = &[\n");
    for (key, path) in &files {
        writeln!(
            out,
            "    ({key:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let target = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_js.rs");
    std::fs::write(target, out).expect("write embedded_js.rs");
}

/// `<registry>/src/<index>/` directories of the Cargo home.
fn registry_roots() -> Vec<PathBuf> {
    let mut homes = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        homes.push(PathBuf::from(home));
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        // <home>/bin/cargo
        if let Some(home) = Path::new(&cargo).parent().and_then(Path::parent) {
            homes.push(home.to_path_buf());
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        homes.push(PathBuf::from(home).join(".cargo"));
    }
    let mut roots = Vec::new();
    for home in homes {
        let Ok(entries) = std::fs::read_dir(home.join("registry/src")) else {
            continue;
        };
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    roots
}

fn locked_version(lock: &str, name: &str) -> Option<String> {
    let marker = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&marker)? + marker.len();
    let end = lock[start..].find('"')?;
    Some(lock[start..start + end].to_string())
}

/// Every `.js` file under `dir` (tests and benches left out), keyed `<prefix>/<relative>`.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "tests" | "testdata" | "benches" | "target" | "node_modules"
            ) {
                collect(&path, &format!("{prefix}/{name}"), out);
            }
        } else if name.ends_with(".js") {
            out.push((format!("{prefix}/{name}"), path));
        }
    }
}
