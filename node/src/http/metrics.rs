//! `/metrics` on `prometheus-client`, in the OpenMetrics text format: the node's counters, and
//! gauges read from the node's state at scrape time (the formation phase as one series per
//! phase, so that no series vanishes when it changes).

use std::sync::Arc;

use muster::Phase;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::node::Node;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole `/metrics` page for `node`.
pub fn render(node: &Arc<Node>) -> String {
    let m = &node.metrics;
    let mut r = Registry::default();
    let counters: [(&str, &str, &crate::metrics::Counter); 9] = [
        ("muster_discovery_calls", "Backend listings", &m.discovery_calls),
        (
            "muster_discovery_errors",
            "Backend listings that failed",
            &m.discovery_errors,
        ),
        (
            "muster_joins",
            "Joins performed or accepted by this node",
            &m.joins,
        ),
        (
            "muster_forgotten_nodes",
            "Members forgotten by this node",
            &m.forgotten,
        ),
        (
            "muster_peer_messages_sent",
            "Peer-protocol messages sent",
            &m.messages_sent,
        ),
        (
            "muster_peer_messages_received",
            "Peer-protocol messages received",
            &m.messages_received,
        ),
        (
            "muster_auth_failures",
            "Connections refused for a failed handshake",
            &m.auth_failures,
        ),
        (
            "muster_formation_notices_sent",
            "Formation notices sent to peers (decide again now)",
            &m.notices_sent,
        ),
        (
            "muster_formation_notices_received",
            "Formation notices received from peers",
            &m.notices_received,
        ),
    ];
    for (name, help, c) in counters {
        r.register(name, help, ConstCounter::new(c.get()));
    }
    r.register(
        "muster_reachable_peers",
        "Peers that answered the last status check",
        ConstGauge::new(m.reachable_peers.get()),
    );
    r.register(
        "muster_membership_changed_timestamp_seconds",
        "When readiness or the member list last changed (Unix time)",
        ConstGauge::new(m.membership_changed.get()),
    );
    r.register_collector(Box::new(StateView(node.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// Gauges and backend counters read from the node at scrape time.
struct StateView(Arc<Node>);

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateView({})", self.0.name())
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, &sentence(help), None, g.metric_type())?)
}

/// A help text as a sentence: the registry ends registered metrics' help with a full stop, a
/// collector's descriptors get theirs here (help texts are written without one).
fn sentence(help: &str) -> String {
    format!("{help}.")
}

impl Collector for StateView {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let node = &self.0;
        let phase = node.formation().phase;
        let mut family = enc.encode_descriptor(
            "muster_formation_state",
            &sentence("Formation phase: 1 for the current phase, 0 for the others"),
            None,
            MetricType::Gauge,
        )?;
        for p in Phase::ALL {
            let labels = [("phase", p.as_str())];
            ConstGauge::new(i64::from(p == phase)).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut enc,
            "muster_ready",
            "1 when clustered and serving",
            i64::from(node.is_ready()),
        )?;
        let members = i64::try_from(node.state().alive().len()).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "muster_cluster_members",
            "Members this node knows",
            members,
        )?;
        if crate::proto::channel::accounting().is_some() {
            let crypto = ConstCounter::new(crate::proto::channel::crypto_seconds());
            crypto.encode(enc.encode_descriptor(
                "muster_peer_channel_crypto_seconds",
                &sentence(
                    "CPU time spent in the peer channel's cryptography (only with MUSTER_BENCH_CHANNEL_WORK)",
                ),
                None,
                crypto.metric_type(),
            )?)?;
        }
        if let Some(reg) = node.registration() {
            gauge(
                &mut enc,
                "muster_registered",
                "1 when registered with the backend",
                i64::from(reg.registered),
            )?;
            for (name, help, v) in [
                (
                    "muster_registration_renewals",
                    "Registration keep-alive renewals",
                    reg.renewals,
                ),
                (
                    "muster_re_registrations",
                    "Times the registration was re-established",
                    reg.re_registrations,
                ),
            ] {
                let c = ConstCounter::new(v);
                c.encode(enc.encode_descriptor(name, &sentence(help), None, c.metric_type())?)?;
            }
        }
        Ok(())
    }
}
