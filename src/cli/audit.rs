//! `aptgate audit`: the audit log, newest first; `--export` writes all of it, oldest first, as
//! JSON lines (for a SIEM or an auditor; the log itself cannot be changed).

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
    /// Write the whole log, oldest first, as JSON lines (ignores the filters above).
    #[arg(long)]
    export: bool,
    /// With --export: only entries after this id (the last exported line's `id`).
    #[arg(long, requires = "export")]
    after_id: Option<i64>,
}

pub async fn run(api: &AdminClient, args: AuditArgs) -> anyhow::Result<()> {
    let AuditArgs {
        channel,
        action,
        limit,
        json,
        export,
        after_id,
    } = args;
    if export {
        let path = format!("audit/export?after_id={}", after_id.unwrap_or(0));
        return api.download(&path, &mut std::io::stdout().lock()).await;
    }
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
