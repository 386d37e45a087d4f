//! A fault-injecting TCP proxy for the integration tests, to put between the layer and a
//! [`RedisServer`](super::redis_server::RedisServer).
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every connection it
//! accepts to the upstream address. What happens to the bytes is switched at run time, for the
//! connections that are open and for the ones that come later:
//!
//! - [`FaultProxy::pass_through`]: bytes flow unchanged (the starting state);
//! - [`FaultProxy::latency`]: every chunk read from the upstream reaches the client that much
//!   later (a delay line: chunks are not serialised behind each other's delay);
//! - [`FaultProxy::black_hole`]: connections are accepted and read, but nothing is forwarded
//!   and nothing is answered; what was read is held, in order, and delivered once the proxy
//!   passes bytes again (like a network partition that heals before TCP gives up, or a
//!   `SIGSTOP`ped server, with the difference that the client's writes do not block);
//! - [`FaultProxy::throttle`]: each direction of each connection carries at most that many
//!   bytes per second;
//! - [`FaultProxy::cut_all`]: every open connection is closed now (new ones are accepted as
//!   usual).
//!
//! Everything runs on the Tokio runtime of the test that started the proxy and stops when the
//! [`FaultProxy`] is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// Chunks held per direction of a connection before the proxy stops reading (back-pressure).
const QUEUE: usize = 1024;

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes flow unchanged.
    PassThrough,
    /// Each chunk from the upstream reaches the client this much later.
    Latency(Duration),
    /// Read, held, never forwarded, until the fault changes.
    BlackHole,
    /// At most this many bytes per second per direction and connection.
    Throttle(u64),
}

#[derive(Debug)]
struct Shared {
    /// Where new connections go ([`FaultProxy::redirect`] moves it, as a DNS change would).
    upstream: watch::Sender<SocketAddr>,
    fault: watch::Sender<Fault>,
    /// Bumped by [`FaultProxy::cut_all`]: connections opened under an older value close.
    cut: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
    forwarded: AtomicU64,
}

/// A running proxy; see the module documentation.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, passing bytes through.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fault proxy");
        let addr = listener.local_addr().expect("the proxy's local address");
        let shared = Arc::new(Shared {
            upstream: watch::Sender::new(upstream),
            fault: watch::Sender::new(Fault::PassThrough),
            cut: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            addr,
            shared,
            acceptor,
        }
    }

    /// The proxy's own address (what clients connect to).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `redis://` URL that reaches the upstream through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Send connections opened from now on to `upstream`; open ones stay where they are (as
    /// when a DNS name moves to a new primary after a failover).
    pub fn redirect(&self, upstream: SocketAddr) {
        self.shared.upstream.send_replace(upstream);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Switch to `fault` for open and future connections.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// Forward bytes unchanged (and deliver whatever a black hole held).
    pub fn pass_through(&self) {
        self.set(Fault::PassThrough);
    }

    /// Delay each chunk coming back from the upstream by `delay`.
    pub fn latency(&self, delay: Duration) {
        self.set(Fault::Latency(delay));
    }

    /// Accept and read, but forward and answer nothing until the fault changes.
    pub fn black_hole(&self) {
        self.set(Fault::BlackHole);
    }

    /// Carry at most `bytes_per_second` in each direction of each connection.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.set(Fault::Throttle(bytes_per_second.max(1)));
    }

    /// Close every open connection now; later connections are served as usual.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes delivered so far, both directions together.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(connection(client, Arc::clone(&shared)));
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(Arc::clone(&shared));
    let mut cut = shared.cut.subscribe();
    let born = *cut.borrow_and_update();
    let target = *shared.upstream.borrow();
    let Ok(upstream) = TcpStream::connect(target).await else {
        // Nothing listens upstream: the client sees its connection closed, as with a refusal.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let requests = pipe(client_read, upstream_write, &shared, false);
    let replies = pipe(upstream_read, client_write, &shared, true);
    let cut_now = async {
        loop {
            if cut.changed().await.is_err() || *cut.borrow() != born {
                return;
            }
        }
    };
    // The connection ends when either direction is finished or it is cut; dropping the other
    // futures drops their socket halves, which closes both sockets.
    tokio::select! {
        () = requests => {}
        () = replies => {}
        () = cut_now => {}
    }
}

/// One direction of a connection: a reader that stamps chunks and a writer that delivers them
/// according to the fault in force. `delayed` says whether [`Fault::Latency`] applies here.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared, delayed: bool) {
    let (sender, mut receiver) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = Bytes::copy_from_slice(buffer.get(..n).unwrap_or_default());
            if sender.send((Instant::now(), chunk)).await.is_err() {
                return;
            }
        }
    };
    let mut fault = shared.fault.subscribe();
    let writer = async move {
        while let Some((read_at, chunk)) = receiver.recv().await {
            if deliver(&mut to, &mut fault, read_at, &chunk, delayed)
                .await
                .is_err()
            {
                return;
            }
            shared
                .forwarded
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what the reader queued before it ends; a writer that fails ends both.
    tokio::pin!(writer);
    tokio::select! {
        () = reader => writer.await,
        () = &mut writer => {}
    }
}

/// Deliver one chunk under the fault in force (re-read whenever it changes while waiting).
async fn deliver(
    to: &mut OwnedWriteHalf,
    fault: &mut watch::Receiver<Fault>,
    read_at: Instant,
    chunk: &[u8],
    delayed: bool,
) -> std::io::Result<()> {
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::PassThrough => return to.write_all(chunk).await,
            Fault::Latency(_) if !delayed => return to.write_all(chunk).await,
            Fault::Latency(delay) => {
                let due = read_at + delay;
                tokio::select! {
                    () = tokio::time::sleep_until(due) => return to.write_all(chunk).await,
                    changed = fault.changed() => {
                        if changed.is_err() {
                            return to.write_all(chunk).await;
                        }
                    }
                }
            }
            Fault::BlackHole => {
                if fault.changed().await.is_err() {
                    return Err(std::io::Error::other("the proxy is gone"));
                }
            }
            Fault::Throttle(rate) => return throttled(to, chunk, rate).await,
        }
    }
}

/// Write `chunk` in slices of a twentieth of a second's worth, pausing after each.
async fn throttled(to: &mut OwnedWriteHalf, chunk: &[u8], rate: u64) -> std::io::Result<()> {
    let slice = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
    for piece in chunk.chunks(slice) {
        to.write_all(piece).await?;
        let secs = piece.len() as f64 / rate.max(1) as f64;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
    Ok(())
}
