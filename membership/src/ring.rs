//! The placement ring: which of a set of labelled nodes owns a scene.
//!
//! A [`Ring`] is a consistent-hash ring over the **active** nodes of one membership view
//! (one epoch). Each node is placed on the ring [`DEFAULT_VNODES`] times ("virtual nodes"),
//! and a scene belongs to the first virtual node at or clockwise after the scene's own hash.
//! Virtual nodes are what make the load even: with one point per node the arcs between
//! points differ wildly in length, with a few hundred the differences average out.
//!
//! # The placement function, exactly
//!
//! Placement must be identical in every process, on every platform, in every build and in
//! every future release, or a rolling upgrade would silently move rooms between nodes. So
//! it is defined on bytes alone, and nothing in it depends on `std`'s `Hash` layout:
//!
//! * `h(bytes)` = SipHash-2-4 with the 128-bit key all zeros, as a `u64`. This is what the
//!   [`hashring`] crate uses (`hashring::DefaultHashBuilder` builds
//!   `siphasher::sip::SipHasher::new()`, i.e. keys `(0, 0)`); SipHash-2-4 is a published,
//!   fixed algorithm, so with a fixed key its output is a pure function of the input bytes.
//!   Unlike `std::collections::hash_map::DefaultHasher` it is neither randomly keyed per
//!   process nor allowed to change between Rust releases.
//! * The bytes are fed with a single [`Hasher::write`] call by the key types in this module
//!   (`VNode`, `SceneKey`), never through the `Hash` impls of `str`, `String`,
//!   tuples or integers: those impls add prefixes or suffixes (`str` appends `0xff`,
//!   `usize` is 4 or 8 bytes depending on the platform) and `std` documents that what they
//!   feed is not stable across compiler versions.
//! * Virtual node `i` (`0 <= i < vnodes`) of node `id` sits at `h("{id}#{i}")`, with `i` in
//!   decimal. The string is unambiguous even when `id` contains `#`, since `i` is what
//!   follows the last `#`.
//! * A scene `s` sits at `h(s)` (the UTF-8 bytes of its id). Its owner is the node of the
//!   virtual node with the smallest position `>= h(s)`, wrapping around to the smallest
//!   position overall.
//! * Ties between virtual node positions (a 64-bit collision, practically never) are broken
//!   by node id, then `i`: nodes are always inserted in sorted order, whatever order the
//!   caller gave them in.
//!
//! The unit test `hash_is_zero_keyed_siphash24_of_the_documented_bytes` checks the first
//! three points against an independent SipHash-2-4 implementation (itself checked against
//! the reference test vector), and `tests/placement_vector.rs` pins the end result for
//! 1,000 scene ids. Changing any of the above, including [`DEFAULT_VNODES`], reshuffles
//! rooms and must be treated as a placement-format change, not a refactor. The same tests
//! guard dependency upgrades: `Cargo.lock` pins `hashring` and `siphasher`, and a newer
//! `hashring` that switched hashers (or a `siphasher` bug) would fail them rather than
//! move rooms.
//!
//! # Why `hashring`
//!
//! It is a small sorted vector with binary-search lookup and a fixed hash, which is all
//! this needs. It has no virtual nodes of its own, so they are added here as `(node, i)`
//! keys. Its `add` re-sorts the whole ring on every call; [`Ring::with_vnodes`] uses one
//! `batch_add` (one sort) instead. A ring is never edited in place: a new epoch builds a
//! new `Ring`, which keeps "the ring at epoch E" a plain value.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashring::HashRing;

/// Virtual nodes per node when none is given.
///
/// Chosen so that, over 100,000 scene ids, the most loaded node holds at most 1.15x the
/// mean for 3, 5 and 10 nodes whatever the nodes are called, not only for the ids the
/// tests use: `examples/ring_balance.rs --sets 500` builds 500 rings over random ids per
/// node count, and with 1024 the worst of those 1,500 rings is 1.12x, while 512 still let
/// 7 of them exceed 1.15x (worst 1.20x) and 256 let 18 of 300 exceed it. The figures are
/// in `membership/README.md`. The cost is small: 10 nodes make a 10,240-entry sorted
/// vector (well under 1 MB), built in a few milliseconds, and a lookup is a binary search
/// over it. Part of the placement function: changing it moves rooms.
pub const DEFAULT_VNODES: u32 = 1024;

/// Upper bound on virtual nodes per node, so that a bad configuration value cannot make a
/// ring of billions of entries.
pub const MAX_VNODES: u32 = 16_384;

/// A node as the ring knows it: a label whose UTF-8 bytes placement hashes.
///
/// The ring is a pure function of labels, so it is tested with any strings; the cluster
/// labels each active node with its [`NodeId`](troupe_proto::NodeId) in decimal
/// (see [`crate::placement`]). Shared (`Arc`) because every virtual node holds a copy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RingNode(Arc<str>);

impl RingNode {
    /// Wraps an id. Emptiness is checked when a ring is built, where it can be reported.
    pub fn new(id: impl AsRef<str>) -> Self {
        RingNode(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RingNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RingNode {
    fn from(id: &str) -> Self {
        RingNode::new(id)
    }
}

impl From<String> for RingNode {
    fn from(id: String) -> Self {
        RingNode(Arc::from(id))
    }
}

impl From<&String> for RingNode {
    fn from(id: &String) -> Self {
        RingNode::new(id)
    }
}

impl From<&RingNode> for RingNode {
    fn from(id: &RingNode) -> Self {
        id.clone()
    }
}

impl AsRef<str> for RingNode {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a ring could not be built. Building is the only fallible step; lookups cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The same node id was given twice: a membership view lists each node once, so this
    /// is a bug in the caller, and silently merging would hide it.
    #[error("node {0} appears more than once in the membership view")]
    DuplicateNode(RingNode),
    /// An empty id cannot name a node and would hash like a prefix of other keys.
    #[error("a node id is empty")]
    EmptyNodeId,
    /// Each node needs at least one point on the ring, or it would own nothing.
    #[error("virtual nodes per node must be between 1 and {MAX_VNODES}, got {0}")]
    VnodesOutOfRange(u32),
}

/// One point on the ring: virtual node `replica` of `node`.
///
/// Its position is `h("{node}#{replica}")`; see the module docs.
#[derive(Clone, Debug)]
struct VNode {
    node: RingNode,
    replica: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One `write` of the exact documented bytes; no std `Hash` impls involved.
        let label = format!("{}#{}", self.node.as_str(), self.replica);
        state.write(label.as_bytes());
    }
}

/// A scene id as a ring key: hashed as its raw UTF-8 bytes, in one `write`.
struct SceneKey<'a>(&'a str);

impl Hash for SceneKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// The placement ring for one membership view: maps scene ids to their owning node.
///
/// Build it from the ids of the view's `active` nodes only (joining, draining and down
/// nodes own nothing). Immutable: a membership change builds a new ring.
#[derive(Clone)]
pub struct Ring {
    ring: HashRing<VNode>,
    nodes: Vec<RingNode>,
    vnodes: u32,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("nodes", &self.nodes)
            .field("vnodes", &self.vnodes)
            .finish()
    }
}

impl Ring {
    /// Builds the ring over `active` with [`DEFAULT_VNODES`] virtual nodes per node.
    ///
    /// The order of `active` does not matter. An empty list gives an empty ring, whose
    /// [`owner`](Ring::owner) is always `None` (no node may serve anything).
    pub fn new<I>(active: I) -> Result<Ring, RingError>
    where
        I: IntoIterator,
        I::Item: Into<RingNode>,
    {
        Ring::with_vnodes(active, DEFAULT_VNODES)
    }

    /// Builds the ring over `active` with `vnodes` virtual nodes per node.
    ///
    /// Only for experiments and tests: every process of a cluster must use the same count,
    /// and the cluster's count is [`DEFAULT_VNODES`].
    pub fn with_vnodes<I>(active: I, vnodes: u32) -> Result<Ring, RingError>
    where
        I: IntoIterator,
        I::Item: Into<RingNode>,
    {
        if vnodes == 0 || vnodes > MAX_VNODES {
            return Err(RingError::VnodesOutOfRange(vnodes));
        }
        // Sorting makes the result independent of the caller's order, including how the
        // (stable) sort inside `hashring` orders colliding positions.
        let mut sorted = BTreeSet::new();
        for id in active {
            let id: RingNode = id.into();
            if id.as_str().is_empty() {
                return Err(RingError::EmptyNodeId);
            }
            if let Some(dup) = sorted.replace(id) {
                return Err(RingError::DuplicateNode(dup));
            }
        }
        let nodes: Vec<RingNode> = sorted.into_iter().collect();

        let mut points = Vec::with_capacity(nodes.len().saturating_mul(vnodes as usize));
        for node in &nodes {
            for replica in 0..vnodes {
                points.push(VNode {
                    node: node.clone(),
                    replica,
                });
            }
        }
        let mut ring = HashRing::new();
        ring.batch_add(points);
        Ok(Ring { ring, nodes, vnodes })
    }

    /// The node that owns `scene_id`, or `None` if the ring has no nodes.
    ///
    /// Same answer for the same membership in every process and release; see the module
    /// docs for the exact function.
    pub fn owner(&self, scene_id: &str) -> Option<&RingNode> {
        self.ring.get(&SceneKey(scene_id)).map(|v| &v.node)
    }

    /// The nodes on the ring, sorted by id.
    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    /// Whether `id` is on the ring (is one of the active nodes it was built from).
    pub fn contains(&self, id: &str) -> bool {
        self.nodes.binary_search_by(|n| n.as_str().cmp(id)).is_ok()
    }

    /// Virtual nodes per node.
    pub fn vnodes_per_node(&self) -> u32 {
        self.vnodes
    }

    /// Number of nodes on the ring.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the ring has no nodes, so that no scene has an owner.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use super::*;

    /// Independent SipHash-2-4 (Aumasson & Bernstein), written from the paper, so that the
    /// placement hash is checked against the algorithm rather than against itself.
    fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
        let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
        let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
        let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
        let mut v3 = k1 ^ 0x7465_6462_7974_6573;
        let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13);
            *v1 ^= *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16);
            *v3 ^= *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21);
            *v3 ^= *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17);
            *v1 ^= *v2;
            *v2 = v2.rotate_left(32);
        };
        let mut chunks = msg.chunks_exact(8);
        for c in &mut chunks {
            let m = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
            v3 ^= m;
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            v0 ^= m;
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        last[7] = msg.len() as u8;
        let b = u64::from_le_bytes(last);
        v3 ^= b;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= b;
        v2 ^= 0xff;
        for _ in 0..4 {
            round(&mut v0, &mut v1, &mut v2, &mut v3);
        }
        v0 ^ v1 ^ v2 ^ v3
    }

    #[test]
    fn reference_siphash_matches_the_published_vector() {
        // Key 00..0f, message 00..0e: the test vector in the SipHash paper, appendix A.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn hash_is_zero_keyed_siphash24_of_the_documented_bytes() {
        let hb = hashring::DefaultHashBuilder;
        for id in ["n1", "node-with-a-much-longer-id", "a#1", "ü", ""] {
            for replica in [0u32, 7, 255, 4_000_000_000] {
                let v = VNode {
                    node: RingNode::new(id),
                    replica,
                };
                let label = format!("{id}#{replica}");
                assert_eq!(hb.hash_one(&v), siphash24(0, 0, label.as_bytes()), "{label}");
            }
        }
        for scene in ["", "scene-0", "scene-999", "a-scene-id-longer-than-sixteen-bytes"] {
            assert_eq!(hb.hash_one(SceneKey(scene)), siphash24(0, 0, scene.as_bytes()));
        }
        // One absolute value, so that even the reference implementation cannot drift.
        assert_eq!(siphash24(0, 0, b""), 0x1e92_4b9d_7377_00d7);
    }

    #[test]
    fn owner_follows_the_documented_rule() {
        let ring = Ring::with_vnodes(["n1", "n2", "n3"], 16).expect("ring");
        let mut points: Vec<(u64, &str, u32)> = Vec::new();
        for id in ["n1", "n2", "n3"] {
            for i in 0..16u32 {
                points.push((siphash24(0, 0, format!("{id}#{i}").as_bytes()), id, i));
            }
        }
        points.sort();
        for s in 0..2000 {
            let scene = format!("scene-{s}");
            let h = siphash24(0, 0, scene.as_bytes());
            let expected = points.iter().find(|p| p.0 >= h).unwrap_or(&points[0]).1;
            assert_eq!(
                ring.owner(&scene).map(RingNode::as_str),
                Some(expected),
                "{scene}"
            );
        }
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let ids = ["n1", "n2", "n3", "n4", "n5"];
        let a = Ring::new(ids).expect("ring");
        let b = Ring::new(ids.iter().rev().copied()).expect("ring");
        let c = Ring::new(["n3", "n5", "n1", "n4", "n2"]).expect("ring");
        assert_eq!(a.nodes(), b.nodes());
        for s in 0..5000 {
            let scene = format!("scene-{s}");
            assert_eq!(a.owner(&scene), b.owner(&scene));
            assert_eq!(a.owner(&scene), c.owner(&scene));
        }
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = Ring::new(Vec::<RingNode>::new()).expect("ring");
        assert!(ring.is_empty());
        assert_eq!(ring.owner("scene-0"), None);
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = Ring::new(["solo"]).expect("ring");
        for s in 0..1000 {
            assert_eq!(
                ring.owner(&format!("scene-{s}")).map(RingNode::as_str),
                Some("solo")
            );
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(
            Ring::new(["n1", "n2", "n1"]).err(),
            Some(RingError::DuplicateNode(RingNode::new("n1")))
        );
        assert_eq!(Ring::new(["n1", ""]).err(), Some(RingError::EmptyNodeId));
        assert_eq!(
            Ring::with_vnodes(["n1"], 0).err(),
            Some(RingError::VnodesOutOfRange(0))
        );
        assert_eq!(
            Ring::with_vnodes(["n1"], MAX_VNODES + 1).err(),
            Some(RingError::VnodesOutOfRange(MAX_VNODES + 1))
        );
    }

    #[test]
    fn contains_and_accessors() {
        let ring = Ring::new(["b", "a"]).expect("ring");
        assert!(ring.contains("a") && ring.contains("b") && !ring.contains("c"));
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.vnodes_per_node(), DEFAULT_VNODES);
        assert_eq!(ring.nodes(), &[RingNode::new("a"), RingNode::new("b")]);
        let mut seen: HashMap<&RingNode, usize> = HashMap::new();
        for s in 0..1000 {
            if let Some(o) = ring.owner(&format!("scene-{s}")) {
                *seen.entry(o).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 2);
    }
}
