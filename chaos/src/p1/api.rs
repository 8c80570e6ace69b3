//! The content API as the P1 product calls it: `GET`, `PUT` and `PATCH
//! /v1/scenes/{id}/content` through the router with a Bearer token. One HTTP/1.1 request
//! per connection (`Connection: close`), so a node killed mid-request costs only that
//! request.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use troupe_node::content::blocks::Block;

/// Longer than the router waits for an owner (15 s), so the router answers first.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP answer: {0}")]
    Malformed(String),
}

/// An answer: the status and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body's `error` field (`conflict`, `moving`, `owner_unreachable`, …), if any.
    pub fn error_code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        json.get("error")?.as_str().map(str::to_string)
    }
}

/// `GET /v1/scenes/{id}/content` as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Content {
    pub version: Option<u64>,
    pub blocks: Vec<Block>,
}

/// A client of one router's content API.
#[derive(Debug, Clone)]
pub struct ContentApi {
    router: SocketAddr,
    authorization: String,
}

impl ContentApi {
    pub fn new(router: SocketAddr, token: &str) -> ContentApi {
        ContentApi {
            router,
            authorization: format!("Bearer {token}"),
        }
    }

    /// The scene as its owner has it now; `Ok(Err(answer))` for any answer but 200.
    pub async fn get(&self, scene: &str) -> Result<Result<Content, Answer>, ApiError> {
        let answer = self.send("GET", scene, "").await?;
        if answer.status != 200 {
            return Ok(Err(answer));
        }
        serde_json::from_str(&answer.body)
            .map(Ok)
            .map_err(|e| ApiError::Malformed(format!("content: {e}: {}", short(&answer.body))))
    }

    /// `PUT` (an autosave) or `PATCH` (edits) with a JSON body.
    pub async fn change(
        &self,
        method: &str,
        scene: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, ApiError> {
        self.send(method, scene, &body.to_string()).await
    }

    async fn send(&self, method: &str, scene: &str, body: &str) -> Result<Answer, ApiError> {
        let request = format!(
            "{method} /v1/scenes/{scene}/content HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.router,
            self.authorization,
            body.len()
        );
        let exchange = async {
            let mut stream = TcpStream::connect(self.router).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout(TIMEOUT))??;
        parse(&raw)
    }
}

/// Status and body of a whole HTTP/1.1 answer (`Content-Length`, chunked, or up to the end).
fn parse(raw: &[u8]) -> Result<Answer, ApiError> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ApiError::Malformed(short(&text)))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::Malformed(short(head)))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest).ok_or_else(|| ApiError::Malformed(short(rest)))?
    } else {
        rest.to_string()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_or_without_chunks() {
        let plain = parse(b"HTTP/1.1 409 Conflict\r\ncontent-length: 14\r\n\r\n{\"error\":\"x\"}\n").unwrap();
        assert_eq!(plain.status, 409);
        assert_eq!(plain.error_code().as_deref(), Some("x"));
        let chunked = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, "{\"a\":1}");
        assert!(parse(b"garbage").is_err());
    }
}
