//! The fixed placement vector: a known membership must place 1,000 known scene ids exactly
//! as recorded in `fixtures/placement-v1.txt`.
//!
//! This is what stops a rolling upgrade from silently reshuffling rooms: a new build that
//! changes the hash, the virtual node labels, the virtual node count or the lookup rule
//! fails here. The fixture was generated once with
//! `cargo run -p troupe-membership --example placement_vector > membership/tests/fixtures/placement-v1.txt`;
//! do not regenerate it to make this test pass (see that example's docs).

use troupe_membership::ring::{Ring, RingNode, DEFAULT_VNODES};

const FIXTURE: &str = include_str!("fixtures/placement-v1.txt");

/// The header value of `# key: value`, if present.
fn header<'a>(key: &str) -> Option<&'a str> {
    FIXTURE
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn placement_matches_the_committed_vector() {
    let nodes: Vec<&str> = header("nodes").expect("nodes header").split(' ').collect();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    let vnodes: u32 = header("vnodes")
        .expect("vnodes header")
        .parse()
        .expect("vnodes number");
    assert_eq!(
        vnodes, DEFAULT_VNODES,
        "the default virtual node count is part of placement"
    );
    let scenes: usize = header("scenes")
        .expect("scenes header")
        .parse()
        .expect("scenes number");
    assert_eq!(scenes, 1000);

    // Any insertion order must give the recorded answer.
    let orders = [["n1", "n2", "n3"], ["n3", "n1", "n2"], ["n2", "n3", "n1"]];
    let rings: Vec<Ring> = orders.iter().map(|o| Ring::new(*o).expect("ring")).collect();

    let mut checked = 0;
    let mut wrong = Vec::new();
    for (i, line) in FIXTURE.lines().filter(|l| !l.starts_with('#')).enumerate() {
        let (scene, owner) = line.split_once(' ').expect("`scene owner` line");
        assert_eq!(
            scene,
            format!("scene-{i}"),
            "fixture lines are scene-0.. in order"
        );
        for ring in &rings {
            if ring.owner(scene).map(RingNode::as_str) != Some(owner) {
                wrong.push(format!("{scene}: recorded {owner}, now {:?}", ring.owner(scene)));
            }
        }
        checked += 1;
    }
    assert_eq!(checked, scenes);
    assert!(
        wrong.is_empty(),
        "placement changed for {} lookups (a rolling upgrade would move these rooms), first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}
