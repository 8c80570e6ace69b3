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

use bytes::Bytes;
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
}

/// Writes `frames` (at most [`MAX_BATCH`]; more are refused) as whole, final frames, in
/// one vectored write when the socket takes it all.
pub async fn write_frames<W: AsyncWrite + Unpin>(io: &mut W, frames: &[OutFrame]) -> io::Result<()> {
    if frames.len() > MAX_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many frames in one batch",
        ));
    }
    // On the heap, for the batch only: the future that holds them lives in every
    // connection's task.
    let mut headers: Vec<u8> = Vec::with_capacity(MAX_HEADER * frames.len());
    for frame in frames {
        frame
            .header()
            .format(frame.payload().len() as u64, &mut headers)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * frames.len());
    let mut start = 0;
    for frame in frames {
        let payload = frame.payload();
        let end = start + frame.header().len(payload.len() as u64);
        slices.push(IoSlice::new(&headers[start..end]));
        start = end;
        if !payload.is_empty() {
            slices.push(IoSlice::new(payload));
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = io.write_vectored(rest).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    io.flush().await
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
    async fn a_batch_over_the_limit_is_refused() {
        let many = vec![OutFrame::Ping; MAX_BATCH + 1];
        assert!(write_frames(&mut Vec::new(), &many).await.is_err());
        let mut out = Vec::new();
        write_frames(&mut out, &many[..MAX_BATCH]).await.expect("written");
        assert_eq!(as_client_reads(out).await.len(), MAX_BATCH);
    }
}
