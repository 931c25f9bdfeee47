//! Channel commands: `channel …`, `promote`, `publish`, `auto-approve`, `hold`, `unhold` and
//! `rollback`.

use super::admin_client::{date, encode, AdminClient};
use super::impact::{plan, print_diff, print_impact, print_plan_notes};
use aptgate_channels::catalog::{ChannelState, HistoryEntry};
use aptgate_channels::verify::VerifyReport;
use aptgate_channels::MoveOutcome;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ChannelCommand {
    /// Every channel and where it points.
    List,
    /// Create a channel (the same rules as a [[channels]] entry in the configuration).
    Create {
        name: String,
        /// Follow sources (`--follows debian,inhouse`): every sync that snapshots one moves
        /// this channel (to the merge of their latest snapshots when several).
        #[arg(long, value_delimiter = ',')]
        follows: Vec<String>,
        /// The channel promotions come from.
        #[arg(long)]
        promotes_from: Option<String>,
        /// How long a snapshot must have been in promotes_from (`72h`).
        #[arg(long)]
        min_soak: Option<String>,
        /// Promote versions first seen at least this long ago on their own (`7d`).
        #[arg(long)]
        auto_approve_after: Option<String>,
        /// Refuse `promote --only`.
        #[arg(long)]
        no_selective: bool,
        /// Suites to publish (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        suites: Vec<String>,
    },
    /// Where every package the channel publishes is: stored, only upstream, only at a
    /// fallback origin, or nowhere (exit status 1 if any is nowhere).
    Verify {
        channel: String,
        #[arg(long)]
        json: bool,
    },
    /// A channel's moves, newest first.
    History {
        channel: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// The commands that move a channel or change its holds.
#[derive(Subcommand)]
pub enum MoveCommand {
    /// Move a channel to the snapshot of the channel it promotes from.
    Promote {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Only these packages (comma-separated), with the dependencies the target lacks.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Why: recorded in the audit log.
        #[arg(long)]
        comment: Option<String>,
        /// Only say what would change, in the channel and on its hosts (from their
        /// inventories): nothing moves.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: the plan and its impact as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Point an entry channel (one without promotes_from) at a snapshot.
    Publish {
        snapshot: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Apply a channel's auto-approval rule now (serve does after each scheduled sync).
    AutoApprove { channel: String },
    /// Keep a channel's current version of a package across promotions.
    Hold {
        channel: String,
        package: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Release a hold.
    Unhold {
        channel: String,
        package: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Move a channel back to an earlier snapshot of its history.
    Rollback {
        channel: String,
        /// The snapshot (default: the one before the current).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn run(api: &AdminClient, command: ChannelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ChannelCommand::Verify { channel, json } => return verify(api, &channel, json).await,
        ChannelCommand::Create {
            name,
            follows,
            promotes_from,
            min_soak,
            auto_approve_after,
            no_selective,
            suites,
        } => {
            let mut body = serde_json::json!({
                "name": name, "suites": suites, "selective": !no_selective,
            });
            if !follows.is_empty() {
                body["follows"] = follows.into();
            }
            for (key, value) in [
                ("promotes_from", promotes_from),
                ("min_soak", min_soak),
                ("auto_approve_after", auto_approve_after),
            ] {
                if let Some(v) = value {
                    body[key] = v.into();
                }
            }
            let _: serde_json::Value = api.post("channels", body).await?;
            println!("created channel {name}");
        }
        ChannelCommand::List => {
            let list: Vec<ChannelState> = api.get("channels").await?;
            println!("{:<20} {:<40} {:>4} UPDATED", "CHANNEL", "SNAPSHOT", "GEN");
            for c in list {
                println!(
                    "{:<20} {:<40} {:>4} {}",
                    c.name,
                    c.snapshot_id.as_deref().unwrap_or("(unpublished)"),
                    c.generation,
                    date(c.updated_at)
                );
            }
        }
        ChannelCommand::History { channel, limit } => {
            let history: Vec<HistoryEntry> = api
                .get(&format!(
                    "channels/{}/history?limit={limit}",
                    encode(&channel)
                ))
                .await?;
            println!(
                "{:>4} {:<20} {:<9} {:<40} {:<12} COMMENT",
                "GEN", "AT", "ACTION", "SNAPSHOT", "ACTOR"
            );
            for h in history {
                println!(
                    "{:>4} {:<20} {:<9} {:<40} {:<12} {}",
                    h.generation,
                    date(h.at),
                    h.action.as_str(),
                    h.snapshot_id,
                    h.actor,
                    h.comment.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_move(api: &AdminClient, command: MoveCommand) -> anyhow::Result<()> {
    match command {
        MoveCommand::Promote {
            from,
            to,
            only,
            dry_run: true,
            json,
            ..
        } => {
            let planned = plan(
                api,
                serde_json::json!({"promote": {"from": from, "to": to, "only": only}}),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"plan": planned.plan, "impact": planned.impact})
                    )?
                );
            } else {
                let p = &planned.plan;
                let at = p.current.as_deref().unwrap_or("(unpublished)");
                if only.is_empty() {
                    println!(
                        "dry run, nothing moves: {to} would go from {at} to {from}'s snapshot {}",
                        p.snapshot
                    );
                } else {
                    println!(
                        "dry run, nothing moves: {to} ({at}) would take {} from {from}'s \
                         snapshot {}",
                        only.join(", "),
                        p.snapshot
                    );
                }
                print_diff(&p.diff);
                print_plan_notes(p);
                print_impact(&planned.impact);
            }
        }
        MoveCommand::Promote {
            from,
            to,
            only,
            comment,
            ..
        } => {
            let outcome: MoveOutcome = api
                .post(
                    "promote",
                    serde_json::json!({"from": from, "to": to, "only": only, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
        MoveCommand::Publish {
            snapshot,
            to,
            comment,
        } => {
            let outcome: MoveOutcome = api
                .post(
                    &format!("channels/{}/publish", encode(&to)),
                    serde_json::json!({"snapshot": snapshot, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
        MoveCommand::AutoApprove { channel } => {
            let outcome: Option<MoveOutcome> = api
                .post(
                    &format!("channels/{}/auto-approve", encode(&channel)),
                    serde_json::json!({}),
                )
                .await?;
            match outcome {
                Some(m) => print_move(&m),
                None => println!("{channel}: nothing old enough to auto-approve"),
            }
        }
        MoveCommand::Hold {
            channel,
            package,
            comment,
        } => {
            let changed: serde_json::Value = api
                .post(
                    &format!("channels/{}/holds", encode(&channel)),
                    serde_json::json!({"package": package, "comment": comment}),
                )
                .await?;
            if changed["changed"] == true {
                println!("{package} is now held in {channel}");
            } else {
                println!("{package} was already held in {channel}");
            }
        }
        MoveCommand::Unhold {
            channel,
            package,
            comment,
        } => {
            let mut path = format!("channels/{}/holds/{}", encode(&channel), encode(&package));
            if let Some(c) = comment {
                path.push_str(&format!("?comment={}", encode(&c)));
            }
            let changed: serde_json::Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            if changed["changed"] == true {
                println!("{package} is no longer held in {channel}");
            } else {
                println!("{package} was not held in {channel}");
            }
        }
        MoveCommand::Rollback {
            channel,
            to,
            comment,
        } => {
            let outcome: MoveOutcome = api
                .post(
                    &format!("channels/{}/rollback", encode(&channel)),
                    serde_json::json!({"to": to, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
    }
    Ok(())
}

fn print_move(m: &MoveOutcome) {
    println!(
        "{}: {} -> {} (generation {}): {} added, {} removed, {} upgraded, {} downgraded; {} packages fetched",
        m.channel,
        m.from_snapshot.as_deref().unwrap_or("(unpublished)"),
        m.to_snapshot,
        m.generation,
        m.diff.added,
        m.diff.removed,
        m.diff.upgraded,
        m.diff.downgraded,
        m.fetched
    );
}

async fn verify(api: &AdminClient, channel: &str, json: bool) -> anyhow::Result<ExitCode> {
    eprintln!("checking every package of {channel} (HEAD requests for what is not stored) ...");
    let report: VerifyReport = api
        .get(&format!("channels/{}/verify", encode(channel)))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: snapshot {}, {} packages: {} stored, {} only upstream, {} only at a fallback \
             origin, {} nowhere",
            report.channel,
            report.snapshot,
            report.packages,
            report.stored,
            report.only_upstream,
            report.only_fallback.len(),
            report.nowhere.len()
        );
        for p in &report.only_fallback {
            println!(
                "fallback  {} {} {}  {}",
                p.name, p.version, p.architecture, p.detail
            );
        }
        for p in &report.nowhere {
            println!(
                "NOWHERE   {} {} {}  {} ({})",
                p.name, p.version, p.architecture, p.filename, p.detail
            );
        }
        for r in &report.rescues_pending {
            println!(
                "rescue pending since {}: {} from {} ({} attempts): {}",
                date(r.first_failed),
                r.pool_path,
                r.source,
                r.attempts,
                r.error
            );
        }
        if !report.nowhere.is_empty() {
            println!(
                "hint: a package that left upstream is rescued by the sync that sees it leave; \
                 add a fallback origin (`fallback` in the source's configuration) for older ones"
            );
        }
    }
    Ok(if report.nowhere.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
