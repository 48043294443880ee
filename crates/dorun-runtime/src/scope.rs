//! Which files a Worker's code may load: the project's tree (the config file's directory,
//! the entry module's, the package around them — the nearest package.json — and the
//! repository or workspace root above it: `.git`, `pnpm-workspace.yaml`, `lerna.json`, or a
//! package.json with `workspaces`), the `node_modules` directories Node's resolution reaches
//! from it, and the packages that bare specifiers resolved to (workspace links, tsconfig
//! paths).
//! Anything else — `/etc/hostname`, `file:///…`, `../../..` out of the project — is refused
//! before it is read, with a message that names the specifier, not a server path.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

pub struct ImportScope {
    roots: Vec<PathBuf>,
    /// Package directories reached through bare specifiers.
    packages: Mutex<Vec<PathBuf>>,
}

impl ImportScope {
    /// The scope of a Worker whose config is in `config_dir` and entry in `entry_dir`.
    pub fn for_project(config_dir: &Path, entry_dir: &Path) -> Self {
        let mut roots = vec![config_dir.to_path_buf(), entry_dir.to_path_buf()];
        let config_dir = real_path(config_dir);
        if let Some(package) = config_dir
            .ancestors()
            .find(|dir| dir.join("package.json").is_file())
        {
            roots.push(package.to_path_buf());
        }
        if let Some(workspace) = config_dir.ancestors().find(|dir| is_workspace_root(dir)) {
            roots.push(workspace.to_path_buf());
        }
        Self::new(roots)
    }

    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut canonical: Vec<PathBuf> = roots.into_iter().map(|r| real_path(&r)).collect();
        canonical.sort();
        canonical.dedup();
        Self {
            roots: canonical,
            packages: Mutex::new(Vec::new()),
        }
    }

    /// A bare specifier resolved to `file`: its package (the nearest directory with a
    /// package.json, else the file's directory) may be loaded from.
    pub fn allow_package_of(&self, file: &Path) {
        let file = real_path(file);
        let package = file
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("package.json").is_file())
            .or_else(|| file.parent())
            .map(Path::to_path_buf);
        let Some(package) = package else { return };
        if self.permits(&package) {
            return;
        }
        let mut packages = self.packages.lock().unwrap();
        if !packages.contains(&package) {
            packages.push(package);
        }
    }

    /// Whether the file at `path` may be loaded.
    pub fn permits(&self, path: &Path) -> bool {
        let path = real_path(path);
        if self.roots.iter().any(|root| path.starts_with(root)) {
            return true;
        }
        // node_modules of a directory above the project (hoisted dependencies).
        let in_reachable_node_modules = path.ancestors().any(|dir| {
            dir.file_name().is_some_and(|name| name == "node_modules")
                && dir
                    .parent()
                    .is_some_and(|owner| self.roots.iter().any(|root| root.starts_with(owner)))
        });
        in_reachable_node_modules
            || self
                .packages
                .lock()
                .unwrap()
                .iter()
                .any(|package| path.starts_with(package))
    }
}

/// A repository or a package manager's workspace root.
fn is_workspace_root(dir: &Path) -> bool {
    dir.join(".git").exists()
        || dir.join("pnpm-workspace.yaml").is_file()
        || dir.join("lerna.json").is_file()
        || std::fs::read_to_string(dir.join("package.json"))
            .is_ok_and(|text| text.contains("\"workspaces\""))
}

/// The path with symlinks resolved; for a path that does not exist, its lexically
/// normalised form (`..` applied), so that a missing file is judged by where it would be.
fn real_path(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dorun-scope-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "repo/app/src",
            "repo/node_modules/hoisted",
            "repo/packages/shared",
            "elsewhere",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("repo/packages/shared/package.json"), "{}").unwrap();
        std::fs::write(dir.join("repo/packages/shared/index.js"), "").unwrap();
        std::fs::write(dir.join("elsewhere/secret.txt"), "s").unwrap();
        dir
    }

    #[test]
    fn the_project_and_reachable_node_modules_are_in_scope_and_nothing_else() {
        let dir = tree("roots");
        let scope = ImportScope::new([dir.join("repo/app"), dir.join("repo/app/src")]);
        assert!(scope.permits(&dir.join("repo/app/src/index.js")));
        assert!(scope.permits(&dir.join("repo/node_modules/hoisted/index.js")));
        assert!(!scope.permits(&dir.join("elsewhere/secret.txt")));
        assert!(!scope.permits(&dir.join("repo/app/../../elsewhere/secret.txt")));
        assert!(!scope.permits(&dir.join("repo/app/src/../../../elsewhere/secret.txt")));
        assert!(!scope.permits(Path::new("/etc/hostname")));
        assert!(!scope.permits(&dir.join("repo/packages/shared/index.js")));
        // A workspace package reached through a bare specifier joins the scope.
        scope.allow_package_of(&dir.join("repo/packages/shared/index.js"));
        assert!(scope.permits(&dir.join("repo/packages/shared/lib/x.js")));
        assert!(!scope.permits(&dir.join("elsewhere/secret.txt")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_package_and_the_workspace_around_the_config_are_the_project() {
        let dir = tree("workspace");
        // repo/ is a workspace; repo/app is a package whose entry lives in src/.
        std::fs::write(dir.join("repo/package.json"), r#"{"workspaces": ["app"]}"#).unwrap();
        std::fs::write(dir.join("repo/app/package.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("repo/app/lib")).unwrap();
        let scope = ImportScope::for_project(&dir.join("repo/app/src"), &dir.join("repo/app/src"));
        assert!(scope.permits(&dir.join("repo/app/lib/u.js")), "the package");
        assert!(
            scope.permits(&dir.join("repo/packages/shared/index.js")),
            "the workspace"
        );
        assert!(!scope.permits(&dir.join("elsewhere/secret.txt")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
