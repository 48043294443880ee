//! Bodies that cross between the front door (hyper, multi-threaded runtime) and an
//! isolate thread. Both directions are streams with small bounded buffers, so a 1 GiB
//! upload or download never sits whole in memory and a slow peer slows the producer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body handed to a Worker: any `Send` body of bytes (hyper's `Incoming` in the
/// server, a fixed buffer in tests).
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// How many chunks a streamed response may buffer between the isolate and the socket.
pub const RESPONSE_CHANNEL_CHUNKS: usize = 4;

/// A response body produced by a Worker.
#[derive(Debug)]
pub enum ResponseBody {
    Empty,
    Full(Option<Bytes>),
    /// Chunks produced by the isolate thread as JS writes them.
    Channel(mpsc::Receiver<Result<Bytes, BoxError>>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ResponseBody::Empty
        } else {
            ResponseBody::Full(Some(bytes))
        }
    }

    /// A channel body and the sender that feeds it.
    pub fn channel() -> (mpsc::Sender<Result<Bytes, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
        (tx, ResponseBody::Channel(rx))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Channel(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Channel(_) => SizeHint::default(),
        }
    }
}
