//! WebSocket close codes: what a node tells a client when it ends a connection, and what
//! the client should do about it.
//!
//! The 44xx codes mean "do not retry without a change" (a new token, another scene): stock
//! y-websocket stops reconnecting on them. Every other code asks the client to reconnect;
//! 4301 names where.

/// Why a node closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// This node does not own the scene; the reason carries the owner's URL when known.
    Moved,
    /// A malformed message: bad varint, truncated or corrupt update, unknown type, invalid
    /// awareness.
    BadMessage,
    /// Missing, expired, unsigned, wrongly signed, wrong-audience or malformed token.
    Unauthorized,
    /// The token does not grant this scene.
    Forbidden,
    /// Not a valid scene id.
    UnknownScene,
    /// A message over the frame limit, awareness over its cap, or a document at its size limit.
    TooLarge,
    /// Too many messages per second, or the scene is full.
    RateLimited,
    /// The node is shutting down or draining.
    GoingAway,
    /// A text frame: the protocol is binary.
    UnsupportedData,
    /// The scene could not be loaded (the store is unavailable).
    Internal,
    /// The scene is reloading.
    Restarting,
    /// The client could not keep up; it resyncs on reconnect.
    TryAgain,
    /// Collaboration is switched off for this scene or user (the `enableYjs` flag, or the
    /// rollout): save through the content API instead (`GET /v1/flags` says when to return).
    CollaborationOff,
}

impl CloseCode {
    /// Every code, for tables and tests.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Moved,
        CloseCode::BadMessage,
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
        CloseCode::UnknownScene,
        CloseCode::TooLarge,
        CloseCode::RateLimited,
        CloseCode::GoingAway,
        CloseCode::UnsupportedData,
        CloseCode::Internal,
        CloseCode::Restarting,
        CloseCode::TryAgain,
        CloseCode::CollaborationOff,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Moved => 4301,
            CloseCode::BadMessage => 4400,
            CloseCode::Unauthorized => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::UnknownScene => 4404,
            CloseCode::TooLarge => 4413,
            CloseCode::RateLimited => 4429,
            CloseCode::GoingAway => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::Internal => 1011,
            CloseCode::Restarting => 1012,
            CloseCode::TryAgain => 1013,
            CloseCode::CollaborationOff => 4410,
        }
    }

    /// The code a number stands for, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short stable name, for metric labels and logs.
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::Moved => "moved",
            CloseCode::BadMessage => "bad_message",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::UnknownScene => "unknown_scene",
            CloseCode::TooLarge => "too_large",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::GoingAway => "going_away",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::Internal => "internal",
            CloseCode::Restarting => "restarting",
            CloseCode::TryAgain => "try_again",
            CloseCode::CollaborationOff => "collaboration_off",
        }
    }

    /// Whether a client should connect again (to the URL in the reason, for [`Moved`]).
    ///
    /// [`Moved`]: CloseCode::Moved
    pub const fn should_reconnect(self) -> bool {
        !matches!(self.code(), 4400..=4499)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
            let same = CloseCode::ALL.iter().filter(|c| c.code() == code.code()).count();
            assert_eq!(same, 1, "{code}");
        }
        assert_eq!(CloseCode::from_code(1000), None);
    }

    #[test]
    fn only_the_44xx_codes_stop_a_client() {
        let stop: Vec<u16> = CloseCode::ALL
            .into_iter()
            .filter(|c| !c.should_reconnect())
            .map(CloseCode::code)
            .collect();
        assert_eq!(stop, vec![4400, 4401, 4403, 4404, 4413, 4429, 4410]);
        assert!(CloseCode::Moved.should_reconnect());
    }
}
