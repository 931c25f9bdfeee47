//! A load generator that speaks the agent protocol, for `bench/fleet.sh`: enrolls simulated
//! hosts, uploads their inventories, checks them in at a fixed rate, times the fleet pending
//! queue and holds one long-poll wait per host while the server's memory is read.
//!
//! Prints one `key value` line per measurement on stdout (the script turns them into a table);
//! progress goes to stderr.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aptgate_agent::protocol::{
    inventory_digest, CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, Facts,
    HostKey, InstalledPackage, InventoryUpload, OsRelease, PROTOCOL_VERSION,
};
use clap::Parser;
use flate2::{write::GzEncoder, Compression};
use futures::{stream, StreamExt as _};
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Simulated aptgate agents for bench/fleet.sh")]
struct Cli {
    /// The server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    server: String,
    /// The admin token (to create the enrollment token and read the fleet queue).
    #[arg(long)]
    admin_token: String,
    /// The server's pid, for its CPU time and resident memory.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Installed packages, one per line: `name version architecture` (the first three
    /// tab-separated fields of `aptgate-fixture generate`'s output work).
    #[arg(long)]
    packages: std::path::PathBuf,
    /// How many packages each host has installed (taken from the top of the list).
    #[arg(long, default_value_t = 750)]
    installed: usize,
    /// Check-ins per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Requests in flight during enrollment and uploads.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Long-poll waits held open at the end (0 skips the phase).
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// Waits opened per second.
    #[arg(long, default_value_t = 1000)]
    wait_rate: u64,
}

struct Host {
    key: HostKey,
    id: String,
    facts: Facts,
    digest: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = http_client()?;
    let base = cli.server.trim_end_matches('/').to_owned();
    let packages = read_packages(&cli.packages, cli.installed)?;

    // Enrollment token for every simulated host.
    let token: Value = client
        .post(format!("{base}/api/v1/fleet/tokens"))
        .bearer_auth(&cli.admin_token)
        .json(&json!({"labels": {"bench": "fleet"}, "uses": cli.hosts}))
        .send()
        .await?
        .error_for_status()
        .context("creating the enrollment token")?
        .json()
        .await?;
    let token = token["token"]
        .as_str()
        .context("no token in the answer")?
        .to_owned();

    eprintln!("enrolling {} hosts", cli.hosts);
    let started = Instant::now();
    let hosts: Vec<Host> = stream::iter(0..cli.hosts)
        .map(|i| enroll(&client, &base, &token, i))
        .buffer_unordered(cli.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let secs = started.elapsed().as_secs_f64();
    println!("enroll_per_sec {:.0}", cli.hosts as f64 / secs);

    eprintln!("uploading {} inventories", hosts.len());
    let bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let hosts: Vec<Host> = stream::iter(hosts.into_iter().enumerate())
        .map(|(i, host)| {
            let (client, base, bytes) = (&client, &base, bytes.clone());
            let inventory = inventory_for(i, &packages);
            async move { upload(client, base, host, inventory, &bytes).await }
        })
        .buffer_unordered(cli.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let secs = started.elapsed().as_secs_f64();
    println!("inventory_uploads_per_sec {:.0}", hosts.len() as f64 / secs);
    println!(
        "inventory_bytes_per_upload {}",
        bytes.load(Ordering::Relaxed) / hosts.len().max(1)
    );

    // An unchanged inventory is not asked for again.
    let mut asked_again = 0;
    for host in hosts.iter().take(100) {
        if checkin(&client, &base, host).await?.upload_inventory {
            asked_again += 1;
        }
    }
    println!("unchanged_inventory_asked_again_of_100 {asked_again}");

    eprintln!("checking in at {}/s for {} s", cli.rate, cli.seconds);
    let hosts = Arc::new(hosts);
    let cpu_before = cpu_ticks(cli.server_pid)?;
    let total = (cli.rate * cli.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / cli.rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let (client, base, hosts) = (client.clone(), base.clone(), hosts.clone());
        tasks.push(tokio::spawn(async move {
            let host = &hosts[n % hosts.len()];
            let t = Instant::now();
            checkin(&client, &base, host).await.map(|_| t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.push(task.await??);
    }
    let cpu_after = cpu_ticks(cli.server_pid)?;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("checkin_p50_ms {:.2}", pct(0.50).as_secs_f64() * 1e3);
    println!("checkin_p99_ms {:.2}", pct(0.99).as_secs_f64() * 1e3);
    println!("checkin_max_ms {:.2}", pct(1.0).as_secs_f64() * 1e3);
    let tick_ms = 1000.0 / clock_ticks_per_sec();
    println!(
        "server_cpu_ms_per_checkin {:.3}",
        (cpu_after - cpu_before) as f64 * tick_ms / total as f64
    );

    eprintln!("timing the fleet pending queue");
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let queue: Value = client
            .get(format!("{base}/api/v1/fleet/pending"))
            .bearer_auth(&cli.admin_token)
            .send()
            .await?
            .error_for_status()
            .context("reading the fleet pending queue")?
            .json()
            .await?;
        times.push(t.elapsed());
        if times.len() == 1 {
            println!("pending_queue_rows {}", queue_rows(&queue));
            println!(
                "pending_queue_hosts {}",
                queue["hosts"].as_u64().unwrap_or(0)
            );
        }
    }
    // The first is cold (nothing computed yet); the others find the server's caches.
    println!("pending_queue_ms_first {:.0}", times[0].as_secs_f64() * 1e3);
    times.sort();
    println!(
        "pending_queue_ms_median {:.0}",
        times[1].as_secs_f64() * 1e3
    );
    // Drop the load phase's idle keep-alive connections, so the waits are counted alone.
    drop(client);
    let client = http_client()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mib(cli.server_pid)?;
    let fds_before = open_fds(cli.server_pid)?;
    println!("server_rss_mib_before_waits {rss_before:.0}");

    if cli.waiters > 0 {
        let waiters = cli.waiters.min(hosts.len());
        eprintln!("holding {waiters} long-poll waits");
        let mut held = Vec::with_capacity(waiters);
        // Opened at `wait_rate` per second, as agents coming back after a restart (with their
        // jitter) would, not all in one instant.
        let interval = Duration::from_secs_f64(1.0 / cli.wait_rate as f64);
        let start = tokio::time::Instant::now();
        for (n, host) in hosts.iter().take(waiters).enumerate() {
            tokio::time::sleep_until(start + interval * n as u32).await;
            let (client, base) = (client.clone(), base.clone());
            let path = format!("/api/v1/agent/wait?rev={}", i64::MAX / 2);
            let headers = sign(host, "GET", &path, b"");
            held.push(tokio::spawn(async move {
                let mut request = client.get(format!("{base}{path}"));
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request.send().await.map(|r| r.status())
            }));
        }
        // Let every connection reach the server and park: the server holds a socket per wait.
        let deadline = Instant::now() + Duration::from_secs(120);
        while open_fds(cli.server_pid)? < fds_before + waiters && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The last ones are accepted; give their requests time to be read and parked.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let early = held.iter().filter(|t| t.is_finished()).count();
        let mut why: std::collections::BTreeMap<String, usize> = Default::default();
        for task in held.iter_mut().filter(|t| t.is_finished()) {
            let outcome = match task.await {
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(e) => format!("task failed: {e}"),
            };
            *why.entry(outcome).or_default() += 1;
        }
        for (outcome, n) in why {
            eprintln!("{n} waits ended early: {outcome}");
        }
        let connected = open_fds(cli.server_pid)?.saturating_sub(fds_before);
        let rss_with = rss_mib(cli.server_pid)?;
        println!("waits_answered_early {early}");
        println!("waits_connected {connected}");
        println!("server_rss_mib_with_waits {rss_with:.0}");
        println!(
            "server_kib_per_wait {:.1}",
            (rss_with - rss_before) * 1024.0 / waiters as f64
        );
        for task in held {
            task.abort();
        }
    }
    Ok(())
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(600))
        .build()?)
}

fn read_packages(
    path: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = fs_err::read_to_string(path)?;
    let packages: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
        })
        .take(n)
        .collect();
    if packages.is_empty() {
        bail!("no packages in {}", path.display());
    }
    Ok(packages)
}

/// Host `i`'s dpkg database: the listed packages, a few of them at an older version so that
/// inventories differ from host to host (as in a real fleet), the same every run.
fn inventory_for(i: usize, packages: &[(String, String, String)]) -> Vec<InstalledPackage> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    packages
        .iter()
        .map(|(name, version, arch)| {
            let version = if rng.gen_ratio(1, 50) {
                format!("0.{}", rng.gen_range(1..9))
            } else {
                version.clone()
            };
            InstalledPackage {
                name: name.clone(),
                architecture: arch.clone(),
                source: name.clone(),
                source_version: version.clone(),
                version,
                status: "install ok installed".into(),
            }
        })
        .collect()
}

fn sign(host: &Host, method: &str, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    host.key
        .sign_request(&host.id, method, path, chrono::Utc::now().timestamp(), body)
}

async fn enroll(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
) -> anyhow::Result<Host> {
    let key = HostKey::generate();
    let facts = Facts {
        hostname: format!("sim-{i:05}.example.org"),
        machine_id_sha256: hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
            sha2::Sha256::default(),
            format!("machine-{i}"),
        ))),
        os_release: OsRelease {
            id: "debian".into(),
            version_id: "12".into(),
            version_codename: "bookworm".into(),
            pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
        },
        architectures: vec!["amd64".into()],
        kernel: "6.1.0-18-amd64".into(),
        agent_version: "bench".into(),
    };
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.into(),
        public_key: key.public_hex(),
        facts: facts.clone(),
        labels: [("site".to_owned(), format!("site-{}", i % 20))].into(),
    })?;
    let mut host = Host {
        key,
        id: String::new(),
        facts,
        digest: String::new(),
    };
    let answer: EnrollResponse = send(
        client,
        base,
        &host,
        "POST",
        "/api/v1/agent/enroll",
        body,
        None,
    )
    .await?
    .json()
    .await?;
    host.id = answer.host_id;
    Ok(host)
}

async fn checkin(
    client: &reqwest::Client,
    base: &str,
    host: &Host,
) -> anyhow::Result<CheckinResponse> {
    let body = serde_json::to_vec(&CheckinRequest {
        protocol: PROTOCOL_VERSION,
        facts: host.facts.clone(),
        inventory_digest: (!host.digest.is_empty()).then(|| host.digest.clone()),
        ..Default::default()
    })?;
    Ok(send(
        client,
        base,
        host,
        "POST",
        "/api/v1/agent/checkin",
        body,
        None,
    )
    .await?
    .json()
    .await?)
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    mut host: Host,
    packages: Vec<InstalledPackage>,
    bytes: &AtomicUsize,
) -> anyhow::Result<Host> {
    if !checkin(client, base, &host).await?.upload_inventory {
        bail!("the server did not ask {} for its inventory", host.id);
    }
    let digest = inventory_digest(&packages);
    let json = serde_json::to_vec(&InventoryUpload {
        digest: digest.clone(),
        packages,
    })?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &json)?;
    let body = gz.finish()?;
    bytes.fetch_add(body.len(), Ordering::Relaxed);
    send(
        client,
        base,
        &host,
        "PUT",
        "/api/v1/agent/inventory",
        body,
        Some("gzip"),
    )
    .await?;
    host.digest = digest;
    Ok(host)
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    host: &Host,
    method: &str,
    path: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client
        .request(method.parse()?, format!("{base}{path}"))
        .header("content-type", "application/json");
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    for (name, value) in sign(host, method, path, &body) {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "{method} {path}: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(response)
}

fn queue_rows(queue: &Value) -> usize {
    queue
        .as_array()
        .or_else(|| queue["awaiting"].as_array())
        .map_or(0, Vec::len)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Open file descriptors of a process (its sockets, among others).
fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(fs_err::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}
