//! What a node accepts from a client: a y-websocket frame ([`troupe_proto::message`]) whose
//! payload is valid for a document (checked by [`crate::update_check`] before anything
//! reaches yrs).
//!
//! Frames come from untrusted clients, so parsing borrows from the frame and checks every
//! length against the bytes that are actually there.

use std::ops::Range;

use bytes::Bytes;
use troupe_proto::message::{peek_type, Message, WireError, MSG_ACK, MSG_AUTH, MSG_AWARENESS};

use crate::update_check::{self, AwarenessEntry, CheckLimits, InvalidUpdate, Starts};

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
    /// Updates the client has that we asked for (answer to our step 1), and where they begin.
    SyncStep2(&'a [u8], Starts),
    /// A live edit, and where it begins.
    Update(&'a [u8], Starts),
    /// Presence: cursors, names, typing.
    Awareness(Vec<AwarenessEntry<'a>>),
    /// The client asks for everyone's presence.
    QueryAwareness,
    /// Auth messages from clients carry nothing the server acts on.
    Auth,
}

/// Why a client frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("invalid payload: {0}")]
    Payload(#[from] InvalidUpdate),
}

impl ProtocolError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Wire(e) => e.label(),
            Self::Payload(_) => "invalid_payload",
        }
    }
}

/// Parses and validates one client frame.
pub fn parse_client_frame<'a>(
    frame: &'a [u8],
    limits: &ParseLimits,
) -> Result<ClientMessage<'a>, ProtocolError> {
    // An auth message's body (a permission flag and a reason) is not needed.
    if peek_type(frame)? == MSG_AUTH {
        return Ok(ClientMessage::Auth);
    }
    Ok(match Message::decode(frame)? {
        Message::SyncStep1(sv) => {
            update_check::check_state_vector_v1(sv)?;
            ClientMessage::SyncStep1(sv)
        }
        Message::SyncStep2(update) => {
            let checked = update_check::check_update_v1(update, limits.check)?;
            ClientMessage::SyncStep2(update, checked.starts)
        }
        Message::Update(update) => {
            let checked = update_check::check_update_v1(update, limits.check)?;
            ClientMessage::Update(update, checked.starts)
        }
        Message::Awareness(payload) => ClientMessage::Awareness(update_check::parse_awareness_v1(
            payload,
            limits.max_awareness_entries,
        )?),
        Message::QueryAwareness => ClientMessage::QueryAwareness,
        // Acks only ever go from a node to its clients.
        Message::Ack(_) => return Err(WireError::UnknownType(MSG_ACK).into()),
        Message::Auth(_) => ClientMessage::Auth,
    })
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
    /// An update's starts, client by client (empty for other messages).
    starts: Starts,
}

impl ValidFrame {
    /// The message's payload: state vector, update or awareness update.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.clone()]
    }

    /// Where an update's structs begin (see [`Starts::place`]).
    pub fn starts(&self) -> &Starts {
        &self.starts
    }

    /// The frame itself when it is, byte for byte, the update message the node would send
    /// for this payload: it can then be fanned out as received, without a copy.
    pub fn as_update_message(&self) -> Option<Bytes> {
        let header = 2 + var_uint_len(self.payload.len() as u64);
        let canonical = self.payload.start == header && self.payload.end == self.frame.len();
        (self.kind == MessageKind::Update && canonical).then(|| self.frame.clone())
    }
}

/// Validates a frame and keeps it for the room. Awareness entries are parsed again by the
/// room (they are small); updates are checked once, here, off the room's task.
pub fn validate_frame(frame: Bytes, limits: &ParseLimits) -> Result<ValidFrame, ProtocolError> {
    let none = Starts::default;
    let (kind, payload, starts) = match parse_client_frame(&frame, limits)? {
        ClientMessage::SyncStep1(p) => (MessageKind::SyncStep1, p, none()),
        ClientMessage::SyncStep2(p, starts) => (MessageKind::SyncStep2, p, starts),
        ClientMessage::Update(p, starts) => (MessageKind::Update, p, starts),
        ClientMessage::Awareness(_) => (MessageKind::Awareness, awareness_payload(&frame)?, none()),
        ClientMessage::QueryAwareness => (MessageKind::QueryAwareness, &frame[frame.len()..], none()),
        ClientMessage::Auth => (MessageKind::Auth, &frame[frame.len()..], none()),
    };
    let start = payload.as_ptr() as usize - frame.as_ptr() as usize;
    let payload = start..start + payload.len();
    Ok(ValidFrame {
        kind,
        frame,
        payload,
        starts,
    })
}

/// Bytes of `value` as a lib0 varuint (7 bits per byte).
fn var_uint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn awareness_payload(frame: &[u8]) -> Result<&[u8], ProtocolError> {
    match Message::decode(frame)? {
        Message::Awareness(payload) => Ok(payload),
        _ => Err(WireError::UnknownType(MSG_AWARENESS).into()),
    }
}

#[cfg(test)]
mod tests {
    use troupe_proto::message::{encode_awareness, encode_sync_step1, encode_sync_step2, encode_update};

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

    fn starts_of(update: &[u8]) -> Starts {
        update_check::check_update_v1(update, CheckLimits::default())
            .expect("valid")
            .starts
    }

    #[test]
    fn an_update_is_fanned_out_as_received_only_when_it_is_the_message_the_node_would_write() {
        let update = text_update();
        let limits = ParseLimits::default();
        let frame = Bytes::from(encode_update(&update));
        let valid = validate_frame(frame.clone(), &limits).expect("valid");
        assert_eq!(valid.as_update_message(), Some(frame));
        assert_eq!(valid.starts(), &starts_of(&update));
        // The node answers with update messages, never sync steps 2.
        let step2 = validate_frame(encode_sync_step2(&update).into(), &limits).expect("valid");
        assert_eq!(step2.as_update_message(), None);
        // A length in more bytes than it needs is read, but not passed on as it came.
        assert!(update.len() < 0x80);
        let mut padded = vec![0, 2, 0x80 | update.len() as u8, 0];
        padded.extend_from_slice(&update);
        let padded = validate_frame(padded.into(), &limits).expect("a padded length is still a length");
        assert_eq!(padded.payload(), &update[..]);
        assert_eq!(padded.as_update_message(), None);
    }

    #[test]
    fn varuint_lengths_match_the_encoder() {
        for value in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut encoded = Vec::new();
            troupe_proto::lib0::write_var_u64(&mut encoded, value);
            assert_eq!(var_uint_len(value), encoded.len(), "{value}");
        }
    }

    #[test]
    fn round_trips_sync_messages() {
        let update = text_update();
        let limits = ParseLimits::default();
        let frame = encode_update(&update);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Ok(ClientMessage::Update(&update[..], starts_of(&update)))
        );
        let frame = encode_sync_step2(&update);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Ok(ClientMessage::SyncStep2(&update[..], starts_of(&update)))
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
        let cases: &[(&[u8], WireError)] = &[
            (&[], WireError::Empty),
            (&[0xff; 12], WireError::VarInt),
            (&[0x80], WireError::Truncated),
            (&[9], WireError::UnknownType(9)),
            (&[100, 1], WireError::UnknownType(100)),
            (&[0, 7, 0], WireError::UnknownSyncType(7)),
            (&[0, 2, 50, 1, 2], WireError::Truncated),
            (&[3, 0], WireError::TrailingBytes),
        ];
        for (frame, expected) in cases {
            assert_eq!(
                parse_client_frame(frame, &limits),
                Err(ProtocolError::Wire(expected.clone()))
            );
        }
        // A length prefix claiming far more than the frame holds.
        let mut frame = vec![0, 2];
        troupe_proto::lib0::write_var_u64(&mut frame, 1 << 40);
        assert_eq!(
            parse_client_frame(&frame, &limits),
            Err(ProtocolError::Wire(WireError::Truncated))
        );
        // A corrupt update inside a well-formed envelope.
        let frame = encode_update(&[5, 1, 2, 3]);
        assert!(matches!(
            parse_client_frame(&frame, &limits),
            Err(ProtocolError::Payload(_))
        ));
    }
}
