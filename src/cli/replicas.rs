//! `aptgate replica …`: set a server up as a replica (`init`, local), and on the canonical
//! server create replica tokens and read the replica table.

use super::admin_client::{date, AdminClient};
use anyhow::Context;
use aptgate_config::{FetchPolicy, ReplicaConfig};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand)]
pub enum ReplicaCommand {
    /// Make this server a replica of PARENT: writes [replica] into the configuration file
    /// (--config, else /etc/aptgate/aptgate.toml). `aptgate serve` then follows the parent.
    Init {
        /// The parent's URL (the canonical server, or another replica).
        #[arg(long)]
        parent: url::Url,
        /// The canonical server's signing key fingerprint (`aptgate key list` there).
        #[arg(long)]
        fingerprint: String,
        /// The token from `aptgate replica token create NAME` on the canonical server.
        #[arg(long)]
        token: String,
        /// This replica's name in hop paths and reports.
        #[arg(long, default_value = "replica")]
        name: String,
        /// Carry only these channels (repeatable; default: every channel).
        #[arg(long = "channel")]
        channels: Vec<aptgate_config::ChannelName>,
        /// Channels whose every package is fetched before they switch (repeatable; the
        /// others are `on_demand`).
        #[arg(long = "immediate")]
        immediate: Vec<String>,
    },
    /// Replica tokens (on the canonical server).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Every replica: state (current, behind, silent, expiring), lag, seq, what it lacks.
    List {
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token for replica NAME; the secret is printed once.
    Create {
        name: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Revoke replica NAME's token: its next request is refused.
    Revoke {
        name: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `replica init`: writes `[replica]` into `file`, keeping the rest of it.
pub fn init(file: &Path, command: ReplicaCommand) -> anyhow::Result<()> {
    let ReplicaCommand::Init {
        parent,
        fingerprint,
        token,
        name,
        channels,
        immediate,
    } = command
    else {
        unreachable!("only init runs locally")
    };
    let fingerprint: String = fingerprint
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if fingerprint.len() != 40 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
        anyhow::bail!(
            "{fingerprint:?} is not an OpenPGP v4 fingerprint (40 hex digits)\n\
             hint: `aptgate key list` on the canonical server prints it"
        );
    }
    let replica = ReplicaConfig {
        parent,
        fingerprint,
        token,
        name,
        channels,
        policy: immediate
            .into_iter()
            .map(|c| (c, FetchPolicy::Immediate))
            .collect(),
        wait: std::time::Duration::from_secs(30),
        retry_max: std::time::Duration::from_secs(300),
        expiry_warning: std::time::Duration::from_secs(48 * 3600),
        child_token_sha256: Vec::new(),
    };
    let mut table: toml::Table = match fs_err::read_to_string(file) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{} is not valid TOML", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(e.into()),
    };
    table.insert("replica".into(), toml::Value::try_from(&replica)?);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir)?;
    }
    // The token is a secret: the file is written 0600.
    aptgate_agent::files::write_atomic(file, toml::to_string(&table)?.as_bytes(), 0o600, ".tmp")
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "wrote [replica] to {}: `aptgate serve` now follows {}",
        file.display(),
        replica.parent
    );
    Ok(())
}

pub async fn run(api: &AdminClient, command: ReplicaCommand) -> anyhow::Result<()> {
    match command {
        ReplicaCommand::Token {
            command: TokenCommand::Create { name, comment },
        } => {
            let created: serde_json::Value = api
                .post(
                    "replicas/tokens",
                    serde_json::json!({ "name": name, "comment": comment }),
                )
                .await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "replica token for {name} (shown once). On the replica:\n  aptgate replica init \
                 --parent URL_OF_THIS_SERVER --fingerprint FINGERPRINT --token TOKEN --name {name}"
            );
        }
        ReplicaCommand::Token {
            command: TokenCommand::Revoke { name, comment },
        } => {
            let _: serde_json::Value = api
                .post(
                    &format!("replicas/{}/revoke", super::admin_client::encode(&name)),
                    serde_json::json!({ "comment": comment }),
                )
                .await?;
            eprintln!("revoked the token of replica {name}");
        }
        ReplicaCommand::List { json } => {
            let list: serde_json::Value = api.get("replicas").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<15} {:>8} {:>6} {:>8} {:<20} LAST ERROR",
                "REPLICA", "STATE", "LAG(s)", "SEQ", "MISSING", "LAST REPORT"
            );
            for r in list["replicas"].as_array().into_iter().flatten() {
                let report = &r["report"];
                println!(
                    "{:<20} {:<15} {:>8} {:>6} {:>8} {:<20} {}",
                    r["name"].as_str().unwrap_or_default(),
                    r["state"].as_str().unwrap_or_default(),
                    r["lag_seconds"].as_i64().unwrap_or_default(),
                    report["seq_applied"]
                        .as_i64()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    report["blobs_missing"].as_u64().unwrap_or_default(),
                    r["last_report_at"]
                        .as_i64()
                        .map(date)
                        .unwrap_or_else(|| "never".into()),
                    report["last_error"]["message"]
                        .as_str()
                        .map(|m| m.lines().next().unwrap_or_default())
                        .unwrap_or("-"),
                );
            }
        }
        ReplicaCommand::Init { .. } => unreachable!("handled locally"),
    }
    Ok(())
}
