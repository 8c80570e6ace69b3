//! The store suite: the same behaviour from the embedded SQLite store and from Postgres.

use troupe_node::store::{LogAppend, Snapshot, Store};
use troupe_tests::{unique, Backend};

async fn open(backend: &Backend) -> Store {
    open_in(backend, &fresh_dir()).await
}

/// A folder of its own for an embedded store.
fn fresh_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("troupe-store"))
}

/// The store of `backend`; the embedded one in `dir`, where a node keeps it.
async fn open_in(backend: &Backend, dir: &std::path::Path) -> Store {
    let location = match backend {
        Backend::Sqlite => troupe_node::config::StoreLocation::Sqlite(dir.join("troupe.sqlite3")),
        Backend::Postgres(url) => troupe_node::config::StoreLocation::Postgres(url.clone()),
    };
    Store::open(&location).await.expect("open store")
}

/// The test command's Postgres, for the tests of what only Postgres does.
fn postgres_url() -> Option<String> {
    Backend::all().into_iter().find_map(|b| match b {
        Backend::Postgres(url) => Some(url),
        Backend::Sqlite => None,
    })
}

/// One quota report on its own: `user`'s total for `hour` after it.
async fn add_one(store: &Store, user: &str, hour: i64, bytes: u64) -> u64 {
    store
        .add_user_bytes_many(&[(user.to_string(), (hour, bytes))])
        .await
        .unwrap()[0]
}

/// A scene held at epoch 5 by node "1" (the former owner) on the test command's Postgres,
/// for the tests of what only Postgres does; None without one.
async fn postgres_scene_of_a_former_owner(prefix: &str) -> Option<(String, Store, String)> {
    let url = postgres_url()?;
    let former = open(&Backend::Postgres(url.clone())).await;
    let scene = unique(prefix);
    assert!(former.claim_lease(&scene, 5, "1").await.unwrap());
    Some((url, former, scene))
}

/// Claims each scene for `owner` at epoch 0, as a room does when it loads.
async fn claim(store: &Store, scenes: &[&str], owner: &str) {
    for scene in scenes {
        assert!(
            store.claim_lease(scene, 0, owner).await.unwrap(),
            "claim of {scene} refused"
        );
    }
}

fn append(scene: &str, seq: u64, data: &[u8]) -> LogAppend {
    LogAppend {
        scene: scene.into(),
        seq,
        epoch: 0,
        data: data.to_vec(),
    }
}

#[tokio::test]
async fn appends_and_loads_in_order_on_every_backend() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let (a, b) = (unique("scene-a"), unique("scene-b"));
        claim(&store, &[&a, &b], "n1").await;
        // One group commit spanning two scenes.
        let refused = store
            .append(
                "n1",
                &[append(&a, 1, b"a1"), append(&b, 1, b"b1"), append(&a, 2, b"a2")],
            )
            .await
            .unwrap();
        assert!(refused.is_empty(), "{backend:?}");
        store.append("n1", &[append(&a, 3, b"a3")]).await.unwrap();
        let loaded = store.load(&a).await.unwrap();
        let data: Vec<&[u8]> = loaded.rows.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, [b"a1", b"a2", b"a3"], "{backend:?}");
        assert_eq!(loaded.last_seq(), 3);
        assert!(loaded.snapshots.is_empty());
        assert_eq!(store.load(&b).await.unwrap().last_seq(), 1);
        let empty = store.load(&unique("never-written")).await.unwrap();
        assert_eq!(empty.last_seq(), 0);
        assert!(empty.rows.is_empty());
    }
}

#[tokio::test]
async fn a_taken_position_is_refused_without_failing_the_batch() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let (a, b) = (unique("scene-a"), unique("scene-b"));
        claim(&store, &[&a], "n1").await;
        claim(&store, &[&b], "n2").await;
        store.append("n1", &[append(&a, 1, b"first")]).await.unwrap();
        // Another writer tries the same position of `a` in a batch with `b`.
        let refused = store
            .append("n2", &[append(&b, 1, b"b1"), append(&a, 1, b"second")])
            .await
            .unwrap();
        assert_eq!(refused, vec![1], "{backend:?}");
        // The same writer retrying a batch whose first attempt landed is not refused.
        let retried = store.append("n1", &[append(&a, 1, b"first")]).await.unwrap();
        assert!(retried.is_empty(), "{backend:?}: a landed retry was refused");
        // The same writer id with other bytes at that position (a second node misconfigured
        // with the same id, say) is refused.
        let clash = store.append("n1", &[append(&a, 1, b"other")]).await.unwrap();
        assert_eq!(clash, vec![0], "{backend:?}");
        assert_eq!(store.load(&a).await.unwrap().rows[0].data, b"first");
        assert_eq!(store.load(&b).await.unwrap().rows.len(), 1);
    }
}

/// A store a later release migrated opens all the same (a rollback of the nodes needs no
/// rollback of the database): an applied migration this release does not know is a later
/// release's, and the data it wrote is read as before.
#[tokio::test]
async fn a_store_migrated_by_a_later_release_still_opens() {
    for backend in Backend::all() {
        // Its own database or file: a migration row in the shared one would reach every test.
        let (backend, dir) = match backend {
            Backend::Postgres(url) => {
                let admin = sqlx::PgPool::connect(&url).await.unwrap();
                let name = unique("later").replace('-', "_");
                // The name is ours (letters, digits and underscores).
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                let (server, _) = url.rsplit_once('/').unwrap();
                (Backend::Postgres(format!("{server}/{name}")), fresh_dir())
            }
            Backend::Sqlite => (Backend::Sqlite, fresh_dir()),
        };
        let scene = unique("kept");
        let store = open_in(&backend, &dir).await;
        claim(&store, &[&scene], "1").await;
        store.append("1", &[append(&scene, 1, b"edit")]).await.unwrap();
        // What the later release's migration leaves behind: its row and its table.
        const LATER_SQLITE: &str =
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                                    VALUES (99990101000000, 'a later release', true, x'00', 0)";
        const LATER_POSTGRES: &str = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                                      VALUES (99990101000000, 'a later release', true, decode('00', 'hex'), 0)";
        match &backend {
            Backend::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query(LATER_POSTGRES).execute(&pool).await.unwrap();
                sqlx::query("CREATE TABLE later_release (id BIGINT)")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            Backend::Sqlite => {
                let file = dir.join("troupe.sqlite3");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display()))
                    .await
                    .unwrap();
                sqlx::query(LATER_SQLITE).execute(&pool).await.unwrap();
            }
        }
        drop(store);
        let reopened = open_in(&backend, &dir).await;
        let loaded = reopened.load(&scene).await.unwrap();
        assert_eq!(loaded.rows.len(), 1, "{backend:?}");
    }
}

/// The quota on new scenes counts distinct scenes: a scene asked for again (a second tab,
/// a retry) is admitted without counting twice, a refused scene is not counted, and each
/// minute and user is counted apart.
#[tokio::test]
async fn new_scenes_count_once_each_and_refused_ones_not_at_all() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let (ada, bob) = (unique("ada"), unique("bob"));
        let admit = |user: &str, minute: i64, scene: &str| {
            let (store, user, scene) = (store.clone(), user.to_string(), scene.to_string());
            async move { store.admit_new_scene(&user, minute, &scene, 2).await.unwrap() }
        };
        assert!(admit(&ada, 100, "one").await, "{backend:?}");
        assert!(admit(&ada, 100, "one").await, "the same scene again, {backend:?}");
        assert!(admit(&ada, 100, "two").await, "{backend:?}");
        assert!(!admit(&ada, 100, "three").await, "a third scene, {backend:?}");
        assert!(!admit(&ada, 100, "three").await, "retried, {backend:?}");
        // Admitted scenes stay admitted for the minute; a refused one took no place.
        assert!(admit(&ada, 100, "two").await, "{backend:?}");
        assert!(admit(&ada, 101, "three").await, "the next minute, {backend:?}");
        assert!(admit(&bob, 100, "three").await, "another user, {backend:?}");

        // Twenty new scenes asked for at once (as on several nodes): exactly the quota.
        let cy = unique("cy");
        let at_once = (0..20).map(|i| {
            let (store, cy) = (store.clone(), cy.clone());
            tokio::spawn(async move { store.admit_new_scene(&cy, 100, &format!("s{i}"), 3).await })
        });
        let mut admitted = 0;
        for asked in futures_util::future::join_all(at_once).await {
            admitted += usize::from(asked.unwrap().unwrap());
        }
        assert_eq!(admitted, 3, "{backend:?}");
    }
}

/// Quota reports of many users in one call add up as one-by-one reports do, answer in the
/// order asked, and keep each hour apart.
#[tokio::test]
async fn many_users_bytes_add_up_at_once_as_one_by_one() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let (ada, bob, cy) = (unique("ada"), unique("bob"), unique("cy"));
        assert_eq!(add_one(&store, &ada, 7, 100).await, 100);
        let totals = store
            .add_user_bytes_many(&[
                (bob.clone(), (7, 5)),
                (ada.clone(), (7, 20)),
                (cy.clone(), (8, 1)),
            ])
            .await
            .unwrap();
        assert_eq!(totals, vec![5, 120, 1], "{backend:?}");
        // Another hour is counted apart; one-by-one and many agree.
        let totals = store
            .add_user_bytes_many(&[(ada.clone(), (8, 3)), (cy.clone(), (8, 2))])
            .await
            .unwrap();
        assert_eq!(totals, vec![3, 3], "{backend:?}");
        assert_eq!(add_one(&store, &ada, 7, 1).await, 121, "{backend:?}");
        assert!(store.add_user_bytes_many(&[]).await.unwrap().is_empty());

        // Through the batching task, as connections report: a user reporting twice at
        // once is counted twice (the second report waits for the next statement), and a
        // report nobody waits for is made all the same.
        let reports = troupe_node::batch::UserBytes::spawn(store.clone(), 16);
        let (dee, eve, fay) = (unique("dee"), unique("eve"), unique("fay"));
        let one = reports.submit(&dee, 9, 10).unwrap();
        let two = reports.submit(&dee, 9, 5).unwrap();
        let other = reports.submit(&eve, 9, 7).unwrap();
        drop(reports.submit(&fay, 9, 3).unwrap());
        let mut dee_totals = [one.await.unwrap().unwrap(), two.await.unwrap().unwrap()];
        dee_totals.sort();
        assert_eq!(
            (dee_totals, other.await.unwrap()),
            ([10, 15], Ok(7)),
            "{backend:?}"
        );
        assert_eq!(add_one(&store, &fay, 9, 0).await, 3, "{backend:?}");
    }
}

#[tokio::test]
async fn snapshots_follow_the_retention_policy() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let scene = unique("scene");
        claim(&store, &[&scene], "n1").await;
        for seq in 1..=10u64 {
            store
                .append("n1", &[append(&scene, seq, &[seq as u8])])
                .await
                .unwrap();
        }
        let snap = |upto: u64| Snapshot {
            upto_seq: upto,
            data: vec![b's', upto as u8],
        };
        assert!(store.write_snapshot(&scene, &snap(5), "n1", 0).await.unwrap());
        let loaded = store.load(&scene).await.unwrap();
        assert_eq!(loaded.snapshots, vec![snap(5)], "{backend:?}");
        assert_eq!(loaded.rows.first().map(|r| r.seq), Some(6));
        assert_eq!(loaded.tail_after(5).count(), 5);

        assert!(store.write_snapshot(&scene, &snap(8), "n1", 0).await.unwrap());
        let loaded = store.load(&scene).await.unwrap();
        // Two newest snapshots, and the log after the older one for fallback.
        assert_eq!(loaded.snapshots, vec![snap(8), snap(5)], "{backend:?}");
        assert_eq!(
            loaded.rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![6, 7, 8, 9, 10]
        );

        assert!(store.write_snapshot(&scene, &snap(10), "n1", 0).await.unwrap());
        let loaded = store.load(&scene).await.unwrap();
        assert_eq!(loaded.snapshots, vec![snap(10), snap(8)], "{backend:?}");
        assert_eq!(loaded.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![9, 10]);
        assert_eq!(loaded.last_seq(), 10);
        // Writing the same snapshot twice is harmless.
        assert!(store.write_snapshot(&scene, &snap(10), "n1", 0).await.unwrap());
        assert_eq!(store.load(&scene).await.unwrap().snapshots.len(), 2);
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    for backend in Backend::all() {
        let location = match &backend {
            Backend::Sqlite => troupe_node::config::StoreLocation::Sqlite(
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(unique("troupe-store"))
                    .join("t.sqlite3"),
            ),
            Backend::Postgres(url) => troupe_node::config::StoreLocation::Postgres(url.clone()),
        };
        let scene = unique("scene");
        let store = Store::open(&location).await.unwrap();
        claim(&store, &[&scene], "n1").await;
        store.append("n1", &[append(&scene, 1, b"kept")]).await.unwrap();
        drop(store);
        let store = Store::open(&location).await.unwrap();
        assert_eq!(
            store.load(&scene).await.unwrap().rows[0].data,
            b"kept",
            "{backend:?}"
        );
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn many_leases_are_claimed_at_once_as_one_by_one() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let (free, held, older, released) = (
            unique("free"),
            unique("held"),
            unique("older"),
            unique("released"),
        );
        assert!(store.claim_lease(&held, 4, "n1").await.unwrap());
        assert!(store.claim_lease(&older, 2, "n1").await.unwrap());
        assert!(store.claim_lease(&released, 3, "n1").await.unwrap());
        assert!(store.release_lease(&released, 3, "n1").await.unwrap());
        // Asked in an order that is not the scenes' order: answers come back as asked.
        let claims = vec![
            (older.clone(), 3),
            (held.clone(), 4),
            (free.clone(), 0),
            (released.clone(), 3),
        ];
        let claimed = store.claim_leases(&claims, "n2").await.unwrap();
        assert_eq!(claimed, vec![true, false, true, true], "{backend:?}");
        assert_eq!(
            store.lease(&older).await.unwrap(),
            Some((3, "n2".into())),
            "{backend:?}"
        );
        assert_eq!(
            store.lease(&held).await.unwrap(),
            Some((4, "n1".into())),
            "{backend:?}"
        );
        assert_eq!(
            store.lease(&free).await.unwrap(),
            Some((0, "n2".into())),
            "{backend:?}"
        );
        // The new holder's appends land; the former holder's are refused.
        let at = |seq, epoch| LogAppend {
            epoch,
            ..append(&older, seq, b"edit")
        };
        assert!(
            store.append("n2", &[at(1, 3)]).await.unwrap().is_empty(),
            "{backend:?}"
        );
        assert_eq!(
            store.append("n1", &[at(2, 2)]).await.unwrap(),
            vec![0],
            "{backend:?}"
        );
        assert!(
            store.claim_leases(&[], "n2").await.unwrap().is_empty(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn many_leases_are_released_at_once_as_one_by_one() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let [a, b, newer, others, never] = ["a", "b", "newer", "others", "never"].map(unique);
        for scene in [&a, &b, &newer] {
            assert!(store.claim_lease(scene, 3, "n1").await.unwrap());
        }
        assert!(store.claim_lease(&others, 3, "n2").await.unwrap());
        // Asked out of the scenes' order: answers come back as asked. Only the holder at
        // its epoch releases.
        let leases = vec![
            (b.clone(), 3),
            (others.clone(), 3),
            (a.clone(), 3),
            (newer.clone(), 2),
            (never.clone(), 3),
        ];
        let released = store.release_leases(&leases, "n1").await.unwrap();
        assert_eq!(released, vec![true, false, true, false, false], "{backend:?}");
        for (scene, lease) in [
            (&a, Some((3, String::new()))),
            (&b, Some((3, String::new()))),
            (&newer, Some((3, "n1".to_string()))),
            (&others, Some((3, "n2".to_string()))),
            (&never, None),
        ] {
            assert_eq!(store.lease(scene).await.unwrap(), lease, "{backend:?} {scene}");
        }
        // Through the rooms' batcher, as a handing-off room asks.
        let batches = troupe_node::batch::StoreBatches::spawn(store.clone(), "n1".into(), 16);
        let (first, again) = tokio::join!(batches.release(&newer, 3), batches.release(&newer, 3));
        assert_eq!((first.unwrap(), again.unwrap()), (true, false), "{backend:?}");
        assert_eq!(store.lease(&newer).await.unwrap(), Some((3, String::new())));
        assert!(store.release_leases(&[], "n1").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_claimer_batches_claims_and_takes_a_scene_once_per_statement() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let claimer = troupe_node::batch::StoreBatches::spawn(store.clone(), "n1".into(), 16);
        let (a, b) = (unique("a"), unique("b"));
        assert!(store.claim_lease(&b, 5, "n2").await.unwrap());
        // Queued together: `a` twice (the second waits for the next statement), `b` held
        // by another node at a newer epoch.
        let (first, second, held) =
            tokio::join!(claimer.claim(&a, 1), claimer.claim(&a, 2), claimer.claim(&b, 4));
        assert_eq!(
            (first, second, held),
            (Ok(true), Ok(true), Ok(false)),
            "{backend:?}"
        );
        assert_eq!(
            store.lease(&a).await.unwrap(),
            Some((2, "n1".into())),
            "{backend:?}"
        );
        assert_eq!(
            store.lease(&b).await.unwrap(),
            Some((5, "n2".into())),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn leases_fence_former_owners() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let scene = unique("scene");
        assert!(store.claim_lease(&scene, 0, "n1").await.unwrap(), "{backend:?}");
        // Same epoch: only the holder may renew.
        assert!(!store.claim_lease(&scene, 0, "n2").await.unwrap(), "{backend:?}");
        assert!(store.claim_lease(&scene, 0, "n1").await.unwrap(), "{backend:?}");
        store.append("n1", &[append(&scene, 1, b"by n1")]).await.unwrap();
        // A newer epoch takes the scene over; the older one cannot take it back.
        assert!(store.claim_lease(&scene, 1, "n2").await.unwrap(), "{backend:?}");
        assert!(!store.claim_lease(&scene, 0, "n1").await.unwrap(), "{backend:?}");
        // The former owner's appends and snapshots are refused from now on.
        let stale = store.append("n1", &[append(&scene, 2, b"zombie")]).await.unwrap();
        assert_eq!(stale, vec![0], "{backend:?}");
        let snapshot = Snapshot {
            upto_seq: 1,
            data: b"zombie".to_vec(),
        };
        assert!(
            !store.write_snapshot(&scene, &snapshot, "n1", 0).await.unwrap(),
            "{backend:?}"
        );
        // The new owner writes at its epoch.
        let fresh = LogAppend {
            scene: scene.clone(),
            seq: 2,
            epoch: 1,
            data: b"by n2".to_vec(),
        };
        assert!(
            store.append("n2", &[fresh]).await.unwrap().is_empty(),
            "{backend:?}"
        );
        let loaded = store.load(&scene).await.unwrap();
        let data: Vec<&[u8]> = loaded.rows.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, [&b"by n1"[..], &b"by n2"[..]], "{backend:?}");
        assert!(loaded.snapshots.is_empty());
    }
}

#[tokio::test]
async fn the_lease_check_names_only_the_scenes_a_holder_lost() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let [kept, taken, released, never] = ["kept", "taken", "released", "never"].map(unique);
        for scene in [&kept, &taken, &released] {
            assert!(store.claim_lease(scene, 1, "n1").await.unwrap(), "{backend:?}");
        }
        assert!(store.claim_lease(&taken, 2, "n2").await.unwrap(), "{backend:?}");
        assert!(
            store.release_lease(&released, 1, "n1").await.unwrap(),
            "{backend:?}"
        );
        let asked = [kept.clone(), taken.clone(), released.clone(), never.clone()];
        let mut lost = store.leases_lost("n1", &asked).await.unwrap();
        lost.sort();
        let mut expected = vec![taken.clone(), released.clone(), never.clone()];
        expected.sort();
        assert_eq!(lost, expected, "{backend:?}");
        assert!(
            store
                .leases_lost("n2", std::slice::from_ref(&taken))
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}"
        );
        assert!(
            store.leases_lost("n1", &[]).await.unwrap().is_empty(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_released_lease_stops_its_holder_and_keeps_the_epoch() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let scene = unique("scene");
        assert!(store.claim_lease(&scene, 3, "n1").await.unwrap(), "{backend:?}");
        assert_eq!(store.lease(&scene).await.unwrap(), Some((3, "n1".to_string())));
        // Only the holder at its epoch can release.
        assert!(
            !store.release_lease(&scene, 3, "n2").await.unwrap(),
            "{backend:?}"
        );
        assert!(
            !store.release_lease(&scene, 2, "n1").await.unwrap(),
            "{backend:?}"
        );
        assert!(store.release_lease(&scene, 3, "n1").await.unwrap(), "{backend:?}");
        assert_eq!(store.lease(&scene).await.unwrap(), Some((3, String::new())));
        // A released lease accepts no append, not even from its former holder…
        let late = LogAppend {
            epoch: 3,
            ..append(&scene, 1, b"late")
        };
        assert_eq!(store.append("n1", &[late]).await.unwrap(), vec![0], "{backend:?}");
        // …and no claim at an older epoch: the epoch stays fenced. At the same epoch the
        // scene can be claimed again (by its owner at that epoch, as it reloads).
        assert!(!store.claim_lease(&scene, 2, "n3").await.unwrap(), "{backend:?}");
        assert!(store.claim_lease(&scene, 3, "n1").await.unwrap(), "{backend:?}");
        assert!(!store.claim_lease(&scene, 3, "n3").await.unwrap(), "{backend:?}");
        assert!(store.claim_lease(&scene, 4, "n3").await.unwrap(), "{backend:?}");
        assert_eq!(store.lease(&unique("none")).await.unwrap(), None);
    }
}

/// The fence under concurrency (Postgres): a former owner's append that passed its lease
/// check just before a new owner claimed the scene must not commit after that claim. A
/// trigger holds the append inside its statement (after the check, before the commit) for
/// 1.5 s while another store claims the scene at a newer epoch. Either the append is
/// refused, or it committed first and the claim waited for it; never the append landing
/// well after the claim returned. (SQLite takes its write lock before the check, with
/// `BEGIN IMMEDIATE`, so nothing can come between there.)
#[tokio::test]
async fn a_claim_never_overtakes_a_former_owners_append() {
    use sqlx::Connection;
    use std::time::{Duration, Instant};

    let Some((url, former, scene)) = postgres_scene_of_a_former_owner("fence-race").await else {
        return;
    };

    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    // Only this test's scenes are slowed down; other tests share the table.
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION troupe_test_slow_fence_race() RETURNS trigger AS $$
         BEGIN
           IF NEW.scene_id LIKE 'fence-race%' THEN PERFORM pg_sleep(1.5); END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         DROP TRIGGER IF EXISTS troupe_test_slow_fence_race ON scene_versions;
         CREATE TRIGGER troupe_test_slow_fence_race BEFORE INSERT ON scene_versions
           FOR EACH ROW EXECUTE FUNCTION troupe_test_slow_fence_race();",
    )
    .execute(&mut admin)
    .await
    .expect("install the slow trigger");

    let started = Instant::now();
    let appending = {
        let (store, scene) = (former.clone(), scene.clone());
        tokio::spawn(async move {
            let batch = [LogAppend {
                scene,
                seq: 1,
                epoch: 5,
                data: vec![1, 2, 3],
            }];
            let result = store.append("1", &batch).await;
            (result, started.elapsed())
        })
    };
    // The append is now inside its statement, past the lease check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_owner = open(&Backend::Postgres(url.clone())).await;
    assert!(
        new_owner.claim_lease(&scene, 6, "2").await.unwrap(),
        "the claim was refused"
    );
    let claimed_after = started.elapsed();
    let (appended, appended_after) = appending.await.expect("append task");

    sqlx::raw_sql("DROP TRIGGER IF EXISTS troupe_test_slow_fence_race ON scene_versions")
        .execute(&mut admin)
        .await
        .expect("drop the slow trigger");

    let refused = appended.expect("append");
    if refused.is_empty() {
        // Accepted: then it committed before the claim, which must have waited for it.
        assert!(
            appended_after <= claimed_after + Duration::from_millis(200),
            "the former owner's append committed {:?} after the new owner's claim",
            appended_after.saturating_sub(claimed_after)
        );
    }
    assert_eq!(new_owner.lease(&scene).await.unwrap(), Some((6, "2".to_string())));
}

/// A node frozen inside a write transaction (a stopped process, a paused VM) holds the lock
/// on its scene's lease row that the transaction took first. The store's sessions end a
/// transaction left idle for `IDLE_IN_TRANSACTION_LIMIT`, so the new owner's claim goes
/// through once that has passed instead of waiting for the frozen node to resume.
#[tokio::test]
async fn a_writer_frozen_in_its_transaction_does_not_hold_a_takeover_back() {
    use sqlx::{ConnectOptions, Connection};
    use std::time::{Duration, Instant};
    use troupe_node::store::{postgres_connect_options, IDLE_IN_TRANSACTION_LIMIT};

    let Some((url, _, scene)) = postgres_scene_of_a_former_owner("frozen-writer").await else {
        return;
    };

    // What a write transaction of the former owner has done when its node froze: the
    // lease row locked as every write does first, then nothing more sent.
    let mut frozen = postgres_connect_options(&url)
        .expect("options")
        .connect()
        .await
        .expect("connect");
    let mut transaction = frozen.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM scene_leases WHERE scene_id = $1 AND epoch = 5 AND owner = '1' FOR SHARE")
        .bind(&scene)
        .fetch_one(&mut *transaction)
        .await
        .expect("lock the lease row");

    let started = Instant::now();
    let new_owner = open(&Backend::Postgres(url.clone())).await;
    let claimed = tokio::time::timeout(Duration::from_secs(10), new_owner.claim_lease(&scene, 6, "2")).await;
    let waited = started.elapsed();
    assert!(
        matches!(claimed, Ok(Ok(true))),
        "the new owner's claim did not go through in 10 s: {claimed:?}"
    );
    // It waited for the lock (the frozen transaction did hold it) until Postgres ended the
    // frozen session, and not much longer.
    assert!(
        waited >= IDLE_IN_TRANSACTION_LIMIT.mul_f64(0.8),
        "the claim did not wait for the frozen transaction's lock ({waited:?})"
    );
    assert!(
        waited < IDLE_IN_TRANSACTION_LIMIT + Duration::from_secs(3),
        "the claim waited {waited:?}"
    );
    assert_eq!(new_owner.lease(&scene).await.unwrap(), Some((6, "2".to_string())));
    // The frozen node finds its session ended when it resumes: nothing of it commits.
    assert!(
        sqlx::query("SELECT 1").execute(&mut *transaction).await.is_err(),
        "the frozen session is still open"
    );
}

#[tokio::test]
async fn history_keeps_a_bounded_number_of_versions_of_each_kind() {
    use std::time::Duration;
    use troupe_node::store::history::{NewVersion, VersionKind, AUTO_VERSIONS_KEPT, KEPT_VERSIONS_KEPT};
    for backend in Backend::all() {
        let store = open(&backend).await;
        let scene = unique("history");
        claim(&store, &[&scene], "n1").await;
        let version = |kind, upto_seq| NewVersion {
            kind,
            name: Some("v"),
            created_by: Some("ada"),
            upto_seq,
            data: b"doc",
        };
        // Saved over and over (as an editor may): the oldest go, the newest stay.
        for i in 0..(KEPT_VERSIONS_KEPT as u64 + 5) {
            let kind = if i % 2 == 0 {
                VersionKind::Named
            } else {
                VersionKind::BeforeRestore
            };
            store
                .add_version(&scene, "n1", 0, &version(kind, i), Duration::ZERO)
                .await
                .unwrap()
                .unwrap();
        }
        for i in 0..(AUTO_VERSIONS_KEPT as u64 + 3) {
            store
                .add_version(
                    &scene,
                    "n1",
                    0,
                    &version(VersionKind::Auto, i + 1),
                    Duration::ZERO,
                )
                .await
                .unwrap()
                .unwrap();
        }
        let versions = store.versions(&scene).await.unwrap();
        let autos = versions.iter().filter(|v| v.kind == VersionKind::Auto).count();
        let kept = versions.len() - autos;
        assert_eq!(
            (autos as i64, kept as i64),
            (AUTO_VERSIONS_KEPT, KEPT_VERSIONS_KEPT),
            "{backend:?}"
        );
        // The newest of each are the ones kept.
        assert_eq!(
            versions[0].version,
            KEPT_VERSIONS_KEPT as u64 + 5 + AUTO_VERSIONS_KEPT as u64 + 3,
            "{backend:?}"
        );
        assert!(
            versions.iter().all(|v| v.version > 5),
            "{backend:?}: an old saved version stayed"
        );
    }
}

/// A scene's P1 content as the P1 product wrote it: none without a `scenes` row, no blocks
/// for a row without any, and the blocks in order (one statement reads all three cases);
/// the same for many scenes at once.
#[tokio::test]
async fn p1_content_is_read_whole_or_not_at_all() {
    use troupe_node::content::blocks::{Block, BlockType};
    for backend in Backend::all() {
        let dir = fresh_dir();
        let store = open_in(&backend, &dir).await;
        let (absent, bare, written) = (unique("p1-absent"), unique("p1-bare"), unique("p1-written"));
        assert_eq!(store.p1_content(&absent).await.unwrap(), None, "{backend:?}");
        troupe_tests::p1::write_p1_in(&dir, &backend, &bare, &[]).await;
        let content = store.p1_content(&bare).await.unwrap().expect("a scenes row");
        assert_eq!((content.version, content.blocks.len()), (1, 0), "{backend:?}");
        let blocks = troupe_tests::p1::screenplay();
        troupe_tests::p1::write_p1_in(&dir, &backend, &written, &troupe_tests::p1::rows(&blocks)).await;
        let content = store.p1_content(&written).await.unwrap().expect("a scenes row");
        assert_eq!(content.version, 1, "{backend:?}");
        assert_eq!(content.blocks, blocks, "{backend:?}");
        assert!(content.blocks.contains(&Block::new(BlockType::Action, "")));
        // Many at once answer as one by one; a block type the editor does not know is an
        // error of its scene only.
        let unknown = unique("p1-unknown");
        let odd = [("flashback".to_string(), "x".to_string())];
        troupe_tests::p1::write_p1_in(&dir, &backend, &unknown, &odd).await;
        assert!(store.p1_content(&unknown).await.is_err(), "{backend:?}");
        let asked = [absent, bare.clone(), written.clone(), unknown, written];
        let many = store.p1_contents(&asked).await.unwrap();
        assert_eq!(many.len(), asked.len());
        for (scene, answer) in asked.iter().zip(many) {
            match store.p1_content(scene).await {
                Ok(one) => assert_eq!(answer.unwrap(), one, "{backend:?} {scene}"),
                Err(_) => assert!(answer.is_err(), "{backend:?} {scene}"),
            }
        }
    }
}

/// Loads and lease reads of many scenes at once answer exactly what one-by-one calls do, in
/// the order asked: scenes with snapshots (one, two, three: the oldest not kept), a log
/// only, nothing at all, and the same scene twice; through the batching tasks as well.
#[tokio::test]
async fn many_scenes_load_at_once_as_one_by_one() {
    for backend in Backend::all() {
        let store = open(&backend).await;
        let scenes: Vec<String> = (0..5).map(|i| unique(&format!("many-{i}"))).collect();
        let written: Vec<&str> = scenes[..4].iter().map(String::as_str).collect();
        claim(&store, &written, "n1").await;
        for (i, scene) in written.iter().enumerate() {
            for seq in 1..=6u64 {
                let data = [i as u8, seq as u8];
                store.append("n1", &[append(scene, seq, &data)]).await.unwrap();
            }
            // Scene i has i snapshots (at 2, 4, 6).
            for upto in (1..=i as u64).map(|k| 2 * k).filter(|u| *u <= 6) {
                let snapshot = Snapshot {
                    upto_seq: upto,
                    data: vec![b's', i as u8, upto as u8],
                };
                assert!(store.write_snapshot(scene, &snapshot, "n1", 0).await.unwrap());
            }
        }
        let mut asked = scenes.clone();
        asked.push(scenes[2].clone());
        let mut one_by_one = Vec::new();
        let mut leases = Vec::new();
        for scene in &asked {
            one_by_one.push(store.load(scene).await.unwrap());
            leases.push(store.lease(scene).await.unwrap());
        }
        assert_eq!(one_by_one[3].snapshots.len(), 2, "{backend:?}: retention");
        assert!(one_by_one[4].rows.is_empty() && one_by_one[4].snapshots.is_empty());
        assert_eq!(store.load_many(&asked).await.unwrap(), one_by_one, "{backend:?}");
        assert_eq!(store.leases(&asked).await.unwrap(), leases, "{backend:?}");
        assert_eq!(leases[4], None);

        let batches = troupe_node::batch::StoreBatches::spawn(store.clone(), "n1".into(), 16);
        let loads = futures_util::future::join_all(asked.iter().map(|s| batches.load(s))).await;
        let loads: Vec<_> = loads.into_iter().map(Result::unwrap).collect();
        assert_eq!(loads, one_by_one, "{backend:?}");
        let read = futures_util::future::join_all(asked.iter().map(|s| batches.lease(s))).await;
        let read: Vec<_> = read.into_iter().map(Result::unwrap).collect();
        assert_eq!(read, leases, "{backend:?}");
    }
}
