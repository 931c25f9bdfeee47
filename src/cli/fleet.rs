//! Fleet commands: enrollment tokens, assignment rules, commands and pokes, the fleet queue
//! (`pending`, `approve`, `decline`).

use super::admin_client::{date, encode, AdminClient};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Assignment rules: label selector → channel (and the replicas hosts try first).
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Package profiles: label selector → packages installed (at a version pattern) or absent.
    Profile {
        #[command(subcommand)]
        command: super::profiles::ProfileCommand,
    },
    /// Compliance with the package profiles, per profile and host, from the inventories.
    Compliance {
        #[arg(long)]
        selector: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Queue a command for one host or the hosts a selector matches.
    Command {
        #[arg(long, conflicts_with = "host", required_unless_present = "host")]
        selector: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// install, upgrade, remove, refresh-sources or report.
        kind: String,
        packages: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Commands, newest first: status, exit code, the end of the output.
    Commands {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make the hosts a selector matches check in now ("" for every host).
    Poke {
        selector: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Updates awaiting approval (and available now), grouped by package and versions.
    Pending {
        #[arg(long)]
        selector: Option<String>,
        /// Name the hosts each update is pending on (approved but not installed: "available").
        #[arg(long)]
        hosts: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve versions: a selective promotion into the channel from the one it promotes from.
    Approve {
        #[arg(long)]
        channel: String,
        /// name=version, as `fleet pending` shows them.
        #[arg(required = true)]
        packages: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Decline versions: hidden from the queue until a newer one appears.
    Decline {
        #[arg(long)]
        channel: String,
        /// name=version (or name:arch=version).
        #[arg(required = true)]
        packages: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Labels given to every host enrolled with it (k=v).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How many hosts may enroll with it (default: any number).
        #[arg(long)]
        uses: Option<i64>,
        /// How long it is valid (`7d`, `12h`).
        #[arg(long)]
        expires: Option<String>,
        /// Hosts enrolled with it wait in `pending` until `aptgate host accept`.
        #[arg(long)]
        manual_approval: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    List,
    Revoke {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule: hosts whose labels match the selector use the channel.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        channel: String,
        /// A replica's base URL (`http://replica-berlin.example.org:8080`); repeat for more.
        /// Hosts try them in this order, then this server (fleet.public_url).
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Breaks ties between equally specific rules (higher wins).
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Have agents move the host's other apt sources out of the way (reversibly).
        #[arg(long)]
        disable_other_sources: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    List,
    /// Replace a rule's mirrors (no --mirror: this server only); its hosts rewrite their
    /// sources at once, staying assigned.
    Mirrors {
        name: String,
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    Remove {
        name: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn run(api: &AdminClient, command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Token { command } => token(api, command).await?,
        FleetCommand::Rule { command } => rule(api, command).await?,
        FleetCommand::Profile { command } => super::profiles::profile(api, command).await?,
        FleetCommand::Compliance { selector, json } => {
            super::profiles::compliance(api, selector, json).await?
        }
        FleetCommand::Command {
            selector,
            host,
            kind,
            packages,
            comment,
        } => {
            let answer: Value = api
                .post(
                    "fleet/commands",
                    json!({"selector": selector, "host": host, "kind": kind,
                           "packages": packages, "comment": comment}),
                )
                .await?;
            let queued = answer["queued"].as_array().map_or(0, Vec::len);
            println!("queued {kind} for {queued} host(s)");
        }
        FleetCommand::Commands { host, json } => {
            let path = match &host {
                Some(h) => format!("fleet/commands?host={}", encode(h)),
                None => "fleet/commands".to_owned(),
            };
            let commands: Vec<Value> = api.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&commands)?);
                return Ok(());
            }
            for c in &commands {
                let exit = c["exit_code"]
                    .as_i64()
                    .map_or("-".into(), |e| e.to_string());
                println!(
                    "#{:<6} {}  {:<18} {:<16} {:<7} exit {:<4} {}",
                    c["id"],
                    date(c["created_at"].as_i64().unwrap_or(0)),
                    c["host"].as_str().unwrap_or(""),
                    c["kind"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    exit,
                    packages_text(&c["packages"]),
                );
                if let Some(out) = c["output"].as_str().filter(|o| !o.is_empty()) {
                    for line in tail(out, 5) {
                        println!("         | {line}");
                    }
                }
            }
        }
        FleetCommand::Poke { selector, comment } => {
            let answer: Value = api
                .post(
                    "fleet/poke",
                    json!({"selector": selector, "comment": comment}),
                )
                .await?;
            let n = answer["poked"].as_array().map_or(0, Vec::len);
            println!("poked {n} host(s): they check in within seconds");
        }
        FleetCommand::Pending {
            selector,
            hosts,
            json,
        } => {
            let mut path = match &selector {
                Some(s) => format!("fleet/pending?selector={}", encode(s)),
                None => "fleet/pending?".to_owned(),
            };
            if hosts {
                path.push_str("&hosts=true");
            }
            let queue: Value = api.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&queue)?);
            } else {
                print_queue(&queue);
            }
        }
        FleetCommand::Approve {
            channel,
            packages,
            comment,
        } => {
            let outcome: Value = api
                .post(
                    "fleet/approve",
                    json!({"channel": channel, "packages": packages, "comment": comment}),
                )
                .await?;
            println!(
                "approved {} into {channel}: now at {}",
                packages.join(" "),
                outcome["to_snapshot"].as_str().unwrap_or("")
            );
        }
        FleetCommand::Decline {
            channel,
            packages,
            comment,
        } => {
            let _: Value = api
                .post(
                    "fleet/decline",
                    json!({"channel": channel, "packages": packages, "comment": comment}),
                )
                .await?;
            println!("declined {} for {channel}", packages.join(" "));
        }
    }
    Ok(())
}

async fn token(api: &AdminClient, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            labels,
            uses,
            expires,
            manual_approval,
            comment,
        } => {
            let mut map = serde_json::Map::new();
            for l in &labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("invalid label {l:?}\nhint: write labels as key=value")
                })?;
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let answer: Value = api
                .post(
                    "fleet/tokens",
                    json!({"labels": map, "uses": uses, "expires": expires,
                           "manual_approval": manual_approval, "comment": comment}),
                )
                .await?;
            println!("{}", answer["token"].as_str().unwrap_or(""));
            eprintln!(
                "token {} created; the secret above is shown only now\nenroll a host with: \
                 aptgate-agent enroll --server URL --token TOKEN",
                answer["id"].as_str().unwrap_or("")
            );
        }
        TokenCommand::List => {
            let tokens: Vec<Value> = api.get("fleet/tokens").await?;
            println!(
                "{:<10}  {:<20}  {:>9}  {:<20}  {:<7}  {:<8}  LABELS",
                "ID", "CREATED", "USES LEFT", "EXPIRES", "MANUAL", "REVOKED"
            );
            for t in &tokens {
                println!(
                    "{:<10}  {:<20}  {:>9}  {:<20}  {:<7}  {:<8}  {}",
                    t["id"].as_str().unwrap_or(""),
                    date(t["created_at"].as_i64().unwrap_or(0)),
                    t["uses_left"]
                        .as_i64()
                        .map_or("any".into(), |u| u.to_string()),
                    t["expires_at"].as_i64().map_or("never".into(), date),
                    yes_no(&t["manual_approval"]),
                    yes_no(&t["revoked"]),
                    labels_text(&t["labels"]),
                );
            }
        }
        TokenCommand::Revoke { id, comment } => {
            let _: Value = api
                .post(
                    &format!("fleet/tokens/{}/revoke", encode(&id)),
                    json!({"comment": comment}),
                )
                .await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}

/// The server's `warnings` (a mirror that defeats the fallback), on stderr.
fn print_warnings(answer: &Value) {
    for warning in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
}

async fn rule(api: &AdminClient, command: RuleCommand) -> anyhow::Result<()> {
    match command {
        RuleCommand::Add {
            name,
            selector,
            channel,
            mirrors,
            priority,
            disable_other_sources,
            comment,
        } => {
            let answer: Value = api
                .post(
                    "fleet/rules",
                    json!({"name": name, "selector": selector, "channel": channel,
                           "mirrors": mirrors, "priority": priority,
                           "disable_other_sources": disable_other_sources, "comment": comment}),
                )
                .await?;
            println!(
                "rule {name}: {} → {channel}",
                if selector.is_empty() {
                    "(every host)"
                } else {
                    &selector
                }
            );
            print_warnings(&answer);
        }
        RuleCommand::List => {
            let rules: Vec<Value> = api.get("fleet/rules").await?;
            println!(
                "{:<16}  {:<28}  {:<12}  {:>8}  {:<6}  MIRRORS",
                "NAME", "SELECTOR", "CHANNEL", "PRIORITY", "FROM"
            );
            for r in &rules {
                println!(
                    "{:<16}  {:<28}  {:<12}  {:>8}  {:<6}  {}",
                    r["name"].as_str().unwrap_or(""),
                    r["selector"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("(every host)"),
                    r["channel"].as_str().unwrap_or(""),
                    r["priority"],
                    r["origin"].as_str().unwrap_or(""),
                    mirrors_text(&r["mirrors"]),
                );
            }
        }
        RuleCommand::Mirrors {
            name,
            mirrors,
            comment,
        } => {
            let answer: Value = api
                .call(
                    reqwest::Method::PUT,
                    &format!("fleet/rules/{}/mirrors", encode(&name)),
                    Some(json!({"mirrors": mirrors, "comment": comment})),
                )
                .await?;
            if mirrors.is_empty() {
                println!("rule {name}: hosts fetch from this server only");
            } else {
                println!(
                    "rule {name}: hosts try {}, then this server",
                    mirrors.join(", ")
                );
            }
            print_warnings(&answer);
        }
        RuleCommand::Remove { name, comment } => {
            let mut path = format!("fleet/rules/{}", encode(&name));
            if let Some(c) = &comment {
                path.push_str(&format!("?comment={}", encode(c)));
            }
            let _: Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            println!("removed rule {name}");
        }
    }
    Ok(())
}

/// `a, b` for a rule's mirrors, `-` for none.
fn mirrors_text(mirrors: &Value) -> String {
    let list: Vec<&str> = mirrors
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

/// Masif Upgrader's view: `perl  23 hosts  5.36.0-7 → 5.36.0-7+deb12u1`.
fn print_queue(queue: &Value) {
    let groups = |k: &str| queue[k].as_array().cloned().unwrap_or_default();
    let (awaiting, available) = (groups("awaiting"), groups("available"));
    let width = awaiting
        .iter()
        .chain(&available)
        .filter_map(|g| g["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    println!("awaiting approval:");
    if awaiting.is_empty() {
        println!("  nothing");
    }
    for g in &awaiting {
        println!("  {}", group_line(g, width, true));
        print_hosts(g);
    }
    println!("available now:");
    if available.is_empty() {
        println!("  nothing");
    }
    for g in &available {
        println!("  {}", group_line(g, width, false));
        print_hosts(g);
    }
    println!(
        "{} host(s); {} unassigned, {} without an inventory yet",
        queue["hosts"], queue["unassigned"], queue["without_inventory"]
    );
}

/// The hosts of a queue group, when the server named them (`--hosts`).
fn print_hosts(g: &Value) {
    let Some(on) = g["on"].as_array() else {
        return;
    };
    for h in on {
        println!(
            "      {} {}",
            h["id"].as_str().unwrap_or(""),
            h["hostname"].as_str().unwrap_or("")
        );
    }
    let more = g["hosts"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(on.len() as u64);
    if more > 0 {
        println!("      … and {more} more");
    }
}

fn group_line(g: &Value, width: usize, with_channel: bool) -> String {
    let hosts = g["hosts"].as_u64().unwrap_or(0);
    let mut line = format!(
        "{:<width$}  {:>3} host{}  {} → {}",
        g["name"].as_str().unwrap_or(""),
        hosts,
        if hosts == 1 { " " } else { "s" },
        g["from"].as_str().unwrap_or(""),
        g["to"].as_str().unwrap_or(""),
    );
    if with_channel {
        line.push_str(&format!("  (into {})", g["channel"].as_str().unwrap_or("")));
    }
    line
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// `k=v,k2=v2` from a JSON object of labels.
pub(super) fn labels_text(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn packages_text(packages: &Value) -> String {
    packages
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
