//! `aptgate snapshot …`: list, show, diff, and derive snapshots (filter, merge, pull).

use super::admin_client::{date, encode, AdminClient};
use super::impact::{plan, print_diff, print_impact, print_plan_notes};
use aptgate_channels::catalog::ChannelState;
use aptgate_channels::catalog::Snapshot;
use aptgate_channels::Diff;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Every snapshot, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One snapshot: counts per suite/component/architecture, sources, time.
    Show { snapshot: String },
    /// What changes from snapshot A to snapshot B.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
        /// Also what moving a channel from A to B would do on its hosts, from their
        /// inventories (nothing moves).
        #[arg(long)]
        impact: bool,
        /// The channel(s) whose hosts `--impact` looks at (default: every channel at A).
        #[arg(long = "channel", requires = "impact")]
        channels: Vec<String>,
    },
    /// A new snapshot with only the packages of SNAPSHOT that match.
    Filter {
        snapshot: String,
        /// Package name glob to keep (repeatable; `lib*`).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Section to keep (repeatable).
        #[arg(long = "section")]
        sections: Vec<String>,
        /// Priority to keep (repeatable).
        #[arg(long = "priority")]
        priorities: Vec<String>,
        /// Package name glob to drop (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// A name for the new snapshot.
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// A new snapshot merging several (e.g. main + updates + security); highest version wins.
    Merge {
        #[arg(required = true, num_args = 2..)]
        snapshots: Vec<String>,
        /// Merge every suite into this one (default: suite by suite).
        #[arg(long)]
        into_suite: Option<String>,
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// A new snapshot: BASE plus PACKAGES from FROM, with the dependencies BASE lacks.
    Pull {
        base: String,
        from: String,
        #[arg(required = true)]
        packages: Vec<String>,
        #[arg(long = "as")]
        name: Option<String>,
    },
}

pub async fn run(api: &AdminClient, command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::List { json } => {
            let list: Vec<Snapshot> = api.get("snapshots").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<40} {:<20} {:<6} DESCRIPTION", "ID", "CREATED", "KIND");
                for s in list {
                    println!(
                        "{:<40} {:<20} {:<6} {}",
                        s.id,
                        date(s.created_at),
                        s.kind.as_str(),
                        s.description
                    );
                }
            }
        }
        SnapshotCommand::Show { snapshot } => {
            let shown: serde_json::Value =
                api.get(&format!("snapshots/{}", encode(&snapshot))).await?;
            let s: Snapshot = serde_json::from_value(shown["snapshot"].clone())?;
            println!("snapshot:  {}", s.id);
            println!("created:   {}", date(s.created_at));
            println!("kind:      {}", s.kind.as_str());
            println!("sources:   {}", s.sources.join(", "));
            println!("about:     {}", s.description);
            println!("packages:  {}", shown["packages"]);
            for index in shown["indices"].as_array().into_iter().flatten() {
                println!(
                    "  {:<20} {:<28} {:>8} packages",
                    index["suite"].as_str().unwrap_or(""),
                    index["index"].as_str().unwrap_or(""),
                    index["packages"]
                );
            }
        }
        SnapshotCommand::Diff {
            a,
            b,
            json,
            impact,
            channels,
        } => diff(api, &a, &b, json, impact, channels).await?,
        SnapshotCommand::Filter {
            snapshot,
            names,
            sections,
            priorities,
            excludes,
            name,
        } => {
            let created: Snapshot = api
                .post(
                    &format!("snapshots/{}/filter", encode(&snapshot)),
                    serde_json::json!({"names": names, "sections": sections,
                        "priorities": priorities, "excludes": excludes, "name": name}),
                )
                .await?;
            print_created(&created);
        }
        SnapshotCommand::Merge {
            snapshots,
            into_suite,
            name,
        } => {
            let created: Snapshot = api
                .post(
                    "snapshots/merge",
                    serde_json::json!({"snapshots": snapshots, "into_suite": into_suite,
                        "name": name}),
                )
                .await?;
            print_created(&created);
        }
        SnapshotCommand::Pull {
            base,
            from,
            packages,
            name,
        } => {
            let created: Snapshot = api
                .post(
                    &format!("snapshots/{}/pull", encode(&base)),
                    serde_json::json!({"from": from, "packages": packages, "name": name}),
                )
                .await?;
            print_created(&created);
        }
    }
    Ok(())
}

fn print_created(s: &Snapshot) {
    println!("created snapshot {}: {}", s.id, s.description);
}

/// `snapshot diff A B [--impact [--channel C]…]`.
async fn diff(
    api: &AdminClient,
    a: &str,
    b: &str,
    json: bool,
    impact: bool,
    mut channels: Vec<String>,
) -> anyhow::Result<()> {
    let diff: Diff = api
        .get(&format!("snapshots/{}/diff/{}", encode(a), encode(b)))
        .await?;
    if !impact {
        if json {
            println!("{}", serde_json::to_string_pretty(&diff)?);
        } else {
            print_diff(&diff);
        }
        return Ok(());
    }
    if channels.is_empty() {
        let from: Snapshot = serde_json::from_value(
            api.get::<serde_json::Value>(&format!("snapshots/{}", encode(a)))
                .await?["snapshot"]
                .clone(),
        )?;
        let list: Vec<ChannelState> = api.get("channels").await?;
        channels = list
            .into_iter()
            .filter(|c| c.snapshot_id.as_deref() == Some(from.id.as_str()))
            .map(|c| c.name)
            .collect();
        if channels.is_empty() && !json {
            eprintln!(
                "no channel is at {a}: nothing to weigh on hosts\nhint: name one with \
                 --channel C"
            );
        }
    }
    let mut planned = Vec::new();
    for channel in &channels {
        planned.push(plan(api, serde_json::json!({"channel": channel, "snapshot": b})).await?);
    }
    if json {
        let impacts: Vec<_> = planned
            .iter()
            .map(|p| serde_json::json!({"plan": p.plan, "impact": p.impact}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"diff": diff, "channels": impacts}))?
        );
        return Ok(());
    }
    print_diff(&diff);
    for p in &planned {
        println!();
        let d = p.plan.diff.summary();
        println!(
            "if {} moved to {b}: {} added, {} removed, {} upgraded, {} downgraded in the channel",
            p.plan.channel, d.added, d.removed, d.upgraded, d.downgraded
        );
        print_plan_notes(&p.plan);
        print_impact(&p.impact);
    }
    Ok(())
}
