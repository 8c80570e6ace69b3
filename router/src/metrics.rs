//! Prometheus metrics of a router, served as OpenMetrics text at `/metrics`.
//!
//! Counters are registered without `_total`: the encoder adds it (and prometheus-client
//! panics in debug builds if the name already has it).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What a request to `/v1/route` or `/ws/scenes` got.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// `/v1/route` named the owner.
    Route,
    /// `/ws/scenes` was sent on to the owner.
    Redirect,
    /// The scene id was refused.
    Bad,
    /// No membership yet, or no active node.
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Route => "route",
            Outcome::Redirect => "redirect",
            Outcome::Bad => "bad",
            Outcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<KindLabels, Counter>,
    pub epoch: Gauge,
    pub membership_updates: Counter,
    pub watch_errors: Counter,
    /// `/nodes/{name}/…` requests, by outcome (see [`crate::passthrough`]).
    pub passthrough_requests: Family<OutcomeLabels, Counter>,
    /// WebSocket connections passed through to a node, open now.
    pub passthrough_connections: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            epoch: Gauge::default(),
            membership_updates: Counter::default(),
            watch_errors: Counter::default(),
            passthrough_requests: Family::default(),
            passthrough_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "router_requests",
            "Scene requests answered, by kind (route, redirect, bad, unavailable)",
            m.requests.clone(),
        );
        registry.register(
            "router_epoch",
            "Placement epoch of the membership the router answers from",
            m.epoch.clone(),
        );
        registry.register(
            "router_membership_updates",
            "Newer membership versions received from the cluster",
            m.membership_updates.clone(),
        );
        registry.register(
            "router_watch_errors",
            "Failed membership watch calls (a node down, slow or refusing)",
            m.watch_errors.clone(),
        );
        registry.register(
            "router_passthrough_requests",
            "Requests passed through to a node (/nodes/{name}/...), by outcome (forwarded, upgraded, \
             unknown_node, unreachable, too_large, upgrade_failed)",
            m.passthrough_requests.clone(),
        );
        registry.register(
            "router_passthrough_connections",
            "WebSocket connections passed through to a node, open now",
            m.passthrough_connections.clone(),
        );
        // Every series from the start: an empty family is left out of the text.
        for outcome in crate::passthrough::Outcome::ALL {
            let _ = m.passthrough_requests.get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            });
        }
        Metrics { registry, ..m }
    }

    pub fn count(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&KindLabels {
                kind: outcome.label(),
            })
            .inc();
    }

    pub fn passthrough(&self, outcome: crate::passthrough::Outcome) {
        self.passthrough_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_total_once() {
        let m = Metrics::new();
        m.count(Outcome::Bad);
        m.watch_errors.inc();
        m.epoch.set(7);
        let text = m.encode();
        assert!(text.contains("router_requests_total{kind=\"bad\"} 1"), "{text}");
        assert!(text.contains("router_watch_errors_total 1"), "{text}");
        assert!(text.contains("router_membership_updates_total 0"), "{text}");
        assert!(text.contains("router_epoch 7"), "{text}");
        assert!(
            text.contains("router_passthrough_requests_total{outcome=\"unreachable\"} 0"),
            "{text}"
        );
        assert!(text.contains("router_passthrough_connections 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
