//! `aptgate rollout …`: rollout groups, their waves, pause and resume, releasing a host's slot.

use super::admin_client::{date, encode, AdminClient};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// A group's wave: settings, window, hosts done, in progress, failed, stuck, waiting.
    Status {
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Free the slot a host holds (failed, stuck or in progress); its agent's next report is
    /// refused.
    Release {
        host: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Grant no new leases in a group (holders go on).
    Pause {
        group: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Grant leases again and start a new wave (earlier failures no longer count).
    Resume {
        group: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Rollout groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group (configured groups live in `[[rollout.groups]]`).
    Create {
        name: String,
        /// Label selector, k=v,k2=v2 ("" for every host); a host is in the first group, by
        /// name, that matches it.
        #[arg(long, default_value = "")]
        selector: String,
        /// Hosts upgrading at once: a number, or a percentage of the group ("25%").
        #[arg(long, default_value = "1")]
        max_concurrent: String,
        /// The wave stops once this many hosts failed.
        #[arg(long, default_value_t = 1)]
        failure_budget: u32,
        /// A maintenance window, "DAYS HH:MM-HH:MM [TIME_ZONE]" ("mon-fri 01:00-05:00
        /// Europe/Berlin"); repeatable; none: always open.
        #[arg(long = "window")]
        windows: Vec<String>,
        /// Seconds of silence after which a holder is stuck.
        #[arg(long, default_value_t = 300)]
        heartbeat_deadline: u64,
        /// Extra seconds of silence allowed while a holder reboots.
        #[arg(long, default_value_t = 900)]
        reboot_grace: u64,
        /// Release stuck holders' slots on their own.
        #[arg(long)]
        expire_stuck: bool,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a group created through the API (no slot may be held).
    Delete {
        name: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `mon-fri 01:00-05:00 Europe/Berlin` → the API's window object.
fn parse_window(text: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (days, hours, tz) = match parts.as_slice() {
        [days, hours] => (*days, *hours, "UTC"),
        [days, hours, tz] => (*days, *hours, *tz),
        _ => anyhow::bail!(
            "invalid window {text:?}\nhint: \"DAYS HH:MM-HH:MM [TIME_ZONE]\", e.g. \"mon-fri \
             01:00-05:00 Europe/Berlin\""
        ),
    };
    let Some((start, end)) = hours.split_once('-') else {
        anyhow::bail!("invalid window hours {hours:?}\nhint: HH:MM-HH:MM, e.g. 01:00-05:00");
    };
    Ok(json!({"days": days, "start": start, "end": end, "time_zone": tz}))
}

fn window_text(w: &Value) -> String {
    format!(
        "{} {}-{} {}",
        w["days"].as_str().unwrap_or(""),
        w["start"].as_str().unwrap_or(""),
        w["end"].as_str().unwrap_or(""),
        w["time_zone"].as_str().unwrap_or("")
    )
}

fn settings_text(g: &Value) -> String {
    let windows: Vec<String> = g["windows"]
        .as_array()
        .map(|ws| ws.iter().map(window_text).collect())
        .unwrap_or_default();
    let selector = g["selector"].as_str().unwrap_or("");
    format!(
        "selector {}, max_concurrent {}, failure budget {}, windows {}, heartbeat deadline {} s, \
         reboot grace {} s, stuck holders {}{}",
        if selector.is_empty() {
            "(every host)"
        } else {
            selector
        },
        g["max_concurrent"],
        g["failure_budget"],
        if windows.is_empty() {
            "(always open)".to_owned()
        } else {
            windows.join("; ")
        },
        g["heartbeat_deadline_secs"],
        g["reboot_grace_secs"],
        if g["expire_stuck"] == true {
            "expire"
        } else {
            "keep their slot"
        },
        if g["paused"] == true { ", PAUSED" } else { "" },
    )
}

fn holder_line(h: &Value, when: &str) -> String {
    let mut line = format!(
        "  {} ({}) {} {} {}",
        h["hostname"].as_str().unwrap_or("?"),
        h["host_id"].as_str().unwrap_or("?"),
        h["state"].as_str().unwrap_or("?"),
        when,
        date(h["since"].as_i64().unwrap_or(0)),
    );
    if let Some(step) = h["step"].as_str().filter(|s| !s.is_empty()) {
        line.push_str(&format!(", step {step}"));
    }
    if let Some(by) = h["released_by"].as_str().filter(|b| *b != "agent") {
        line.push_str(&format!(", released by {by}"));
    }
    if let Some(detail) = h["detail"].as_str() {
        line.push_str(&format!(": {}", detail.lines().next().unwrap_or("")));
    }
    line
}

fn print_status(s: &Value) {
    let g = &s["group"];
    println!(
        "group {}: {} hosts, {} slots\n  {}",
        g["name"].as_str().unwrap_or("?"),
        s["hosts"],
        s["slots"],
        settings_text(g)
    );
    let window = if s["window_open"] == true {
        "open".to_owned()
    } else {
        match s["window_opens_at"].as_i64() {
            Some(at) => format!("closed, opens {}", date(at)),
            None => "closed".to_owned(),
        }
    };
    println!(
        "window {window}; wave since {}: {} failed of a budget of {}{}",
        date(g["wave_started_at"].as_i64().unwrap_or(0)),
        s["failures_in_wave"],
        g["failure_budget"],
        if s["failure_budget_spent"] == true {
            " — STOPPED (release the failed hosts, then `aptgate rollout resume`)"
        } else {
            ""
        }
    );
    for (list, title, when) in [
        ("done", "done in this wave", "at"),
        ("in_progress", "in progress", "since"),
        ("failed", "failed (holding their slot)", "since"),
        ("stuck", "stuck (silent, holding their slot)", "since"),
        ("cleared", "released by an admin or the server", "at"),
    ] {
        let items = s[list].as_array().cloned().unwrap_or_default();
        println!("{title}: {}", items.len());
        for h in &items {
            println!("{}", holder_line(h, when));
        }
    }
    let waiting = s["waiting"].as_array().cloned().unwrap_or_default();
    println!("waiting: {}", waiting.len());
    for w in &waiting {
        println!(
            "  {}. {} ({}) since {}",
            w["position"],
            w["hostname"].as_str().unwrap_or("?"),
            w["host_id"].as_str().unwrap_or("?"),
            date(w["first_asked_at"].as_i64().unwrap_or(0))
        );
    }
}

pub async fn run(api: &AdminClient, command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Status { group, json } => {
            let status: Value = api
                .get(&format!("rollout/groups/{}", encode(&group)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        RolloutCommand::Release { host, comment } => {
            let done: Value = api
                .post(
                    &format!("rollout/hosts/{}/release", encode(&host)),
                    json!({"comment": comment}),
                )
                .await?;
            for r in done["released"].as_array().into_iter().flatten() {
                println!(
                    "released {host} in group {} (was {}, fence {})",
                    r["group"].as_str().unwrap_or("?"),
                    r["was"].as_str().unwrap_or("?"),
                    r["fence"]
                );
            }
        }
        RolloutCommand::Pause { group, comment } => pause(api, &group, comment, true).await?,
        RolloutCommand::Resume { group, comment } => pause(api, &group, comment, false).await?,
        RolloutCommand::Group { command } => group(api, command).await?,
    }
    Ok(())
}

async fn pause(
    api: &AdminClient,
    group: &str,
    comment: Option<String>,
    paused: bool,
) -> anyhow::Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    let _: Value = api
        .post(
            &format!("rollout/groups/{}/{verb}", encode(group)),
            json!({"comment": comment}),
        )
        .await?;
    if paused {
        println!("group {group} paused: no new leases (holders go on)");
    } else {
        println!("group {group} resumed: a new wave begins");
    }
    Ok(())
}

async fn group(api: &AdminClient, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create {
            name,
            selector,
            max_concurrent,
            failure_budget,
            windows,
            heartbeat_deadline,
            reboot_grace,
            expire_stuck,
            paused,
            comment,
        } => {
            let windows = windows
                .iter()
                .map(|w| parse_window(w))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // A number stays a number in the API; "25%" is a string.
            let max: Value = max_concurrent
                .parse::<u64>()
                .map_or_else(|_| json!(max_concurrent), |n| json!(n));
            let _: Value = api
                .post(
                    "rollout/groups",
                    json!({"name": name, "selector": selector, "max_concurrent": max,
                           "failure_budget": failure_budget, "windows": windows,
                           "heartbeat_deadline_secs": heartbeat_deadline,
                           "reboot_grace_secs": reboot_grace, "expire_stuck": expire_stuck,
                           "paused": paused, "comment": comment}),
                )
                .await?;
            println!("group {name} created");
        }
        GroupCommand::List { json } => {
            let groups: Vec<Value> = api.get("rollout/groups").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
                return Ok(());
            }
            if groups.is_empty() {
                println!(
                    "no rollout groups\nhint: `aptgate rollout group create NAME --selector k=v`"
                );
            }
            for g in &groups {
                println!(
                    "{} ({}): {}",
                    g["name"].as_str().unwrap_or("?"),
                    g["origin"].as_str().unwrap_or("?"),
                    settings_text(g)
                );
            }
        }
        GroupCommand::Delete { name, comment } => {
            let mut path = format!("rollout/groups/{}", encode(&name));
            if let Some(c) = comment {
                path.push_str(&format!("?comment={}", encode(&c)));
            }
            let _: Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            println!("group {name} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_days_hours_and_an_optional_time_zone() {
        assert_eq!(
            parse_window("mon-fri 01:00-05:00 Europe/Berlin").unwrap(),
            json!({"days": "mon-fri", "start": "01:00", "end": "05:00", "time_zone": "Europe/Berlin"})
        );
        assert_eq!(parse_window("* 22:00-02:00").unwrap()["time_zone"], "UTC");
        assert!(parse_window("mon-fri").is_err());
        assert!(parse_window("mon-fri 01:00").is_err());
    }
}
