//! Durations in scenario files: `"500ms"`, `"3s"`, `"2m"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    troupe_runtime::duration::parse_duration(&text).map_err(serde::de::Error::custom)
}
