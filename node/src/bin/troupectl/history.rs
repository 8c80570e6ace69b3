//! `troupectl versions` and `troupectl restore`: a scene's history, and the operator's
//! data-recovery path. Both ask the scene's owner over its HTTP API with a token this tool
//! signs (the app backend's key), the way the app's backend would; a restore is answered
//! once the restored content is durable.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use troupe_membership::ClusterClient;
use troupe_proto::token::{Claims, Role, Signer};

/// Tries while the scene is loading or moving to another node.
const ATTEMPTS: usize = 10;

pub struct SceneApi<'a> {
    pub client: &'a ClusterClient,
    pub signer: Signer,
    pub audience: String,
    /// Who the history and the editors' notice name.
    pub by: String,
}

impl SceneApi<'_> {
    /// Lists the scene's versions.
    pub async fn versions(&self, scene: &str, json: bool) -> anyhow::Result<()> {
        let answer = self
            .call(scene, Method::GET, "versions", Role::View, None)
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(());
        }
        let versions = answer["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            println!("{scene} has no versions yet (one is kept from the first compaction snapshot)");
        }
        for v in versions {
            let when = v["created_at_ms"].as_i64().map_or("?".to_string(), format_ms);
            let name = v["name"].as_str().map(|n| format!(" “{n}”")).unwrap_or_default();
            let by = v["created_by"]
                .as_str()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
            println!(
                "{:>5}  {:<14} {when}{name}{by} · {} bytes",
                v["version"].as_u64().unwrap_or(0),
                v["kind"].as_str().unwrap_or("?"),
                v["bytes"]
            );
        }
        Ok(())
    }

    /// Restores the scene to a version, or to P1's content.
    pub async fn restore(&self, scene: &str, version: Option<u64>, json: bool) -> anyhow::Result<()> {
        let body = match version {
            Some(version) => serde_json::json!({ "version": version }),
            None => serde_json::json!({ "from_p1": true }),
        };
        let answer = self
            .call(scene, Method::POST, "restore", Role::Edit, Some(body))
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            let what = match version {
                Some(v) => format!("version {v}"),
                None => "the P1 content".into(),
            };
            println!(
                "{scene} restored to {what}: {} blocks inserted, {} changed, {} deleted; what it replaced is version {} (restore it to undo)",
                answer["inserted"], answer["changed"], answer["deleted"], answer["before_restore_version"]
            );
        }
        Ok(())
    }

    /// `method /v1/scenes/{scene}/{rest}` on the scene's owner, retried while it moves.
    async fn call(
        &self,
        scene: &str,
        method: Method,
        rest: &str,
        role: Role,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut claims = Claims::grant(
            "troupectl",
            &self.audience,
            &[(scene, role)],
            Duration::from_secs(300),
        );
        claims.name = Some(self.by.clone());
        let token = self.signer.sign(&claims).context("signing the token")?;
        let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let view = self.client.view().await.map_err(|e| anyhow!("{e}"))?;
            let owner = view
                .placement()
                .route(scene)
                .ok_or_else(|| anyhow!("no node serves scenes now"))?;
            let Some(base) = owner.url.strip_prefix("ws://") else {
                bail!(
                    "the scene's owner is reached at {}; this tool speaks plain HTTP to owners",
                    owner.url
                );
            };
            let path = format!("http://{}/v1/scenes/{scene}/{rest}", base.trim_end_matches('/'));
            let request = Request::builder()
                .method(method.clone())
                .uri(&path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))?;
            let response = match tokio::time::timeout(Duration::from_secs(20), http.request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    last = format!("node {} at {path}: {error}", owner.node);
                    continue;
                }
                Err(_) => {
                    last = format!("node {} did not answer in 20 s", owner.node);
                    continue;
                }
            };
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let answer: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::json!({ "message": String::from_utf8_lossy(&bytes) }));
            if status.is_success() {
                return Ok(answer);
            }
            let message = answer["message"].as_str().unwrap_or("").to_string();
            if matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::MISDIRECTED_REQUEST
            ) {
                last = message;
                continue;
            }
            bail!(
                "{} ({status})",
                if message.is_empty() { "refused" } else { &message }
            );
        }
        bail!("the scene's owner did not answer: {last}")
    }
}

/// `2026-12-04 09:15:02 UTC` from Unix milliseconds.
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::format_ms(1_796_342_400_000), "2026-12-04 00:00:00 UTC");
        assert_eq!(
            super::format_ms(951_782_400_000 + 3_661_000),
            "2000-02-29 01:01:01 UTC"
        );
    }
}
