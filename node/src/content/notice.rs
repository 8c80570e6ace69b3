//! Notices to the people in a scene ("Restored to version 3 by ada"), carried in the
//! scene's document itself: the `notice` entry of the root map `troupe`. A notice so
//! reaches every connected editor with the change it explains, in order, through the
//! stock Yjs protocol, and one who joins later still finds the last one. The editor shows
//! it once per `at_ms`; other clients may ignore it (the blocks live elsewhere in the doc).

use std::collections::HashMap;
use std::sync::Arc;

use yrs::{Any, Map, Out, ReadTxn, TransactionMut, WriteTxn};

/// The root map notices are kept in.
pub const MAP: &str = "troupe";
/// The map's entry holding the last notice.
pub const KEY: &str = "notice";

/// One notice.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// What happened: `restored`.
    pub kind: String,
    /// The sentence to show.
    pub message: String,
    /// Who did it (the token's `name`, or its user id).
    pub by: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

impl Notice {
    /// A restore of the scene to `what` ("version 3 “Draft 2”", "the P1 content").
    pub fn restored(what: &str, by: &str) -> Self {
        Notice {
            kind: "restored".into(),
            message: format!("Restored to {what} by {by}"),
            by: by.into(),
            at_ms: troupe_proto::clock::now_ms(),
        }
    }
}

/// Sets the scene's notice, as part of the transaction that makes the change it explains.
pub fn write(txn: &mut TransactionMut, notice: &Notice) {
    let map = txn.get_or_insert_map(MAP);
    let fields: HashMap<String, Any> = [
        ("kind", Any::from(notice.kind.as_str())),
        ("message", Any::from(notice.message.as_str())),
        ("by", Any::from(notice.by.as_str())),
        ("at", Any::from(notice.at_ms as f64)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    map.insert(txn, KEY, Any::Map(Arc::new(fields)));
}

/// The scene's last notice, if it has one of the expected shape.
pub fn read<T: ReadTxn>(txn: &T) -> Option<Notice> {
    let map = txn.get_map(MAP)?;
    let Out::Any(Any::Map(fields)) = map.get(txn, KEY)? else {
        return None;
    };
    let text = |key: &str| match fields.get(key) {
        Some(Any::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let at_ms = match fields.get("at") {
        Some(Any::Number(yrs::any::Number::Float(n))) if *n >= 0.0 => *n as u64,
        Some(Any::Number(yrs::any::Number::Int(n))) if *n >= 0 => *n as u64,
        _ => return None,
    };
    Some(Notice {
        kind: text("kind")?,
        message: text("message")?,
        by: text("by")?,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Transact};

    #[test]
    fn a_notice_round_trips_through_an_update() {
        let doc = Doc::new();
        let notice = Notice::restored("version 3 “Draft 2”", "ada");
        let update = {
            let mut txn = doc.transact_mut();
            write(&mut txn, &notice);
            txn.encode_update_v1()
        };
        let other = Doc::new();
        {
            let mut txn = other.transact_mut();
            let update = yrs::Update::decode_v1(&update).unwrap();
            txn.apply_update(update).unwrap();
        }
        assert_eq!(read(&other.transact()), Some(notice));
        assert_eq!(read(&Doc::new().transact()), None);
    }
}
