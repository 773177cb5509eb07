//! The HTTP transport under opendal: every s3:// request goes out through the process's one
//! reqwest client. Request and response bodies pass through the process's two bandwidth
//! limits ([`UPLOAD`], [`DOWNLOAD`]), shared by every part in flight; and while a backup with
//! object lock runs, the request that creates its object carries the lock headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{Request, Response};
use opendal::{Buffer, ErrorKind, HttpBody};
use reqsign_aws_v4::Credential;
use reqsign_core::Signer;

/// Bytes are paced in pieces of this size: small enough that a limit of a few hundred KiB/s
/// still flows evenly, large enough to cost nothing at full speed.
const PIECE: usize = 64 << 10;

/// A token bucket without burst: bytes pass at `rate` per second, one piece after another,
/// whichever transfer they belong to. Idle time earns no credit, so the limit holds over
/// any span, not only on average.
pub(crate) struct Pace {
    /// Bytes per second; 0 is no limit.
    rate: AtomicU64,
    /// When the bytes reserved so far will have passed.
    next: Mutex<Option<Instant>>,
}

/// Every upload of the process (backup parts).
pub(crate) static UPLOAD: Pace = Pace::new();
/// Every download of the process (restore, verify, inspect).
pub(crate) static DOWNLOAD: Pace = Pace::new();

impl Pace {
    const fn new() -> Pace {
        Pace { rate: AtomicU64::new(0), next: Mutex::new(None) }
    }

    /// Sets the limit in bytes per second (`None`: none).
    pub(crate) fn set(&self, rate: Option<u64>) {
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Reserves `n` bytes: the instant at which they have passed at the rate, after every
    /// byte reserved before them. `None` without a limit.
    fn reserve(&self, n: usize) -> Option<Instant> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = next.filter(|t| *t > now).unwrap_or(now);
        let end = start + Duration::from_secs_f64(n as f64 / rate as f64);
        *next = Some(end);
        Some(end)
    }
}

/// Holds a piece back until its bytes have passed at the pace.
#[derive(Default)]
struct Gate {
    held: Option<(Pin<Box<tokio::time::Sleep>>, Bytes)>,
}

impl Gate {
    /// Lets `piece` through now or when its time has come.
    fn admit(&mut self, pace: &Pace, piece: Bytes, cx: &mut Context<'_>) -> Poll<Bytes> {
        match pace.reserve(piece.len()) {
            Some(until) if until > Instant::now() => {
                self.held = Some((Box::pin(tokio::time::sleep_until(until.into())), piece));
                self.poll_held(cx).map(|p| p.unwrap_or_default())
            }
            _ => Poll::Ready(piece),
        }
    }

    /// The piece held back, once its time has come (`None`: nothing held).
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match &mut self.held {
            None => Poll::Ready(None),
            Some((sleep, _)) => {
                std::task::ready!(sleep.as_mut().poll(cx));
                Poll::Ready(self.held.take().map(|(_, piece)| piece))
            }
        }
    }
}

/// A request body (a part, or a whole small object) sent at the upload pace.
struct PacedBody {
    rest: Buffer,
    current: Bytes,
    gate: Gate,
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(piece) = std::task::ready!(this.gate.poll_held(cx)) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        if this.current.is_empty() {
            match Iterator::next(&mut this.rest) {
                Some(b) => this.current = b,
                None => return Poll::Ready(None),
            }
        }
        let piece = this.current.split_to(this.current.len().min(PIECE));
        this.gate.admit(&UPLOAD, piece, cx).map(|p| Some(Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.current.is_empty() && self.gate.held.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.gate.held.as_ref().map_or(0, |(_, p)| p.len());
        http_body::SizeHint::with_exact((self.rest.len() + self.current.len() + held) as u64)
    }
}

/// A response body read at the download pace: a piece is handed on only when its bytes
/// have passed, so the reader (and TCP's window behind it) slows the sender down.
struct PacedStream<S> {
    inner: S,
    gate: Gate,
}

impl<S: Stream<Item = opendal::Result<Bytes>> + Unpin> Stream for PacedStream<S> {
    type Item = opendal::Result<Buffer>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(piece) = std::task::ready!(this.gate.poll_held(cx)) {
            return Poll::Ready(Some(Ok(Buffer::from(piece))));
        }
        match std::task::ready!(this.inner.poll_next_unpin(cx)) {
            Some(Ok(piece)) => this.gate.admit(&DOWNLOAD, piece, cx).map(|p| Some(Ok(Buffer::from(p)))),
            other => Poll::Ready(other.map(|r| r.map(Buffer::from))),
        }
    }
}

/// The object-lock headers of the object a backup creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectLock {
    /// `COMPLIANCE` (decisions/D-14 says why).
    pub mode: &'static str,
    /// RFC 3339, UTC.
    pub until: String,
}

/// opendal's requests, sent with the process's client, paced, and locked where asked.
pub(crate) struct Transport {
    pub client: reqwest::Client,
    /// Set while a backup with `--s3-object-lock` writes to this bucket.
    pub lock: Arc<Mutex<Option<ObjectLock>>>,
    /// To sign again the one request the lock headers are added to.
    pub signer: Signer<Credential>,
}

/// CreateMultipartUpload (`POST KEY?uploads`), or PutObject of a small archive (a PUT that
/// is neither a part nor a copy): the requests that create an archive's object.
fn creates_object(parts: &http::request::Parts) -> bool {
    let query = parts.uri.query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|p| p == name || p.starts_with(&format!("{name}=")));
    match parts.method {
        http::Method::POST => has("uploads"),
        http::Method::PUT => !has("partNumber") && !has("uploadId") && !parts.headers.contains_key("x-amz-copy-source"),
        _ => false,
    }
}

fn failed(what: &'static str, uri: &http::Uri, e: reqwest::Error) -> opendal::Error {
    // As opendal's own transport: sending and body errors (resets) are worth a retry.
    let temporary = e.is_request() || e.is_body() || e.is_decode() || e.is_connect() || e.is_timeout();
    opendal::Error::new(ErrorKind::Unexpected, what).with_context("url", uri).with_temporary(temporary).set_source(e.without_url())
}

impl Transport {
    /// Adds the lock headers to a request that creates the object, and signs it again.
    async fn lock(&self, parts: &mut http::request::Parts) -> opendal::Result<()> {
        let lock = self.lock.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(lock) = lock.filter(|_| creates_object(parts)) else { return Ok(()) };
        let value = |v: &str| http::HeaderValue::from_str(v).map_err(|e| opendal::Error::new(ErrorKind::Unexpected, "object lock header").set_source(e));
        parts.headers.insert("x-amz-object-lock-mode", value(lock.mode)?);
        parts.headers.insert("x-amz-object-lock-retain-until-date", value(&lock.until)?);
        parts.headers.remove(http::header::AUTHORIZATION);
        self.signer.sign(parts, None).await.map_err(|e| opendal::Error::new(ErrorKind::Unexpected, "signing the object lock headers").set_source(e))
    }
}

impl opendal::HttpTransport for Transport {
    async fn fetch(&self, req: Request<Buffer>) -> opendal::Result<Response<HttpBody>> {
        let (mut parts, body) = req.into_parts();
        self.lock(&mut parts).await?;
        let uri = parts.uri.clone();
        let is_head = parts.method == http::Method::HEAD;
        let mut rb = self.client.request(parts.method, uri.to_string()).headers(parts.headers).version(parts.version);
        if !body.is_empty() {
            rb = rb.body(reqwest::Body::wrap(PacedBody { rest: body, current: Bytes::new(), gate: Gate::default() }));
        }
        let mut resp = rb.send().await.map_err(|e| failed("send http request", &uri, e))?;
        // A HEAD's length is the object's; a compressed body's is not what is read.
        let length =
            if is_head || resp.headers().contains_key(http::header::CONTENT_ENCODING) { None } else { opendal::raw::parse_content_length(resp.headers())? };
        let status = resp.status();
        let version = resp.version();
        let headers = std::mem::take(resp.headers_mut());
        let read_uri = uri.clone();
        let stream = resp
            .bytes_stream()
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.is_empty())))
            .map_err(move |e| failed("read data from http response", &read_uri, e));
        let mut out = Response::new(HttpBody::new(PacedStream { inner: Box::pin(stream), gate: Gate::default() }, length));
        *out.status_mut() = status;
        *out.version_mut() = version;
        *out.headers_mut() = headers;
        out.extensions_mut().insert(uri);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spreads_bytes_over_time() {
        let pace = Pace::new();
        assert_eq!(pace.reserve(1 << 20), None, "no limit, no wait");
        pace.set(Some(4 << 20));
        let start = Instant::now();
        let mut last = start;
        for _ in 0..16 {
            last = pace.reserve(PIECE).unwrap();
        }
        // 16 pieces of 64 KiB at 4 MiB/s: a quarter of a second after the first began.
        let span = last.duration_since(start).as_secs_f64();
        assert!((0.24..0.26).contains(&span), "{span}");
    }

    #[test]
    fn only_the_requests_that_create_the_object_are_locked() {
        let parts = |method: &str, uri: &str| Request::builder().method(method).uri(uri).body(()).unwrap().into_parts().0;
        assert!(creates_object(&parts("POST", "http://h/b/k.hsnap?uploads")));
        assert!(creates_object(&parts("POST", "http://h/b/k.hsnap?uploads=")));
        assert!(creates_object(&parts("PUT", "http://h/b/k.hsnap")));
        assert!(!creates_object(&parts("PUT", "http://h/b/k.hsnap?partNumber=1&uploadId=x")));
        assert!(!creates_object(&parts("POST", "http://h/b/k.hsnap?uploadId=x")));
        assert!(!creates_object(&parts("GET", "http://h/b/k.hsnap")));
        assert!(!creates_object(&parts("DELETE", "http://h/b/k.hsnap?uploadId=x")));
    }
}
