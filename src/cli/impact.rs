//! What a move would do, as `promote --dry-run` and `snapshot diff --impact` print it: the
//! channel's diff and, from the hosts' inventories, what would change on them
//! (`POST /api/v1/fleet/impact`).

use super::admin_client::AdminClient;
use aptgate_channels::{Diff, MovePlan};
use aptgate_fleet::impact::{Impact, ImpactKind};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct PlannedMove {
    pub plan: MovePlan,
    pub impact: Impact,
}

/// Asks the server what a move would do (`body` as `fleet/impact` takes it).
pub async fn plan(api: &AdminClient, body: serde_json::Value) -> anyhow::Result<PlannedMove> {
    api.post("fleet/impact", body).await
}

/// One line per change, then the counts.
pub fn print_diff(diff: &Diff) {
    for (label, changes) in [
        ("added", &diff.added),
        ("removed", &diff.removed),
        ("upgraded", &diff.upgraded),
        ("downgraded", &diff.downgraded),
    ] {
        for c in changes {
            println!(
                "{label:<10} {:<16} {:<32} {:<8} {} -> {}",
                c.suite,
                c.name,
                c.architecture,
                c.from.as_deref().unwrap_or("-"),
                c.to.as_deref().unwrap_or("-")
            );
        }
    }
    let s = diff.summary();
    println!(
        "{} added, {} removed, {} upgraded, {} downgraded",
        s.added, s.removed, s.upgraded, s.downgraded
    );
}

/// The plan's notes (holds, packages taken, a refusal the move would meet now).
pub fn print_plan_notes(plan: &MovePlan) {
    if !plan.held.is_empty() {
        println!(
            "held (kept at {}'s version): {}",
            plan.channel,
            plan.held.join(", ")
        );
    }
    if !plan.taken.is_empty() {
        println!(
            "taken (with the dependencies {} lacks): {}",
            plan.channel,
            plan.taken.join(", ")
        );
    }
    if let Some(refused) = &plan.refused {
        println!("note: the move would be refused now: {refused}");
    }
}

/// "upgrades 41 packages on 230 hosts" and a line per package, the fleet queue's way.
pub fn print_impact(impact: &Impact) {
    let channel = &impact.channel;
    if impact.hosts == 0 {
        println!("no host is assigned {channel}: nothing changes on hosts");
        return;
    }
    let counted = impact.hosts - impact.without_inventory;
    println!(
        "on the hosts of {channel}: upgrades {} package{} on {} host{} (of {counted} with an \
         inventory{})",
        impact.upgrades.packages,
        plural(impact.upgrades.packages),
        impact.upgrades.hosts,
        plural(impact.upgrades.hosts),
        if impact.without_inventory > 0 {
            format!("; {} without one yet", impact.without_inventory)
        } else {
            String::new()
        }
    );
    let width = impact
        .packages
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0);
    for (kind, title) in [
        (ImpactKind::Upgrade, "upgrades:"),
        (
            ImpactKind::LeftNewer,
            "left newer than the channel (apt does not downgrade):",
        ),
        (
            ImpactKind::LeavesChannel,
            "installed but no longer in the channel:",
        ),
    ] {
        let packages: Vec<_> = impact.packages.iter().filter(|p| p.kind == kind).collect();
        if packages.is_empty() {
            continue;
        }
        println!("{title}");
        for p in packages {
            println!(
                "  {:<width$}  {:>3} host{}  {} → {}",
                p.name,
                p.hosts,
                if p.hosts == 1 { " " } else { "s" },
                p.from,
                p.to.as_deref().unwrap_or("(gone)")
            );
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
