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
        /// Small packages to add to the default set.
        #[arg(long, default_value_t = 0)]
        packages: usize,
        /// Also write a "next" state: DIR/base keeps the repository as generated, DIR/next
        /// has this percentage of the small packages at a new version (same key, unchanged
        /// packages byte-identical).
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
            let mut repo = FixtureRepo::generate(&root, &spec)
                .with_context(|| format!("generating a fixture in {}", root.display()))?;
            if let Some(percent) = next_percent {
                // The base state is a copy taken before the bump.
                let status = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(&root)
                    .arg(dir.join("base"))
                    .status()?;
                anyhow::ensure!(status.success(), "copying the base state");
                let every = (100 / percent.clamp(1, 100)) as usize;
                for (i, p) in repo
                    .spec
                    .packages
                    .iter_mut()
                    .filter(|p| p.name.starts_with("extra-"))
                    .enumerate()
                {
                    if i % every == 0 {
                        p.version = "1.0-2".into();
                    }
                }
                repo.regenerate().context("writing the next state")?;
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "key\t{}", repo.key_path().display())?;
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
