//! Chaos scenarios, kept in `chaos/scenarios/*.toml`: the cluster, the editors, and the
//! faults to inject — at fixed times, or drawn from a seeded schedule.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::duration_de;

/// A fault the harness can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a random node.
    KillNode,
    /// `kill -9` of the node owning the busiest scene.
    KillOwner,
    /// `kill -9` of the Raft leader.
    KillLeader,
    /// SIGSTOP a node, drain it while it is frozen, SIGCONT it later (a zombie owner).
    Zombie,
    /// Stop a node gracefully (SIGTERM) and start it again.
    RestartNode,
    /// Start and add a new node.
    AddNode,
    /// Drain a node (it stays up, owns nothing), and later put it back.
    DrainNode,
    /// Remove a node that is not a voter (added earlier).
    RemoveNode,
    /// Cut the owner of the busiest scene off the network (its peers, the router and its
    /// editors; not its store) for a few seconds. Nodes run in network namespaces for it.
    PartitionNode,
    /// Stop Redis and start it again.
    RestartRedis,
    /// Stop Postgres for a few seconds and start it again (the scenario's own Postgres).
    RestartPostgres,
}

impl FaultKind {
    /// Whether editors lose their connection (and so a recovery time is measured).
    pub fn disconnects(self) -> bool {
        !matches!(self, FaultKind::RestartRedis | FaultKind::RestartPostgres)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "three")]
    pub nodes: u64,
    pub scenes: usize,
    pub editors_per_scene: usize,
    #[serde(with = "duration_de")]
    pub duration: Duration,
    /// Pause between an editor's keystrokes.
    #[serde(with = "duration_de", default = "typing_default")]
    pub typing_interval: Duration,
    /// Editors keep a route look-up open that the router answers when their scene moves,
    /// as the browser client does (`watchMoves`). Off where the load process would run out
    /// of files: each such editor holds a second connection to the router.
    #[serde(default = "watch_moves_default")]
    pub watch_moves: bool,
    #[serde(default)]
    pub redis: bool,
    /// Run the store on a Postgres of its own (needed for `restart_postgres`).
    #[serde(default)]
    pub postgres: bool,
    #[serde(default)]
    pub seed: u64,
    /// How long a killed node stays down before it starts again (and takes its scenes
    /// back): a process supervisor's restart delay.
    #[serde(with = "duration_de", default = "restart_default")]
    pub restart_after: Duration,
    #[serde(default, rename = "fault")]
    pub faults: Vec<PlannedFault>,
    /// Faults drawn at random (seeded) in addition to the planned ones.
    #[serde(default)]
    pub random: Option<RandomFaults>,
    /// P1 writers beside the editors (the adopting product's REST autosave); with it the
    /// scenes are P1 scenes and editors type into screenplay blocks. Needs Postgres.
    #[serde(default)]
    pub p1: Option<P1Writers>,
}

/// `[p1]`: the P1 product writing through the content API while people edit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P1Writers {
    pub writers_per_scene: usize,
    /// Pause between two saves of one writer.
    #[serde(with = "duration_de", default = "p1_every_default")]
    pub every: Duration,
    /// The kinds of writes, made in turn.
    #[serde(default = "p1_writes_default")]
    pub writes: Vec<P1WriteKind>,
}

/// One kind of P1 write. Each reads the scene first: from P1's own tables, as the P1 app
/// has it (`content_blocks` and the scene's `content_version` from one snapshot), or
/// through the content API's `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum P1WriteKind {
    /// The P1 app's autosave: its own copy with the marker added at the end of one block's
    /// text, `PUT` against the version it read.
    PutAppend,
    /// The same with a new action block holding the marker.
    PutBlock,
    /// `PATCH` inserting an action block at a position of the version read from P1's
    /// tables (`base_version`).
    PatchInsert,
    /// `PATCH` with no base version inserting an action block at a position of the scene
    /// as the content API's `GET` answered it (the scene only grows in these runs).
    PatchInsertLive,
    /// The autosave of a client that reads through the API: `GET`, then `PUT` of its
    /// blocks with a new action block, against the `version` the `GET` named.
    ApiPutBlock,
    /// The same with the marker added at the end of one block's text.
    ApiPutAppend,
}

impl P1WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            P1WriteKind::PutAppend => "put_append",
            P1WriteKind::PutBlock => "put_block",
            P1WriteKind::PatchInsert => "patch_insert",
            P1WriteKind::PatchInsertLive => "patch_insert_live",
            P1WriteKind::ApiPutBlock => "api_put_block",
            P1WriteKind::ApiPutAppend => "api_put_append",
        }
    }

    /// Whether it reads the scene through the content API (else from P1's tables).
    pub fn reads_api(self) -> bool {
        matches!(
            self,
            P1WriteKind::PatchInsertLive | P1WriteKind::ApiPutBlock | P1WriteKind::ApiPutAppend
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedFault {
    pub kind: FaultKind,
    #[serde(with = "duration_de")]
    pub at: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    pub kinds: Vec<FaultKind>,
    /// Time between two faults.
    #[serde(with = "duration_de")]
    pub every: Duration,
    /// Quiet time before the first fault.
    #[serde(with = "duration_de", default = "warmup_default")]
    pub after: Duration,
}

fn three() -> u64 {
    3
}

fn restart_default() -> Duration {
    Duration::from_secs(3)
}

fn watch_moves_default() -> bool {
    true
}

fn typing_default() -> Duration {
    Duration::from_millis(100)
}

fn warmup_default() -> Duration {
    Duration::from_secs(3)
}

fn p1_every_default() -> Duration {
    Duration::from_secs(1)
}

fn p1_writes_default() -> Vec<P1WriteKind> {
    vec![
        P1WriteKind::PutAppend,
        P1WriteKind::PutBlock,
        P1WriteKind::PatchInsert,
        P1WriteKind::PatchInsertLive,
    ]
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)?;
        let scenario: Scenario = toml::from_str(&text)?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes >= 1, "nodes must be at least 1");
        anyhow::ensure!(
            self.scenes >= 1 && self.editors_per_scene >= 1,
            "scenes and editors_per_scene must be at least 1"
        );
        anyhow::ensure!(
            self.duration >= Duration::from_secs(5),
            "duration must be at least 5s"
        );
        if let Some(p1) = &self.p1 {
            anyhow::ensure!(
                p1.writers_per_scene >= 1 && !p1.writes.is_empty(),
                "p1.writers_per_scene must be at least 1 and p1.writes not empty"
            );
            anyhow::ensure!(
                p1.every >= Duration::from_millis(100),
                "p1.every must be at least 100ms"
            );
        }
        if let Some(r) = &self.random {
            anyhow::ensure!(!r.kinds.is_empty(), "random.kinds is empty");
            anyhow::ensure!(
                r.every >= Duration::from_millis(500),
                "random.every must be at least 500ms"
            );
        }
        Ok(())
    }

    /// Whether a fault needs the nodes in network namespaces of their own.
    pub fn needs_network(&self) -> bool {
        let planned = self.faults.iter().map(|f| f.kind);
        let random = self.random.iter().flat_map(|r| r.kinds.iter().copied());
        planned.chain(random).any(|k| k == FaultKind::PartitionNode)
    }

    /// Every fault with its time, sorted: the planned ones plus the seeded random ones.
    pub fn schedule(&self, seed: u64, duration: Duration) -> Vec<PlannedFault> {
        let mut all: Vec<PlannedFault> = self.faults.iter().filter(|f| f.at < duration).cloned().collect();
        if let Some(r) = &self.random {
            let mut rng = SplitMix(seed);
            let mut at = r.after;
            // Leave the last seconds for recovery.
            while at + Duration::from_secs(3) < duration {
                let kind = r.kinds[(rng.next_u64() % r.kinds.len() as u64) as usize];
                all.push(PlannedFault { kind, at });
                at += r.every;
            }
        }
        all.sort_by_key(|f| f.at);
        all
    }
}

/// SplitMix64: reproducible choices from a seed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_file_loads_and_has_faults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(
                !scenario.schedule(scenario.seed, scenario.duration).is_empty(),
                "{} schedules no fault",
                scenario.name
            );
            names.push(scenario.name);
        }
        names.sort();
        for wanted in [
            "kill-owner",
            "membership-churn",
            "p1-coexistence",
            "partition",
            "postgres-outage",
            "redis-outage",
            "rolling-restart",
            "smoke",
            "soak",
            "zombie",
        ] {
            assert!(names.iter().any(|n| n == wanted), "no {wanted} scenario");
        }
    }

    #[test]
    fn schedules_are_reproducible_and_leave_time_to_recover() {
        let scenario: Scenario = toml::from_str(
            r#"
            name = "t"
            scenes = 1
            editors_per_scene = 1
            duration = "30s"
            [random]
            kinds = ["kill_node", "add_node"]
            every = "2s"
            "#,
        )
        .unwrap();
        let a = scenario.schedule(9, scenario.duration);
        let b = scenario.schedule(9, scenario.duration);
        assert_eq!(
            a.iter().map(|f| (f.kind, f.at)).collect::<Vec<_>>(),
            b.iter().map(|f| (f.kind, f.at)).collect::<Vec<_>>()
        );
        assert!(a
            .iter()
            .all(|f| f.at + Duration::from_secs(3) < scenario.duration));
        assert!(toml::from_str::<Scenario>("name = 1").is_err());
    }
}
