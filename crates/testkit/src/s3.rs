//! A private `s3s-fs` (the S3-compatible server `scripts/s3-server.sh`
//! installs) on a free loopback port over a temporary directory, killed on
//! drop. It checks SigV4 signatures, pre-signed URLs and upload checksums.
//! Tests fail, never skip, when the server is missing.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "videogen-test-access";
pub const SECRET_KEY: &str = "videogen-test-secret-0123456789abcdef";
pub const BUCKET: &str = "videogen-test";
pub const INSTALL_HINT: &str = "run scripts/s3-server.sh to install it (CI's .ci/run does)";

fn server_binary() -> PathBuf {
    videogen_blob::s3s_fs_binary()
        .unwrap_or_else(|| panic!("s3s-fs, the S3 test server, is not installed: {INSTALL_HINT}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One private server; killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl S3Server {
    pub fn start() -> Self {
        // Another process may grab the free port before the server binds it.
        for _ in 0..5 {
            if let Some(server) = Self::try_start() {
                return server;
            }
        }
        panic!("s3s-fs did not start on loopback; is it the version scripts/s3-server.sh installs?");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).unwrap();
        let log = File::create(dir.path().join("server.log")).unwrap();
        let port = free_port();
        let child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path().join("data"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}): {INSTALL_HINT}"));
        let mut server = Self { child, port, dir };
        server.wait_ready().then_some(server)
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
