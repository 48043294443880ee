//! `--ephemeral`: a data directory that exists only while dorun runs.

/// A temporary data directory, removed when dropped (`--ephemeral`).
pub(crate) struct EphemeralDir(std::path::PathBuf);

impl EphemeralDir {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub(crate) fn create() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "dorun-ephemeral-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for EphemeralDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("cannot remove {}: {error}", self.0.display());
        }
    }
}
