//! The y-websocket wire format (y-protocols v1): one message per binary WebSocket frame.
//!
//! ```text
//! sync         0, varuint sub (0 step1 | 1 step2 | 2 update), varUint8Array payload
//! awareness    1, varUint8Array (varuint count, count x (varuint client, varuint clock, varString json))
//! auth         2, varuint (0 denied | 1 granted) [, varString reason when denied]
//! query        3
//! ack          100, varuint n        (Troupe extension, only with `?acks=1`)
//! ```
//!
//! The constants and encoders are the node's ([`troupe_node::protocol`]). Decoding is the
//! client's own: the node only parses (and validates) client-to-server frames, while a client
//! reads what a server sends, including auth and ack messages.
//!
//! Decoding never trusts a length: every count and size is checked against the bytes that are
//! actually in the frame, and payloads are zero-copy slices of the frame.

use bytes::Bytes;
use troupe_node::protocol::{
    encode_ack, encode_sync_step1, encode_sync_step2, encode_update, write_var_bytes, write_var_uint,
};

// The message types and sync sub-types are the node's, so both ends share one definition.
pub use troupe_node::protocol::{
    MSG_ACK, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
};

/// One entry of an awareness update: a client's presence state at a logical clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client_id: u64,
    pub clock: u64,
    /// The state as JSON text; `"null"` means the client went away.
    pub state: String,
}

impl AwarenessEntry {
    /// Whether this entry removes the client's state (y-protocols encodes removal as `null`).
    pub fn is_removal(&self) -> bool {
        self.state.trim() == "null"
    }
}

/// One y-websocket message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The sender's encoded state vector (v1).
    SyncStep1(Bytes),
    /// The updates the receiver of a step 1 misses (v1 update).
    SyncStep2(Bytes),
    /// A live edit (v1 update).
    Update(Bytes),
    /// Presence states.
    Awareness(Vec<AwarenessEntry>),
    /// `None`: permission granted; `Some(reason)`: denied.
    Auth(Option<String>),
    /// Asks for all awareness states.
    QueryAwareness,
    /// Troupe durable ack: the first `n` update-bearing messages are committed.
    Ack(u64),
}

impl Message {
    /// Whether this message counts towards Troupe's durable acks (sync step 2 and update).
    pub fn is_update_bearing(&self) -> bool {
        matches!(self, Message::SyncStep2(_) | Message::Update(_))
    }

    /// Encodes the message as one frame (with the node's encoders where it has one).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::SyncStep1(sv) => encode_sync_step1(sv),
            Message::SyncStep2(u) => encode_sync_step2(u),
            Message::Update(u) => encode_update(u),
            Message::Awareness(entries) => troupe_node::protocol::encode_awareness(
                entries.iter().map(|e| (e.client_id, e.clock, e.state.as_str())),
            ),
            Message::Auth(reason) => {
                let mut out = Vec::new();
                write_var_uint(&mut out, MSG_AUTH);
                match reason {
                    Some(reason) => {
                        write_var_uint(&mut out, 0);
                        write_var_bytes(&mut out, reason.as_bytes());
                    }
                    None => write_var_uint(&mut out, 1),
                }
                out
            }
            Message::QueryAwareness => {
                let mut out = Vec::new();
                write_var_uint(&mut out, MSG_QUERY_AWARENESS);
                out
            }
            Message::Ack(n) => encode_ack(*n),
        }
    }

    /// Decodes one frame. Trailing bytes after the message are an error.
    pub fn decode(frame: &Bytes) -> Result<Message, WireError> {
        let mut r = Reader::new(frame);
        if r.is_empty() {
            return Err(WireError::Empty);
        }
        let msg = match r.var_uint()? {
            MSG_SYNC => {
                let sub = r.var_uint()?;
                let payload = r.var_bytes()?;
                match sub {
                    SYNC_STEP1 => Message::SyncStep1(payload),
                    SYNC_STEP2 => Message::SyncStep2(payload),
                    SYNC_UPDATE => Message::Update(payload),
                    other => return Err(WireError::UnknownSyncType(other)),
                }
            }
            MSG_AWARENESS => {
                let payload = r.var_bytes()?;
                Message::Awareness(decode_awareness(&payload)?)
            }
            MSG_AUTH => {
                if r.var_uint()? == 0 {
                    let reason = r.var_bytes()?;
                    let reason = std::str::from_utf8(&reason).map_err(|_| WireError::Utf8)?;
                    Message::Auth(Some(reason.to_owned()))
                } else {
                    Message::Auth(None)
                }
            }
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            MSG_ACK => Message::Ack(r.var_uint()?),
            other => return Err(WireError::UnknownType(other)),
        };
        if !r.is_empty() {
            return Err(WireError::TrailingBytes);
        }
        Ok(msg)
    }
}

/// Decodes the payload of an awareness message.
pub fn decode_awareness(payload: &Bytes) -> Result<Vec<AwarenessEntry>, WireError> {
    let mut r = Reader::new(payload);
    let count = r.var_uint()?;
    // Each entry takes at least 3 bytes: never reserve more than the payload can hold.
    if count > (r.remaining() / 3) as u64 {
        return Err(WireError::Truncated);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client_id = r.var_uint()?;
        let clock = r.var_uint()?;
        let state = r.var_bytes()?;
        let state = std::str::from_utf8(&state).map_err(|_| WireError::Utf8)?;
        entries.push(AwarenessEntry {
            client_id,
            clock,
            state: state.to_owned(),
        });
    }
    if !r.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(entries)
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("truncated message")]
    Truncated,
    #[error("malformed varint")]
    VarInt,
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("trailing bytes after message")]
    TrailingBytes,
}

/// lib0 reader over a frame; payloads are zero-copy slices.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn var_uint(&mut self) -> Result<u64, WireError> {
        let mut n: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            // 10 bytes hold 64 bits; the 10th may only contribute its lowest bit.
            if shift == 63 && bits > 1 {
                return Err(WireError::VarInt);
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
            shift += 7;
            if shift > 63 {
                return Err(WireError::VarInt);
            }
        }
    }

    fn var_bytes(&mut self) -> Result<Bytes, WireError> {
        let len = self.var_uint()?;
        if len > self.remaining() as u64 {
            return Err(WireError::Truncated);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(self.buf.slice(start..self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let frame = Bytes::from(m.encode());
        assert_eq!(Message::decode(&frame), Ok(m));
    }

    #[test]
    fn every_message_roundtrips() {
        roundtrip(Message::SyncStep1(Bytes::from_static(&[1, 2, 3])));
        roundtrip(Message::SyncStep2(Bytes::from_static(&[0, 0])));
        roundtrip(Message::Update(Bytes::from(vec![7u8; 300])));
        roundtrip(Message::QueryAwareness);
        roundtrip(Message::Auth(None));
        roundtrip(Message::Auth(Some("no access".into())));
        roundtrip(Message::Ack(0));
        roundtrip(Message::Ack(u64::MAX));
        roundtrip(Message::Awareness(vec![
            AwarenessEntry {
                client_id: (1 << 53) - 1,
                clock: 4,
                state: r#"{"user":{"name":"Ada"}}"#.into(),
            },
            AwarenessEntry {
                client_id: 9,
                clock: 1,
                state: "null".into(),
            },
        ]));
    }

    #[test]
    fn known_bytes() {
        // Same bytes as y-protocols' writeSyncStep1 / writeUpdate for the given payloads.
        assert_eq!(
            Message::SyncStep1(Bytes::from_static(&[0])).encode(),
            vec![0, 0, 1, 0]
        );
        assert_eq!(
            Message::Update(Bytes::from_static(&[0, 0])).encode(),
            vec![0, 2, 2, 0, 0]
        );
        assert_eq!(Message::QueryAwareness.encode(), vec![3]);
        assert_eq!(Message::Ack(300).encode(), vec![100, 0xac, 0x02]);
        let aw = Message::Awareness(vec![AwarenessEntry {
            client_id: 5,
            clock: 1,
            state: "{}".into(),
        }]);
        assert_eq!(aw.encode(), vec![1, 6, 1, 5, 1, 2, b'{', b'}']);
    }

    #[test]
    fn frames_from_the_yrs_encoder_decode() {
        use yrs::updates::decoder::Decode;
        use yrs::updates::encoder::Encode;
        use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        text.push(&mut doc.transact_mut(), "hello");
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let frame = yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update.clone())).encode_v1();
        let Ok(Message::Update(got)) = Message::decode(&Bytes::from(frame)) else {
            panic!("not an update");
        };
        assert_eq!(&got[..], &update[..]);
        let other = Doc::new();
        let t2 = other.get_or_insert_text("text");
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&got).expect("decode"))
            .expect("apply");
        assert_eq!(t2.get_string(&other.transact()), "hello");
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Empty),
            (&[0], WireError::Truncated),
            (&[0, 2], WireError::Truncated),
            (&[0, 2, 5, 1, 2], WireError::Truncated),
            (&[0, 9, 0], WireError::UnknownSyncType(9)),
            (&[7], WireError::UnknownType(7)),
            (&[3, 0], WireError::TrailingBytes),
            (&[100], WireError::Truncated),
            (&[100, 0x80], WireError::Truncated),
            (
                &[100, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                WireError::VarInt,
            ),
            // Awareness claiming 2^28 entries in a 5-byte payload.
            (&[1, 5, 0x80, 0x80, 0x80, 0x80, 0x01], WireError::Truncated),
            (&[1, 4, 1, 1, 1, 5], WireError::Truncated),
            (&[1, 5, 1, 1, 1, 1, 0xff], WireError::Utf8),
            (&[2, 0, 1, 0xff], WireError::Utf8),
        ];
        for (frame, want) in cases {
            let got = Message::decode(&Bytes::copy_from_slice(frame));
            assert_eq!(got.as_ref(), Err(want), "frame {frame:?}");
        }
    }

    #[test]
    fn varuint_edges() {
        for n in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write_var_uint(&mut buf, n);
            let b = Bytes::from(buf);
            let mut r = Reader::new(&b);
            assert_eq!(r.var_uint(), Ok(n));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn update_bearing() {
        assert!(Message::SyncStep2(Bytes::new()).is_update_bearing());
        assert!(Message::Update(Bytes::new()).is_update_bearing());
        assert!(!Message::SyncStep1(Bytes::new()).is_update_bearing());
        assert!(!Message::Awareness(vec![]).is_update_bearing());
    }
}
