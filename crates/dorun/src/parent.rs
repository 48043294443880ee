//! Stopping with the process that started dorun: the npm package's `dorun` wrapper, its
//! `dorun/test` helper and `serve --watch` name themselves in `DORUN_PARENT_PID`, and
//! `dorun serve` stops (as on SIGTERM) once that process is no longer its parent.

use std::time::Duration;

/// The environment variable naming the process dorun stops with (set by the npm package's
/// `dorun` wrapper and its `dorun/test` helper, and by `serve --watch` for its children).
pub const PARENT_PID_VAR: &str = "DORUN_PARENT_PID";

/// Resolves once the process named by `DORUN_PARENT_PID` is no longer dorun's parent (it
/// exited, even by SIGKILL, and dorun was re-parented); never when the variable is unset.
/// So killing a wrapper in any way never leaves dorun running.
pub async fn parent_gone() {
    #[cfg(unix)]
    if let Some(parent) = std::env::var(PARENT_PID_VAR)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if std::os::unix::process::parent_id() != parent {
                tracing::info!("the process that started dorun ({parent}) is gone: stopping");
                return;
            }
        }
    }
    std::future::pending::<()>().await
}
