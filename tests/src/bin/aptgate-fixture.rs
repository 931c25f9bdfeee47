//! Generates and serves fixture repositories outside the test suite, for benchmarks and for
//! poking at the mirror by hand.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use aptgate_tests::{
    fixture::{FixtureRepo, FixtureSpec, PackageSpec},
    upstream::{Misbehaviour, Upstream},
};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "Signed fixture apt repositories for aptgate's tests and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a signed repository to DIR; print the key path, then one line per package:
    /// name, version, architecture, size, sha256 and pool path, tab-separated.
    Generate {
        dir: PathBuf,
        /// Payload of the large package (`big-data`), in MiB.
        #[arg(long, default_value_t = 8)]
        large_mib: u64,
        /// Payload of `medium-data` (main, all), in KiB: the benchmark's ~1 MiB `.deb`.
        #[arg(long, default_value_t = 1024)]
        medium_kib: u64,
        /// Small packages to add to the default set (`extra-0000`, …). In every ten, numbers
        /// 2 and 3 are libraries; 0, 1, 4, 5, 6 and 7 depend on the library of their tens
        /// in the same component and architecture (`extra-0012 (>= 1.0-1)`).
        #[arg(long, default_value_t = 0)]
        packages: usize,
        /// Also write a "next" state: DIR/base keeps the repository as generated, DIR/next
        /// has this percentage of the small packages at a new version (same key, unchanged
        /// packages byte-identical, hard-linked). The bumps come in pairs, a program and the
        /// library it depends on, the program's new version needing the library's new one;
        /// a `selective` line then names ten bumped programs (a selective promotion of them
        /// must pull their libraries too).
        #[arg(long)]
        next_percent: Option<u32>,
    },
    /// Serve DIR over HTTP on 127.0.0.1 until interrupted; print the URL.
    Serve {
        dir: PathBuf,
        /// Stream every response at about this rate.
        #[arg(long)]
        throttle: Option<u64>,
        /// Port to listen on (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate {
            dir,
            large_mib,
            medium_kib,
            packages,
            next_percent,
        } => {
            let mut spec = FixtureSpec::default()
                .large_payload(large_mib << 20)
                .extra_packages(packages);
            for p in &mut spec.packages {
                let Some(i) = extra_number(&p.name) else {
                    continue;
                };
                // Same parity, so the same component and architecture (both alternate).
                let library = i - i % 10 + 2 + i % 2;
                if matches!(i % 10, 0 | 1 | 4..=7) && library < packages {
                    p.depends = Some(format!("extra-{library:04} (>= 1.0-1)"));
                }
            }
            spec.packages.push(
                PackageSpec::new(
                    "medium-data",
                    "1.0-1",
                    "all",
                    "main",
                    &["stable", "testing"],
                )
                .payload(medium_kib << 10),
            );
            let root = match next_percent {
                Some(_) => dir.join("next"),
                None => dir.clone(),
            };
            let mut selective: Vec<String> = Vec::new();
            let mut repo = FixtureRepo::generate(&root, &spec)
                .with_context(|| format!("generating a fixture in {}", root.display()))?;
            if let Some(percent) = next_percent {
                // The base state is a copy taken before the bump; hard links will do, as
                // regenerating replaces files by rename and never rewrites one in place.
                let status = std::process::Command::new("cp")
                    .arg("-al")
                    .arg(&root)
                    .arg(dir.join("base"))
                    .status()?;
                anyhow::ensure!(status.success(), "copying the base state");
                // A program and its library (two packages) every `period`: `percent` % bumped.
                let period = (200 / percent.clamp(1, 50) as usize).max(4);
                for p in &mut repo.spec.packages {
                    let Some(i) = extra_number(&p.name) else {
                        continue;
                    };
                    if i % period == 0 && i + 2 < packages {
                        p.version = "1.0-2".into();
                        p.depends = Some(format!("extra-{:04} (>= 1.0-2)", i + 2));
                    } else if i % period == 2 {
                        p.version = "1.0-2".into();
                    }
                }
                selective = (0..packages)
                    .step_by(period)
                    .filter(|i| i + 2 < packages)
                    .take(10)
                    .map(|i| format!("extra-{i:04}"))
                    .collect();
                repo.regenerate().context("writing the next state")?;
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "key\t{}", repo.key_path().display())?;
            if next_percent.is_some() {
                writeln!(out, "selective\t{}", selective.join(","))?;
            }
            for p in repo.packages() {
                let (name, version, arch) = (&p.name, &p.version, &p.arch);
                let (size, sha256, pool_path) = (p.size, &p.sha256, &p.pool_path);
                writeln!(
                    out,
                    "{name}\t{version}\t{arch}\t{size}\t{sha256}\t{pool_path}"
                )?;
            }
        }
        Command::Serve {
            dir,
            throttle,
            port,
        } => {
            let upstream = Upstream::bind(dir, port, false).await?;
            if let Some(bytes_per_sec) = throttle {
                upstream.misbehave_all(Misbehaviour::Throttle { bytes_per_sec });
            }
            println!("{}", upstream.url());
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                interrupted = tokio::signal::ctrl_c() => interrupted?,
                _ = terminate.recv() => {}
            }
            eprintln!("served {} requests", upstream.total());
        }
    }
    Ok(())
}

/// `extra-0042` → 42.
fn extra_number(name: &str) -> Option<usize> {
    name.strip_prefix("extra-")?.parse().ok()
}
