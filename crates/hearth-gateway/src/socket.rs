//! The WebSocket upgrade of `GET /v1/ws` and the connection's two halves.
//!
//! The gateway does the upgrade itself (rather than with axum's
//! `WebSocketUpgrade`) so that a session owns the raw socket:
//! - the **read half** is parsed by tungstenite ([`ReadSocket`]), with the
//!   frame and message limits of [`GatewayConfig`](crate::GatewayConfig);
//! - the **write half** ([`WriteHalf`]) is written by the session directly:
//!   every queued frame is already encoded (and shared between subscribers
//!   as a reference-counted [`Bytes`]), so the writer only prepends a 2–10
//!   byte frame header to each and hands the whole batch to the kernel in
//!   one vectored write — no copy into a per-connection buffer, one system
//!   call per batch instead of one per frame;
//! - after a frame that is far too large the session can send its 4009
//!   close and then read and discard the rest of the frame (bounded), so the
//!   client reads the close frame instead of a TCP reset.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::codec::Codec;
use crate::{session, Gateway, Inner};

/// The parsing (read) side of a connection.
pub(crate) type ReadSocket = WebSocketStream<ReadSide>;

/// WebSocket opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Pong = 0xA,
    /// Not an opcode: the unwritten rest of a frame whose beginning the
    /// socket already took (sent as is, without a header).
    Rest = 0xF,
}

/// One outgoing frame: opcode and (shared) payload.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    pub opcode: Opcode,
    pub payload: Bytes,
}

impl OutFrame {
    #[cfg(test)]
    pub(crate) fn text(payload: Bytes) -> OutFrame {
        OutFrame {
            opcode: Opcode::Text,
            payload,
        }
    }

    /// The answer to a client's WebSocket-level ping.
    pub(crate) fn pong(mut payload: Bytes) -> OutFrame {
        payload.truncate(125);
        OutFrame {
            opcode: Opcode::Pong,
            payload,
        }
    }

    pub(crate) fn close(code: u16, reason: &str) -> OutFrame {
        let mut p = Vec::with_capacity(2 + reason.len());
        p.extend_from_slice(&code.to_be_bytes());
        // Control frames carry at most 125 bytes of payload.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        p.extend_from_slice(&reason.as_bytes()[..end]);
        OutFrame {
            opcode: Opcode::Close,
            payload: Bytes::from(p),
        }
    }

    /// What is left of `self` after the socket accepted its first
    /// `written` bytes (header included), or `None` if it took all of it.
    pub(crate) fn rest_after(&self, written: usize) -> Option<OutFrame> {
        let (h, n) = frame_header(self.opcode, self.len());
        if written >= n + self.len() {
            return None;
        }
        let payload = if written >= n {
            self.payload.slice(written - n..)
        } else {
            let mut p = Vec::with_capacity(n - written + self.len());
            p.extend_from_slice(&h[written..n]);
            p.extend_from_slice(&self.payload);
            Bytes::from(p)
        };
        Some(OutFrame {
            opcode: Opcode::Rest,
            payload,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.payload.len()
    }
}

/// The header of an unmasked, final server frame: (bytes, length).
pub(crate) fn frame_header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode as u8;
    if opcode == Opcode::Rest {
        (h, 0)
    } else if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Writes `frames` with as few system calls as the kernel allows.
pub(crate) async fn write_frames(w: &SharedSink, frames: &[OutFrame]) -> io::Result<()> {
    write_frames_with(w, frames, || {}).await
}

/// [`write_frames`], calling `progress` each time the socket accepted bytes.
pub(crate) async fn write_frames_with(
    w: &SharedSink,
    frames: &[OutFrame],
    mut progress: impl FnMut(),
) -> io::Result<()> {
    if frames.is_empty() {
        return Ok(());
    }
    let heads: Vec<([u8; 10], usize)> = frames
        .iter()
        .map(|f| frame_header(f.opcode, f.len()))
        .collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
    for (f, (h, n)) in frames.iter().zip(&heads) {
        if *n > 0 {
            slices.push(IoSlice::new(&h[..*n]));
        }
        if !f.payload.is_empty() {
            slices.push(IoSlice::new(&f.payload));
        }
    }
    let mut bufs: &mut [IoSlice<'_>] = &mut slices;
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
        progress();
    }
    Ok(())
}

/// The write half, shared by the connection's writer and whoever queues a
/// frame for it (the fan-out engine, mostly): when the connection has
/// nothing queued, the one queueing a frame hands it straight to the kernel
/// with [`SharedSink::try_write`] (see `ConnShared::push_frame`), so a frame
/// that fits in the socket buffer costs no task wake-up. The lock is held
/// for one non-blocking poll at a time, never across an await.
pub(crate) struct SharedSink(parking_lot::Mutex<WriteHalf>);

impl SharedSink {
    pub(crate) fn new(w: WriteHalf) -> SharedSink {
        SharedSink(parking_lot::Mutex::new(w))
    }

    /// One write of contiguous bytes that never waits: `None` if the socket
    /// cannot take bytes now (or the writer holds it); else what the kernel
    /// took. On Linux this is `send(2)`, which costs the kernel less than
    /// the `writev(2)` of a vectored write (no iovec import, no file
    /// position lock): about 5-20 % of the per-connection floor measured by
    /// `write_floor --copy-and-send` (benches/RESULTS.md, Session 7).
    pub(crate) fn try_write(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        let mut w = self.0.try_lock()?;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *w).poll_write(&mut cx, bytes) {
            Poll::Ready(r) => Some(r),
            // Our no-op waker is registered now; the writer task, which
            // takes over from here, polls again with its own.
            Poll::Pending => None,
        }
    }

    /// One vectored write, waiting for the socket to accept bytes.
    pub(crate) async fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        std::future::poll_fn(|cx| Pin::new(&mut *self.0.lock()).poll_write_vectored(cx, bufs)).await
    }
}

// ------------------------------------------------------------ the halves

/// The read half. Its `AsyncWrite` side discards: tungstenite's automatic
/// replies (pong to a client's ping, close echo) never reach the client
/// through it — the session answers on the write half itself.
pub(crate) struct ReadSide(tokio::io::ReadHalf<TokioIo<Upgraded>>);

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The write half of a connection (vectored writes reach the TCP socket).
pub(crate) type WriteHalf = tokio::io::WriteHalf<TokioIo<Upgraded>>;

/// Splits an upgraded connection into its parsing side and its write half.
async fn split(upgraded: Upgraded, config: WebSocketConfig) -> (ReadSocket, SharedSink) {
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    let socket = WebSocketStream::from_raw_socket(ReadSide(read), Role::Server, Some(config)).await;
    (socket, SharedSink::new(write))
}

/// Reads and discards what the client still sends (the rest of an
/// oversized frame, its close reply) until it closes, `max_bytes` were
/// read, or `idle` passes without data — so that closing the socket does
/// not reset a connection whose close frame the client has not read yet.
pub(crate) async fn drain(socket: &mut ReadSocket, max_bytes: u64, idle: std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let side = socket.get_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    while total < max_bytes {
        match tokio::time::timeout(idle, side.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n as u64,
            _ => break,
        }
    }
}

// ------------------------------------------------------------ the upgrade

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The first subprotocol the client offers that the server speaks
/// (`hearth.v1` or `hearth.v1.msgpack`), in the client's order of preference.
fn select_subprotocol(headers: &HeaderMap) -> Option<Codec> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|name| Codec::for_subprotocol(name.trim()))
}

/// The task of one upgraded connection: waits for the upgrade, then runs
/// the session.
///
/// Tokio allocates a task as one cell (header, this future, trailer) in
/// 128-byte steps, and the cell lives as long as the connection. A future
/// keeps what it captures for good, so this one captures only the upgrade,
/// the gateway and the codec, and builds the parser's configuration after
/// the upgrade: capturing the 64-byte `WebSocketConfig` made every
/// connection's cell 896 bytes instead of 768 (see the size test below).
// Not an `async fn`, which would store its arguments twice (see `session::run`).
#[allow(clippy::manual_async_fn)]
fn connection_task(
    inner: Arc<Inner>,
    on_upgrade: OnUpgrade,
    codec: Codec,
) -> impl Future<Output = ()> + Send {
    async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (socket, write) = split(upgraded, parser_config(&inner.config)).await;
        session::run(inner, socket, write, codec).await;
    }
}

/// The limits tungstenite parses the client's frames with.
fn parser_config(c: &crate::GatewayConfig) -> WebSocketConfig {
    let max_frame = (c.max_frame_bytes as usize).saturating_mul(2);
    WebSocketConfig::default()
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// `GET /v1/ws`: checks the upgrade request (RFC 6455 §4.2.1), answers 101
/// with the subprotocol the client offered (`hearth.v1`, or
/// `hearth.v1.msgpack` for MessagePack binary frames; JSON when it offered
/// neither), and runs the session on the upgraded connection.
pub(crate) async fn upgrade(State(gateway): State<Gateway>, mut req: Request) -> Response {
    if req.method() != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrade requires GET",
        )
            .into_response();
    }
    let headers = req.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return (
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        )
            .into_response();
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return (
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        )
            .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        )
            .into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = select_subprotocol(headers);
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    };
    tokio::spawn(connection_task(
        gateway.inner,
        on_upgrade,
        subprotocol.unwrap_or(Codec::Json),
    ));
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(codec) = subprotocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_fits_in_a_768_byte_tokio_task_cell() {
        // tokio's `Cell`: header (32) + core (scheduler 8, task id 8, stage
        // = the future behind an 8-byte tag) + trailer (48), in 128-byte steps.
        let future = returned_size(connection_task);
        let cell = (32 + 16 + 8 + future + 48).div_ceil(128) * 128;
        assert!(
            cell <= 768,
            "the connection future is {future} bytes: a {cell}-byte task per connection"
        );
    }

    #[test]
    fn frame_headers_use_the_shortest_length_encoding() {
        assert_eq!(frame_header(Opcode::Text, 5).0[..2], [0x81, 5]);
        let (h, n) = frame_header(Opcode::Text, 300);
        assert_eq!(&h[..n], &[0x81, 126, 1, 44]);
        let (h, n) = frame_header(Opcode::Close, 70_000);
        assert_eq!(&h[..n], &[0x88, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn the_rest_of_a_partly_written_frame_is_its_unwritten_bytes() {
        let f = OutFrame::text(Bytes::from_static(b"hello"));
        let (h, n) = frame_header(f.opcode, f.len());
        let mut whole = h[..n].to_vec();
        whole.extend_from_slice(b"hello");
        for written in 0..whole.len() {
            let rest = f.rest_after(written).expect("something is left");
            assert_eq!(
                frame_header(rest.opcode, rest.len()).1,
                0,
                "no second header"
            );
            assert_eq!(&rest.payload[..], &whole[written..]);
        }
        assert!(f.rest_after(whole.len()).is_none());
    }

    #[test]
    fn close_payloads_are_truncated_to_a_control_frame() {
        let long = "é".repeat(100);
        let f = OutFrame::close(4009, &long);
        assert!(f.len() <= 125);
        assert_eq!(&f.payload[..2], &4009u16.to_be_bytes());
        assert!(std::str::from_utf8(&f.payload[2..]).is_ok());
    }
}
