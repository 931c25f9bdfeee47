//! `aptgate key …`: the channel signing keys and their rotation.

use super::admin_client::{date, encode, AdminClient};
use aptgate_channels::signing::KeyInfo;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print the armored public key(s) hosts put in Signed-By.
    Show,
    /// List the signing keys (fingerprint, created, retired).
    List,
    /// Start a rotation: add a key; old and new both sign until the old one is retired.
    Add {
        #[arg(long)]
        comment: Option<String>,
    },
    /// Import an armored secret key (no passphrase) from FILE; it signs from now on.
    Import { file: std::path::PathBuf },
    /// End a rotation: stop a key from signing (never the last one).
    Retire {
        fingerprint: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn run(api: &AdminClient, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Show => {
            let keys: serde_json::Value = api.get("keys").await?;
            print!("{}", keys["armored"].as_str().unwrap_or_default());
        }
        KeyCommand::List => {
            let keys: serde_json::Value = api.get("keys").await?;
            let list: Vec<KeyInfo> = serde_json::from_value(keys["keys"].clone())?;
            println!("{:<40} {:<20} RETIRED", "FINGERPRINT", "CREATED");
            for k in list {
                println!(
                    "{:<40} {:<20} {}",
                    k.fingerprint,
                    date(k.created_at),
                    k.retired_at.map(date).unwrap_or_else(|| "-".into())
                );
            }
        }
        KeyCommand::Add { comment } => {
            let key: KeyInfo = api
                .post("keys", serde_json::json!({ "comment": comment }))
                .await?;
            println!(
                "added signing key {}; channels are now signed by every active key.\n\
                 Next: give hosts the new public key (`aptgate key show`), then \
                 `aptgate key retire OLD_FINGERPRINT`.",
                key.fingerprint
            );
        }
        KeyCommand::Import { file } => {
            let armored = fs_err::read_to_string(&file)?;
            let imported: serde_json::Value = api
                .post("keys/import", serde_json::json!({ "armored": armored }))
                .await?;
            println!(
                "imported signing key {}; channels re-signed",
                imported["imported"].as_str().unwrap_or("?")
            );
        }
        KeyCommand::Retire {
            fingerprint,
            comment,
        } => {
            let _: serde_json::Value = api
                .post(
                    &format!("keys/{}/retire", encode(&fingerprint)),
                    serde_json::json!({ "comment": comment }),
                )
                .await?;
            println!("retired {fingerprint}; channels re-signed without it");
        }
    }
    Ok(())
}
