//! `videogen keys`: API key and worker token administration on the data
//! directory's store.

use anyhow::Context;
use clap::{Args, Subcommand};
use videogen_core::store::Store;
use videogen_core::{Clock, SystemClock, TenantId, Tier};

use crate::config::{ConfigFile, Flags, Loader, StorageOptions};

/// Credentials read per page by `keys list`.
const LIST_PAGE: u32 = 500;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key (or with --worker a worker token) and print its secret (shown once).
    Create(CreateArgs),
    /// List API keys and worker tokens (never their secrets).
    List(DataDirArg),
    /// Revoke an API key (`key_…`) or a worker token (`wtok_…`) by id.
    Revoke {
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

/// Where the server's database is: the same `--data-dir`, `--database-url`
/// and `--config` as `serve` (flags, `VIDEOGEN_*` variables, file).
#[derive(Args)]
pub struct DataDirArg {
    #[command(flatten)]
    file: ConfigFile,
    #[command(flatten)]
    storage: Flags<StorageOptions>,
}

impl DataDirArg {
    /// Opens the server's database. An SQLite file that does not exist is
    /// an error, not a new empty database whose keys no server would know.
    pub async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn Store>> {
        let mut loader = Loader::new(&self.file);
        let storage: StorageOptions = loader.resolve(&self.storage);
        loader.finish()?;
        let url = &storage.database_url;
        if let videogen_store::DatabaseUrl::Sqlite(path) = url
            && !path.exists()
        {
            anyhow::bail!(
                "no database at {}: point at the server's with --data-dir DIR (or VIDEOGEN_DATA_DIR) or \
                 --database-url URL, or start `videogen serve` once to create it",
                path.display()
            );
        }
        let store = videogen_store::AnyStore::connect(url, videogen_store::PgOptions::default())
            .await
            .with_context(|| format!("opening the database {url}"))?;
        Ok(store.store())
    }
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long, required_unless_present = "worker")]
    tenant: Option<String>,
    /// Service tier: it sets the scheduling weight and how long videos are kept.
    #[arg(long, default_value = "free", value_parser = tier_parser())]
    tier: Tier,
    /// Admin keys may use administrative endpoints.
    #[arg(long)]
    admin: bool,
    /// Create a worker token (`vgw_…`) for `videogen worker` instead of an API key.
    #[arg(long, conflicts_with_all = ["tenant", "tier", "admin"])]
    worker: bool,
    /// Label of the worker token, e.g. the worker's host [default: worker].
    #[arg(long, conflicts_with_all = ["tenant", "tier", "admin"])]
    name: Option<String>,
    #[command(flatten)]
    dir: DataDirArg,
}

/// `free`, `paid`, `internal`: the tiers the server knows.
fn tier_parser() -> impl clap::builder::TypedValueParser<Value = Tier> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Tier::ALL.map(Tier::as_str)).try_map(|s: String| s.parse::<Tier>())
}

fn status(revoked_at_ms: Option<i64>) -> &'static str {
    if revoked_at_ms.is_some() { "revoked" } else { "active" }
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create(a) if a.worker => {
            let name = a.name.as_deref().unwrap_or("worker");
            anyhow::ensure!(
                videogen_api::auth::valid_worker_name(name),
                "invalid --name {name:?}: use 1-64 of [A-Za-z0-9_.-]"
            );
            let store = a.dir.open().await?;
            let secret = videogen_api::auth::generate_worker_secret();
            let rec = videogen_api::auth::worker_token_record(&secret, name, SystemClock.now_ms());
            store.insert_worker_token(&rec).await?;
            println!("{secret}");
            eprintln!(
                "created worker token {} ({}); the secret above is not stored and will not be shown again",
                rec.id, rec.name
            );
        }
        KeysCommand::Create(a) => {
            let raw = a.tenant.unwrap_or_default();
            let tenant =
                TenantId::parse(&raw).with_context(|| format!("invalid tenant {raw:?}: use 1-64 of [A-Za-z0-9_.-]"))?;
            let store = a.dir.open().await?;
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
            let store = d.open().await?;
            println!(
                "{:<22} {:<7} {:<10} {:<20} {:<9} {:<6} status",
                "id", "kind", "prefix", "tenant/name", "tier", "admin"
            );
            // Page by page: each read is bounded, the listing is not.
            let mut after = None;
            loop {
                let page = store.list_api_keys(after.as_ref(), LIST_PAGE).await?;
                for k in &page {
                    println!(
                        "{:<22} {:<7} {:<10} {:<20} {:<9} {:<6} {}",
                        k.id,
                        "api",
                        k.prefix,
                        k.tenant.as_str(),
                        k.tier.as_str(),
                        k.admin,
                        status(k.revoked_at_ms)
                    );
                }
                if page.len() < LIST_PAGE as usize {
                    break;
                }
                after = page.last().cloned();
            }
            let mut after = None;
            loop {
                let page = store.list_worker_tokens(after.as_ref(), LIST_PAGE).await?;
                for t in &page {
                    println!(
                        "{:<22} {:<7} {:<10} {:<20} {:<9} {:<6} {}",
                        t.id,
                        "worker",
                        t.prefix,
                        t.name,
                        "-",
                        "-",
                        status(t.revoked_at_ms)
                    );
                }
                if page.len() < LIST_PAGE as usize {
                    break;
                }
                after = page.last().cloned();
            }
        }
        KeysCommand::Revoke { id, dir } => {
            let store = dir.open().await?;
            let now = SystemClock.now_ms();
            let revoked = if id.starts_with(videogen_api::auth::WORKER_TOKEN_ID_PREFIX) {
                store.revoke_worker_token(&id, now).await?
            } else {
                store.revoke_api_key(&id, now).await?
            };
            if revoked {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active key or worker token with id {id}");
            }
        }
    }
    Ok(())
}
