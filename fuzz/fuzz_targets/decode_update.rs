//! Whatever `check_update_v1` accepts must decode and apply in yrs without panicking or
//! crashing: applied to a fresh document twice (the second time everything is already
//! known), re-encoded, and — when it passes the in-order check — applied on top of the
//! state the first round produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_node::update_check::{check_update_in_order_v1, check_update_v1, CheckLimits};
use yrs::updates::decoder::Decode;
use yrs::{Doc, OffsetKind, Options, ReadTxn, StateVector, Transact, Update};

fn doc(client: u64) -> Doc {
    let mut opts = Options::with_client_id(yrs::ClientID::new(client));
    opts.offset_kind = OffsetKind::Utf16;
    Doc::with_options(opts)
}

fn apply(doc: &Doc, bytes: &[u8]) {
    let update = Update::decode_v1(bytes).expect("accepted updates must decode");
    let _ = doc.transact_mut().apply_update(update);
}

fuzz_target!(|data: &[u8]| {
    let limits = CheckLimits::default();
    if check_update_v1(data, limits).is_err() {
        return;
    }
    let first = doc(1);
    apply(&first, data);
    apply(&first, data);
    let state = first
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    check_update_v1(&state, limits).expect("yrs output must pass the checker");

    // The same bytes once more on top of a document that already holds their state.
    let second = doc(2);
    apply(&second, &state);
    let sv = second.transact().state_vector();
    if check_update_in_order_v1(data, limits, &sv).is_ok() {
        apply(&second, data);
        let _ = second
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
    }
});
