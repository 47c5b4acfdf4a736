//! The table `socp-bench` prints from its figures.

use std::fmt::Write;

use serde_json::Value;

/// The figures of [`super::run`] as the table it prints.
pub fn table(f: &Value) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_table(&mut out, f);
    out
}

fn write_table(out: &mut String, f: &Value) -> std::fmt::Result {
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    writeln!(
        out,
        "socp-bench ({} cores, {} s per run, {} sender/receiver pairs, custody on)",
        f["cores"], f["seconds_per_run"], f["pairs"]
    )?;
    writeln!(
        out,
        "{:<44} {:>12} {:>12} {:>8}",
        "", "mac-v1", "--no-mac", "ratio"
    )?;
    for (label, key) in [
        (
            "cross-server DMs/s (delivered and acked)",
            "cross_server_dms_per_s",
        ),
        ("same-server DMs/s", "same_server_dms_per_s"),
    ] {
        let (a, b) = (n(&f[key]), n(&f["no_mac"][key]));
        writeln!(
            out,
            "{label:<44} {a:>12.0} {b:>12.0} {:>7.1}x",
            a / b.max(1.0)
        )?;
    }
    writeln!(
        out,
        "{:<44} {:>12.0}",
        "RSA bound, DMs/s (cores / (sign × 3))",
        n(&f["rsa_bound_dms_per_s"])
    )?;
    let l = &f["latency_ms"];
    writeln!(
        out,
        "{:<44} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples at {}/s)",
        "latency at half load",
        n(&l["p50"]),
        n(&l["p99"]),
        n(&l["max"]),
        l["samples"],
        l["offered_per_s"]
    )?;
    let c = &f["node_cpu_ms_per_dm"];
    writeln!(
        out,
        "{:<44} master {:.3}, local {:.3}",
        "node CPU ms per cross-server DM",
        n(&c["master"]),
        n(&c["local"])
    )?;
    writeln!(
        out,
        "{:<44} {:.3}",
        "load generator CPU ms per cross-server DM",
        n(&f["load_generator_cpu_ms_per_dm"])
    )?;
    let p = &f["peak_rss_kib"];
    writeln!(
        out,
        "{:<44} master {:.0}, local {:.0}",
        "peak RSS KiB under load",
        n(&p["master"]),
        n(&p["local"])
    )?;
    writeln!(
        out,
        "{:<44} {:.1} ({} connections)",
        "RSS KiB per idle connection",
        n(&f["rss_per_idle_conn_kib"]),
        f["idle_connections"]
    )?;
    writeln!(
        out,
        "{:<44} {:.3}",
        "RSA-4096 sign ms",
        n(&f["rsa_sign_ms"])
    )?;
    Ok(())
}
