//! Rebuilds the router when the demo's built files (`web/dist`) change, so that a build
//! embeds the newest ones (see `src/assets.rs`).

fn main() {
    // Cargo watches everything inside a folder, but only one that exists: a checkout
    // without the demo built gets an empty one (ignored by git), and embeds nothing.
    let _ = std::fs::create_dir_all("../web/dist");
    println!("cargo:rerun-if-changed=../web/dist");
}
