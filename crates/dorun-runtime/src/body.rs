//! Bodies that cross between the front door (hyper, multi-threaded runtime) and an
//! isolate thread. Both directions are streams with small bounded buffers, so a 1 GiB
//! upload or download never sits whole in memory and a slow peer slows the producer.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{AsyncRefCell, AsyncResult, BufView, CancelHandle, RcRef, Resource};
use deno_error::JsErrorBox;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body handed to a Worker: any `Send` body of bytes (hyper's `Incoming` in the
/// server, a fixed buffer in tests).
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A request body with no bytes.
pub fn empty_request_body() -> RequestBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

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

/// A body from another thread (a request, or a response from an object) as a deno
/// resource, read by `readableStreamForRid`.
pub struct RequestBodyResource {
    body: AsyncRefCell<RequestBody>,
    /// Part of a frame larger than the reader asked for.
    leftover: RefCell<Option<Bytes>>,
    cancel: CancelHandle,
}

impl RequestBodyResource {
    pub fn new(body: RequestBody) -> Self {
        Self {
            body: AsyncRefCell::new(body),
            leftover: RefCell::new(None),
            cancel: CancelHandle::default(),
        }
    }

    async fn read_chunk(self: Rc<Self>, limit: usize) -> Result<BufView, JsErrorBox> {
        let limit = limit.max(1);
        let leftover = self.leftover.borrow_mut().take();
        if let Some(mut rest) = leftover {
            if rest.len() > limit {
                let head = rest.split_to(limit);
                *self.leftover.borrow_mut() = Some(rest);
                return Ok(BufView::from(head.to_vec()));
            }
            return Ok(BufView::from(rest.to_vec()));
        }
        let mut body = RcRef::map(&self, |r| &r.body).borrow_mut().await;
        let cancel = RcRef::map(&self, |r| &r.cancel);
        loop {
            let frame = deno_core::CancelFuture::or_cancel(body.frame(), cancel.clone())
                .await
                .map_err(|_| JsErrorBox::generic("request body read cancelled"))?;
            match frame {
                None => return Ok(BufView::empty()),
                Some(Err(error)) => {
                    return Err(JsErrorBox::generic(format!("request body: {error}")))
                }
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if data.len() > limit {
                        let head = data.split_to(limit);
                        *self.leftover.borrow_mut() = Some(data);
                        return Ok(BufView::from(head.to_vec()));
                    }
                    return Ok(BufView::from(data.to_vec()));
                }
            }
        }
    }
}

impl Resource for RequestBodyResource {
    fn name(&self) -> std::borrow::Cow<'_, str> {
        "dorunRequestBody".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        Box::pin(self.read_chunk(limit))
    }

    fn close(self: Rc<Self>) {
        self.cancel.cancel();
    }
}

/// `body` as a resource JS reads with `readableStreamForRid`, or `None` for an empty body.
pub fn body_resource(
    state: &std::rc::Rc<RefCell<deno_core::OpState>>,
    body: RequestBody,
) -> Option<u32> {
    if Body::is_end_stream(&body) {
        return None;
    }
    Some(
        state
            .borrow_mut()
            .resource_table
            .add(RequestBodyResource::new(body)),
    )
}
