//! `aptgate sync`: the server verifies sources, records packages, snapshots what changed and
//! stores referenced packages that left upstream.

use super::admin_client::AdminClient;
use aptgate_channels::SyncOutcome;

pub async fn run(api: &AdminClient, source: Option<String>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let outcomes: Vec<SyncOutcome> = api
        .post("sync", serde_json::json!({ "source": source }))
        .await?;
    for outcome in outcomes {
        let name = &outcome.source;
        let mut extra = Vec::new();
        if outcome.downloaded > 0 {
            extra.push(format!("{} downloaded", outcome.downloaded));
        }
        if outcome.rescued > 0 {
            extra.push(format!(
                "{} rescued (left upstream, still referenced)",
                outcome.rescued
            ));
        }
        if outcome.rescue_failures > 0 {
            extra.push(format!(
                "{} could not be rescued yet (see `aptgate channel verify`)",
                outcome.rescue_failures
            ));
        }
        if !outcome.followed_by.is_empty() {
            extra.push(format!("moved {}", outcome.followed_by.join(", ")));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("; {}", extra.join("; "))
        };
        match &outcome.snapshot {
            Some(id) => println!(
                "{name}: new snapshot {id}: {} packages ({} new){extra}",
                outcome.packages, outcome.new_packages
            ),
            None => println!("{name}: unchanged ({} packages){extra}", outcome.packages),
        }
    }
    eprintln!("synced in {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}
