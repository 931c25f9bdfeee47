//! `aptgate sync`: the server verifies sources, records packages and snapshots what changed.

use super::admin_client::AdminClient;
use aptgate_channels::SyncOutcome;

pub async fn run(api: &AdminClient, source: Option<String>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let outcomes: Vec<SyncOutcome> = api
        .post("sync", serde_json::json!({ "source": source }))
        .await?;
    for outcome in outcomes {
        let name = &outcome.source;
        match &outcome.snapshot {
            Some(id) => println!(
                "{name}: new snapshot {id}: {} packages ({} new){}{}",
                outcome.packages,
                outcome.new_packages,
                if outcome.downloaded > 0 {
                    format!(", {} downloaded", outcome.downloaded)
                } else {
                    String::new()
                },
                if outcome.followed_by.is_empty() {
                    String::new()
                } else {
                    format!("; moved {}", outcome.followed_by.join(", "))
                }
            ),
            None => println!("{name}: unchanged ({} packages)", outcome.packages),
        }
    }
    eprintln!("synced in {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}
