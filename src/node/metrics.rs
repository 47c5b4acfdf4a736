//! Counters for operators: connection tasks count frames, refusals, RSA
//! operations and closed connections here, and nothing else happens here.
//! They are served as Prometheus text, beside the router's figures, by the
//! `--metrics` endpoint (`endpoint.rs`).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::wire::messages::TYPE_NAMES;

/// The node's counters.
pub struct Metrics {
    pub connections: AtomicI64,
    frames_in: Vec<AtomicU64>,
    frames_out: Vec<AtomicU64>,
    refused: Mutex<BTreeMap<String, u64>>,
    pub rsa_ops: AtomicU64,
    /// Connections closed because a write made no progress in time.
    pub write_timeouts: AtomicU64,
    /// Connections refused because the node holds `--max-conns` already.
    pub conns_refused_global: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let slots = || (0..=TYPE_NAMES.len()).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            connections: AtomicI64::new(0),
            frames_in: slots(),
            frames_out: slots(),
            refused: Mutex::new(BTreeMap::new()),
            rsa_ops: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            conns_refused_global: AtomicU64::new(0),
        }
    }
}

fn slot(kind: &str) -> usize {
    TYPE_NAMES
        .iter()
        .position(|n| *n == kind)
        .unwrap_or(TYPE_NAMES.len())
}

impl Metrics {
    pub fn frame_in(&self, kind: &str) {
        self.frames_in[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn frame_out(&self, kind: &str) {
        self.frames_out[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A frame or hello refused, by reason (an error code or a check).
    pub fn refused(&self, reason: &str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// Appends the counters to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write_metric(
            out,
            "socp_connections",
            Kind::Gauge,
            "Open connections (users and links).",
            self.connections.load(Ordering::Relaxed),
        );
        write_metric(
            out,
            "socp_rsa_operations_total",
            Kind::Counter,
            "RSA private-key operations (signatures, unwraps).",
            load(&self.rsa_ops),
        );
        write_metric(
            out,
            "socp_write_timeouts_total",
            Kind::Counter,
            "Connections closed because the peer took in nothing for the write timeout.",
            load(&self.write_timeouts),
        );
        write_metric(
            out,
            "socp_connections_refused_total",
            Kind::Counter,
            "Connections refused because the node was at --max-conns.",
            load(&self.conns_refused_global),
        );
        for (name, help, counts) in [
            (
                "socp_frames_in_total",
                "Frames received, by type.",
                &self.frames_in,
            ),
            (
                "socp_frames_out_total",
                "Frames sent, by type.",
                &self.frames_out,
            ),
        ] {
            write_header(out, name, Kind::Counter, help);
            for (i, c) in counts.iter().enumerate() {
                let n = load(c);
                if n > 0 {
                    let kind = TYPE_NAMES.get(i).copied().unwrap_or("other");
                    let _ = writeln!(out, "{name}{{type=\"{kind}\"}} {n}");
                }
            }
        }
        write_header(
            out,
            "socp_refused_total",
            Kind::Counter,
            "Hellos and frames refused, by reason.",
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "socp_refused_total{{reason=\"{reason}\"}} {n}");
            }
        }
    }
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Gauge,
    Counter,
}

/// Writes a metric's `# HELP` and `# TYPE` lines.
pub(crate) fn write_header(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes a metric without labels: its header and its one sample.
pub(crate) fn write_metric(
    out: &mut String,
    name: &str,
    kind: Kind,
    help: &str,
    value: impl Display,
) {
    write_header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;
    use crate::wire::messages::Kind as Frame;

    #[test]
    fn counters_are_rendered_by_type_and_reason() {
        let m = Metrics::default();
        m.frame_in(Frame::MsgPrivate.name());
        m.frame_in(Frame::MsgPrivate.name());
        m.frame_out("not a frame type");
        m.refused(ErrorCode::BadFrame.as_str());
        let mut out = String::new();
        m.render(&mut out);
        let frames_in = format!("socp_frames_in_total{{type=\"{}\"}} 2", Frame::MsgPrivate);
        assert!(out.contains(&frames_in), "{out}");
        assert!(
            out.contains("socp_frames_out_total{type=\"other\"} 1"),
            "{out}"
        );
        let refused = format!("socp_refused_total{{reason=\"{}\"}} 1", ErrorCode::BadFrame);
        assert!(out.contains(&refused), "{out}");
        assert!(
            out.contains("# TYPE socp_connections gauge\nsocp_connections 0\n"),
            "{out}"
        );
    }
}
