//! The whole request body must arrive within `--read-timeout`, counted from the
//! moment the request's headers were read (when it enters the router), not per
//! chunk: a client sending one byte every few seconds is cut off at the
//! deadline (408 on the webhook endpoints), and its connection closed.
//! tower-http's `RequestBodyTimeoutLayer` restarts its timer at every chunk, so
//! a trickle kept a connection (and its buffered body) forever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a body read returns once the deadline has passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within the read timeout")]
pub struct BodyDeadlineExceeded;

/// A body that fails with [`BodyDeadlineExceeded`] after its deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyDeadlineExceeded.into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives every request body a deadline `timeout` from now.
pub async fn limit_body_time(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = Box::pin(tokio::time::sleep_until(Instant::now() + timeout));
    let request = request.map(|inner| Body::new(DeadlineBody { inner, deadline }));
    next.run(request).await
}
