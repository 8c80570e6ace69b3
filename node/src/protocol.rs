//! The y-websocket wire protocol (y-protocols, v1 encoding), one message per binary frame.
//!
//! Frames come from untrusted clients, so parsing borrows from the frame, checks every
//! length against the bytes that are actually there, and validates update payloads with
//! [`crate::update_check`] before anything reaches yrs.

use std::ops::Range;

use bytes::Bytes;

use crate::update_check::{self, AwarenessEntry, CheckLimits, InvalidUpdate};

/// Top-level message types of y-websocket.
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

/// Bounds applied while parsing a client frame.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub check: CheckLimits,
    /// Most awareness entries one message may carry.
    pub max_awareness_entries: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            check: CheckLimits::default(),
            max_awareness_entries: 16,
        }
    }
}

/// A validated message from a client, borrowing from its frame.
#[derive(Debug, PartialEq)]
pub enum ClientMessage<'a> {
    /// The client's state vector: answer with the updates it misses.
    SyncStep1(&'a [u8]),
    /// Updates the client has that we asked for (answer to our step 1).
    SyncStep2(&'a [u8]),
    /// A live edit.
    Update(&'a [u8]),
    /// Presence: cursors, names, typing.
    Awareness(Vec<AwarenessEntry<'a>>),
    /// The client asks for everyone's presence.
    QueryAwareness,
    /// Auth messages from clients carry nothing the server acts on.
    Auth,
}

impl ClientMessage<'_> {
    /// Whether this message carries document changes (and so counts towards acks).
    pub fn is_update(&self) -> bool {
        matches!(self, Self::SyncStep2(_) | Self::Update(_))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
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
    #[error("trailing bytes after message")]
    TrailingBytes,
    #[error("invalid payload: {0}")]
    Payload(#[from] InvalidUpdate),
}

impl ProtocolError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty_frame",
            Self::Truncated => "truncated",
            Self::VarInt => "bad_varint",
            Self::UnknownType(_) => "unknown_type",
            Self::UnknownSyncType(_) => "unknown_sync_type",
            Self::TrailingBytes => "trailing_bytes",
            Self::Payload(_) => "invalid_payload",
        }
    }
}

/// Parses and validates one client frame.
pub fn parse_client_frame<'a>(
    frame: &'a [u8],
    limits: &ParseLimits,
) -> Result<ClientMessage<'a>, ProtocolError> {
    if frame.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let mut r = Reader::new(frame);
    let msg = match r.var_uint()? {
        MSG_SYNC => {
            let sub = r.var_uint()?;
            let payload = r.var_bytes()?;
            match sub {
                SYNC_STEP1 => {
                    update_check::check_state_vector_v1(payload)?;
                    ClientMessage::SyncStep1(payload)
                }
                SYNC_STEP2 => {
                    update_check::check_update_v1(payload, limits.check)?;
                    ClientMessage::SyncStep2(payload)
                }
                SYNC_UPDATE => {
                    update_check::check_update_v1(payload, limits.check)?;
                    ClientMessage::Update(payload)
                }
                other => return Err(ProtocolError::UnknownSyncType(other)),
            }
        }
        MSG_AWARENESS => {
            let payload = r.var_bytes()?;
            let entries = update_check::parse_awareness_v1(payload, limits.max_awareness_entries)?;
            ClientMessage::Awareness(entries)
        }
        MSG_QUERY_AWARENESS => ClientMessage::QueryAwareness,
        MSG_AUTH => {
            // An auth message's body (a permission flag and a reason) is not needed.
            return Ok(ClientMessage::Auth);
        }
        other => return Err(ProtocolError::UnknownType(other)),
    };
    if !r.is_empty() {
        return Err(ProtocolError::TrailingBytes);
    }
    Ok(msg)
}

/// What a validated frame carries; the payload bytes stay in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    SyncStep1,
    SyncStep2,
    Update,
    Awareness,
    QueryAwareness,
    Auth,
}

/// A frame that passed [`parse_client_frame`], owned so it can travel to the room task
/// without copying or validating again.
#[derive(Debug, Clone)]
pub struct ValidFrame {
    pub kind: MessageKind,
    frame: Bytes,
    payload: Range<usize>,
}

impl ValidFrame {
    /// The message's payload: state vector, update or awareness update.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.clone()]
    }

    pub fn is_update(&self) -> bool {
        matches!(self.kind, MessageKind::SyncStep2 | MessageKind::Update)
    }
}

/// Validates a frame and keeps it for the room. Awareness entries are parsed again by the
/// room (they are small); updates are checked once, here, off the room's task.
pub fn validate_frame(frame: Bytes, limits: &ParseLimits) -> Result<ValidFrame, ProtocolError> {
    let (kind, payload) = match parse_client_frame(&frame, limits)? {
        ClientMessage::SyncStep1(p) => (MessageKind::SyncStep1, p),
        ClientMessage::SyncStep2(p) => (MessageKind::SyncStep2, p),
        ClientMessage::Update(p) => (MessageKind::Update, p),
        ClientMessage::Awareness(_) => (MessageKind::Awareness, awareness_payload(&frame)?),
        ClientMessage::QueryAwareness => (MessageKind::QueryAwareness, &frame[frame.len()..]),
        ClientMessage::Auth => (MessageKind::Auth, &frame[frame.len()..]),
    };
    let start = payload.as_ptr() as usize - frame.as_ptr() as usize;
    let payload = start..start + payload.len();
    Ok(ValidFrame { kind, frame, payload })
}

fn awareness_payload(frame: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(frame);
    r.var_uint()?;
    r.var_bytes()
}

/// Cursor over a borrowed frame.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn var_uint(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            let bits = u64::from(byte & 0x7f);
            let shift = 7 * i as u32;
            if shift == 63 && bits > 1 {
                return Err(ProtocolError::VarInt);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() >= 10 {
            Err(ProtocolError::VarInt)
        } else {
            Err(ProtocolError::Truncated)
        }
    }

    fn var_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.var_uint()?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated)?;
        if len > self.buf.len() {
            return Err(ProtocolError::Truncated);
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }
}

/// Appends a lib0 variable-length unsigned integer.
pub fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte string.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn sync_message(sub: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    write_var_uint(&mut out, MSG_SYNC);
    write_var_uint(&mut out, sub);
    write_var_bytes(&mut out, payload);
    out
}

/// Our state vector, asking the client for what we miss.
pub fn encode_sync_step1(state_vector: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP1, state_vector)
}

/// The updates a client misses, answering its step 1.
pub fn encode_sync_step2(update: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP2, update)
}

/// A live edit to fan out.
pub fn encode_update(update: &[u8]) -> Vec<u8> {
    sync_message(SYNC_UPDATE, update)
}

/// An awareness message from raw entries `(client id, clock, JSON state)`.
pub fn encode_awareness<'a>(entries: impl ExactSizeIterator<Item = (u64, u64, &'a str)>) -> Vec<u8> {
    let mut body = Vec::new();
    write_var_uint(&mut body, entries.len() as u64);
    for (client, clock, state) in entries {
        write_var_uint(&mut body, client);
        write_var_uint(&mut body, clock);
        write_var_bytes(&mut body, state.as_bytes());
    }
    let mut out = Vec::with_capacity(body.len() + 6);
    write_var_uint(&mut out, MSG_AWARENESS);
    write_var_bytes(&mut out, &body);
    out
}

/// A durable ack: the first `count` update-bearing messages of this connection are stored.
pub fn encode_ack(count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    write_var_uint(&mut out, MSG_ACK);
    write_var_uint(&mut out, count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    fn text_update() -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "INT. KITCHEN - NIGHT");
        txn.encode_update_v1()
    }

    #[test]
    fn round_trips_sync_messages() {
        let update = text_update();
        let limits = ParseLimits::default();
        let frame = encode_update(&update);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Ok(ClientMessage::Update(&update[..]))
        );
        let frame = encode_sync_step2(&update);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Ok(ClientMessage::SyncStep2(&update[..]))
        );
        let sv = StateVector::default().encode_v1();
        let frame = encode_sync_step1(&sv);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Ok(ClientMessage::SyncStep1(&sv[..]))
        );
        // The update still applies after the round trip.
        let doc = Doc::new();
        let txt = doc.get_or_insert_text("text");
        let mut txn = doc.transact_mut();
        txn.apply_update(yrs::Update::decode_v1(&update).unwrap())
            .unwrap();
        assert_eq!(txt.get_string(&txn), "INT. KITCHEN - NIGHT");
        assert!(txn.state_vector().len() == 1);
    }

    #[test]
    fn round_trips_awareness_and_query() {
        let frame = encode_awareness([(7u64, 3u64, r#"{"user":{"name":"A"}}"#)].into_iter());
        let msg = parse_client_frame(&frame, &ParseLimits::default()).unwrap();
        let ClientMessage::Awareness(entries) = msg else {
            panic!("not awareness: {msg:?}")
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].client_id, 7);
        assert_eq!(entries[0].clock, 3);
        assert_eq!(entries[0].state, r#"{"user":{"name":"A"}}"#);
        assert_eq!(
            parse_client_frame(&[3], &ParseLimits::default()),
            Ok(ClientMessage::QueryAwareness)
        );
    }

    #[test]
    fn rejects_garbage() {
        let limits = ParseLimits::default();
        let cases: &[(&[u8], ProtocolError)] = &[
            (&[], ProtocolError::Empty),
            (&[0xff; 12], ProtocolError::VarInt),
            (&[0x80], ProtocolError::Truncated),
            (&[9], ProtocolError::UnknownType(9)),
            (&[0, 7, 0], ProtocolError::UnknownSyncType(7)),
            (&[0, 2, 50, 1, 2], ProtocolError::Truncated),
            (&[3, 0], ProtocolError::TrailingBytes),
        ];
        for (frame, expected) in cases {
            assert_eq!(parse_client_frame(frame, &limits).as_ref(), Err(expected));
        }
        // A length prefix claiming far more than the frame holds.
        let mut frame = vec![0, 2];
        write_var_uint(&mut frame, 1 << 40);
        assert_eq!(parse_client_frame(&frame, &limits), Err(ProtocolError::Truncated));
        // A corrupt update inside a well-formed envelope.
        let frame = encode_update(&[5, 1, 2, 3]);
        assert!(matches!(
            parse_client_frame(&frame, &limits),
            Err(ProtocolError::Payload(_))
        ));
    }

    #[test]
    fn var_uint_round_trips() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_var_uint(&mut out, value);
            assert_eq!(Reader::new(&out).var_uint(), Ok(value));
        }
    }
}
