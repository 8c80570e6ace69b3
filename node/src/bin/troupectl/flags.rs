//! `troupectl flags`: the feature flags, shown and set. Cluster-wide defaults and a
//! scene's own values live in the cluster's replicated state; every node enforces a change
//! within a second, and routers answer `GET /v1/flags` from the same state.

use anyhow::anyhow;
use troupe_membership::ClusterClient;
use troupe_proto::flags::{FlagOverrides, Flags, NAMES};

use crate::cluster::explain;

#[derive(clap::Subcommand)]
pub enum FlagsCommand {
    /// The defaults and the scenes with values of their own; with --scene (and --user),
    /// also what a client of that scene would do.
    Show {
        #[arg(long)]
        scene: Option<String>,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Set flags, one `name=value` each (enableYjs, enablePresence, enableRealtimeEditing,
    /// fallbackToAutosave: true|false; rolloutPercent: 0-100; rolloutBy: user|scene). With
    /// --scene, that scene's own values (true|false, or `default` to follow the cluster).
    Set {
        #[arg(required = true, value_name = "NAME=VALUE")]
        changes: Vec<String>,
        #[arg(long)]
        scene: Option<String>,
    },
}

pub async fn run(client: &ClusterClient, command: Option<FlagsCommand>, json: bool) -> anyhow::Result<()> {
    match command.unwrap_or(FlagsCommand::Show {
        scene: None,
        user: String::new(),
    }) {
        FlagsCommand::Show { scene, user } => show(client, scene.as_deref(), &user, json).await,
        FlagsCommand::Set { changes, scene } => set(client, &changes, scene.as_deref(), json).await,
    }
}

async fn show(client: &ClusterClient, scene: Option<&str>, user: &str, json: bool) -> anyhow::Result<()> {
    let view = client.view().await.map_err(explain)?;
    let state = &view.state;
    if json {
        let mut out = serde_json::json!({ "flags": state.flags, "scenes": state.scene_flags });
        if let Some(scene) = scene {
            out["decision"] = serde_json::json!(state.decide(scene, user));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (name, value) in defaults(&state.flags) {
        println!("{name:<22} {value}");
    }
    if state.scene_flags.is_empty() {
        println!("no scene has flags of its own");
    } else {
        println!("{} scenes with flags of their own:", state.scene_flags.len());
        for (scene, overrides) in state.scene_flags.iter().take(50) {
            println!("  {scene}: {}", describe(overrides));
        }
        if state.scene_flags.len() > 50 {
            println!("  … (--json lists them all)");
        }
    }
    if let Some(scene) = scene {
        let d = state.decide(scene, user);
        println!(
            "scene {scene}, user {user:?}: mode {:?} (collaboration {}, editing {}, presence {}, autosave fallback {})",
            d.mode, on(d.enable_yjs), on(d.enable_realtime_editing), on(d.enable_presence), on(d.fallback_to_autosave)
        );
    }
    Ok(())
}

async fn set(
    client: &ClusterClient,
    changes: &[String],
    scene: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    // Every change is checked before any is sent: a typo in the third changes nothing.
    let mut parsed = Vec::new();
    for change in changes {
        let (name, value) = change
            .split_once('=')
            .ok_or_else(|| anyhow!("{change:?}: write NAME=VALUE (names: {})", NAMES.join(", ")))?;
        let check = match scene {
            None => Flags::default().set(name, value),
            Some(_) => FlagOverrides::default().set(name, value),
        };
        check.map_err(|e| anyhow!("{e}"))?;
        parsed.push((name, value));
    }
    let whose = scene.map_or("cluster".to_string(), |s| format!("scene {s}"));
    for (name, value) in parsed {
        let before = client.view().await.map_err(explain)?;
        let view = client.set_flag(scene, name, value).await.map_err(explain)?;
        let read = |v: &troupe_membership::ClusterView| current(v, scene, name);
        if json {
            println!(
                "{}",
                serde_json::json!({ "scope": whose, "flag": name, "from": read(&before), "to": read(&view) })
            );
        } else {
            println!("{whose}: {name} {} -> {}", read(&before), read(&view));
        }
    }
    Ok(())
}

/// A flag's value as set (for a scene: its own value, or `default`).
fn current(view: &troupe_membership::ClusterView, scene: Option<&str>, name: &str) -> String {
    match scene {
        None => defaults(&view.state.flags)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or("?".into(), |(_, v)| v),
        Some(scene) => {
            let o = view.state.scene_flags.get(scene).copied().unwrap_or_default();
            let value = match name {
                "enableYjs" => o.enable_yjs,
                "enablePresence" => o.enable_presence,
                "enableRealtimeEditing" => o.enable_realtime_editing,
                "fallbackToAutosave" => o.fallback_to_autosave,
                _ => None,
            };
            value.map_or("default".into(), |v| v.to_string())
        }
    }
}

fn defaults(flags: &Flags) -> Vec<(&'static str, String)> {
    vec![
        ("enableYjs", flags.enable_yjs.to_string()),
        ("enablePresence", flags.enable_presence.to_string()),
        ("enableRealtimeEditing", flags.enable_realtime_editing.to_string()),
        ("fallbackToAutosave", flags.fallback_to_autosave.to_string()),
        ("rolloutPercent", flags.rollout_percent.to_string()),
        ("rolloutBy", format!("{:?}", flags.rollout_by).to_lowercase()),
    ]
}

fn describe(o: &FlagOverrides) -> String {
    [
        ("enableYjs", o.enable_yjs),
        ("enablePresence", o.enable_presence),
        ("enableRealtimeEditing", o.enable_realtime_editing),
        ("fallbackToAutosave", o.fallback_to_autosave),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

fn on(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}
