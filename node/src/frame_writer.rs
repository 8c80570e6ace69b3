//! Writes the node's WebSocket frames to a client straight from the shared messages, with no
//! buffer kept between writes.
//!
//! tungstenite copies every message into a write buffer per connection that keeps the size
//! of the largest message it ever wrote: each editor's first sync carries the whole scene, so
//! every connection kept a copy-sized buffer for its life (12 KB per connection for a 12 KB
//! scene, up to 16 KiB). Here a batch of frames goes out in one vectored write: each frame's
//! header from a small array, its payload from the message itself (a room's update is encoded
//! once and shared by every client it goes to), so nothing is copied or kept.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Most frames written in one batch (two slices each: header and payload).
pub const MAX_BATCH: usize = 64;

/// Longest header of an unmasked frame: 2 bytes, then a 64-bit length.
const MAX_HEADER: usize = 10;

/// One frame from the node: binary messages and the control frames a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Binary(Bytes),
    Ping,
    Pong(Bytes),
    /// A close frame's payload, made by [`OutFrame::close`].
    Close(Bytes),
}

impl OutFrame {
    /// A close frame with a status code and reason (cut to the 123 bytes a reason may
    /// take, on a character boundary), or with neither (the answer to a bare close).
    pub fn close(status: Option<(u16, &str)>) -> OutFrame {
        let Some((code, reason)) = status else {
            return OutFrame::Close(Bytes::new());
        };
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        OutFrame::Close(Bytes::from(payload))
    }

    fn header(&self) -> FrameHeader {
        let opcode = match self {
            OutFrame::Binary(_) => OpCode::Data(Data::Binary),
            OutFrame::Ping => OpCode::Control(Control::Ping),
            OutFrame::Pong(_) => OpCode::Control(Control::Pong),
            OutFrame::Close(_) => OpCode::Control(Control::Close),
        };
        FrameHeader {
            opcode,
            ..FrameHeader::default()
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            OutFrame::Binary(payload) | OutFrame::Pong(payload) | OutFrame::Close(payload) => payload,
            OutFrame::Ping => &[],
        }
    }

    /// Bytes on the wire: header and payload.
    fn wire_len(&self) -> usize {
        let payload = self.payload().len();
        self.header().len(payload as u64) + payload
    }
}

/// Writes `frames` (at most [`MAX_BATCH`]; more are refused) as whole, final frames, in
/// one vectored write when the socket takes it all.
pub async fn write_frames<W: AsyncWrite + Unpin>(io: &mut W, frames: &[OutFrame]) -> io::Result<()> {
    write_frames_after(io, frames, 0).await
}

/// [`write_frames`], the first `skip` bytes of the batch already written.
pub async fn write_frames_after<W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: &[OutFrame],
    skip: usize,
) -> io::Result<()> {
    let total = batch_len(frames)?;
    let mut done = skip;
    while done < total {
        let written = std::future::poll_fn(|cx| poll_write_from(io, frames, done, cx)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += written;
    }
    io.flush().await
}

/// Writes what the socket takes of the batch now, without waiting: whether all of it is
/// written, and the bytes written (the rest goes through [`write_frames_after`]). Most
/// writes are taken at once: this way they need no future held across a wait and no
/// allocation. The task is woken when the socket has room again.
pub fn write_now<W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: &[OutFrame],
    cx: &mut Context<'_>,
) -> io::Result<(bool, usize)> {
    let total = batch_len(frames)?;
    let written = match poll_write_from(io, frames, 0, cx) {
        Poll::Ready(written) => written?,
        Poll::Pending => return Ok((false, 0)),
    };
    if written < total {
        return Ok((false, written));
    }
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(flushed) => flushed.map(|()| (true, written)),
        Poll::Pending => Ok((false, written)),
    }
}

/// Bytes of the batch on the wire, headers included; an error for too many frames.
fn batch_len(frames: &[OutFrame]) -> io::Result<usize> {
    if frames.len() > MAX_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many frames in one batch",
        ));
    }
    Ok(frames.iter().map(OutFrame::wire_len).sum())
}

/// Frames whose headers and slices fit on the stack; larger batches use the heap.
const ON_STACK: usize = 8;

/// One vectored write of the batch from byte `skip` on; the headers are formatted into a
/// buffer on the stack for the call only, so nothing outlives it.
fn poll_write_from<W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: &[OutFrame],
    skip: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut headers: SmallVec<[u8; ON_STACK * MAX_HEADER]> = SmallVec::new();
    for frame in frames {
        let payload = frame.payload();
        if let Err(e) = frame.header().format(payload.len() as u64, &mut headers) {
            return Poll::Ready(Err(io::Error::other(e.to_string())));
        }
    }
    let mut slices: SmallVec<[IoSlice<'_>; 2 * ON_STACK]> = SmallVec::new();
    let mut start = 0;
    let mut to_skip = skip;
    for frame in frames {
        let payload = frame.payload();
        let end = start + frame.header().len(payload.len() as u64);
        for part in [&headers[start..end], payload] {
            if to_skip >= part.len() {
                to_skip -= part.len();
            } else {
                slices.push(IoSlice::new(&part[to_skip..]));
                to_skip = 0;
            }
        }
        start = end;
    }
    if slices.is_empty() {
        return Poll::Ready(Ok(0));
    }
    Pin::new(io).poll_write_vectored(cx, &slices)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    /// What a stock client (tungstenite) reads from the bytes written.
    async fn as_client_reads(bytes: Vec<u8>) -> Vec<Message> {
        let socket = WebSocketStream::from_raw_socket(io::Cursor::new(bytes), Role::Client, None).await;
        socket
            .take_while(|m| std::future::ready(m.is_ok()))
            .map(|m| m.expect("read"))
            .collect()
            .await
    }

    fn frames() -> Vec<OutFrame> {
        vec![
            OutFrame::Binary(Bytes::from_static(b"small")),
            OutFrame::Ping,
            OutFrame::Binary(Bytes::from(vec![9u8; 300])),
            OutFrame::Pong(Bytes::from_static(b"p")),
            OutFrame::Binary(Bytes::from(vec![1u8; 70_000])),
            OutFrame::Binary(Bytes::new()),
            OutFrame::close(Some((4401, &"é".repeat(100)))),
        ]
    }

    fn expected(messages: &[Message]) {
        assert_eq!(messages.len(), 7, "{messages:?}");
        assert_eq!(messages[0], Message::binary(&b"small"[..]));
        assert!(matches!(&messages[1], Message::Ping(p) if p.is_empty()));
        assert_eq!(messages[2], Message::binary(vec![9u8; 300]));
        assert!(matches!(&messages[3], Message::Pong(p) if &p[..] == b"p"));
        assert_eq!(messages[4], Message::binary(vec![1u8; 70_000]));
        assert_eq!(messages[5], Message::binary(Vec::new()));
        let Message::Close(Some(close)) = &messages[6] else {
            panic!("not a close: {:?}", messages[6]);
        };
        assert_eq!(u16::from(close.code), 4401);
        // 61 two-byte characters fit in 123 bytes.
        assert_eq!(close.reason.as_str(), "é".repeat(61));
    }

    #[tokio::test]
    async fn a_stock_client_reads_every_kind_of_frame() {
        let mut out = Vec::new();
        write_frames(&mut out, &frames()).await.expect("written");
        expected(&as_client_reads(out).await);
    }

    /// A socket that takes at most 3 bytes per write and is not ready every other time.
    struct Trickle {
        written: Vec<u8>,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(3);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped() {
        let mut socket = Trickle {
            written: Vec::new(),
            ready: false,
        };
        write_frames(&mut socket, &frames()).await.expect("written");
        expected(&as_client_reads(socket.written).await);
    }

    #[tokio::test]
    async fn a_write_taken_in_part_at_once_is_finished_from_where_it_stopped() {
        async fn now(socket: &mut Trickle) -> io::Result<(bool, usize)> {
            let batch = frames();
            std::future::poll_fn(|cx| Poll::Ready(write_now(socket, &batch, cx))).await
        }
        // Not ready: nothing written yet.
        let mut socket = Trickle {
            written: Vec::new(),
            ready: true,
        };
        assert_eq!(now(&mut socket).await.expect("no error"), (false, 0));
        // Ready for a few bytes (the first header's two): the rest from there on.
        let (done, written) = now(&mut socket).await.expect("no error");
        assert!(!done && written == 2, "{written}");
        write_frames_after(&mut socket, &frames(), written)
            .await
            .expect("written");
        expected(&as_client_reads(socket.written).await);
        // A socket with room takes all of it at once.
        let mut out = Vec::new();
        let batch = frames();
        let (done, written) = std::future::poll_fn(|cx| Poll::Ready(write_now(&mut out, &batch, cx)))
            .await
            .expect("no error");
        assert!(done);
        assert_eq!(written, out.len());
        expected(&as_client_reads(out).await);
    }

    #[tokio::test]
    async fn a_batch_over_the_limit_is_refused() {
        let many = vec![OutFrame::Ping; MAX_BATCH + 1];
        assert!(write_frames(&mut Vec::new(), &many).await.is_err());
        let mut out = Vec::new();
        write_frames(&mut out, &many[..MAX_BATCH]).await.expect("written");
        assert_eq!(as_client_reads(out).await.len(), MAX_BATCH);
    }
}
