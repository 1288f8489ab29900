//! A fresh PostgreSQL database per test, cloned from a migrated template.
//!
//! The first test of a process that needs a database makes sure a template
//! database holding the current schema exists on the server
//! (`videogen_tmpl_<fingerprint of the migrations>`, built once under an
//! advisory lock and renamed into place only when complete, so concurrent
//! test processes share it and a crashed build is never used); every test
//! then gets `CREATE DATABASE … TEMPLATE` of it, which copies files instead of
//! running the migrations again.
//!
//! The server is the one at `VIDEOGEN_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/`). If none answers there, the first
//! test of the process starts a private server with Debian's `initdb` and
//! `pg_ctl` (under `/usr/lib/postgresql/*/bin`) in a temporary directory, on a
//! free port, and a watchdog stops it and removes the directory once this
//! process exits. Tests never skip: if neither works, they fail saying why.

use sqlx::{Connection, Executor, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use videogen_store::PgStore;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tests need no durability across an OS crash: commits without an fsync
/// keep the suites fast without changing any semantics under test.
const TEST_OPTIONS: &str = "options=-c%20synchronous_commit%3Doff";

/// The server URL (database part ignored), resolved once per test process.
static SERVER: OnceCell<String> = OnceCell::const_new();
/// The name of the migrated template database, ensured once per test process.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();
/// Advisory lock key serialising template builds across test processes.
const TEMPLATE_LOCK: i64 = 0x7669_6465_6f67_656e; // "videogen"

/// The server, resolved once per test process.
async fn server() -> String {
    SERVER
        .get_or_try_init(resolve_server)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL server for the tests: {e}"))
        .clone()
}

/// A database created for one test, dropped (best effort) when this is dropped.
pub struct TestDb {
    server: String,
    name: String,
}

impl TestDb {
    /// Creates a migrated database with a unique name.
    pub async fn create() -> Self {
        let server = server().await;
        let template = TEMPLATE
            .get_or_try_init(|| ensure_template(&server))
            .await
            .unwrap_or_else(|e| panic!("no template database for the tests: {e}"))
            .clone();
        Self::from_template(server, &template).await
    }

    /// Creates a database with no schema at all (for tests of migrations).
    pub async fn empty() -> Self {
        Self::from_template(server().await, "template0").await
    }

    async fn from_template(server: String, template: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "videogen_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("connecting to {server}: {e}"));
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE \"{template}\""
            )))
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        drop(admin.close().await);
        Self { server, name }
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        let (base, query) = split_url(&self.server);
        let sep = if query.is_empty() { "?" } else { "&" };
        format!("{base}/{}{query}{sep}{TEST_OPTIONS}", self.name)
    }

    /// The server's TCP address (to put a [`crate::proxy::FaultProxy`] in
    /// front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        let (base, _) = split_url(&self.server);
        let authority = base.rsplit_once('@').map_or(base, |(_, a)| a);
        let authority = authority.rsplit_once("://").map_or(authority, |(_, a)| a);
        let authority = authority.replace("localhost", "127.0.0.1");
        authority
            .parse()
            .or_else(|_| format!("{authority}:5432").parse())
            .unwrap_or_else(|e| panic!("no TCP address in {base}: {e}"))
    }

    /// [`TestDb::url`] with the server reached at `addr` instead.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let url = self.url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", &url));
        let (user, hostpart) = rest.split_once('@').map_or(("", rest), |(u, h)| (u, h));
        let tail = hostpart.find(['/', '?']).map_or("", |i| &hostpart[i..]);
        let at = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        format!("{scheme}://{at}{addr}{tail}")
    }

    /// A store on this database (migrated).
    pub async fn store(&self) -> PgStore {
        PgStore::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("PgStore on {}: {e}", self.name))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread
        // of its own. `WITH (FORCE)` ends connections a failed test left open.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server).await.ok()?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop test database {}", self.name);
        }
    }
}

/// The URL of database `db` on the server at `server`.
fn db_url(server: &str, db: &str) -> String {
    let (base, query) = split_url(server);
    format!("{base}/{db}{query}")
}

/// Makes sure the template of the current schema exists; its name.
async fn ensure_template(server: &str) -> Result<String, String> {
    let name = format!("videogen_tmpl_{}", &videogen_store::PgStore::schema_fingerprint()[..16]);
    let mut admin = PgConnection::connect(server)
        .await
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    let built = async {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await
            .map_err(|e| format!("taking the template lock: {e}"))?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut admin)
            .await
            .map_err(|e| format!("looking for {name}: {e}"))?;
        if exists.is_some() {
            return Ok(());
        }
        // Built under another name and renamed when complete: a build that
        // died half-way is never taken for the template.
        let building = format!("{name}_building_{}", std::process::id());
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{building}\" ENCODING 'UTF8' TEMPLATE template0"),
        ] {
            admin
                .execute(sqlx::AssertSqlSafe(sql.clone()))
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        let store = videogen_store::PgStore::connect(&db_url(server, &building))
            .await
            .map_err(|e| format!("migrating {building}: {e}"))?;
        store.close().await.map_err(|e| format!("closing {building}: {e}"))?;
        let rename = format!("ALTER DATABASE \"{building}\" RENAME TO \"{name}\"");
        admin
            .execute(sqlx::AssertSqlSafe(rename.clone()))
            .await
            .map_err(|e| format!("{rename}: {e}"))?;
        Ok::<(), String>(())
    }
    .await;
    // Closing the session releases the advisory lock either way.
    drop(admin.close().await);
    built.map(|()| name)
}

/// `postgres://user@host:port` and `?query` (possibly empty) of a URL,
/// without its database path.
fn split_url(url: &str) -> (&str, &str) {
    let (head, query) = url.find('?').map_or((url, ""), |i| url.split_at(i));
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = head[authority_start..]
        .find('/')
        .map_or(head, |i| &head[..authority_start + i]);
    (base, query)
}

/// The configured server if it answers, else a private one.
async fn resolve_server() -> Result<String, String> {
    let url = std::env::var("VIDEOGEN_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let (base, query) = split_url(&url);
    let admin = format!("{base}/postgres{query}");
    let first = match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&admin)).await {
        Ok(Ok(conn)) => {
            drop(conn.close().await);
            return Ok(admin);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    eprintln!("note: no PostgreSQL at {url} ({first}); starting a private server");
    let private = tokio::task::spawn_blocking(start_private_server)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("none at {url} ({first}), and starting one failed: {e}"))?;
    let mut last = String::new();
    for _ in 0..50 {
        match PgConnection::connect(&private).await {
            Ok(conn) => {
                drop(conn.close().await);
                return Ok(private);
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the private server at {private} does not answer: {last}"))
}

/// The newest PostgreSQL's `bin` directory that has `initdb` and `pg_ctl`.
fn postgres_bin() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install the `postgresql` package)"))?
        .filter_map(Result::ok)
        .filter_map(|d| {
            let version = d.file_name().to_str()?.parse().ok()?;
            let bin = d.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb (install the `postgresql` package)".to_owned())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command, run as `nobody` when this process is root (initdb refuses root).
fn as_server_user(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// initdb + pg_ctl start in a fresh temporary directory; the URL of the
/// `postgres` database there.
fn start_private_server() -> Result<String, String> {
    PrivateServer::start().map(|s| s.url())
}

/// A PostgreSQL server of this process's own, in a temporary directory, that
/// a benchmark may stop and start again (a database outage). A watchdog
/// stops it and removes its files once this process is gone.
#[derive(Debug)]
pub struct PrivateServer {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
    port: u16,
    root: bool,
}

impl PrivateServer {
    /// initdb, then start it on a free loopback port.
    pub fn start() -> Result<Self, String> {
        let bin = postgres_bin()?;
        let root = is_root();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("videogen-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if root {
            let mut chown = Command::new("chown");
            chown.arg("nobody").arg(&dir);
            run(chown, "chown nobody")?;
        }
        let data = dir.join("data");
        let mut initdb = as_server_user(root, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        run(initdb, "initdb")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let server = Self {
            log: dir.join("server.log"),
            options: format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                dir.display()
            ),
            bin,
            data,
            port,
            root,
        };
        server.resume()?;
        // The watchdog outlives this process (there is no hook at its exit):
        // once this process is gone it stops the server and removes the files.
        let pg_ctl_stop = format!(
            "{}{} -D {} stop -m immediate",
            if root { "runuser -u nobody -- " } else { "" },
            server.bin.join("pg_ctl").display(),
            server.data.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; {pg_ctl_stop} >/dev/null 2>&1; rm -rf {}",
                std::process::id(),
                dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the watchdog: {e}"))?;
        Ok(server)
    }

    /// The `postgres` database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are terminated,
    /// new connections refused), waiting until it is down.
    pub fn stop(&self) -> Result<(), String> {
        let mut pg_ctl = as_server_user(self.root, &self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run(pg_ctl, "pg_ctl stop")
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn resume(&self) -> Result<(), String> {
        let mut pg_ctl = as_server_user(self.root, &self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("-w")
            .arg("-o")
            .arg(&self.options)
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run(pg_ctl, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            format!("{e}\n{log}")
        })
    }
}
