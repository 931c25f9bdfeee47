//! `aptgate store …`: the content-addressed store.

use anyhow::Context;
use aptgate_config::Config;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Re-hash every blob; move corrupt ones to quarantine/ and list them.
    Verify,
}

pub fn run(config: &Config, command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Verify => verify(config),
    }
}

fn verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = aptgate_mirror::Store::open(config.data_dir.join("store"))
        .context("cannot open the store")?;
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
