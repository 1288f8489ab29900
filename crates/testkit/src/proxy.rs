//! A TCP proxy in front of a real server that a test can make fail the way
//! networks and servers fail: [`Mode::Refuse`] (the server is stopped:
//! connections are reset, new ones refused) and [`Mode::BlackHole`] (a
//! partition: connections stay open and nothing arrives, either way).
//! Switching back to [`Mode::Forward`] restores service for new
//! connections; connections cut off by a fault stay dead, as they would.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Like a stopped server: open connections are closed and new ones
    /// closed on arrival.
    Refuse,
    /// Like a partition: bytes go nowhere, connections hang.
    BlackHole,
}

/// A running proxy; stops with the test's runtime.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rx = modes.subscribe();
                tokio::spawn(pump(client, upstream, rx));
            }
        });
        Self { addr, mode }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// One client connection, while the mode allows.
async fn pump(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let hold = |mut client: TcpStream, mut mode: watch::Receiver<Mode>| async move {
        // Open, silent, until the test is over or the server "stops".
        let _ = mode.wait_for(|m| *m == Mode::Refuse).await;
        let _ = client.shutdown().await;
    };
    let now = *mode.borrow_and_update();
    match now {
        Mode::Refuse => return,
        Mode::BlackHole => return hold(client, mode).await,
        Mode::Forward => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *mode.borrow_and_update();
                match now {
                    Mode::Forward => continue,
                    Mode::Refuse => return,
                    Mode::BlackHole => break,
                }
            }
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
    // Black-holed mid-connection: the server side is dropped, the client
    // side stays open and hears nothing.
    drop(server);
    hold(client, mode).await;
}
