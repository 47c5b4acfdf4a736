//! Where log lines go and in which shape: text for a terminal, or one JSON
//! object per line for a log shipper (`--log-format json`), on stderr.
//! `RUST_LOG` picks the levels, but dependencies stay at `info` unless it
//! names them: below that, tungstenite prints every frame it reads or
//! writes, which would put ciphertexts and signatures in the log.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields (`user`, `server`, `msg_id`, …).
    Json,
}

/// The most a dependency logs unless `RUST_LOG` names it.
pub const DEPENDENCY_MAX_LEVEL: Level = Level::INFO;
/// Our own events' target prefix.
const OURS: &str = "socp";

/// Installs the global subscriber: `RUST_LOG`, or `default` without it.
/// Does nothing if one is installed already (tests).
pub fn init(default: &str, format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = rust_log
        .as_deref()
        .and_then(|r| EnvFilter::try_new(r).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let named = named_targets(rust_log.as_deref().unwrap_or(default));
    let capped = filter_fn(move |meta| allowed(meta, &named));
    let layer = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(capped))
        .try_init();
}

/// The targets a `RUST_LOG` value names (`tungstenite` in
/// `debug,tungstenite=trace`); a bare level names none.
fn named_targets(rust_log: &str) -> Vec<String> {
    rust_log
        .split(',')
        .filter_map(|d| {
            let target = d.split('=').next()?.split('[').next()?.trim();
            let is_level = target.parse::<Level>().is_ok() || target.eq_ignore_ascii_case("off");
            (!target.is_empty() && !is_level).then(|| target.to_owned())
        })
        .collect()
}

/// Ours at any level; a dependency above `DEPENDENCY_MAX_LEVEL` only when
/// `RUST_LOG` names it (or a module of it).
fn allowed(meta: &Metadata<'_>, named: &[String]) -> bool {
    let target = meta.target();
    let under = |prefix: &str| {
        target == prefix
            || target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with("::"))
    };
    under(OURS) || *meta.level() <= DEPENDENCY_MAX_LEVEL || named.iter().any(|n| under(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_targets_are_named() {
        assert!(named_targets("trace").is_empty());
        assert!(named_targets("").is_empty());
        assert_eq!(
            named_targets("debug,tungstenite=trace,socp::node[conn]=debug,rustls=OFF"),
            ["tungstenite", "socp::node", "rustls"]
        );
    }
}
