//! `aptgate upload FILE.deb… --to SOURCE`: sends each file to a local source; the server
//! checks it, stores it and records it, and the source's next sync lists it.

use super::admin_client::{encode, AdminClient};
use aptgate_channels::UploadOutcome;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct UploadArgs {
    /// The .deb files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The local source (`kind = "local"` in the configuration).
    #[arg(long)]
    to: String,
    /// The source's suite (default: its first).
    #[arg(long)]
    suite: Option<String>,
    /// The source's component (default: its first).
    #[arg(long)]
    component: Option<String>,
}

/// Uploads every file, reporting each; fails if any was refused (the others still count).
pub async fn run(api: &AdminClient, args: UploadArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(suite) = &args.suite {
        query.push(format!("suite={}", encode(suite)));
    }
    if let Some(component) = &args.component {
        query.push(format!("component={}", encode(component)));
    }
    let path = format!(
        "sources/{}/uploads{}{}",
        encode(&args.to),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let mut failed = 0;
    for file in &args.files {
        match api.post_file::<UploadOutcome>(&path, file).await {
            Ok(u) => println!(
                "{}: {} {} {} → {} {}/{}{}",
                file.display(),
                u.name,
                u.version,
                u.architecture,
                u.source,
                u.suite,
                u.component,
                if u.created {
                    " (listed from the next sync)"
                } else {
                    " (already uploaded; unchanged)"
                }
            ),
            Err(e) => {
                eprintln!("error: {}: {e:#}", file.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} upload(s) refused", args.files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
