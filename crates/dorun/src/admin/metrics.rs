//! `/metrics` (placeholder until the metrics step).

use super::{text, Admin, AdminResponse};

pub fn render(_admin: &Admin) -> AdminResponse {
    text(200, "")
}

pub fn record_reset() {}
