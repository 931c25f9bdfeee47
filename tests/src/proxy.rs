//! A TCP proxy a test can cut, stall and restore: a database (or any server) that goes away
//! or stops answering, then comes back, without touching the real one other tests share.
//!
//! Cut: every connection through it is closed, and new ones as soon as they are accepted, as
//! a client sees a server that stopped. Stalled: connections stay open but nothing passes,
//! as a client sees a server that hangs or a network that drops packets. Restored: the
//! connections of a cut or stall are closed and new ones pass again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Cut,
    Stalled,
}

pub struct CuttableProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    forwarded: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> CuttableProxy {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), target).await
    }

    /// Listens on `ip`, port 0 (another loopback address such as 127.0.0.2 looks like another
    /// host to a client), and forwards every connection to `target`.
    pub async fn start_on(ip: std::net::IpAddr, target: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Open);
        let forwarded = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let mode = mode.clone();
            let forwarded = forwarded.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let watching = mode.subscribe();
                    tokio::spawn(relay(client, target, watching, forwarded.clone()));
                }
            }
        });
        CuttableProxy {
            addr,
            mode,
            forwarded,
            task,
        }
    }

    /// How many connections it has passed on to the target so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Lets nothing through, closing nothing, until [`restore`](Self::restore).
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

/// One client connection: forwarded while the proxy is open; dropped on a cut; held silent
/// during a stall, then dropped.
async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    forwarded: Arc<AtomicUsize>,
) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Cut => return,
        Mode::Stalled => {
            let _ = mode.wait_for(|m| *m != Mode::Stalled).await;
            return;
        }
        Mode::Open => {}
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    forwarded.fetch_add(1, Ordering::SeqCst);
    let stalled = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        changed = mode.wait_for(|m| *m != Mode::Open) => {
            changed.map(|m| *m == Mode::Stalled).unwrap_or(false)
        }
    };
    if stalled {
        let _ = mode.wait_for(|m| *m != Mode::Stalled).await;
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
