//! The y-websocket protocol (y-protocols, v1 encoding), one message per binary frame, and
//! Troupe's durable ack.
//!
//! ```text
//! sync         0, varuint sub (0 step1 | 1 step2 | 2 update), varUint8Array payload
//! awareness    1, varUint8Array (varuint count, count x (varuint client, varuint clock, varString json))
//! auth         2, varuint (0 denied | 1 granted) [, varString reason when denied]
//! query        3
//! ack          100, varuint n        (Troupe extension, only with `?acks=1`)
//! ```
//!
//! [`Message`] borrows its payloads from the frame: decoding copies nothing and checks every
//! length against the bytes that are there. What a payload means (is this update valid for
//! this document?) is the receiver's business, not the wire's.

use crate::lib0::{self, Lib0Error, Reader};

/// Top-level message types.
pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Troupe extension: "your first `n` update-bearing messages are committed". Sent only to
/// connections that opted in with `?acks=1`; stock clients never see it.
pub const MSG_ACK: u64 = 100;

/// Sub-types of a sync message.
pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// One y-websocket message, in either direction, borrowing from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// The sender's state vector: answer with the updates it misses.
    SyncStep1(&'a [u8]),
    /// The updates the receiver of a step 1 misses.
    SyncStep2(&'a [u8]),
    /// A live edit.
    Update(&'a [u8]),
    /// Presence states (see [`decode_awareness`]).
    Awareness(&'a [u8]),
    /// `None`: permission granted; `Some(reason)`: denied.
    Auth(Option<&'a str>),
    /// Asks for everyone's presence.
    QueryAwareness,
    /// Troupe durable ack: the first `n` update-bearing messages are committed.
    Ack(u64),
}

/// Why a frame is not a message.
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
    #[error("{count} awareness entries exceed the limit of {max}")]
    TooManyEntries { count: u64, max: usize },
}

impl From<Lib0Error> for WireError {
    fn from(e: Lib0Error) -> Self {
        match e {
            Lib0Error::Truncated => WireError::Truncated,
            Lib0Error::VarIntOverflow => WireError::VarInt,
            Lib0Error::InvalidUtf8 => WireError::Utf8,
            Lib0Error::TrailingBytes => WireError::TrailingBytes,
        }
    }
}

impl WireError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty_frame",
            Self::Truncated => "truncated",
            Self::VarInt => "bad_varint",
            Self::UnknownType(_) => "unknown_type",
            Self::UnknownSyncType(_) => "unknown_sync_type",
            Self::Utf8 => "bad_utf8",
            Self::TrailingBytes => "trailing_bytes",
            Self::TooManyEntries { .. } => "too_many_entries",
        }
    }
}

impl<'a> Message<'a> {
    /// Decodes one frame; bytes after the message are an error.
    pub fn decode(frame: &'a [u8]) -> Result<Message<'a>, WireError> {
        let mut r = Reader::new(frame);
        if r.is_empty() {
            return Err(WireError::Empty);
        }
        let msg = match message_type(&mut r)? {
            MSG_SYNC => {
                let sub = r.var_u64()?;
                let payload = r.var_bytes()?;
                match sub {
                    SYNC_STEP1 => Message::SyncStep1(payload),
                    SYNC_STEP2 => Message::SyncStep2(payload),
                    SYNC_UPDATE => Message::Update(payload),
                    other => return Err(WireError::UnknownSyncType(other)),
                }
            }
            MSG_AWARENESS => Message::Awareness(r.var_bytes()?),
            MSG_AUTH => match r.var_u64()? {
                0 => Message::Auth(Some(r.var_str()?)),
                _ => Message::Auth(None),
            },
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            MSG_ACK => Message::Ack(r.var_u64()?),
            other => return Err(WireError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Message::SyncStep1(sv) => sync_message(SYNC_STEP1, sv),
            Message::SyncStep2(update) => sync_message(SYNC_STEP2, update),
            Message::Update(update) => sync_message(SYNC_UPDATE, update),
            Message::Awareness(payload) => {
                let mut out = Vec::with_capacity(payload.len() + 6);
                lib0::write_var_u64(&mut out, MSG_AWARENESS);
                lib0::write_var_bytes(&mut out, payload);
                out
            }
            Message::Auth(reason) => {
                let mut out = Vec::new();
                lib0::write_var_u64(&mut out, MSG_AUTH);
                match reason {
                    Some(reason) => {
                        lib0::write_var_u64(&mut out, 0);
                        lib0::write_var_bytes(&mut out, reason.as_bytes());
                    }
                    None => lib0::write_var_u64(&mut out, 1),
                }
                out
            }
            Message::QueryAwareness => vec![MSG_QUERY_AWARENESS as u8],
            Message::Ack(n) => {
                let mut out = Vec::with_capacity(11);
                lib0::write_var_u64(&mut out, MSG_ACK);
                lib0::write_var_u64(&mut out, n);
                out
            }
        }
    }

    /// Whether this message carries document changes, and so counts towards durable acks.
    pub fn is_update_bearing(&self) -> bool {
        matches!(self, Message::SyncStep2(_) | Message::Update(_))
    }
}

/// The type of the message at the start of a frame, without decoding the rest.
pub fn peek_type(frame: &[u8]) -> Result<u64, WireError> {
    if frame.is_empty() {
        return Err(WireError::Empty);
    }
    message_type(&mut Reader::new(frame))
}

fn message_type(r: &mut Reader<'_>) -> Result<u64, WireError> {
    Ok(r.var_u64()?)
}

fn sync_message(sub: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    lib0::write_var_u64(&mut out, MSG_SYNC);
    lib0::write_var_u64(&mut out, sub);
    lib0::write_var_bytes(&mut out, payload);
    out
}

/// Our state vector, asking the peer for what we miss.
pub fn encode_sync_step1(state_vector: &[u8]) -> Vec<u8> {
    Message::SyncStep1(state_vector).encode()
}

/// The updates a peer misses, answering its step 1.
pub fn encode_sync_step2(update: &[u8]) -> Vec<u8> {
    Message::SyncStep2(update).encode()
}

/// A live edit.
pub fn encode_update(update: &[u8]) -> Vec<u8> {
    Message::Update(update).encode()
}

/// A durable ack: the first `count` update-bearing messages of this connection are stored.
pub fn encode_ack(count: u64) -> Vec<u8> {
    Message::Ack(count).encode()
}

/// One client's presence in an awareness message, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    pub client_id: u64,
    pub clock: u64,
    /// The state as JSON text; `null` means the client went away.
    pub state: &'a str,
}

impl AwarenessEntry<'_> {
    /// Whether this entry removes the client's state (y-protocols encodes removal as `null`).
    pub fn is_removal(&self) -> bool {
        self.state.trim() == "null"
    }
}

/// Decodes the payload of an awareness message, refusing more than `max_entries` entries.
/// Only the structure is checked here; whether the states are JSON is the receiver's check.
pub fn decode_awareness(payload: &[u8], max_entries: usize) -> Result<Vec<AwarenessEntry<'_>>, WireError> {
    let mut r = Reader::new(payload);
    // An entry is at least 3 bytes: client, clock, empty string length.
    let count = r.count(3)?;
    if count > max_entries as u64 {
        return Err(WireError::TooManyEntries {
            count,
            max: max_entries,
        });
    }
    // `count` is bounded by both the input length and `max_entries`.
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        entries.push(AwarenessEntry {
            client_id: r.var_u64()?,
            clock: r.var_u64()?,
            state: r.var_str()?,
        });
    }
    r.finish()?;
    Ok(entries)
}

/// An awareness message from entries `(client id, clock, JSON state)`.
pub fn encode_awareness<'a>(entries: impl ExactSizeIterator<Item = (u64, u64, &'a str)>) -> Vec<u8> {
    let mut body = Vec::new();
    lib0::write_var_u64(&mut body, entries.len() as u64);
    for (client, clock, state) in entries {
        lib0::write_var_u64(&mut body, client);
        lib0::write_var_u64(&mut body, clock);
        lib0::write_var_bytes(&mut body, state.as_bytes());
    }
    Message::Awareness(&body).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message<'_>) {
        let frame = m.encode();
        assert_eq!(Message::decode(&frame), Ok(m));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::SyncStep1(&[1, 2, 3]));
        round_trip(Message::SyncStep2(&[0, 0]));
        round_trip(Message::Update(&[7u8; 300]));
        round_trip(Message::Awareness(&[1, 5, 1, 2, b'{', b'}']));
        round_trip(Message::QueryAwareness);
        round_trip(Message::Auth(None));
        round_trip(Message::Auth(Some("no access")));
        round_trip(Message::Ack(0));
        round_trip(Message::Ack(u64::MAX));
    }

    #[test]
    fn known_bytes() {
        // The same bytes as y-protocols' writeSyncStep1 / writeUpdate for these payloads.
        assert_eq!(encode_sync_step1(&[0]), vec![0, 0, 1, 0]);
        assert_eq!(encode_update(&[0, 0]), vec![0, 2, 2, 0, 0]);
        assert_eq!(Message::QueryAwareness.encode(), vec![3]);
        assert_eq!(encode_ack(300), vec![100, 0xac, 0x02]);
        assert_eq!(
            encode_awareness([(5u64, 1u64, "{}")].into_iter()),
            vec![1, 6, 1, 5, 1, 2, b'{', b'}']
        );
    }

    #[test]
    fn awareness_round_trips() {
        let frame = encode_awareness(
            [
                (7u64, 3u64, r#"{"user":{"name":"A"}}"#),
                ((1 << 53) - 1, 1, "null"),
            ]
            .into_iter(),
        );
        let Ok(Message::Awareness(payload)) = Message::decode(&frame) else {
            panic!("not awareness");
        };
        let entries = decode_awareness(payload, 16).unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].client_id, entries[0].clock), (7, 3));
        assert_eq!(entries[0].state, r#"{"user":{"name":"A"}}"#);
        assert!(entries[1].is_removal());
        assert_eq!(
            decode_awareness(payload, 1),
            Err(WireError::TooManyEntries { count: 2, max: 1 })
        );
    }

    #[test]
    fn frames_from_the_yrs_encoder_decode() {
        use yrs::updates::encoder::Encode;
        use yrs::{Doc, ReadTxn, StateVector, Text, Transact};
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        text.push(&mut doc.transact_mut(), "hello");
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let frame = yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update.clone())).encode_v1();
        assert_eq!(Message::decode(&frame), Ok(Message::Update(&update)));
        assert_eq!(frame, encode_update(&update));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Empty),
            (&[0xff; 12], WireError::VarInt),
            (&[0x80], WireError::Truncated),
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
            (&[2, 0, 1, 0xff], WireError::Utf8),
        ];
        for (frame, want) in cases {
            assert_eq!(Message::decode(frame).as_ref(), Err(want), "frame {frame:?}");
        }
        // A length prefix claiming far more than the frame holds.
        let mut frame = vec![0, 2];
        lib0::write_var_u64(&mut frame, 1 << 40);
        assert_eq!(Message::decode(&frame), Err(WireError::Truncated));
        // Awareness claiming 2^28 entries in a 5-byte payload, and a cut-off entry.
        assert_eq!(
            decode_awareness(&[0x80, 0x80, 0x80, 0x80, 0x01], usize::MAX),
            Err(WireError::Truncated)
        );
        assert_eq!(decode_awareness(&[1, 1, 1, 5], 4), Err(WireError::Truncated));
        assert_eq!(decode_awareness(&[1, 1, 1, 1, 0xff], 4), Err(WireError::Utf8));
    }
}
