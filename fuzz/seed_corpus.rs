//! Writes a seed corpus of real yrs-encoded updates and y-websocket frames:
//! `cargo run --release --bin seed_corpus` (from `fuzz/`), then fuzz as usual.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use yrs::updates::encoder::Encode;
use yrs::{
    any, Any, Array, Doc, Map, OffsetKind, Options, ReadTxn, StateVector, Text, Transact, TransactionMut,
    Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

fn doc(client: u64) -> Doc {
    let mut opts = Options::with_client_id(yrs::ClientID::new(client));
    opts.offset_kind = OffsetKind::Utf16;
    Doc::with_options(opts)
}

/// Runs `f` in one transaction and returns the update it produced.
fn step(doc: &Doc, f: impl FnOnce(&mut TransactionMut)) -> Vec<u8> {
    let before = doc.transact().state_vector();
    f(&mut doc.transact_mut());
    doc.transact().encode_diff_v1(&before)
}

fn updates() -> Vec<Vec<u8>> {
    let mut out = vec![vec![0, 0]];

    let d = doc(11);
    let text = d.get_or_insert_text("t");
    out.push(step(&d, |t| text.insert(t, 0, "hello 🎬 wörld")));
    out.push(step(&d, |t| text.remove_range(t, 2, 4)));
    let bold: HashMap<Arc<str>, Any> = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
    out.push(step(&d, |t| text.format(t, 0, 3, bold)));
    out.push(step(&d, |t| {
        text.insert_embed(t, 1, any!({"src": "a.png", "size": [1, 2.5]}));
    }));
    out.push(d.transact().encode_state_as_update_v1(&StateVector::default()));

    let d = doc(22);
    let map = d.get_or_insert_map("m");
    let arr = d.get_or_insert_array("a");
    out.push(step(&d, |t| {
        map.insert(t, "n", any!({"a": [1, -2, 3.5, null, true, "s", {"deep": [[]]}]}));
        map.insert(t, "bin", Any::from(vec![1u8, 2, 3]));
        map.insert(t, "big", Any::Number(yrs::Number::Int((1 << 60) + 1)));
        arr.insert_range(t, 0, [1, 2, 3]);
        let mut opts = Options::with_guid_and_client_id("sub".into(), yrs::ClientID::new(23));
        opts.auto_load = true;
        map.insert(t, "doc", Doc::with_options(opts));
    }));
    out.push(step(&d, |t| {
        map.remove(t, "n");
        arr.remove_range(t, 0, 2);
    }));

    let d = doc(33);
    let frag = d.get_or_insert_xml_fragment("prosemirror");
    out.push(step(&d, |t| {
        let el = frag.push_back(
            t,
            XmlElementPrelim::new("dialogue", [XmlTextPrelim::new("Hi.").into()]),
        );
        el.insert_attribute(t, "id", "b1");
    }));
    out.push(d.transact().encode_state_as_update_v1(&StateVector::default()));
    out
}

fn var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn frame(kind: u64, sub: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![];
    var(&mut f, kind);
    if let Some(sub) = sub {
        var(&mut f, sub);
    }
    var(&mut f, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

fn write(dir: &Path, items: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    for (i, bytes) in items.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).expect("write seed");
    }
    println!("{} seeds in {}", items.len(), dir.display());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let updates = updates();
    write(&root.join("decode_update"), &updates);

    let mut frames = vec![vec![3], vec![2, 0, 0]];
    let sv = doc(5).transact().state_vector().encode_v1();
    frames.push(frame(0, Some(0), &sv));
    for u in &updates {
        frames.push(frame(0, Some(1), u));
        frames.push(frame(0, Some(2), u));
    }
    let mut awareness = yrs::sync::Awareness::new(doc(7));
    awareness.set_local_state_raw(r#"{"user":{"name":"Ada"},"cursor":null}"#);
    if let Ok(update) = awareness.update() {
        frames.push(frame(1, None, &update.encode_v1()));
    }
    write(&root.join("decode_message"), &frames);
}
