//! Failures a client sees as an HTTP status: the one place that chooses the status and
//! the body for each.

use crate::body::ResponseBody;

/// Why a request got no answer from the Worker's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The Worker's handler threw or returned something that is not a Response.
    #[error("Internal Server Error")]
    Exception,
    /// JS ran past the CPU limit; the isolate was reset.
    #[error("Worker exceeded CPU time limit.")]
    CpuLimit,
    /// The V8 heap outgrew its limit; the isolate was reset.
    #[error("Worker exceeded memory limit.")]
    HeapLimit,
    /// A reset isolate could not load the Worker again.
    #[error("Worker failed to restart")]
    RestartFailed,
    /// The server is stopping and takes no new requests.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The isolate stopped before answering.
    #[error("the isolate stopped before answering")]
    Dropped,
}

impl Failure {
    pub fn status(self) -> http::StatusCode {
        match self {
            Failure::Exception | Failure::RestartFailed => http::StatusCode::INTERNAL_SERVER_ERROR,
            Failure::CpuLimit | Failure::HeapLimit | Failure::ShuttingDown | Failure::Dropped => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The response a client gets: the status and the message as plain text.
    pub fn response(self) -> http::Response<ResponseBody> {
        let mut response = http::Response::new(ResponseBody::full(self.to_string()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
        response
    }
}
