//! `videogen keys`: API key administration on the data directory's store.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use videogen_core::store::Store;
use videogen_core::{Clock, SystemClock, TenantId, Tier};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown once).
    Create(CreateArgs),
    /// List keys (never their secrets).
    List(DataDirArg),
    /// Revoke a key by id (`key_…`).
    Revoke {
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Args)]
pub struct DataDirArg {
    /// Data directory of the server.
    #[arg(long, env = "VIDEOGEN_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long, default_value = "free")]
    tier: Tier,
    /// Admin keys may use administrative endpoints.
    #[arg(long)]
    admin: bool,
    #[command(flatten)]
    dir: DataDirArg,
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create(a) => {
            let tenant = TenantId::parse(&a.tenant)
                .with_context(|| format!("invalid tenant {:?}: use 1-64 of [A-Za-z0-9_.-]", a.tenant))?;
            let store = crate::serve::open_store(&a.dir.data_dir).await?;
            let secret = videogen_api::auth::generate_secret();
            let rec = videogen_api::auth::key_record(&secret, tenant, a.tier, a.admin, SystemClock.now_ms());
            store.insert_api_key(&rec).await?;
            println!("{secret}");
            eprintln!(
                "created {} for tenant {} (tier {}); the secret above is not stored and will not be shown again",
                rec.id, rec.tenant, rec.tier
            );
        }
        KeysCommand::List(d) => {
            let store = crate::serve::open_store(&d.data_dir).await?;
            println!(
                "{:<22} {:<10} {:<20} {:<9} {:<6} status",
                "id", "prefix", "tenant", "tier", "admin"
            );
            for k in store.list_api_keys().await? {
                let status = if k.revoked_at_ms.is_some() { "revoked" } else { "active" };
                println!(
                    "{:<22} {:<10} {:<20} {:<9} {:<6} {status}",
                    k.id, k.prefix, k.tenant, k.tier, k.admin
                );
            }
        }
        KeysCommand::Revoke { id, dir } => {
            let store = crate::serve::open_store(&dir.data_dir).await?;
            if store.revoke_api_key(&id, SystemClock.now_ms()).await? {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active key with id {id}");
            }
        }
    }
    Ok(())
}
