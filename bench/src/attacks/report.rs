//! The table `socp-bench --attacks` prints from its figures.

use std::fmt::Write;

use serde_json::Value;

/// The figures of [`super::run_attacks`] as the table it prints.
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
        "socp-bench --attacks ({} s per phase, probe DM every {} ms; node bounds: {})",
        f["seconds_per_phase"],
        f["probe_every_ms"],
        f["node_bounds"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "{:<22} {:>16} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "probe", "delivered/sent", "p50 ms", "p90 ms", "p99 ms", "max ms", "p90 x"
    )?;
    for (label, key) in [
        ("cross-server DM", "cross_server"),
        ("same-server DM", "same_server"),
        ("group message", "group"),
    ] {
        let base_p90 = n(&f["baseline"][key]["p90_ms"]);
        for (phase, which) in [("baseline", "baseline"), ("under attack", "under_attack")] {
            let r = &f[which][key];
            let ratio = if which == "baseline" {
                String::new()
            } else {
                format!("{:.1}x", n(&r["p90_ms"]) / base_p90.max(0.001))
            };
            writeln!(
                out,
                "{:<22} {:>16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                format!("{label}, {phase}"),
                format!("{}/{}", r["delivered"], r["sent"]),
                n(&r["p50_ms"]),
                n(&r["p90_ms"]),
                n(&r["p99_ms"]),
                n(&r["max_ms"]),
                ratio
            )?;
        }
    }
    let target = n(&f["target_p90_ms"]);
    let p90 = n(&f["under_attack"]["cross_server"]["p90_ms"])
        .max(n(&f["under_attack"]["same_server"]["p90_ms"]));
    writeln!(
        out,
        "probe p90 under attack {p90:.2} ms: {} the {target:.0} ms target",
        if p90 < target { "under" } else { "OVER" }
    )?;
    let bound = n(&f["rss_bound_kib"]);
    writeln!(
        out,
        "{:<10} {:>14} {:>14} {:>14}   bound {:.0} KiB",
        "node RSS", "baseline peak", "attack peak", "VmHWM", bound
    )?;
    if let Some(rss) = f["rss"].as_object() {
        for (node, r) in rss {
            writeln!(
                out,
                "{node:<10} {:>14.0} {:>14.0} {:>14.0}   {}",
                n(&r["baseline_peak_kib"]),
                n(&r["attack_peak_kib"]),
                n(&r["hwm_kib"]),
                if r["within_bound"].as_bool() == Some(true) {
                    "within"
                } else {
                    "OVER"
                }
            )?;
        }
    }
    for phase in ["baseline", "under_attack"] {
        if let Some(c) = f["cpu_percent"][phase].as_object() {
            let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}%")).collect();
            writeln!(
                out,
                "CPU, {}: {}",
                phase.replace('_', " "),
                parts.join(", ")
            )?;
        }
    }
    writeln!(out, "attack          what the nodes answered")?;
    if let Some(attacks) = f["attacks"].as_object() {
        for (name, a) in attacks {
            let answers = a["answers"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{name:<15} {} sent: {}",
                a["sent"],
                if answers.is_empty() {
                    "no answer".to_owned()
                } else {
                    answers
                }
            )?;
        }
    }
    let v = &f["victims"];
    writeln!(
        out,
        "victims: {} forged receipts reached the probe sender, {} foreign group shares reached the member, {} FILE_STARTs reached the probe receiver, {} probe disconnects",
        v["forged_receipts_reaching_probe_sender"],
        v["foreign_group_shares_reaching_member"],
        v["file_starts_reaching_probe_receiver"],
        v["probe_disconnects"]
    )?;
    if let Some(a) = v["probe_senders_answers"].as_object() {
        let parts: Vec<String> = a.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(
            out,
            "the nodes answered the probe senders: {}",
            parts.join(", ")
        )?;
    }
    if let Some(failed) = f["attacks_failed"].as_object() {
        for (name, why) in failed {
            writeln!(
                out,
                "attack {name} ended early: {}",
                why.as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
