//! `aptgate store …`: the content-addressed store.

use super::admin_client::AdminClient;
use anyhow::Context;
use aptgate::data_dir_lock::DataDirLock;
use aptgate_channels::gc::{human_bytes, GcReport, StoreUsage};
use aptgate_config::Config;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Re-hash every blob; move corrupt ones to quarantine/ and list them (runs locally).
    Verify,
    /// Bytes in the store by kind: packages, indices, metadata, unreferenced (asks the server).
    Usage {
        #[arg(long)]
        json: bool,
    },
}

/// `store verify` reads the store directly.
pub fn run_local(config: &Config) -> anyhow::Result<ExitCode> {
    verify(config)
}

/// `store usage` asks the server (it knows what references what).
pub async fn usage(api: &AdminClient, json: bool) -> anyhow::Result<()> {
    let usage: StoreUsage = api.get("store/usage").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    println!("{:<34} {:>10} {:>12}", "KIND", "BLOBS", "SIZE");
    for (kind, amount) in [
        ("packages", usage.packages),
        ("indices and package tables", usage.indices),
        ("manifests, publications, releases", usage.metadata),
        ("unreferenced (next gc frees)", usage.unreferenced),
        ("unreferenced, within grace", usage.unreferenced_recent),
    ] {
        println!(
            "{kind:<34} {:>10} {:>12}",
            amount.blobs,
            human_bytes(amount.bytes)
        );
    }
    Ok(())
}

/// `aptgate gc`: the server collects (or, with `--dry-run`, says what it would).
pub async fn gc(api: &AdminClient, dry_run: bool) -> anyhow::Result<()> {
    let report: GcReport = api
        .post("gc", serde_json::json!({ "dry_run": dry_run }))
        .await?;
    let (would, verb) = if dry_run {
        ("would ", "delete")
    } else {
        ("", "deleted")
    };
    if report.snapshots_deleted.is_empty() {
        println!("no snapshot past retention");
    } else {
        println!(
            "{would}{verb} {} snapshot(s) past retention: {}",
            report.snapshots_deleted.len(),
            report.snapshots_deleted.join(", ")
        );
    }
    println!(
        "{} {} unreferenced blob(s), {}{}",
        if dry_run { "would free" } else { "freed" },
        report.freed.blobs,
        human_bytes(report.freed.bytes),
        if report.records_removed > 0 {
            format!(
                "; {} mirror record(s) of dropped files",
                report.records_removed
            )
        } else {
            String::new()
        }
    );
    if report.kept_recent.blobs > 0 {
        println!(
            "kept {} unreferenced blob(s) ({}) written within the grace period",
            report.kept_recent.blobs,
            human_bytes(report.kept_recent.bytes)
        );
    }
    eprintln!("in {:.2}s", report.seconds);
    Ok(())
}

/// Beside a running server, `tmp/` is its downloads under way: left alone. Without one, the
/// lock is held for the run (no server starts meanwhile) and `tmp/` is cleared as at start.
fn verify(config: &Config) -> anyhow::Result<ExitCode> {
    let root = config.data_dir.join("store");
    let (store, _lock) = match DataDirLock::try_acquire(&config.data_dir)? {
        Ok(lock) => (aptgate_mirror::Store::open(root), Some(lock)),
        Err(holder) => {
            let pid = holder
                .pid
                .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
            eprintln!("note: a server ({pid}) is using this data_dir; its downloads in store/tmp/ are left alone");
            (aptgate_mirror::Store::open_shared(root), None)
        }
    };
    let store = store.context("cannot open the store")?;
    let started = std::time::Instant::now();
    let mut last = started;
    let report = store.verify_all(|blobs, bytes| {
        if last.elapsed().as_secs() >= 2 {
            last = std::time::Instant::now();
            eprintln!("verified {blobs} blobs, {} MiB ...", bytes >> 20);
        }
    })?;
    for bad in &report.corrupt {
        println!(
            "corrupt: {} (content hashes to {}), moved to {}",
            bad.name,
            bad.actual,
            bad.quarantined_to.display()
        );
    }
    println!(
        "verified {} blobs ({} MiB) in {:.1}s: {} corrupt",
        report.blobs,
        report.bytes >> 20,
        started.elapsed().as_secs_f64(),
        report.corrupt.len()
    );
    Ok(if report.corrupt.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
