//! Reads a client's WebSocket frames, holding no buffer of its own while the connection is
//! idle.
//!
//! tungstenite's reader keeps a buffer per connection at the size of the largest message
//! the connection ever read (a 2 KB paste leaves 3 KB for the connection's life), and a node
//! holds one connection per open editor. This reader takes each read into a buffer on the
//! stack and keeps on the heap only the bytes of a frame that has not fully arrived: between
//! messages it holds nothing. Writing stays with tungstenite (the connection's socket); this
//! reader only parses, with tungstenite's own header parser, and checks what RFC 6455 asks of
//! a server: masked client frames, no reserved bits or opcodes, short final control frames,
//! fragments in order, and the configured message limit before a byte of the message is kept.

use std::future::poll_fn;
use std::io::{self, Cursor};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Bytes taken from the socket per read: on the stack, so a connection keeps none of it.
const READ_CHUNK: usize = 8 * 1024;

/// Longest payload of a control frame (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One complete message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Binary(Bytes),
    /// A text message (its content is not kept: the protocol is binary).
    Text,
    Ping(Bytes),
    Pong,
    /// The client closes, with its status code if it gave one.
    Close(Option<u16>),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("message of {size} bytes or more is over the limit of {max}")]
    TooLarge { size: u64, max: usize },
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// The reading half of one server-side WebSocket connection.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes read and not yet returned, from `consumed` on; unallocated between messages.
    buffered: Vec<u8>,
    /// How many of `buffered`'s bytes were already returned (several frames in one read).
    consumed: usize,
    /// A fragmented message being received: whether it is binary, and its payload so far.
    fragments: Option<(bool, Vec<u8>)>,
    max_message: usize,
}

impl FrameReader {
    /// A reader that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buffered: Vec::new(),
            consumed: 0,
            fragments: None,
            max_message,
        }
    }

    /// The next message, `None` at the end of the stream. Cancel-safe: what was read is kept
    /// in the reader, never in the future.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| self.poll_next(cx, Pin::new(&mut *io))).await
    }

    /// Bytes this reader holds now (zero between messages).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.buffered.capacity() + self.fragments.as_ref().map_or(0, |(_, f)| f.capacity())
    }

    fn poll_next<R: AsyncRead>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut R>,
    ) -> Poll<Option<Result<Incoming, ReadError>>> {
        loop {
            match self.take_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            if let Err(error) = ready!(io.as_mut().poll_read(cx, &mut read)) {
                return Poll::Ready(Some(Err(error.into())));
            }
            if read.filled().is_empty() {
                if self.consumed == self.buffered.len() && self.fragments.is_none() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())));
            }
            if self.consumed > 0 {
                // The rest of an earlier read, moved once per read rather than per frame.
                self.buffered = self.buffered[self.consumed..].to_vec();
                self.consumed = 0;
            }
            self.buffered.extend_from_slice(read.filled());
        }
    }

    /// The next whole message among the buffered bytes, if they hold one.
    fn take_message(&mut self) -> Result<Option<Incoming>, ReadError> {
        while let Some((header, start, end)) = self.next_frame()? {
            if let Some(mask) = header.mask {
                unmask(&mut self.buffered[start..end], mask);
            }
            let message = match header.opcode {
                OpCode::Control(control) => Some(control_message(control, &self.buffered[start..end])?),
                OpCode::Data(data) => self.data_frame(data, header.is_final, start, end)?,
            };
            self.consume(end);
            if message.is_some() {
                return Ok(message);
            }
        }
        Ok(None)
    }

    /// The header and payload bounds of the first buffered frame, once all of it is here.
    fn next_frame(&self) -> Result<Option<(FrameHeader, usize, usize)>, ReadError> {
        let mut cursor = Cursor::new(&self.buffered[self.consumed..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(ReadError::Protocol("reserved opcode")),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if header.mask.is_none() {
            return Err(ReadError::Protocol("unmasked frame from a client"));
        }
        match header.opcode {
            OpCode::Control(_) if length > MAX_CONTROL_PAYLOAD => {
                return Err(ReadError::Protocol("control frame too long"))
            }
            OpCode::Control(_) if !header.is_final => {
                return Err(ReadError::Protocol("fragmented control frame"))
            }
            OpCode::Control(_) => {}
            OpCode::Data(_) => {
                let so_far = self.fragments.as_ref().map_or(0, |(_, f)| f.len()) as u64;
                if length.saturating_add(so_far) > self.max_message as u64 {
                    return Err(ReadError::TooLarge {
                        size: length.saturating_add(so_far),
                        max: self.max_message,
                    });
                }
            }
        }
        // Within the message limit, so it fits in a usize.
        let start = self.consumed + cursor.position() as usize;
        let end = start + length as usize;
        if self.buffered.len() < end {
            return Ok(None);
        }
        Ok(Some((header, start, end)))
    }

    /// A data frame's part in its message: the whole message once its last fragment is in.
    fn data_frame(
        &mut self,
        data: Data,
        is_final: bool,
        start: usize,
        end: usize,
    ) -> Result<Option<Incoming>, ReadError> {
        let binary = match (data, &mut self.fragments) {
            (Data::Continue, None) => return Err(ReadError::Protocol("continuation without a message")),
            (Data::Continue, Some((binary, so_far))) => {
                so_far.extend_from_slice(&self.buffered[start..end]);
                if !is_final {
                    return Ok(None);
                }
                let binary = *binary;
                let (_, whole) = self.fragments.take().unwrap_or_default();
                return Ok(Some(message_of(binary, Bytes::from(whole))));
            }
            (_, Some(_)) => return Err(ReadError::Protocol("new message before the last one ended")),
            (Data::Binary, None) => true,
            (Data::Text, None) => false,
            (Data::Reserved(_), None) => return Err(ReadError::Protocol("reserved opcode")),
        };
        if !is_final {
            self.fragments = Some((binary, self.buffered[start..end].to_vec()));
            return Ok(None);
        }
        if !binary {
            return Ok(Some(Incoming::Text));
        }
        // The usual case, one frame per read: hand the read's bytes over instead of copying.
        let payload = if self.consumed == 0 && end == self.buffered.len() {
            Bytes::from(std::mem::take(&mut self.buffered)).slice(start..end)
        } else {
            Bytes::copy_from_slice(&self.buffered[start..end])
        };
        Ok(Some(Incoming::Binary(payload)))
    }

    /// Marks the buffered bytes up to `end` returned; an emptied buffer gives its memory back.
    fn consume(&mut self, end: usize) {
        if end >= self.buffered.len() {
            self.buffered = Vec::new();
            self.consumed = 0;
        } else {
            self.consumed = end;
        }
    }
}

fn message_of(binary: bool, payload: Bytes) -> Incoming {
    if binary {
        Incoming::Binary(payload)
    } else {
        Incoming::Text
    }
}

fn control_message(control: Control, payload: &[u8]) -> Result<Incoming, ReadError> {
    match control {
        Control::Ping => Ok(Incoming::Ping(Bytes::copy_from_slice(payload))),
        Control::Pong => Ok(Incoming::Pong),
        Control::Close => match payload {
            [] => Ok(Incoming::Close(None)),
            [_] => Err(ReadError::Protocol("close frame of one byte")),
            [high, low, ..] => Ok(Incoming::Close(Some(u16::from_be_bytes([*high, *low])))),
        },
        Control::Reserved(_) => Err(ReadError::Protocol("reserved opcode")),
    }
}

/// Undoes a client's masking (RFC 6455, 5.3), four bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mut words = payload.chunks_exact_mut(4);
    for word in &mut words {
        let value = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]) ^ u32::from_ne_bytes(mask);
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    use super::*;

    /// A socket that hands out the given chunks, one per read, then the end of the stream.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A client's frame as tungstenite (the stock implementation) writes it, masked.
    fn client_frame(opcode: OpCode, payload: &[u8], is_final: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
        let mut out = Vec::new();
        frame.format(&mut out).expect("formats into a vector");
        out
    }

    fn binary(payload: &[u8]) -> Vec<u8> {
        client_frame(OpCode::Data(Data::Binary), payload, true)
    }

    async fn read_all(reader: &mut FrameReader, chunks: Vec<Vec<u8>>) -> Vec<Result<Incoming, String>> {
        let mut socket = Chunks(chunks.into());
        let mut out = Vec::new();
        while let Some(next) = reader.next(&mut socket).await {
            let failed = next.is_err();
            out.push(next.map_err(|e| e.to_string()));
            if failed {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn messages_split_anywhere_come_out_whole_and_leave_nothing_held() {
        let payloads: Vec<Vec<u8>> = vec![b"a".to_vec(), (0..=255).collect(), vec![7; 70_000], Vec::new()];
        let frames: Vec<Vec<u8>> = payloads.iter().map(|p| binary(p)).collect();
        let stream = frames.concat();
        for piece in [1, 2, 3, 5, 13, 126, 4096, stream.len()] {
            // Reads that end where frames end: nothing is held once a message is out.
            let aligned = frames.iter().flat_map(|f| f.chunks(piece).map(<[u8]>::to_vec));
            // Reads that straddle frames.
            let straddling = stream.chunks(piece).map(<[u8]>::to_vec);
            for (chunks, is_aligned) in [(aligned.collect::<Vec<_>>(), true), (straddling.collect(), false)] {
                let mut reader = FrameReader::new(1 << 20);
                let mut socket = Chunks(chunks.into());
                for payload in &payloads {
                    let got = reader.next(&mut socket).await.expect("a message").expect("valid");
                    assert_eq!(
                        got,
                        Incoming::Binary(Bytes::from(payload.clone())),
                        "pieces of {piece}"
                    );
                    if is_aligned {
                        assert_eq!(reader.held_bytes(), 0, "pieces of {piece}: nothing held");
                    }
                }
                assert!(reader.next(&mut socket).await.is_none());
            }
        }
    }

    #[tokio::test]
    async fn several_messages_in_one_read_come_out_one_by_one() {
        let stream = [
            binary(b"one"),
            binary(b"two"),
            client_frame(OpCode::Control(Control::Ping), b"p", true),
        ]
        .concat();
        let got = read_all(&mut FrameReader::new(100), vec![stream]).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Binary(Bytes::from_static(b"one"))),
                Ok(Incoming::Binary(Bytes::from_static(b"two"))),
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
            ]
        );
    }

    #[tokio::test]
    async fn fragments_with_a_ping_between_make_one_message() {
        let stream = [
            client_frame(OpCode::Data(Data::Binary), b"hel", false),
            client_frame(OpCode::Control(Control::Ping), b"", true),
            client_frame(OpCode::Data(Data::Continue), b"lo ", false),
            client_frame(OpCode::Data(Data::Continue), b"there", true),
            client_frame(OpCode::Data(Data::Text), b"t", true),
            client_frame(OpCode::Control(Control::Close), &[0x03, 0xe8, b'x'], true),
        ]
        .concat();
        let mut reader = FrameReader::new(100);
        let got = read_all(&mut reader, stream.chunks(4).map(<[u8]>::to_vec).collect()).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Ping(Bytes::new())),
                Ok(Incoming::Binary(Bytes::from_static(b"hello there"))),
                Ok(Incoming::Text),
                Ok(Incoming::Close(Some(1000))),
            ]
        );
        assert_eq!(reader.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_its_bytes_arrive() {
        // Only the header arrives: the claimed length alone is refused, nothing is kept for it.
        let header = &binary(&[0; 101])[..8];
        let got = read_all(&mut FrameReader::new(100), vec![header.to_vec()]).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("over the limit")),
            "{got:?}"
        );
        // A claimed length of 2^63 does not allocate or overflow either.
        let huge = [
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        let got = read_all(&mut FrameReader::new(100), vec![huge.to_vec()]).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("over the limit")),
            "{got:?}"
        );
        // Fragments count together.
        let stream = [
            client_frame(OpCode::Data(Data::Binary), &[1; 60], false),
            client_frame(OpCode::Data(Data::Continue), &[1; 60], true),
        ]
        .concat();
        let got = read_all(&mut FrameReader::new(100), vec![stream]).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("over the limit")),
            "{got:?}"
        );
        // Exactly the limit is fine.
        let got = read_all(&mut FrameReader::new(100), vec![binary(&[1; 100])]).await;
        assert!(
            matches!(&got[..], [Ok(Incoming::Binary(b))] if b.len() == 100),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        let unmasked = {
            let mut out = Vec::new();
            Frame::message(b"x".to_vec(), OpCode::Data(Data::Binary), true)
                .format(&mut out)
                .expect("formats");
            out
        };
        let mut reserved_bits = binary(b"x");
        reserved_bits[0] |= 0x40;
        let mut reserved_opcode = binary(b"x");
        reserved_opcode[0] = (reserved_opcode[0] & 0xf0) | 0x3;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved bits", reserved_bits),
            ("reserved opcode", reserved_opcode),
            (
                "control frame too long",
                client_frame(OpCode::Control(Control::Ping), &[0; 126], true),
            ),
            (
                "fragmented control",
                client_frame(OpCode::Control(Control::Ping), b"", false),
            ),
            (
                "continuation without",
                client_frame(OpCode::Data(Data::Continue), b"x", true),
            ),
            (
                "new message before",
                [
                    client_frame(OpCode::Data(Data::Binary), b"x", false),
                    binary(b"y"),
                ]
                .concat(),
            ),
            (
                "close frame of one byte",
                client_frame(OpCode::Control(Control::Close), &[3], true),
            ),
            ("end of the stream in a frame", binary(b"xyz")[..7].to_vec()),
        ];
        for (what, stream) in cases {
            let got = read_all(&mut FrameReader::new(100), vec![stream]).await;
            assert!(matches!(&got[..], [Err(_)]), "{what}: {got:?}");
        }
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_rule() {
        let mask = [1, 2, 3, 4];
        for len in 0..11 {
            let mut payload: Vec<u8> = (0..len as u8).collect();
            unmask(&mut payload, mask);
            let expected: Vec<u8> = (0..len as u8).map(|i| i ^ mask[usize::from(i) % 4]).collect();
            assert_eq!(payload, expected);
        }
    }
}
