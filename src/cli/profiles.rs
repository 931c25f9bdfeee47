//! `aptgate fleet profile …` (package profiles: desired packages by label) and
//! `aptgate fleet compliance`.

use super::admin_client::{encode, AdminClient};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Add a profile: the hosts the selector matches get these packages installed or removed.
    Add {
        name: String,
        /// Label selector, k=v,k2=v2 ("" for every host).
        #[arg(long, default_value = "")]
        selector: String,
        /// A package to have installed: NAME, NAME=VERSION, or NAME=GLOB (2.10-*); repeatable.
        #[arg(long = "install")]
        install: Vec<String>,
        /// A package to have removed; repeatable.
        #[arg(long = "absent")]
        absent: Vec<String>,
        /// Where profiles disagree on a package, the higher priority wins (equal: a conflict).
        #[arg(long, default_value_t = 0)]
        priority: i64,
        #[arg(long)]
        comment: Option<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a profile (what it installed stays installed).
    Remove {
        name: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn profile(api: &AdminClient, command: ProfileCommand) -> anyhow::Result<()> {
    match command {
        ProfileCommand::Add {
            name,
            selector,
            install,
            absent,
            priority,
            comment,
        } => {
            let mut packages: Vec<Value> = install
                .iter()
                .map(|p| match p.split_once('=') {
                    Some((n, v)) => json!({"name": n, "state": "present", "version": v}),
                    None => json!({"name": p, "state": "present"}),
                })
                .collect();
            packages.extend(absent.iter().map(|p| json!({"name": p, "state": "absent"})));
            let _: Value = api
                .post(
                    "fleet/profiles",
                    json!({"name": name, "selector": selector, "packages": packages,
                           "priority": priority, "comment": comment}),
                )
                .await?;
            println!(
                "profile {name}: {} → {}",
                every_host(&selector),
                packages
                    .iter()
                    .map(package_text)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        ProfileCommand::List { json } => {
            let profiles: Vec<Value> = api.get("fleet/profiles").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&profiles)?);
                return Ok(());
            }
            println!(
                "{:<16}  {:<24}  {:>8}  PACKAGES",
                "NAME", "SELECTOR", "PRIORITY"
            );
            for p in &profiles {
                let packages: Vec<String> = p["packages"]
                    .as_array()
                    .map(|a| a.iter().map(package_text).collect())
                    .unwrap_or_default();
                println!(
                    "{:<16}  {:<24}  {:>8}  {}",
                    p["name"].as_str().unwrap_or(""),
                    every_host(p["selector"].as_str().unwrap_or("")),
                    p["priority"],
                    packages.join(" ")
                );
            }
        }
        ProfileCommand::Remove { name, comment } => {
            let mut path = format!("fleet/profiles/{}", encode(&name));
            if let Some(c) = &comment {
                path.push_str(&format!("?comment={}", encode(c)));
            }
            let _: Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            println!("removed profile {name}");
        }
    }
    Ok(())
}

pub async fn compliance(
    api: &AdminClient,
    selector: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let path = match &selector {
        Some(s) => format!("fleet/compliance?selector={}", encode(s)),
        None => "fleet/compliance".to_owned(),
    };
    let report: Value = api.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let profiles = report["profiles"].as_array().cloned().unwrap_or_default();
    if profiles.is_empty() {
        println!("no profiles (add one with `aptgate fleet profile add`)");
    }
    for p in &profiles {
        println!(
            "{} ({}): {} compliant, {} not, {} without an inventory",
            p["name"].as_str().unwrap_or(""),
            every_host(p["selector"].as_str().unwrap_or("")),
            p["compliant"],
            p["not_compliant"],
            p["without_inventory"]
        );
        for h in p["hosts"].as_array().into_iter().flatten() {
            let mark = match h["compliant"].as_bool() {
                Some(true) => "ok ",
                Some(false) => "NOT",
                None => " ? ",
            };
            println!(
                "  {mark} {} {}",
                h["host"].as_str().unwrap_or(""),
                h["hostname"].as_str().unwrap_or("")
            );
            for c in h["problems"].as_array().into_iter().flatten() {
                let detail = c["detail"].as_str().filter(|d| !d.is_empty());
                println!(
                    "      {}: {} (wanted {}){}",
                    c["package"].as_str().unwrap_or(""),
                    c["state"].as_str().unwrap_or("").replace('_', " "),
                    c["wanted"].as_str().unwrap_or(""),
                    detail.map(|d| format!(", {d}")).unwrap_or_default()
                );
            }
            if let Some(e) = h["error"].as_str() {
                let last: Vec<&str> = e.lines().rev().take(3).collect();
                for line in last.into_iter().rev() {
                    println!("      | {line}");
                }
            }
        }
    }
    let uncovered = report["not_covered"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !uncovered.is_empty() {
        let names: Vec<String> = uncovered
            .iter()
            .map(|h| {
                format!(
                    "{} ({})",
                    h["host"].as_str().unwrap_or(""),
                    h["hostname"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!(
            "not covered by any profile: {} host(s): {}",
            uncovered.len(),
            names.join(", ")
        );
    }
    Ok(())
}

fn every_host(selector: &str) -> &str {
    if selector.is_empty() {
        "(every host)"
    } else {
        selector
    }
}

/// `+acme-agent`, `+hello=2.10-*`, `-telnet`.
fn package_text(p: &Value) -> String {
    let name = p["name"].as_str().unwrap_or("");
    match (p["state"].as_str(), p["version"].as_str()) {
        (Some("absent"), _) => format!("-{name}"),
        (_, Some(v)) => format!("+{name}={v}"),
        _ => format!("+{name}"),
    }
}
