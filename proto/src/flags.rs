//! Feature flags: whether collaboration is on, for whom, and what a client should do.
//!
//! The cluster keeps one [`Flags`] (the defaults) and a few per-scene [`FlagOverrides`] in
//! its replicated state; nodes enforce them and routers answer `GET /v1/flags` from the same
//! state, so a change reaches every process with the next state change (well under a
//! second). [`decide`] is the one rule both use.
//!
//! Rollout: with `rollout_percent` below 100, collaboration is on for a stable share of
//! users (or of scenes): a key is in when `bucket(key) < rollout_percent`, where
//! `bucket` is FNV-1a (64-bit) of `user:<id>` or `scene:<id>`, modulo 100. Raising the
//! percentage only adds keys: nobody who had collaboration loses it.

use serde::{Deserialize, Serialize};

/// The flags, as the spec names them, plus the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flags {
    /// The master switch: off, no client collaborates (they use autosave, if allowed).
    pub enable_yjs: bool,
    /// Presence (avatars, cursors, "is typing") leaves the node.
    pub enable_presence: bool,
    /// Editors may edit live; off, every client is a viewer.
    pub enable_realtime_editing: bool,
    /// Clients that cannot collaborate save through the content API (the P1 autosave).
    pub fallback_to_autosave: bool,
    /// Share of users (or scenes) collaboration is on for, 0-100.
    pub rollout_percent: u8,
    /// What the rollout share is drawn by.
    pub rollout_by: RolloutBy,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            enable_yjs: true,
            enable_presence: true,
            enable_realtime_editing: true,
            fallback_to_autosave: true,
            rollout_percent: 100,
            rollout_by: RolloutBy::User,
        }
    }
}

/// What a percentage rollout is drawn by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutBy {
    User,
    Scene,
}

/// A scene's own values for some flags; the others come from the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_yjs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_presence: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_realtime_editing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_to_autosave: Option<bool>,
}

impl FlagOverrides {
    pub fn is_empty(&self) -> bool {
        *self == FlagOverrides::default()
    }
}

/// What a client of `scene` acting as `user` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub enable_yjs: bool,
    pub enable_presence: bool,
    pub enable_realtime_editing: bool,
    pub fallback_to_autosave: bool,
    pub mode: Mode,
}

/// How a client works with a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Collaborate over the WebSocket.
    Live,
    /// Connect, but only to read (realtime editing is off).
    ReadOnly,
    /// Do not connect: save through the content API.
    Autosave,
    /// Do not connect, and there is no fallback: the scene cannot be edited now.
    Off,
}

/// The one rule: the scene's overrides over the defaults, then the rollout.
pub fn decide(defaults: &Flags, overrides: Option<&FlagOverrides>, scene: &str, user: &str) -> Decision {
    let o = overrides.copied().unwrap_or_default();
    let rolled_in = match defaults.rollout_by {
        RolloutBy::User => bucket("user", user),
        RolloutBy::Scene => bucket("scene", scene),
    } < u64::from(defaults.rollout_percent.min(100));
    // A scene switched on by name is on whatever the rollout says.
    let enable_yjs = match o.enable_yjs {
        Some(on) => on,
        None => defaults.enable_yjs && rolled_in,
    };
    let enable_presence = enable_yjs && o.enable_presence.unwrap_or(defaults.enable_presence);
    let enable_realtime_editing = enable_yjs
        && o.enable_realtime_editing
            .unwrap_or(defaults.enable_realtime_editing);
    let fallback_to_autosave = o.fallback_to_autosave.unwrap_or(defaults.fallback_to_autosave);
    let mode = match (enable_yjs, enable_realtime_editing, fallback_to_autosave) {
        (true, true, _) => Mode::Live,
        (true, false, _) => Mode::ReadOnly,
        (false, _, true) => Mode::Autosave,
        (false, _, false) => Mode::Off,
    };
    Decision {
        enable_yjs,
        enable_presence,
        enable_realtime_editing,
        fallback_to_autosave,
        mode,
    }
}

/// The rollout bucket of a key, 0-99: FNV-1a (64-bit) of `kind:id`, modulo 100.
pub fn bucket(kind: &str, id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.bytes().chain(std::iter::once(b':')).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100
}

/// The flags `troupectl flags set` and overrides name, as written there.
pub const NAMES: [&str; 6] = [
    "enableYjs",
    "enablePresence",
    "enableRealtimeEditing",
    "fallbackToAutosave",
    "rolloutPercent",
    "rolloutBy",
];

/// Why a flag change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("unknown flag {0:?} (one of enableYjs, enablePresence, enableRealtimeEditing, fallbackToAutosave, rolloutPercent, rolloutBy)")]
    Unknown(String),
    #[error("{name} takes {expected}, not {value:?}")]
    BadValue {
        name: String,
        expected: &'static str,
        value: String,
    },
    #[error("{0} is cluster-wide: a scene cannot override it")]
    NotPerScene(String),
}

impl Flags {
    /// Sets one flag from its name and text value (`true`/`false`, `0`-`100`, `user`/`scene`).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), FlagError> {
        match name {
            "rolloutPercent" => {
                self.rollout_percent = value
                    .trim_end_matches('%')
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| bad(name, "a percentage from 0 to 100", value))?;
            }
            "rolloutBy" => {
                self.rollout_by = match value {
                    "user" => RolloutBy::User,
                    "scene" => RolloutBy::Scene,
                    _ => return Err(bad(name, "user or scene", value)),
                }
            }
            _ => *self.switch(name)? = boolean(name, value)?,
        }
        Ok(())
    }

    fn switch(&mut self, name: &str) -> Result<&mut bool, FlagError> {
        Ok(match name {
            "enableYjs" => &mut self.enable_yjs,
            "enablePresence" => &mut self.enable_presence,
            "enableRealtimeEditing" => &mut self.enable_realtime_editing,
            "fallbackToAutosave" => &mut self.fallback_to_autosave,
            _ => return Err(FlagError::Unknown(name.to_string())),
        })
    }
}

impl FlagOverrides {
    /// Sets (`true`/`false`) or clears (`default`) one of a scene's flags.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), FlagError> {
        let slot = match name {
            "enableYjs" => &mut self.enable_yjs,
            "enablePresence" => &mut self.enable_presence,
            "enableRealtimeEditing" => &mut self.enable_realtime_editing,
            "fallbackToAutosave" => &mut self.fallback_to_autosave,
            "rolloutPercent" | "rolloutBy" => return Err(FlagError::NotPerScene(name.to_string())),
            _ => return Err(FlagError::Unknown(name.to_string())),
        };
        *slot = match value {
            "default" => None,
            _ => Some(boolean(name, value)?),
        };
        Ok(())
    }
}

fn boolean(name: &str, value: &str) -> Result<bool, FlagError> {
    match value {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(bad(name, "true or false", value)),
    }
}

fn bad(name: &str, expected: &'static str, value: &str) -> FlagError {
    FlagError::BadValue {
        name: name.to_string(),
        expected,
        value: value.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_live_for_everyone() {
        let d = decide(&Flags::default(), None, "s1", "ada");
        assert_eq!(d.mode, Mode::Live);
        assert!(d.enable_presence && d.enable_realtime_editing);
    }

    #[test]
    fn the_master_switch_turns_everything_off() {
        let mut flags = Flags::default();
        flags.set("enableYjs", "false").unwrap();
        let d = decide(&flags, None, "s1", "ada");
        assert_eq!(d.mode, Mode::Autosave);
        assert!(!d.enable_presence && !d.enable_realtime_editing);
        flags.set("fallbackToAutosave", "false").unwrap();
        assert_eq!(decide(&flags, None, "s1", "ada").mode, Mode::Off);
        // A scene switched on by name stays on.
        let on = FlagOverrides {
            enable_yjs: Some(true),
            ..Default::default()
        };
        assert_eq!(decide(&flags, Some(&on), "s1", "ada").mode, Mode::Live);
    }

    #[test]
    fn realtime_editing_off_makes_viewers() {
        let mut o = FlagOverrides::default();
        o.set("enableRealtimeEditing", "false").unwrap();
        assert_eq!(
            decide(&Flags::default(), Some(&o), "s1", "ada").mode,
            Mode::ReadOnly
        );
        o.set("enableRealtimeEditing", "default").unwrap();
        assert!(o.is_empty());
    }

    #[test]
    fn the_rollout_is_stable_and_only_grows() {
        let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let share = |percent: u8| {
            let flags = Flags {
                rollout_percent: percent,
                ..Flags::default()
            };
            users
                .iter()
                .filter(|u| decide(&flags, None, "s", u).enable_yjs)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (ten, fifty) = (share(10), share(50));
        assert!((150..=250).contains(&ten.len()), "{}", ten.len());
        assert!((900..=1100).contains(&fifty.len()), "{}", fifty.len());
        assert!(ten.is_subset(&fifty));
        assert!(share(0).is_empty());
        assert_eq!(share(100).len(), users.len());
        // FNV-1a, as any other implementation computes it (checked against Python's).
        assert_eq!(bucket("user", "ada"), 0);
        assert_eq!(bucket("user", "bob"), 51);
        assert_eq!(bucket("scene", "act1-s3"), 21);
    }

    #[test]
    fn bad_changes_are_refused_with_a_reason() {
        let mut flags = Flags::default();
        assert!(matches!(
            flags.set("enableYJS", "true"),
            Err(FlagError::Unknown(_))
        ));
        assert!(matches!(
            flags.set("enableYjs", "yes"),
            Err(FlagError::BadValue { .. })
        ));
        assert!(matches!(
            flags.set("rolloutPercent", "101"),
            Err(FlagError::BadValue { .. })
        ));
        assert!(matches!(
            flags.set("rolloutBy", "team"),
            Err(FlagError::BadValue { .. })
        ));
        flags.set("rolloutPercent", "25%").unwrap();
        assert_eq!(flags.rollout_percent, 25);
        assert_eq!(
            flags,
            Flags {
                rollout_percent: 25,
                ..Flags::default()
            }
        );
        let mut o = FlagOverrides::default();
        assert!(matches!(
            o.set("rolloutPercent", "5"),
            Err(FlagError::NotPerScene(_))
        ));
    }
}
