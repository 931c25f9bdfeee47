//! `aptgate audit`: the audit log, newest first.

use super::admin_client::{date, encode, AdminClient};
use aptgate_channels::catalog::AuditEntry;
use clap::Args;

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long)]
    channel: Option<String>,
    /// sync, snapshot, promote, hold, release, rollback or key.
    #[arg(long)]
    action: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

pub async fn run(api: &AdminClient, args: AuditArgs) -> anyhow::Result<()> {
    let AuditArgs {
        channel,
        action,
        limit,
        json,
    } = args;
    let mut query = format!("audit?limit={limit}");
    if let Some(c) = channel {
        query.push_str(&format!("&channel={}", encode(&c)));
    }
    if let Some(a) = action {
        query.push_str(&format!("&action={}", encode(&a)));
    }
    let entries: Vec<AuditEntry> = api.get(&query).await?;
    for e in entries {
        let e = e.entry;
        if json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            println!(
                "{} {:<10} {:<9} {:<12} {} -> {} {} {}",
                date(e.at),
                e.actor,
                e.action.as_str(),
                e.channel.as_deref().unwrap_or("-"),
                e.from_snapshot.as_deref().unwrap_or("-"),
                e.to_snapshot.as_deref().unwrap_or("-"),
                e.summary.as_deref().unwrap_or(""),
                e.comment.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
