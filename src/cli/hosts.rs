//! Host commands: `host list`, `host show`, `host revoke`, `host accept`, `host label`.

use super::admin_client::{date, encode, AdminClient};
use super::fleet::labels_text;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum HostCommand {
    /// Enrolled hosts: status, flags, channel (or unassigned), last check-in, pending updates.
    List {
        /// Only hosts whose labels match (`site=berlin,role=web`).
        #[arg(long)]
        selector: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One host: labels and where they come from, channel, mirror, facts, apt lists, reboot,
    /// inventory, pending updates, open commands.
    Show {
        host: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a host: its next request is refused.
    Revoke {
        host: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Accept a pending host (manual-approval token, or a flagged clone).
    Accept {
        host: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Set admin labels (`k=v`; they win over the agent's) or remove them (`--remove k`).
    Label {
        host: String,
        labels: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn run(api: &AdminClient, command: HostCommand) -> anyhow::Result<()> {
    match command {
        HostCommand::List { selector, json } => {
            let path = match &selector {
                Some(s) => format!("fleet/hosts?selector={}", encode(s)),
                None => "fleet/hosts".to_owned(),
            };
            let hosts: Vec<Value> = api.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
                return Ok(());
            }
            println!(
                "{:<18}  {:<20}  {:<8}  {:<12}  {:<20}  {:>8}  {:>9}  FLAGS",
                "ID", "HOSTNAME", "STATUS", "CHANNEL", "LAST SEEN", "AWAITING", "AVAILABLE"
            );
            for h in &hosts {
                let count = |k: &str| h[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
                println!(
                    "{:<18}  {:<20}  {:<8}  {:<12}  {:<20}  {:>8}  {:>9}  {}",
                    h["id"].as_str().unwrap_or(""),
                    h["hostname"].as_str().unwrap_or(""),
                    h["status"].as_str().unwrap_or(""),
                    h["channel"].as_str().unwrap_or("unassigned"),
                    date(h["last_seen"].as_i64().unwrap_or(0)),
                    count("awaiting"),
                    count("available"),
                    h["flagged"].as_str().unwrap_or(""),
                );
            }
        }
        HostCommand::Show { host, json } => {
            let h: Value = api.get(&format!("fleet/hosts/{}", encode(&host))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                print_host(&h);
            }
        }
        HostCommand::Revoke { host, comment } => {
            let _: Value = api
                .post(
                    &format!("fleet/hosts/{}/revoke", encode(&host)),
                    json!({"comment": comment}),
                )
                .await?;
            println!("revoked {host}: its next request is refused");
        }
        HostCommand::Accept { host, comment } => {
            let _: Value = api
                .post(
                    &format!("fleet/hosts/{}/accept", encode(&host)),
                    json!({"comment": comment}),
                )
                .await?;
            println!("accepted {host}");
        }
        HostCommand::Label {
            host,
            labels,
            remove,
            comment,
        } => {
            let answer: Value = api
                .post(
                    &format!("fleet/hosts/{}/labels", encode(&host)),
                    json!({"set": labels, "remove": remove, "comment": comment}),
                )
                .await?;
            println!("{host}: {}", labels_text(&answer["labels"]));
        }
    }
    Ok(())
}

fn print_host(h: &Value) {
    let s = |k: &str| h[k].as_str().unwrap_or("").to_owned();
    println!("host:          {} ({})", s("id"), s("hostname"));
    println!("status:        {}", s("status"));
    if let Some(flag) = h["flagged"].as_str() {
        println!("flagged:       {flag}");
    }
    println!("labels:");
    for l in h["labels"].as_array().into_iter().flatten() {
        println!(
            "  {}={} ({})",
            l["key"].as_str().unwrap_or(""),
            l["value"].as_str().unwrap_or(""),
            l["origin"].as_str().unwrap_or("")
        );
    }
    match h["channel"].as_str() {
        Some(c) => println!("channel:       {c} (rule {})", s("rule")),
        None => println!("channel:       unassigned"),
    }
    let mirrors: Vec<&str> = h["mirrors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !mirrors.is_empty() {
        println!("mirrors:       {} (in order)", mirrors.join(", "));
    }
    if let Some(url) = h["server_url"].as_str() {
        let then = if mirrors.is_empty() { "" } else { "then " };
        println!("server:        {then}{url}");
    }
    println!(
        "last seen:     {}",
        date(h["last_seen"].as_i64().unwrap_or(0))
    );
    println!("agent:         {}", s("agent_version"));
    println!("os:            {} (kernel {})", s("os"), s("kernel"));
    println!("apt lists:");
    for l in h["lists"].as_array().into_iter().flatten() {
        println!("  {}", l.as_str().unwrap_or(""));
    }
    let reboot = &h["reboot"];
    if reboot["needed"].as_bool() == Some(true) {
        let reasons: Vec<&str> = reboot["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("reboot:        needed ({})", reasons.join("; "));
    } else {
        println!("reboot:        not needed");
    }
    match h["inventory"]["packages"].as_i64() {
        Some(n) => println!("inventory:     {n} packages"),
        None => println!("inventory:     none yet"),
    }
    let pending = &h["pending"];
    let count = |k: &str| pending[k].as_array().map_or(0, Vec::len);
    println!(
        "pending:       {} awaiting approval, {} available now",
        count("awaiting"),
        count("available")
    );
    for u in pending["awaiting"].as_array().into_iter().flatten() {
        println!(
            "  awaiting  {} {} → {}",
            u["name"].as_str().unwrap_or(""),
            u["from"].as_str().unwrap_or(""),
            u["to"].as_str().unwrap_or("")
        );
    }
    let commands = h["open_commands"].as_array().cloned().unwrap_or_default();
    println!("commands:      {} open", commands.len());
    for c in &commands {
        println!(
            "  #{} {} {} ({})",
            c["id"],
            c["kind"].as_str().unwrap_or(""),
            c["packages"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or("")
        );
    }
}
