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

use std::ops::ControlFlow;

/// Limits applied while walking untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    /// Deepest nesting of `Any` (and embedded JSON) values accepted; a top-level value has
    /// depth 1. yrs decodes and drops these recursively, so this bounds its stack use.
    pub max_any_depth: usize,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits { max_any_depth: 32 }
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
    #[error("unknown Any tag {0}")]
    UnknownAnyTag(u8),
    #[error("unknown type ref {0}")]
    UnknownTypeRef(u64),
    #[error("parent info must be 0 or 1, got {0}")]
    InvalidParentInfo(u64),
    #[error("values nested deeper than the limit")]
    TooDeep,
    #[error("clock does not fit in 32 bits")]
    ClockOverflow,
    #[error("length or count does not fit in 32 bits")]
    LengthOverflow,
    #[error("client id {0} does not fit in 53 bits")]
    ClientIdTooLarge(u64),
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

type Result<T> = std::result::Result<T, InvalidUpdate>;

/// What a successful [`check_update_v1`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Structs (items, GC and Skip) across all clients.
    pub structs: usize,
    /// Delete-set ranges across all clients.
    pub delete_ranges: usize,
}

/// One client's state in an awareness update, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    pub client_id: u64,
    pub clock: u64,
    /// JSON text of the state; `null` means the client went away.
    pub state: &'a str,
}

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

/// Byte cursor that never slices or allocates past what is actually present.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(InvalidUpdate::TrailingBytes)
        }
    }

    fn u8(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or(InvalidUpdate::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Takes `len` bytes, checking the claim against what is left before slicing.
    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let len = usize::try_from(len).map_err(|_| InvalidUpdate::Truncated)?;
        if len > self.remaining() {
            return Err(InvalidUpdate::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.buf[start..self.pos])
    }

    /// lib0 varuint, capped at 64 bits (at most 10 bytes, the last carrying one bit).
    fn var_u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10u32 {
            let b = self.u8()?;
            let payload = u64::from(b & 0x7f);
            if i == 9 && (payload > 1 || b & 0x80 != 0) {
                return Err(InvalidUpdate::VarIntOverflow);
            }
            value |= payload << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(InvalidUpdate::VarIntOverflow)
    }

    /// A varuint that yrs reads as `u32` (with silent wrap-around), so it must fit.
    fn var_u32(&mut self, too_big: InvalidUpdate) -> Result<u32> {
        let v = self.var_u64()?;
        u32::try_from(v).map_err(|_| too_big)
    }

    /// lib0 signed varint: first byte has sign bit 0x40 and 6 value bits. The magnitude must
    /// fit in 63 bits, or yrs' negation overflows.
    fn var_i64(&mut self) -> Result<()> {
        let first = self.u8()?;
        if first & 0x80 == 0 {
            return Ok(());
        }
        // Bits already used by the first byte; each later byte adds 7.
        let mut shift = 6u32;
        loop {
            let b = self.u8()?;
            let payload = u64::from(b & 0x7f);
            if shift >= 63 || (payload << shift) >> shift != payload || (payload << shift) > i64::MAX as u64 {
                return Err(InvalidUpdate::VarIntOverflow);
            }
            if b & 0x80 == 0 {
                return Ok(());
            }
            shift += 7;
        }
    }

    /// A count of items that each occupy at least `min_bytes`; a count that cannot fit in the
    /// rest of the input is rejected before anything loops over it.
    fn count(&mut self, min_bytes: usize) -> Result<u64> {
        let n = self.var_u64()?;
        let fits = (self.remaining() / min_bytes.max(1)) as u64;
        if n > fits {
            return Err(InvalidUpdate::Truncated);
        }
        Ok(n)
    }

    /// lib0 varUint8Array; yrs reads the length as `u32`.
    fn var_bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.var_u32(InvalidUpdate::LengthOverflow)?;
        self.take(u64::from(len))
    }

    fn var_str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| InvalidUpdate::InvalidUtf8)
    }

    fn client_id(&mut self) -> Result<u64> {
        let id = self.var_u64()?;
        if id > MAX_CLIENT_ID {
            return Err(InvalidUpdate::ClientIdTooLarge(id));
        }
        Ok(id)
    }

    fn clock(&mut self) -> Result<u32> {
        self.var_u32(InvalidUpdate::ClockOverflow)
    }

    /// An ID (client, clock), as in origins and parent references.
    fn id(&mut self) -> Result<()> {
        self.client_id()?;
        self.clock()?;
        Ok(())
    }
}

/// Checks a v1-encoded document update (`Y.encodeStateAsUpdate`, sync step 2, update
/// messages). On success yrs can decode it without panicking, over-allocating or recursing
/// deeper than `limits` allow.
pub fn check_update_v1(bytes: &[u8], limits: CheckLimits) -> std::result::Result<UpdateStats, InvalidUpdate> {
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
        for _ in 0..num_structs {
            let len = check_struct(&mut r, limits)?;
            // yrs adds each struct's length to a `u32` clock.
            clock = clock.checked_add(len).ok_or(InvalidUpdate::ClockOverflow)?;
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
        r.clock()?;
    }
    r.finish()
}

/// Parses an awareness update (y-protocols): varuint count, then count x (varuint client id,
/// varuint clock, varString JSON state). At most `max_entries` entries are accepted; each state
/// must be JSON (serde_json, which bounds nesting), `null` for a client that left.
pub fn parse_awareness_v1(
    bytes: &[u8],
    max_entries: usize,
) -> std::result::Result<Vec<AwarenessEntry<'_>>, InvalidUpdate> {
    let mut r = Reader::new(bytes);
    // An entry is at least 3 bytes: client, clock, empty string length.
    let n = r.count(3)?;
    if n > max_entries as u64 {
        return Err(InvalidUpdate::TooManyEntries { count: n, max: max_entries });
    }
    // `n` is bounded by both the input length and `max_entries`.
    let mut entries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let client_id = r.client_id()?;
        // yrs keeps awareness clocks as u32.
        let clock = u64::from(r.clock()?);
        let state = r.var_str()?;
        if serde_json::from_str::<serde::de::IgnoredAny>(state).is_err() {
            return Err(InvalidUpdate::InvalidJson);
        }
        entries.push(AwarenessEntry { client_id, clock, state });
    }
    r.finish()?;
    Ok(entries)
}

fn reject_duplicates(clients: &mut [u64]) -> Result<()> {
    clients.sort_unstable();
    match clients.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(InvalidUpdate::DuplicateClient(w[0])),
        None => Ok(()),
    }
}

/// Walks one struct and returns its clock length.
fn check_struct(r: &mut Reader<'_>, limits: CheckLimits) -> Result<u32> {
    let info = r.u8()?;
    let content_ref = info & CONTENT_REF_MASK;
    if content_ref == REF_GC || content_ref == REF_SKIP {
        // Yjs reads GC/Skip by the low 5 bits, yrs by the whole byte: only flagless bytes agree.
        if info != content_ref {
            return Err(InvalidUpdate::FlaggedGcOrSkip(info));
        }
        return nonzero(r.var_u32(InvalidUpdate::ClockOverflow)?);
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
        r.id()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.id()?;
    }
    // Parent info and parent sub are only present when no origin lets them be inferred.
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        match r.var_u64()? {
            1 => {
                r.var_str()?;
            }
            0 => r.id()?,
            other => return Err(InvalidUpdate::InvalidParentInfo(other)),
        }
        if info & HAS_PARENT_SUB != 0 {
            r.var_str()?;
        }
    }
    check_content(r, content_ref, limits)
}

/// Walks item content and returns its clock length.
fn check_content(r: &mut Reader<'_>, content_ref: u8, limits: CheckLimits) -> Result<u32> {
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
            r.var_str()?;
            check_any(r, limits.max_any_depth)?;
            Ok(1)
        }
        other => Err(InvalidUpdate::UnknownContentRef(other)),
    }
}

fn nonzero(len: u32) -> Result<u32> {
    if len == 0 {
        Err(InvalidUpdate::ZeroLength)
    } else {
        Ok(len)
    }
}

/// The delete set: per client, ranges of (clock, len). Returns the number of ranges.
fn check_delete_set(r: &mut Reader<'_>) -> Result<usize> {
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
            clock.checked_add(len).ok_or(InvalidUpdate::ClockOverflow)?;
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
fn check_any(r: &mut Reader<'_>, max_depth: usize) -> Result<()> {
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
fn next_any_child(r: &mut Reader<'_>, stack: &mut Vec<Frame>) -> Result<ControlFlow<()>> {
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
fn check_json(text: &str, limits: CheckLimits) -> Result<()> {
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
