//! Structural validation of untrusted Yjs v1 binary data before yrs decodes it.
//!
//! yrs 0.28 is not hardened against hostile bytes: it reserves memory from counts it reads,
//! recurses without limit on nested `Any` values, trips `debug_assert!`s and overflow checks
//! (client ids over 53 bits, `u32` clock additions), and reads some `u32` fields with silent
//! wrap-around. This module walks the same wire format without allocating from claimed sizes
//! and accepts only input that yrs parses exactly as this walker does, so nothing it accepts
//! can desynchronise, exhaust memory or overflow the stack inside yrs.
//!
//! Where yrs and Yjs disagree about the format, the construct is rejected (see
//! [`InvalidUpdate::UnsupportedJsonContent`] and [`InvalidUpdate::UnsupportedXmlHook`]).
//! Every loop consumes at least one input byte per iteration, so work is linear in the input.
//!
//! A single accepted update applies cleanly to a fresh document. Applying a *sequence* is a
//! different matter: yrs' integration code has arithmetic and memory-safety bugs that odd
//! sequences reach. Before applying to a live document, use [`check_update_in_order_v1`]
//! with the document's state vector, give room documents `OffsetKind::Utf16` (the default,
//! `Bytes`, miscounts when a remote edit splits a surrogate pair), and keep `apply_update`
//! inside `catch_unwind`.

use std::ops::ControlFlow;

use troupe_proto::lib0::{self, Lib0Error};
use troupe_proto::message::{self, WireError};

/// Limits applied while walking untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    /// Deepest nesting of `Any` (and embedded JSON) values accepted; a top-level value has
    /// depth 1. yrs decodes and drops these recursively, so this bounds its stack use.
    pub max_any_depth: usize,
    /// Whether subdocuments (content ref 9) are accepted. Scenes have none, and yrs 0.28
    /// leaks ~1.6 KB for every subdocument item it applies, so the node refuses them.
    pub allow_subdocs: bool,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            max_any_depth: 32,
            allow_subdocs: false,
        }
    }
}

/// Why untrusted Yjs bytes were rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidUpdate {
    #[error("input ends before the value it announces")]
    Truncated,
    #[error("variable-length integer does not fit in 64 bits")]
    VarIntOverflow,
    #[error("unknown item content ref {0}")]
    UnknownContentRef(u8),
    #[error("GC or Skip struct with flag bits set (info byte {0:#04x})")]
    FlaggedGcOrSkip(u8),
    #[error("legacy JSON item content (ref 2) is not supported: yrs 0.28 decodes it differently from Yjs")]
    UnsupportedJsonContent,
    #[error("XmlHook type (type ref 5) is not supported: yrs 0.28 and Yjs encode it differently")]
    UnsupportedXmlHook,
    /// A subdocument, which scenes do not use (see [`CheckLimits::allow_subdocs`]).
    #[error("subdocuments are not accepted")]
    Subdocument,
    #[error("unknown Any tag {0}")]
    UnknownAnyTag(u8),
    #[error("unknown type ref {0}")]
    UnknownTypeRef(u64),
    #[error("parent info must be 0 or 1, got {0}")]
    InvalidParentInfo(u64),
    #[error("values nested deeper than the limit")]
    TooDeep,
    #[error("clock beyond 2^31 - 1 (or a state vector or awareness clock beyond 2^32 - 1)")]
    ClockOverflow,
    #[error("length or count does not fit in 32 bits")]
    LengthOverflow,
    #[error("client id {0} does not fit in 53 bits")]
    ClientIdTooLarge(u64),
    #[error("an item refers to itself or to a later item of its own client")]
    ForwardReference,
    #[error(
        "client {client}'s structs start at clock {start} but the document only has clocks below {known}"
    )]
    Gap { client: u64, start: u32, known: u32 },
    #[error("client {0} appears twice")]
    DuplicateClient(u64),
    #[error("zero-length struct, content or delete range")]
    ZeroLength,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("embedded JSON is invalid or not representable")]
    InvalidJson,
    #[error("{count} entries exceed the limit of {max}")]
    TooManyEntries { count: u64, max: usize },
    #[error("bytes left over after the last value")]
    TrailingBytes,
}

type Res<T> = std::result::Result<T, InvalidUpdate>;

/// What a successful [`check_update_v1`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Structs (items, GC and Skip) across all clients.
    pub structs: usize,
    /// Delete-set ranges across all clients.
    pub delete_ranges: usize,
    /// Where each client's structs begin.
    pub starts: Starts,
}

/// Where an update's structs begin, client by client. A client's structs in an update are
/// contiguous, so their start says where all of them lie: enough to place a checked update
/// against a document's state vector ([`Starts::place`]) without walking it again, which a
/// room does for every edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Starts {
    /// (client, clock of its first struct), one per client that has structs.
    starts: Vec<(u64, u32)>,
    /// Some struct is a Skip: what follows it starts later than the clocks before it, so
    /// only a walk ([`check_update_in_order_v1`]) can place the update.
    has_skip: bool,
}

/// Where an update lies against a document's state vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// It would leave a hole in some client's clock sequence (see [`InvalidUpdate::Gap`]).
    Gap,
    /// It follows the document and repeats part of it, or carries no structs.
    Follows,
    /// Every struct is new and each client's begin exactly where the document's end: if
    /// nothing in it waits for something missing, applying it adds exactly its structs.
    Extends,
}

impl Starts {
    /// Places the update against `known`; `None` when only a walk can tell (a Skip).
    pub fn place(&self, known: &yrs::StateVector) -> Option<Placement> {
        if self.has_skip {
            return None;
        }
        let mut placement = if self.starts.is_empty() {
            Placement::Follows
        } else {
            Placement::Extends
        };
        for &(client, start) in &self.starts {
            let end = known.get(&yrs::ClientID::new(client));
            if start > end {
                return Some(Placement::Gap);
            }
            if start < end {
                placement = Placement::Follows;
            }
        }
        Some(placement)
    }
}

/// One client's state in an awareness update, borrowed from the input.
pub use troupe_proto::message::AwarenessEntry;

// Item info byte layout shared by Yjs and yrs.
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
const CONTENT_REF_MASK: u8 = 0x1f;

const REF_GC: u8 = 0;
const REF_DELETED: u8 = 1;
const REF_JSON: u8 = 2;
const REF_BINARY: u8 = 3;
const REF_STRING: u8 = 4;
const REF_EMBED: u8 = 5;
const REF_FORMAT: u8 = 6;
const REF_TYPE: u8 = 7;
const REF_ANY: u8 = 8;
const REF_DOC: u8 = 9;
const REF_SKIP: u8 = 10;

const TYPE_XML_ELEMENT: u8 = 3;
const TYPE_XML_HOOK: u8 = 5;
const TYPE_MAX_KNOWN: u8 = 6;

/// yrs keeps client ids in 53 bits (a JS safe integer) and debug-asserts it.
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Highest clock (exclusive end of a struct or delete range) accepted in a document. yrs
/// stores clocks as `u32` but subtracts them as `i32` while integrating (`update.rs`), which
/// overflows from 2^31 on; no real client gets anywhere near 2^31 operations.
const MAX_CLOCK: u32 = i32::MAX as u32;

/// The shared lib0 cursor ([`troupe_proto::lib0::Reader`]), with the fields yrs reads as
/// `u32` and the id rules of Yjs documents on top.
struct Reader<'a>(lib0::Reader<'a>);

impl From<Lib0Error> for InvalidUpdate {
    fn from(e: Lib0Error) -> Self {
        match e {
            Lib0Error::Truncated => InvalidUpdate::Truncated,
            Lib0Error::VarIntOverflow => InvalidUpdate::VarIntOverflow,
            Lib0Error::InvalidUtf8 => InvalidUpdate::InvalidUtf8,
            Lib0Error::TrailingBytes => InvalidUpdate::TrailingBytes,
        }
    }
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader(lib0::Reader::new(buf))
    }

    fn finish(&self) -> Res<()> {
        Ok(self.0.finish()?)
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.0.u8()?)
    }

    fn take(&mut self, len: u64) -> Res<&'a [u8]> {
        Ok(self.0.take(len)?)
    }

    fn var_u64(&mut self) -> Res<u64> {
        Ok(self.0.var_u64()?)
    }

    /// A count of items of at least `min_bytes` each (see [`lib0::Reader::count`]).
    fn count(&mut self, min_bytes: usize) -> Res<u64> {
        Ok(self.0.count(min_bytes)?)
    }

    /// lib0 signed varint; yrs negates it, so the magnitude must fit in 63 bits.
    fn var_i64(&mut self) -> Res<()> {
        self.0.var_i64()?;
        Ok(())
    }

    /// A varuint that yrs reads as `u32` (with silent wrap-around), so it must fit.
    fn var_u32(&mut self, too_big: InvalidUpdate) -> Res<u32> {
        let v = self.var_u64()?;
        u32::try_from(v).map_err(|_| too_big)
    }

    /// lib0 varUint8Array; yrs reads the length as `u32`.
    fn var_bytes(&mut self) -> Res<&'a [u8]> {
        let len = self.var_u32(InvalidUpdate::LengthOverflow)?;
        self.take(u64::from(len))
    }

    fn var_str(&mut self) -> Res<&'a str> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| InvalidUpdate::InvalidUtf8)
    }

    fn client_id(&mut self) -> Res<u64> {
        let id = self.var_u64()?;
        if id > MAX_CLIENT_ID {
            return Err(InvalidUpdate::ClientIdTooLarge(id));
        }
        Ok(id)
    }

    /// A document clock (see [`MAX_CLOCK`]).
    fn clock(&mut self) -> Res<u32> {
        let clock = self.var_u32(InvalidUpdate::ClockOverflow)?;
        clock_end(clock, 0)?;
        Ok(clock)
    }

    /// An ID (client, clock) that an item at `at` refers to (origin, right origin, parent).
    /// A client's items can only refer to its own earlier items: Yjs assigns clocks in
    /// creation order. yrs does not check this, and self- or forward references lead its
    /// integration into states it does not expect (crashes seen together with gaps).
    fn reference(&mut self, at: (u64, u32)) -> Res<()> {
        let client = self.client_id()?;
        let clock = self.clock()?;
        if client == at.0 && clock >= at.1 {
            return Err(InvalidUpdate::ForwardReference);
        }
        Ok(())
    }
}

/// Checks a v1-encoded document update (`Y.encodeStateAsUpdate`, sync step 2, update
/// messages). On success yrs can decode it without panicking, over-allocating or recursing
/// deeper than `limits` allow.
pub fn check_update_v1(bytes: &[u8], limits: CheckLimits) -> std::result::Result<UpdateStats, InvalidUpdate> {
    walk_update(bytes, limits, None)
}

/// [`check_update_v1`], and also rejects an update that would leave a hole in a client's
/// clock sequence of the document whose state vector is `known` ([`InvalidUpdate::Gap`]).
///
/// Why: yrs 0.28 integrates such structs behind a placeholder Skip block and later fills it
/// in `BlockStore::push`, which underflows (a debug panic) when the filler's boundaries differ
/// from the hole's and can drop a live item that other items still point to (use after free:
/// a segfault in release builds too). Stock clients can send such updates (an edit sent
/// before the reconnect handshake delivers the edits the server missed), so a caller should
/// hold or refuse them until the missing part has been applied, never hand them to yrs.
pub fn check_update_in_order_v1(
    bytes: &[u8],
    limits: CheckLimits,
    known: &yrs::StateVector,
) -> std::result::Result<UpdateStats, InvalidUpdate> {
    walk_update(bytes, limits, Some(known))
}

fn walk_update(bytes: &[u8], limits: CheckLimits, known: Option<&yrs::StateVector>) -> Res<UpdateStats> {
    let mut r = Reader::new(bytes);
    let mut stats = UpdateStats::default();

    // Struct section: each client header is at least 3 bytes (count, client, clock).
    let num_clients = r.count(3)?;
    let mut clients = Vec::new();
    for _ in 0..num_clients {
        // Each struct is at least 2 bytes (info byte and a length or content byte).
        let num_structs = r.count(2)?;
        let client = r.client_id()?;
        let mut clock = r.clock()?;
        clients.push(client);
        if num_structs > 0 {
            stats.starts.starts.push((client, clock));
        }
        // End of what the document plus this update's earlier structs hold for `client`.
        let mut covered = known.map(|sv| sv.get(&yrs::ClientID::new(client)));
        for _ in 0..num_structs {
            let (len, is_skip) = check_struct(&mut r, (client, clock), limits)?;
            stats.starts.has_skip |= is_skip;
            if let Some(end) = covered.as_mut().filter(|_| !is_skip) {
                if clock > *end {
                    return Err(InvalidUpdate::Gap {
                        client,
                        start: clock,
                        known: *end,
                    });
                }
                *end = (*end).max(clock.saturating_add(len));
            }
            // yrs adds each struct's length to a `u32` clock.
            clock = clock_end(clock, len)?;
            stats.structs += 1;
        }
    }
    // Yjs keeps the last header for a repeated client while yrs appends to the first, so
    // blocks would arrive out of clock order.
    reject_duplicates(&mut clients)?;

    stats.delete_ranges = check_delete_set(&mut r)?;
    r.finish()?;
    Ok(stats)
}

/// Checks a v1-encoded state vector (sync step 1): varuint count, then (client, clock) pairs.
pub fn check_state_vector_v1(bytes: &[u8]) -> std::result::Result<(), InvalidUpdate> {
    let mut r = Reader::new(bytes);
    let n = r.count(2)?;
    for _ in 0..n {
        r.client_id()?;
        // Only compared against, never integrated: any u32 will do.
        r.var_u32(InvalidUpdate::ClockOverflow)?;
    }
    r.finish()
}

/// Parses an awareness update (y-protocols): varuint count, then count x (varuint client id,
/// varuint clock, varString JSON state). At most `max_entries` entries are accepted; client
/// ids must fit in 53 bits and clocks in 32 (as yrs keeps them), and each state must be JSON
/// (serde_json, which bounds nesting), `null` for a client that left.
pub fn parse_awareness_v1(
    bytes: &[u8],
    max_entries: usize,
) -> std::result::Result<Vec<AwarenessEntry<'_>>, InvalidUpdate> {
    let entries = message::decode_awareness(bytes, max_entries).map_err(|e| match e {
        WireError::TooManyEntries { count, max } => InvalidUpdate::TooManyEntries { count, max },
        WireError::VarInt => InvalidUpdate::VarIntOverflow,
        WireError::Utf8 => InvalidUpdate::InvalidUtf8,
        WireError::TrailingBytes => InvalidUpdate::TrailingBytes,
        // The rest are about message envelopes, which a payload has none of.
        _ => InvalidUpdate::Truncated,
    })?;
    for entry in &entries {
        if entry.client_id > MAX_CLIENT_ID {
            return Err(InvalidUpdate::ClientIdTooLarge(entry.client_id));
        }
        if u32::try_from(entry.clock).is_err() {
            return Err(InvalidUpdate::ClockOverflow);
        }
        // Parse into a value, not `IgnoredAny`: only the former applies serde_json's nesting
        // limit, which is what anyone parsing the state later will hit.
        if serde_json::from_str::<serde_json::Value>(entry.state).is_err() {
            return Err(InvalidUpdate::InvalidJson);
        }
    }
    Ok(entries)
}

fn reject_duplicates(clients: &mut [u64]) -> Res<()> {
    clients.sort_unstable();
    match clients.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(InvalidUpdate::DuplicateClient(w[0])),
        None => Ok(()),
    }
}

/// Walks one struct and returns its clock length and whether it is a Skip.
fn check_struct(r: &mut Reader<'_>, at: (u64, u32), limits: CheckLimits) -> Res<(u32, bool)> {
    let info = r.u8()?;
    let content_ref = info & CONTENT_REF_MASK;
    if content_ref == REF_GC || content_ref == REF_SKIP {
        // Yjs reads GC/Skip by the low 5 bits, yrs by the whole byte: only flagless bytes agree.
        if info != content_ref {
            return Err(InvalidUpdate::FlaggedGcOrSkip(info));
        }
        let len = nonzero(r.var_u32(InvalidUpdate::ClockOverflow)?)?;
        return Ok((len, content_ref == REF_SKIP));
    }
    // Yjs indexes a table of 11 readers with the low 5 bits; yrs masks with 0x0f, so refs
    // 17..=25 would alias known ones there.
    if content_ref > REF_SKIP {
        return Err(InvalidUpdate::UnknownContentRef(content_ref));
    }
    if content_ref == REF_JSON {
        return Err(InvalidUpdate::UnsupportedJsonContent);
    }

    if info & HAS_ORIGIN != 0 {
        r.reference(at)?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.reference(at)?;
    }
    // Parent info and parent sub are only present when no origin lets them be inferred.
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        match r.var_u64()? {
            1 => {
                r.var_str()?;
            }
            0 => r.reference(at)?,
            other => return Err(InvalidUpdate::InvalidParentInfo(other)),
        }
        if info & HAS_PARENT_SUB != 0 {
            r.var_str()?;
        }
    }
    Ok((check_content(r, content_ref, limits)?, false))
}

/// Walks item content and returns its clock length.
fn check_content(r: &mut Reader<'_>, content_ref: u8, limits: CheckLimits) -> Res<u32> {
    match content_ref {
        REF_DELETED => nonzero(r.var_u32(InvalidUpdate::ClockOverflow)?),
        REF_BINARY => {
            r.var_bytes()?;
            Ok(1)
        }
        REF_STRING => {
            // Clock length counts UTF-16 code units, like JavaScript strings.
            let s = r.var_str()?;
            let units: usize = s.chars().map(char::len_utf16).sum();
            nonzero(u32::try_from(units).map_err(|_| InvalidUpdate::LengthOverflow)?)
        }
        REF_EMBED => {
            check_json(r.var_str()?, limits)?;
            Ok(1)
        }
        REF_FORMAT => {
            r.var_str()?;
            check_json(r.var_str()?, limits)?;
            Ok(1)
        }
        REF_TYPE => {
            // yrs reads the type ref as a single byte (Yjs as a varuint); refs that matter fit
            // in one byte either way.
            let type_ref = r.u8()?;
            match type_ref {
                TYPE_XML_ELEMENT => {
                    r.var_str()?;
                }
                TYPE_XML_HOOK => return Err(InvalidUpdate::UnsupportedXmlHook),
                t if t <= TYPE_MAX_KNOWN => {}
                t => return Err(InvalidUpdate::UnknownTypeRef(u64::from(t))),
            }
            Ok(1)
        }
        REF_ANY => {
            let n = r.count(1)?;
            let n = u32::try_from(n).map_err(|_| InvalidUpdate::LengthOverflow)?;
            for _ in 0..n {
                check_any(r, limits.max_any_depth)?;
            }
            nonzero(n)
        }
        REF_DOC => {
            if !limits.allow_subdocs {
                return Err(InvalidUpdate::Subdocument);
            }
            r.var_str()?;
            check_any(r, limits.max_any_depth)?;
            Ok(1)
        }
        other => Err(InvalidUpdate::UnknownContentRef(other)),
    }
}

/// `clock + len`, if it stays within [`MAX_CLOCK`].
fn clock_end(clock: u32, len: u32) -> Res<u32> {
    match clock.checked_add(len) {
        Some(end) if end <= MAX_CLOCK => Ok(end),
        _ => Err(InvalidUpdate::ClockOverflow),
    }
}

fn nonzero(len: u32) -> Res<u32> {
    if len == 0 {
        Err(InvalidUpdate::ZeroLength)
    } else {
        Ok(len)
    }
}

/// The delete set: per client, ranges of (clock, len). Returns the number of ranges.
fn check_delete_set(r: &mut Reader<'_>) -> Res<usize> {
    let num_clients = r.count(2)?;
    let mut clients = Vec::new();
    let mut ranges_seen = 0usize;
    for _ in 0..num_clients {
        let client = r.client_id()?;
        clients.push(client);
        let num_ranges = r.count(2)?;
        for _ in 0..num_ranges {
            let clock = r.clock()?;
            let len = nonzero(r.var_u32(InvalidUpdate::ClockOverflow)?)?;
            // yrs builds `clock..clock + len` with a checked (debug) u32 addition.
            clock_end(clock, len)?;
            ranges_seen += 1;
        }
    }
    // yrs would silently keep only the last ranges of a repeated client.
    reject_duplicates(&mut clients)?;
    Ok(ranges_seen)
}

/// Open array or object in [`check_any`]: how many children are still to come.
struct Frame {
    remaining: u64,
    object: bool,
}

/// Walks one lib0 `Any` value without recursion; the explicit stack grows only with
/// containers actually present in the input and never beyond `max_depth`.
fn check_any(r: &mut Reader<'_>, max_depth: usize) -> Res<()> {
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        if stack.len() >= max_depth {
            return Err(InvalidUpdate::TooDeep);
        }
        match r.u8()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => {}
            125 => r.var_i64()?,
            124 => {
                r.take(4)?;
            }
            // float64, bigint64
            123 | 122 => {
                r.take(8)?;
            }
            119 => {
                r.var_str()?;
            }
            116 => {
                r.var_bytes()?;
            }
            tag @ (118 | 117) => {
                let object = tag == 118;
                // An object entry is at least a key length byte and a value tag.
                let remaining = r.count(if object { 2 } else { 1 })?;
                if remaining > 0 {
                    stack.push(Frame { remaining, object });
                }
            }
            tag => return Err(InvalidUpdate::UnknownAnyTag(tag)),
        }
        if next_any_child(r, &mut stack)?.is_break() {
            return Ok(());
        }
    }
}

/// Pops finished containers and positions the reader at the next child value (after its key
/// for objects). Breaks when the outermost value is complete.
fn next_any_child(r: &mut Reader<'_>, stack: &mut Vec<Frame>) -> Res<ControlFlow<()>> {
    while let Some(top) = stack.last_mut() {
        if top.remaining == 0 {
            stack.pop();
            continue;
        }
        top.remaining -= 1;
        if top.object {
            r.var_str()?;
        }
        return Ok(ControlFlow::Continue(()));
    }
    Ok(ControlFlow::Break(()))
}

/// Embed and format values travel as JSON text that yrs parses into `Any` with serde_json
/// (which caps nesting at 128); require the same parse to succeed and the same depth limit as
/// binary `Any`.
fn check_json(text: &str, limits: CheckLimits) -> Res<()> {
    let any = yrs::Any::from_json(text).map_err(|_| InvalidUpdate::InvalidJson)?;
    if any_depth_within(&any, limits.max_any_depth) {
        Ok(())
    } else {
        Err(InvalidUpdate::TooDeep)
    }
}

/// Recursion here is bounded by serde_json's own nesting limit.
fn any_depth_within(any: &yrs::Any, budget: usize) -> bool {
    if budget == 0 {
        return false;
    }
    match any {
        yrs::Any::Array(items) => items.iter().all(|a| any_depth_within(a, budget - 1)),
        yrs::Any::Map(entries) => entries.values().all(|a| any_depth_within(a, budget - 1)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;
    use yrs::types::ToJson;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        any, Any, Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update, Xml,
        XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    /// A doc that counts text offsets in UTF-16 code units, like Yjs.
    fn new_doc(client: u64) -> Doc {
        let mut opts = yrs::Options::with_client_id(yrs::ClientID::new(client));
        opts.offset_kind = yrs::OffsetKind::Utf16;
        Doc::with_options(opts)
    }

    fn limits() -> CheckLimits {
        CheckLimits {
            allow_subdocs: true,
            ..CheckLimits::default()
        }
    }

    // ---- builders for hand-made inputs ----

    fn var(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn vstr(out: &mut Vec<u8>, s: &[u8]) {
        var(out, s.len() as u64);
        out.extend_from_slice(s);
    }

    /// One client (id 1, clock 0) with a single root-level map item `m[k]` whose info byte is
    /// `content_ref | HAS_PARENT_SUB`, followed by `content` and an empty delete set.
    fn map_item(content_ref: u8, content: &[u8]) -> Vec<u8> {
        let mut b = vec![1, 1, 1, 0, content_ref | HAS_PARENT_SUB, 1];
        vstr(&mut b, b"m");
        vstr(&mut b, b"k");
        b.extend_from_slice(content);
        b.push(0);
        b
    }

    /// One client, one root-level text item holding `s`.
    fn text_item(s: &[u8]) -> Vec<u8> {
        let mut b = vec![1, 1, 1, 0, REF_STRING, 1];
        vstr(&mut b, b"t");
        vstr(&mut b, s);
        b.push(0);
        b
    }

    fn nested_any(depth: usize) -> Vec<u8> {
        let mut c = vec![1];
        for _ in 1..depth {
            c.extend_from_slice(&[117, 1]);
        }
        c.push(126);
        c
    }

    fn yrs_decodes(bytes: &[u8]) -> bool {
        Update::decode_v1(bytes).is_ok()
    }

    // ---- real updates produced by yrs ----

    /// Runs `f` in one transaction and returns the incremental update it produced.
    fn step(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut)) -> Vec<u8> {
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            f(&mut txn);
        }
        doc.transact().encode_diff_v1(&before)
    }

    fn full_state(doc: &Doc) -> Vec<u8> {
        doc.transact().encode_state_as_update_v1(&StateVector::default())
    }

    fn text_doc() -> Vec<(&'static str, Vec<u8>)> {
        let doc = new_doc(11);
        let text = doc.get_or_insert_text("t");
        let mut out = vec![];
        out.push(("text insert", step(&doc, |t| text.insert(t, 0, "hello world"))));
        out.push(("text delete", step(&doc, |t| text.remove_range(t, 2, 5))));
        out.push((
            "text unicode",
            step(&doc, |t| text.insert(t, 1, "é🎬 ünïcödé 漢字")),
        ));
        let bold: yrs::types::Attrs = HashMap::from([
            (Arc::from("bold"), Any::Bool(true)),
            (Arc::from("href"), Any::from("x")),
        ]);
        out.push(("text format", step(&doc, |t| text.format(t, 0, 4, bold))));
        out.push((
            "text embed",
            // Index 3 splits the 🎬 surrogate pair; yrs (like Yjs) replaces the halves with
            // U+FFFD, so real updates can carry those.
            step(&doc, |t| {
                text.insert_embed(t, 3, any!({"image": "x.png", "size": [1, 2.5, -7], "alt": null}));
            }),
        ));
        out.push(("text full state", full_state(&doc)));
        out
    }

    fn map_doc() -> Vec<(&'static str, Vec<u8>)> {
        let doc = new_doc(22);
        let map = doc.get_or_insert_map("meta");
        let mut out = vec![];
        out.push((
            "map nested any",
            step(&doc, |t| {
                map.insert(
                    t,
                    "nested",
                    any!({
                        "title": "Scene 1",
                        "n": 42,
                        "neg": -123456,
                        "big": 9007199254740991i64,
                        "float": 1.5,
                        "precise": 0.1,
                        "flags": [true, false, null],
                        "deep": {"a": {"b": {"c": [[["x"]]]}}}
                    }),
                );
                map.insert(t, "bytes", Any::from(vec![0u8, 1, 2, 255]));
                map.insert(t, "undef", Any::Undefined);
                map.insert(t, "inner", yrs::MapPrelim::from([("x", 1)]));
            }),
        ));
        out.push((
            "map overwrite",
            step(&doc, |t| {
                map.insert(t, "n", "replaced");
                map.insert(t, "nested", 7);
                map.remove(t, "undef");
            }),
        ));
        out.push(("map full state", full_state(&doc)));
        out
    }

    fn xml_doc() -> Vec<(&'static str, Vec<u8>)> {
        let doc = new_doc(33);
        let frag = doc.get_or_insert_xml_fragment("prosemirror");
        let mut out = vec![];
        out.push((
            "xml blocks",
            step(&doc, |t| {
                frag.push_back(
                    t,
                    XmlElementPrelim::new(
                        "scene_heading",
                        [XmlTextPrelim::new("INT. KITCHEN - NIGHT").into()],
                    ),
                );
                frag.push_back(
                    t,
                    XmlElementPrelim::new("action", [XmlTextPrelim::new("Rain.").into()]),
                );
                frag.push_back(t, XmlElementPrelim::empty("character"));
            }),
        ));
        out.push((
            "xml edit",
            step(&doc, |t| {
                let el = frag.get(t, 0).and_then(|n| n.into_xml_element());
                if let Some(el) = el {
                    el.insert_attribute(t, "id", "h1");
                    if let Some(text) = el.get(t, 0).and_then(|n| n.into_xml_text()) {
                        text.insert(t, 4, "OLD ");
                        text.remove_range(t, 0, 2);
                    }
                }
                frag.remove_range(t, 2, 1);
            }),
        ));
        out.push(("xml full state", full_state(&doc)));
        out
    }

    fn array_and_subdoc() -> Vec<(&'static str, Vec<u8>)> {
        let doc = new_doc(44);
        let arr = doc.get_or_insert_array("list");
        let map = doc.get_or_insert_map("docs");
        let mut out = vec![];
        out.push((
            "array insert",
            step(&doc, |t| {
                arr.insert_range(t, 0, [1, 2, 3, 4, 5]);
                arr.push_back(t, "six");
                arr.push_back(t, yrs::ArrayPrelim::from([Any::from(7), Any::from("eight")]));
            }),
        ));
        out.push(("array delete", step(&doc, |t| arr.remove_range(t, 1, 3))));
        out.push((
            "subdoc",
            step(&doc, |t| {
                let mut opts =
                    yrs::Options::with_guid_and_client_id("sub-guid".into(), yrs::ClientID::new(45));
                opts.auto_load = true;
                map.insert(t, "sub", Doc::with_options(opts));
            }),
        ));
        out.push(("array+subdoc full state", full_state(&doc)));
        out
    }

    #[test]
    fn subdocuments_are_refused_by_default() {
        for (name, update) in array_and_subdoc() {
            let strict = check_update_v1(&update, CheckLimits::default());
            if name.contains("subdoc") {
                assert_eq!(strict, Err(InvalidUpdate::Subdocument), "{name}");
            } else {
                assert!(strict.is_ok(), "{name}");
            }
        }
    }

    /// Two concurrent editors: several clients in the struct section and the delete set.
    fn two_clients() -> Vec<(&'static str, Vec<u8>)> {
        let a = new_doc(1);
        let b = new_doc(0x1f_ffff_ffff_ffff);
        let ta = a.get_or_insert_text("t");
        let tb = b.get_or_insert_text("t");
        let ua = step(&a, |t| ta.insert(t, 0, "alpha "));
        let ub = step(&b, |t| tb.insert(t, 0, "beta "));
        for (doc, u) in [(&a, &ub), (&b, &ua)] {
            let upd = Update::decode_v1(u).expect("decode");
            doc.transact_mut().apply_update(upd).expect("apply");
        }
        let da = step(&a, |t| ta.remove_range(t, 0, 8));
        let merged_skip = yrs::merge_updates_v1([ua.as_slice(), da.as_slice()]).expect("merge");
        vec![
            ("client a", ua),
            ("client b", ub),
            ("cross delete", da),
            ("two clients full state", full_state(&a)),
            ("merged", merged_skip),
        ]
    }

    /// A merged update with a gap in one client's clocks, which yrs fills with a Skip struct.
    fn with_skip() -> Vec<(&'static str, Vec<u8>)> {
        let doc = new_doc(5);
        let text = doc.get_or_insert_text("t");
        let u1 = step(&doc, |t| text.insert(t, 0, "one "));
        let _u2 = step(&doc, |t| text.insert(t, 4, "two "));
        let u3 = step(&doc, |t| text.insert(t, 8, "three"));
        let merged = yrs::merge_updates_v1([u1.as_slice(), u3.as_slice()]).expect("merge");
        vec![("skip", merged)]
    }

    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let mut all = text_doc();
        all.extend(map_doc());
        all.extend(xml_doc());
        all.extend(array_and_subdoc());
        all.extend(two_clients());
        all.extend(with_skip());
        all.push(("empty", vec![0, 0]));
        all
    }

    #[test]
    fn real_updates_pass() {
        let mut saw_skip = false;
        for (name, bytes) in samples() {
            let stats =
                check_update_v1(&bytes, limits()).unwrap_or_else(|e| panic!("{name}: {e:?} for {bytes:?}"));
            assert!(yrs_decodes(&bytes), "{name}");
            saw_skip |= name == "skip" && bytes.contains(&REF_SKIP);
            if name != "empty" {
                assert!(stats.structs + stats.delete_ranges > 0, "{name}");
            }
        }
        assert!(saw_skip);
    }

    #[test]
    fn stats_count_structs_and_delete_ranges() {
        let doc = new_doc(9);
        let text = doc.get_or_insert_text("t");
        step(&doc, |t| text.insert(t, 0, "abcdef"));
        let del = step(&doc, |t| {
            text.remove_range(t, 0, 1);
            text.remove_range(t, 3, 1);
        });
        let stats = check_update_v1(&del, limits()).expect("valid");
        assert_eq!(
            stats,
            UpdateStats {
                structs: 0,
                delete_ranges: 2,
                starts: Starts::default(),
            }
        );
        let full = full_state(&doc);
        let stats = check_update_v1(&full, limits()).expect("valid");
        assert_eq!(stats.delete_ranges, 2);
        assert!(stats.structs >= 3);
    }

    #[test]
    fn real_updates_roundtrip_into_yrs() {
        // The samples are meaningful documents, not just parseable bytes.
        let doc = new_doc(100);
        for (_, bytes) in samples() {
            check_update_v1(&bytes, limits()).expect("valid");
            let u = Update::decode_v1(&bytes).expect("decode");
            doc.transact_mut().apply_update(u).expect("apply");
        }
        let txn = doc.transact();
        let text = txn.get_text("t").expect("text").get_string(&txn);
        // "three" stays pending: the skip sample lacks the "two " it depends on.
        assert!(
            text.contains("one ") && text.contains("漢字") && !text.contains("three"),
            "{text}"
        );
        let meta = txn.get_map("meta").expect("map").to_json(&txn);
        assert!(matches!(meta, Any::Map(_)));
    }

    #[test]
    fn every_truncation_is_rejected() {
        for (name, bytes) in samples() {
            for cut in 0..bytes.len() {
                let r = check_update_v1(&bytes[..cut], limits());
                assert!(r.is_err(), "{name}: prefix {cut} of {} accepted", bytes.len());
            }
        }
    }

    // ---- hostile inputs ----

    #[test]
    fn huge_counts_are_rejected_without_work() {
        // 1 client claiming 2^28 structs: 6 bytes.
        let b = [1, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::Truncated));
        // 2^28 clients.
        let b = [0x80, 0x80, 0x80, 0x80, 0x01, 0];
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::Truncated));
        // Any content claiming 2^28 values; a map claiming 2^28 entries.
        let mut c = vec![];
        var(&mut c, 1 << 28);
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &c), limits()),
            Err(InvalidUpdate::Truncated)
        );
        let mut c = vec![1, 118];
        var(&mut c, 1 << 28);
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &c), limits()),
            Err(InvalidUpdate::Truncated)
        );
        // A string claiming 4 GiB.
        let mut b = vec![1, 1, 1, 0, REF_STRING, 1, 1, b't'];
        var(&mut b, u64::from(u32::MAX));
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::Truncated));
        // Delete set claiming 2^28 ranges.
        let mut b = vec![0, 1, 1];
        var(&mut b, 1 << 28);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::Truncated));
    }

    #[test]
    fn deep_any_is_rejected() {
        let deep = map_item(REF_ANY, &nested_any(10_000));
        assert_eq!(check_update_v1(&deep, limits()), Err(InvalidUpdate::TooDeep));
        // Deep objects too.
        let mut c = vec![1];
        for _ in 0..10_000 {
            c.extend_from_slice(&[118, 1, 1, b'k']);
        }
        c.push(126);
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &c), limits()),
            Err(InvalidUpdate::TooDeep)
        );
        // Exactly at the limit is fine and yrs agrees; one more level is not.
        let ok = map_item(REF_ANY, &nested_any(32));
        assert!(check_update_v1(&ok, limits()).is_ok());
        assert!(yrs_decodes(&ok));
        let over = map_item(REF_ANY, &nested_any(33));
        assert_eq!(check_update_v1(&over, limits()), Err(InvalidUpdate::TooDeep));
        assert!(check_update_v1(
            &over,
            CheckLimits {
                max_any_depth: 33,
                ..limits()
            }
        )
        .is_ok());
        // The subdoc options Any is limited the same way.
        let mut c = vec![];
        vstr(&mut c, b"guid");
        c.extend_from_slice(&nested_any(40)[1..]);
        assert_eq!(
            check_update_v1(&map_item(REF_DOC, &c), limits()),
            Err(InvalidUpdate::TooDeep)
        );
        // Deep embedded JSON.
        let json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let mut c = vec![];
        vstr(&mut c, json.as_bytes());
        assert_eq!(
            check_update_v1(&map_item(REF_EMBED, &c), limits()),
            Err(InvalidUpdate::TooDeep)
        );
        let json = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let mut c = vec![];
        vstr(&mut c, json.as_bytes());
        assert_eq!(
            check_update_v1(&map_item(REF_EMBED, &c), limits()),
            Err(InvalidUpdate::InvalidJson)
        );
    }

    #[test]
    fn bad_varints() {
        assert_eq!(
            check_update_v1(&[0xff; 11], limits()),
            Err(InvalidUpdate::VarIntOverflow)
        );
        let mut b = vec![0xff; 9];
        b.push(0x02);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::VarIntOverflow));
        // 2^64 - 1 is a valid varuint but no real count.
        let mut b = vec![0xff; 9];
        b.push(0x01);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::Truncated));
        assert_eq!(check_update_v1(&[0x80], limits()), Err(InvalidUpdate::Truncated));
        assert_eq!(check_update_v1(&[], limits()), Err(InvalidUpdate::Truncated));
        // Signed ints in Any: i64::MAX magnitude is fine, one bit more is not.
        let mut max = vec![1, 125, 0xbf];
        max.extend_from_slice(&[0xff; 8]);
        max.push(0x01);
        assert!(check_update_v1(&map_item(REF_ANY, &max), limits()).is_ok());
        assert!(yrs_decodes(&map_item(REF_ANY, &max)));
        let mut over = vec![1, 125, 0xff];
        over.extend_from_slice(&[0xff; 8]);
        over.push(0x02);
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &over), limits()),
            Err(InvalidUpdate::VarIntOverflow)
        );
        let mut long = vec![1, 125, 0xc0];
        long.extend_from_slice(&[0x80; 12]);
        long.push(0);
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &long), limits()),
            Err(InvalidUpdate::VarIntOverflow)
        );
    }

    #[test]
    fn unknown_refs_and_tags() {
        for r in 11..=31u8 {
            assert_eq!(
                check_update_v1(&map_item(r, &[1]), limits()),
                Err(InvalidUpdate::UnknownContentRef(r))
            );
        }
        // GC/Skip with flag bits.
        let b = [1, 1, 1, 0, 0x80, 1, 0, 1, 0];
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::FlaggedGcOrSkip(0x80))
        );
        let b = [1, 1, 1, 0, 0x20 | REF_SKIP, 1, 0];
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::FlaggedGcOrSkip(0x2a))
        );
        for tag in [0u8, 115, 128, 255] {
            assert_eq!(
                check_update_v1(&map_item(REF_ANY, &[1, tag]), limits()),
                Err(InvalidUpdate::UnknownAnyTag(tag))
            );
        }
        for t in [7u8, 8, 9, 15, 127, 0x83] {
            assert_eq!(
                check_update_v1(&map_item(REF_TYPE, &[t, 0]), limits()),
                Err(InvalidUpdate::UnknownTypeRef(u64::from(t)))
            );
        }
        assert_eq!(
            check_update_v1(&map_item(REF_TYPE, &[5, 1, b'h']), limits()),
            Err(InvalidUpdate::UnsupportedXmlHook)
        );
        assert_eq!(
            check_update_v1(&map_item(REF_JSON, &[1, 1, b'1']), limits()),
            Err(InvalidUpdate::UnsupportedJsonContent)
        );
        for t in [0u8, 1, 2, 4, 6] {
            let b = map_item(REF_TYPE, &[t]);
            assert!(check_update_v1(&b, limits()).is_ok(), "type {t}");
            assert!(yrs_decodes(&b));
        }
        let mut el = vec![3];
        vstr(&mut el, b"dialogue");
        assert!(check_update_v1(&map_item(REF_TYPE, &el), limits()).is_ok());
        // Parent info other than 0 or 1.
        let b = [1, 1, 1, 0, REF_DELETED, 2, 1, 0];
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::InvalidParentInfo(2))
        );
    }

    #[test]
    fn invalid_utf8_and_json() {
        assert_eq!(
            check_update_v1(&text_item(b"ok\xff"), limits()),
            Err(InvalidUpdate::InvalidUtf8)
        );
        assert_eq!(
            check_update_v1(&text_item(b"\xed\xa0\x80"), limits()),
            Err(InvalidUpdate::InvalidUtf8)
        );
        let mut c = vec![1, 119];
        vstr(&mut c, b"\xc0\x80");
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &c), limits()),
            Err(InvalidUpdate::InvalidUtf8)
        );
        let mut b = vec![1, 1, 1, 0, REF_STRING, 1];
        vstr(&mut b, b"t\xfe");
        vstr(&mut b, b"x");
        b.push(0);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::InvalidUtf8));
        for bad in [
            &b"{"[..],
            b"",
            b"[1,]",
            b"undefined",
            b"18446744073709551615",
            b"1 2",
        ] {
            let mut c = vec![];
            vstr(&mut c, bad);
            assert_eq!(
                check_update_v1(&map_item(REF_EMBED, &c), limits()),
                Err(InvalidUpdate::InvalidJson),
                "{bad:?}"
            );
        }
        let mut c = vec![];
        vstr(&mut c, b"bold");
        vstr(&mut c, b"null");
        assert!(check_update_v1(&map_item(REF_FORMAT, &c), limits()).is_ok());
    }

    #[test]
    fn clock_overflow_and_bad_ids() {
        let max = u64::from(MAX_CLOCK);
        // A struct ending exactly at the limit is fine, and yrs applies it.
        let mut b = vec![1, 1, 1];
        var(&mut b, max - 1);
        b.extend_from_slice(&[REF_GC, 1, 0]);
        assert!(check_update_v1(&b, limits()).is_ok());
        decode_and_apply(&b, &[0, 0]).expect("yrs applies it");
        // One further, and yrs' i32 clock arithmetic would overflow.
        let mut b = vec![1, 1, 1];
        var(&mut b, max);
        b.extend_from_slice(&[REF_GC, 1, 0]);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::ClockOverflow));
        for clock in [1 << 31, u64::from(u32::MAX), 1 << 32] {
            let mut b = vec![1, 1, 1];
            var(&mut b, clock);
            b.extend_from_slice(&[REF_GC, 1, 0]);
            assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::ClockOverflow));
        }
        // Lengths summing past the limit, or past u32.
        for len in [max, u64::from(u32::MAX)] {
            let mut b = vec![1, 2, 1, 0, REF_GC];
            var(&mut b, len);
            b.extend_from_slice(&[REF_GC, 1, 0]);
            assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::ClockOverflow));
        }
        // Origin clock beyond the limit.
        let mut b = vec![1, 1, 2, 5, HAS_ORIGIN | REF_DELETED, 1];
        var(&mut b, 1 << 31);
        b.extend_from_slice(&[1, 0]);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::ClockOverflow));
        // Delete range overflow.
        let mut b = vec![0, 1, 1, 1];
        var(&mut b, max);
        b.push(1);
        assert_eq!(check_update_v1(&b, limits()), Err(InvalidUpdate::ClockOverflow));
        // Client ids over 53 bits, in every position.
        let big = 1u64 << 53;
        let mut b = vec![1, 1];
        var(&mut b, big);
        b.extend_from_slice(&[0, REF_GC, 1, 0]);
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::ClientIdTooLarge(big))
        );
        let mut b = vec![1, 1, 1, 5, HAS_RIGHT_ORIGIN | REF_DELETED];
        var(&mut b, big);
        b.extend_from_slice(&[0, 1, 0]);
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::ClientIdTooLarge(big))
        );
        let mut b = vec![0, 1];
        var(&mut b, big);
        b.extend_from_slice(&[1, 0, 1]);
        assert_eq!(
            check_update_v1(&b, limits()),
            Err(InvalidUpdate::ClientIdTooLarge(big))
        );
    }

    #[test]
    fn zero_lengths_and_duplicates() {
        assert_eq!(
            check_update_v1(&[1, 1, 1, 0, REF_GC, 0, 0], limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        assert_eq!(
            check_update_v1(&[1, 1, 1, 0, REF_SKIP, 0, 0], limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        assert_eq!(
            check_update_v1(&map_item(REF_DELETED, &[0]), limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        assert_eq!(
            check_update_v1(&map_item(REF_ANY, &[0]), limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        assert_eq!(
            check_update_v1(&text_item(b""), limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        assert_eq!(
            check_update_v1(&[0, 1, 1, 1, 5, 0], limits()),
            Err(InvalidUpdate::ZeroLength)
        );
        let dup = [2, 1, 7, 0, REF_GC, 1, 1, 7, 5, REF_GC, 1, 0];
        assert_eq!(
            check_update_v1(&dup, limits()),
            Err(InvalidUpdate::DuplicateClient(7))
        );
        let dup_ds = [0, 2, 7, 1, 0, 1, 7, 1, 4, 1];
        assert_eq!(
            check_update_v1(&dup_ds, limits()),
            Err(InvalidUpdate::DuplicateClient(7))
        );
        // A client with no structs or no delete ranges is odd but harmless.
        assert!(check_update_v1(&[1, 0, 7, 0, 1, 7, 0], limits()).is_ok());
    }

    #[test]
    fn references_must_point_backwards_within_a_client() {
        // Item (1, 5) whose origin, right origin or parent is (1, 5) itself or later.
        for (info, tail) in [
            (HAS_ORIGIN | REF_DELETED, vec![1, 5, 1]),
            (HAS_ORIGIN | REF_DELETED, vec![1, 9, 1]),
            (HAS_RIGHT_ORIGIN | REF_DELETED, vec![1, 6, 1]),
            (REF_DELETED, vec![0, 1, 5, 1]),
        ] {
            let mut b = vec![1, 1, 1, 5, info];
            b.extend_from_slice(&tail);
            b.push(0);
            assert_eq!(
                check_update_v1(&b, limits()),
                Err(InvalidUpdate::ForwardReference),
                "{b:?}"
            );
        }
        // A later struct of the same update may refer to an earlier one, and other clients'
        // clocks are unconstrained.
        let ok = [1, 2, 1, 5, REF_GC, 2, HAS_ORIGIN | REF_DELETED, 1, 6, 1, 0];
        assert!(check_update_v1(&ok, limits()).is_ok());
        let ok = [1, 1, 1, 5, HAS_ORIGIN | REF_DELETED, 2, 90, 1, 0];
        assert!(check_update_v1(&ok, limits()).is_ok());
    }

    /// One writer's document and three edits (the third deletes and inserts), and the first
    /// and third merged: a Skip where the second was.
    fn three_edits() -> (Doc, yrs::TextRef, [Vec<u8>; 3], Vec<u8>) {
        let doc = new_doc(5);
        let text = doc.get_or_insert_text("t");
        let u1 = step(&doc, |t| text.insert(t, 0, "one "));
        let u2 = step(&doc, |t| text.insert(t, 4, "two "));
        let u3 = step(&doc, |t| {
            text.remove_range(t, 0, 1);
            text.insert(t, 0, "O");
        });
        let merged_gap = yrs::merge_updates_v1([u1.as_slice(), u3.as_slice()]).expect("merge");
        (doc, text, [u1, u2, u3], merged_gap)
    }

    #[test]
    fn in_order_check_rejects_gaps() {
        let (_, _, [u1, u2, _], merged_gap) = three_edits();

        let server = new_doc(1);
        let sv = |d: &Doc| d.transact().state_vector();
        let apply = |d: &Doc, u: &[u8]| {
            let u = Update::decode_v1(u).expect("decode");
            d.transact_mut().apply_update(u).expect("apply");
        };
        // Nothing known yet: u2 and the merged update would leave holes; u1 would not.
        assert_eq!(
            check_update_in_order_v1(&u2, limits(), &sv(&server)),
            Err(InvalidUpdate::Gap {
                client: 5,
                start: 4,
                known: 0
            })
        );
        assert!(matches!(
            check_update_in_order_v1(&merged_gap, limits(), &sv(&server)),
            Err(InvalidUpdate::Gap { client: 5, .. })
        ));
        assert!(check_update_in_order_v1(&u1, limits(), &sv(&server)).is_ok());
        apply(&server, &u1);
        // Once u1 is in, u2 follows on, and re-sending u1 (all known) is fine.
        assert!(check_update_in_order_v1(&u2, limits(), &sv(&server)).is_ok());
        assert!(check_update_in_order_v1(&u1, limits(), &sv(&server)).is_ok());
        apply(&server, &u2);
        // The merged update's Skip now covers known clocks, so it no longer leaves a hole.
        assert!(check_update_in_order_v1(&merged_gap, limits(), &sv(&server)).is_ok());
        apply(&server, &merged_gap);
        let text = server.get_or_insert_text("t");
        assert_eq!(text.get_string(&server.transact()), "One two ");
        // Every sample passes against an empty document only if it starts at clock 0.
        for (name, bytes) in samples() {
            let plain = check_update_v1(&bytes, limits());
            let ordered = check_update_in_order_v1(&bytes, limits(), &StateVector::default());
            if name != "skip" && name != "text delete" && plain.is_ok() && ordered.is_err() {
                assert!(matches!(ordered, Err(InvalidUpdate::Gap { .. })), "{name}");
            }
        }
    }

    #[test]
    fn starts_place_an_update_as_the_walk_does() {
        let (doc, text, [u1, u2, u3], merged_gap) = three_edits();
        let server = new_doc(1);
        let place = |u: &[u8]| {
            let known = server.transact().state_vector();
            let placed = check_update_v1(u, limits()).expect("valid").starts.place(&known);
            // Whatever the starts say, the walk agrees on whether there is a hole.
            let walked = check_update_in_order_v1(u, limits(), &known);
            if placed.is_some() {
                assert_eq!(
                    placed == Some(Placement::Gap),
                    walked.is_err(),
                    "{placed:?} {walked:?}"
                );
            }
            placed
        };
        let apply = |u: &[u8]| {
            let u = Update::decode_v1(u).expect("decode");
            server.transact_mut().apply_update(u).expect("apply");
        };
        assert_eq!(place(&u2), Some(Placement::Gap));
        assert_eq!(place(&u1), Some(Placement::Extends));
        assert_eq!(place(&merged_gap), None, "a Skip needs the walk");
        apply(&u1);
        assert_eq!(place(&u1), Some(Placement::Follows), "all of it is known");
        assert_eq!(place(&u2), Some(Placement::Extends));
        assert_eq!(place(&u3), Some(Placement::Gap));
        apply(&u2);
        assert_eq!(place(&u3), Some(Placement::Extends), "a deletion and a new item");
        let deletion_only = step(&doc, |t| text.remove_range(t, 0, 1));
        assert_eq!(place(&deletion_only), Some(Placement::Follows), "no structs");
        for (name, bytes) in samples() {
            let Ok(stats) = check_update_v1(&bytes, limits()) else {
                continue;
            };
            let walked = check_update_in_order_v1(&bytes, limits(), &StateVector::default());
            match stats.starts.place(&StateVector::default()) {
                Some(Placement::Gap) => assert!(walked.is_err(), "{name}"),
                Some(_) => assert!(walked.is_ok(), "{name}"),
                None => assert!(name == "skip" || bytes.contains(&REF_SKIP), "{name}"),
            }
        }
    }

    #[test]
    fn trailing_bytes() {
        for (name, mut bytes) in samples() {
            bytes.push(0);
            assert_eq!(
                check_update_v1(&bytes, limits()),
                Err(InvalidUpdate::TrailingBytes),
                "{name}"
            );
        }
    }

    #[test]
    fn string_clock_length_is_utf16() {
        // "a🎬" is 2 + 2 = 3 UTF-16 units... a(1) + 🎬(2) = 3; a following GC must start at 3.
        let doc = new_doc(3);
        let text = doc.get_or_insert_text("t");
        step(&doc, |t| text.insert(t, 0, "a🎬"));
        let u = step(&doc, |t| text.insert(t, 3, "b"));
        check_update_v1(&u, limits()).expect("valid");
        // The second insert starts at clock 3 and refers to origin (3, 2).
        assert_eq!(&u[..4], &[1, 1, 3, 3]);
    }

    // ---- mutations: whatever the checker accepts, yrs must decode and apply without panic ----

    fn mutate(rng: &mut StdRng, src: &[u8]) -> Vec<u8> {
        let mut b = src.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let len = b.len();
            match rng.random_range(0..7) {
                0 if len > 0 => {
                    let i = rng.random_range(0..len);
                    b[i] ^= 1 << rng.random_range(0..8);
                }
                1 if len > 0 => {
                    let i = rng.random_range(0..len);
                    b[i] = rng.random();
                }
                2 => {
                    let i = rng.random_range(0..=len);
                    b.insert(i, rng.random());
                }
                3 if len > 0 => {
                    let i = rng.random_range(0..len);
                    b.remove(i);
                }
                4 if len > 0 => {
                    // Small integers are where counts, lengths and refs live.
                    let i = rng.random_range(0..len);
                    b[i] = rng.random_range(0..12);
                }
                5 if len > 2 => {
                    let i = rng.random_range(0..len - 1);
                    let n = rng.random_range(1..=(len - i).min(8));
                    let chunk: Vec<u8> = b[i..i + n].to_vec();
                    let at = rng.random_range(0..=len);
                    b.splice(at..at, chunk);
                }
                _ if len > 0 => {
                    let i = rng.random_range(0..len);
                    b[i] = b[i].wrapping_add(1);
                }
                _ => {}
            }
        }
        b
    }

    /// Decodes and applies `bytes` to a fresh doc (twice, as a re-sent update would be) and,
    /// if it passes the in-order check there, to one that already holds `base`.
    fn decode_and_apply(bytes: &[u8], base: &[u8]) -> Result<(), String> {
        let decode = || Update::decode_v1(bytes).map_err(|e| format!("decode: {e}"));
        let fresh = new_doc(999);
        let _ = fresh.transact_mut().apply_update(decode()?);
        let _ = fresh.transact_mut().apply_update(decode()?);
        let state = full_state(&fresh);
        check_update_v1(&state, limits()).map_err(|e| format!("own state rejected: {e}"))?;
        let copy = new_doc(997);
        let _ = copy
            .transact_mut()
            .apply_update(Update::decode_v1(&state).map_err(|e| e.to_string())?);

        let existing = new_doc(998);
        if let Ok(u) = Update::decode_v1(base) {
            let _ = existing.transact_mut().apply_update(u);
        }
        let sv = existing.transact().state_vector();
        if check_update_in_order_v1(bytes, limits(), &sv).is_ok() {
            let _ = existing.transact_mut().apply_update(decode()?);
            let _ = full_state(&existing);
        }
        Ok(())
    }

    #[test]
    fn accepted_mutations_never_panic_yrs() {
        let samples = samples();
        let seed = std::env::var("UPDATE_CHECK_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x7209e);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut accepted = 0;
        let mut failures = vec![];
        // UPDATE_CHECK_ROUNDS / UPDATE_CHECK_SEED widen the search locally.
        let rounds: usize = std::env::var("UPDATE_CHECK_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6000);
        for _ in 0..rounds {
            let (name, src) = &samples[rng.random_range(0..samples.len())];
            let bytes = mutate(&mut rng, src);
            let Ok(_) = check_update_v1(&bytes, limits()) else {
                continue;
            };
            accepted += 1;
            let base = &samples[rng.random_range(0..samples.len())].1;
            match catch_unwind(AssertUnwindSafe(|| decode_and_apply(&bytes, base))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{name}: checker accepted, yrs {e}: {bytes:?}")),
                Err(_) => failures.push(format!("{name}: yrs panicked on {bytes:?} (base {base:?})")),
            }
        }
        eprintln!("{accepted} of {rounds} mutations accepted");
        assert!(
            failures.is_empty(),
            "{} of {accepted} accepted:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // The mutator must keep producing plenty of valid inputs or this test proves little.
        assert!(accepted > rounds / 20, "only {accepted} accepted");
    }

    // ---- state vectors ----

    #[test]
    fn state_vectors() {
        let doc = new_doc(7);
        for (_, u) in samples() {
            let u = Update::decode_v1(&u).expect("decode");
            doc.transact_mut().apply_update(u).expect("apply");
        }
        let sv = doc.transact().state_vector().encode_v1();
        assert!(sv.len() > 5);
        assert_eq!(check_state_vector_v1(&sv), Ok(()));
        assert_eq!(check_state_vector_v1(&[0]), Ok(()));
        for cut in 0..sv.len() {
            assert!(check_state_vector_v1(&sv[..cut]).is_err());
        }
        let mut trailing = sv.clone();
        trailing.push(0);
        assert_eq!(
            check_state_vector_v1(&trailing),
            Err(InvalidUpdate::TrailingBytes)
        );
        assert_eq!(
            check_state_vector_v1(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(InvalidUpdate::Truncated)
        );
        assert_eq!(
            check_state_vector_v1(&[0xff; 11]),
            Err(InvalidUpdate::VarIntOverflow)
        );
        let mut big = vec![1];
        var(&mut big, 1 << 53);
        big.push(0);
        assert_eq!(
            check_state_vector_v1(&big),
            Err(InvalidUpdate::ClientIdTooLarge(1 << 53))
        );
        let mut clock = vec![1, 1];
        var(&mut clock, 1 << 32);
        assert_eq!(check_state_vector_v1(&clock), Err(InvalidUpdate::ClockOverflow));
    }

    // ---- awareness ----

    fn awareness_bytes(entries: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut b = vec![];
        var(&mut b, entries.len() as u64);
        for (client, clock, state) in entries {
            var(&mut b, *client);
            var(&mut b, *clock);
            vstr(&mut b, state.as_bytes());
        }
        b
    }

    #[test]
    fn awareness_updates() {
        let b = awareness_bytes(&[(1, 3, r#"{"user":{"name":"Ada","color":"red"}}"#), (2, 9, "null")]);
        let entries = parse_awareness_v1(&b, 10).expect("valid");
        assert_eq!(
            entries,
            vec![
                AwarenessEntry {
                    client_id: 1,
                    clock: 3,
                    state: r#"{"user":{"name":"Ada","color":"red"}}"#
                },
                AwarenessEntry {
                    client_id: 2,
                    clock: 9,
                    state: "null"
                },
            ]
        );
        assert_eq!(parse_awareness_v1(&[0], 10), Ok(vec![]));
        assert_eq!(
            parse_awareness_v1(&b, 1),
            Err(InvalidUpdate::TooManyEntries { count: 2, max: 1 })
        );
        for cut in 0..b.len() {
            assert!(parse_awareness_v1(&b[..cut], 10).is_err());
        }
        let mut trailing = b.clone();
        trailing.push(1);
        assert_eq!(
            parse_awareness_v1(&trailing, 10),
            Err(InvalidUpdate::TrailingBytes)
        );
        let bad = awareness_bytes(&[(1, 1, "{user")]);
        assert_eq!(parse_awareness_v1(&bad, 10), Err(InvalidUpdate::InvalidJson));
        let empty = awareness_bytes(&[(1, 1, "")]);
        assert_eq!(parse_awareness_v1(&empty, 10), Err(InvalidUpdate::InvalidJson));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(
            parse_awareness_v1(&awareness_bytes(&[(1, 1, &deep)]), 10),
            Err(InvalidUpdate::InvalidJson)
        );
        let mut utf = vec![1, 1, 1];
        vstr(&mut utf, b"\"\xff\"");
        assert_eq!(parse_awareness_v1(&utf, 10), Err(InvalidUpdate::InvalidUtf8));
        assert_eq!(
            parse_awareness_v1(&awareness_bytes(&[(1 << 53, 1, "null")]), 10),
            Err(InvalidUpdate::ClientIdTooLarge(1 << 53))
        );
        assert_eq!(
            parse_awareness_v1(&awareness_bytes(&[(1, 1 << 32, "null")]), 10),
            Err(InvalidUpdate::ClockOverflow)
        );
        assert_eq!(
            parse_awareness_v1(&[0x80, 0x80, 0x80, 0x80, 0x01], usize::MAX),
            Err(InvalidUpdate::Truncated)
        );
    }

    #[test]
    fn awareness_from_yrs() {
        let mut aw = yrs::sync::Awareness::new(new_doc(77));
        aw.set_local_state_raw(r#"{"user":{"name":"Bo"},"cursor":null}"#);
        let bytes = aw.update().expect("update").encode_v1();
        let entries = parse_awareness_v1(&bytes, 4).expect("valid");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].client_id, 77);
        assert_eq!(entries[0].state, r#"{"user":{"name":"Bo"},"cursor":null}"#);
    }
}
