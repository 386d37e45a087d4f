//! A private `redis-server` process for integration tests.
//!
//! [`RedisServer::start`] launches a fresh `redis-server` (found on `PATH`) on
//! a free loopback port, with persistence switched off and its working
//! directory in a temporary directory of its own. The process is killed and
//! the directory removed when the [`RedisServer`] is dropped, so every test
//! gets an empty server that nothing else talks to. The shared system Redis
//! on port 6379, if there is one, is never used.
//!
//! Besides starting and stopping, the fixture can simulate failures: [`kill`]
//! (the server crashes), [`pause`]/[`resume`] (the server hangs: connections
//! are accepted by the kernel but nothing answers) and [`restart`] (the server
//! comes back on the same port, empty).
//!
//! A small blocking RESP client ([`RedisServer::cmd`] and friends) lets tests
//! look at what the code under test wrote, without going through the `redis`
//! crate.
//!
//! # Use from async tests
//!
//! Every method blocks the calling thread, but only briefly: commands go over
//! loopback with a 5 s timeout, startup waits at most 10 s. The server is a
//! separate process that does not depend on the test's runtime, so calling
//! these methods from inside `#[tokio::test]` (even on the current-thread
//! runtime) cannot deadlock. The one way to block for the full timeout is to
//! send a command to a paused server.
//!
//! [`kill`]: RedisServer::kill
//! [`pause`]: RedisServer::pause
//! [`resume`]: RedisServer::resume
//! [`restart`]: RedisServer::restart

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The program that is launched.
const PROGRAM: &str = "redis-server";

/// Message used when the program cannot be found.
const NOT_FOUND: &str = "redis-server not found on PATH: install it with \
    `apt-get install -y redis-server` (the test script scripts/test.sh does this)";

/// How long a freshly started server has to answer `PING`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect, read and write timeout of [`RedisServer::cmd`].
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh ports [`RedisServer::start_with`] tries before giving up.
const START_ATTEMPTS: usize = 5;

/// How long [`RedisServer::restart`] keeps retrying when the port is busy.
const RESTART_BIND_WINDOW: Duration = Duration::from_secs(5);

/// Longest reply line the client accepts (status, error, length headers).
const MAX_LINE: u64 = 1 << 20;

/// Largest bulk string the client accepts (Redis' own limit).
const MAX_BULK: usize = 512 << 20;

/// Deepest array nesting the client accepts.
const MAX_DEPTH: usize = 32;

/// One RESP2 reply, as read by [`RedisServer::cmd`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status reply such as `+OK`.
    Simple(String),
    /// An error reply such as `-ERR unknown command`.
    Error(String),
    /// An integer reply.
    Int(i64),
    /// A bulk string; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// True for the status reply `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Simple(s) if s == "OK")
    }

    /// The integer of an [`Reply::Int`], if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The bytes of a non-nil [`Reply::Bulk`], if it is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// The elements of a non-nil [`Reply::Array`], if it is one.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

/// A private `redis-server` child process; see the module documentation.
///
/// Dropping it kills the process (resuming it first if paused) and removes
/// its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    extra_args: Vec<String>,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

/// A directory that is removed, with its contents, when dropped (also when a
/// panic unwinds out of startup).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl RedisServer {
    /// Starts a server with the default settings and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or no server came up.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra command-line settings appended after the
    /// fixture's own ones (for example `&["--maxmemory", "2mb"]`) and waits
    /// until it answers `PING`. The same settings are used again by
    /// [`RedisServer::restart`].
    ///
    /// Do not pass `--port`, `--bind` or `--dir`: the fixture owns them.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or no server came up.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let extra_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let dir = create_temp_dir("server");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => {
                    failures.push(format!("could not reserve a free port: {e}"));
                    continue;
                }
            };
            let mut child = spawn(port, &extra_args, &dir.0);
            match wait_until_ready(&mut child, port) {
                Ready::Yes => {
                    return RedisServer {
                        port,
                        extra_args,
                        dir,
                        child: Mutex::new(Some(child)),
                        paused: AtomicBool::new(false),
                    };
                }
                // Most likely someone else took the port between our probe
                // and the server's bind: try another one.
                Ready::Exited(status) => {
                    failures.push(format!("port {port}: redis-server exited with {status}"));
                }
                Ready::Foreign => {
                    reap(&mut child);
                    failures.push(format!("port {port}: another process answers there"));
                }
                Ready::TimedOut => {
                    reap(&mut child);
                    let log = log_tail(&dir.0);
                    panic!(
                        "redis-server on port {port} did not answer PING within {:?}; log:\n{log}",
                        STARTUP_TIMEOUT
                    );
                }
            }
        }
        let log = log_tail(&dir.0);
        panic!(
            "could not start redis-server after {START_ATTEMPTS} attempts: {}; log:\n{log}",
            failures.join("; ")
        );
    }

    /// The `redis://` URL of the server, e.g. `redis://127.0.0.1:41234/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The operating-system process id, or `None` after [`RedisServer::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The server's private working directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// True while the process is alive (a paused process counts as alive).
    pub fn is_running(&self) -> bool {
        match self.child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server abruptly (SIGKILL) and waits for it to exit, like a
    /// crash. Afterwards connections to [`RedisServer::addr`] are refused.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child().take() {
            if self.paused.load(Ordering::SeqCst) {
                let _ = signal(child.id(), "CONT");
            }
            reap(&mut child);
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections,
    /// but nothing is read or answered until [`RedisServer::resume`].
    ///
    /// # Panics
    ///
    /// If the server is not running or the signal cannot be sent.
    pub fn pause(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("pause: redis-server is not running"));
        if let Err(e) = signal(pid, "STOP") {
            panic!("pause: could not stop redis-server (pid {pid}): {e}");
        }
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused server run again (SIGCONT).
    ///
    /// # Panics
    ///
    /// If the server is not running or the signal cannot be sent.
    pub fn resume(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("resume: redis-server is not running"));
        if let Err(e) = signal(pid, "CONT") {
            panic!("resume: could not continue redis-server (pid {pid}): {e}");
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Kills the server if it is running, then starts a new one on the same
    /// port with the same extra settings and waits until it answers `PING`.
    /// The new server is empty (nothing is persisted). If the port cannot be
    /// bound right away it is retried for a few seconds.
    ///
    /// # Panics
    ///
    /// If no server came up on the port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_BIND_WINDOW;
        loop {
            let mut child = spawn(self.port, &self.extra_args, &self.dir.0);
            let problem = match wait_until_ready(&mut child, self.port) {
                Ready::Yes => {
                    *self.child() = Some(child);
                    return;
                }
                Ready::Exited(status) => format!("redis-server exited with {status}"),
                Ready::Foreign => {
                    reap(&mut child);
                    "another process answers on the port".to_owned()
                }
                Ready::TimedOut => {
                    reap(&mut child);
                    format!("no answer to PING within {STARTUP_TIMEOUT:?}")
                }
            };
            if Instant::now() >= deadline {
                panic!(
                    "could not restart redis-server on port {}: {problem}; log:\n{}",
                    self.port,
                    log_tail(&self.dir.0)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command and reads one reply, over a fresh connection with a
    /// 5 s timeout. Error replies come back as [`Reply::Error`].
    ///
    /// # Panics
    ///
    /// On a connection or protocol failure (use [`RedisServer::try_cmd`] to
    /// observe those).
    pub fn cmd(&self, args: &[&[u8]]) -> Reply {
        self.try_cmd(args).unwrap_or_else(|e| {
            panic!(
                "redis command {} on port {} failed: {e}",
                describe(args),
                self.port
            )
        })
    }

    /// Like [`RedisServer::cmd`] with string arguments.
    pub fn cmd_str(&self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&args)
    }

    /// Like [`RedisServer::cmd`], but returns connection and protocol
    /// failures instead of panicking (for example while the server is down).
    pub fn try_cmd(&self, args: &[&[u8]]) -> io::Result<Reply> {
        let stream = TcpStream::connect_timeout(&self.addr(), CMD_TIMEOUT)?;
        stream.set_read_timeout(Some(CMD_TIMEOUT))?;
        stream.set_write_timeout(Some(CMD_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut writer = &stream;
        writer.write_all(&encode(args))?;
        writer.flush()?;
        read_reply(&mut BufReader::new(&stream), 0)
    }

    /// All keys matching a glob `pattern`, collected with `SCAN ... MATCH
    /// pattern COUNT 1000` until the cursor returns to 0. Sorted, without
    /// duplicates.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let reply = self.cmd(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ]);
            let (next, batch) = match reply.as_array() {
                Some([Reply::Bulk(Some(next)), Reply::Array(Some(batch))]) => (next.clone(), batch),
                _ => panic!("unexpected SCAN reply: {reply:?}"),
            };
            for key in batch {
                match key {
                    Reply::Bulk(Some(k)) => keys.push(String::from_utf8_lossy(k).into_owned()),
                    other => panic!("unexpected key in SCAN reply: {other:?}"),
                }
            }
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The remaining time to live of `key` in seconds: -2 if the key does not
    /// exist, -1 if it has no expiry.
    pub fn ttl(&self, key: &str) -> i64 {
        let reply = self.cmd(&[b"TTL", key.as_bytes()]);
        reply
            .as_int()
            .unwrap_or_else(|| panic!("unexpected TTL reply for {key:?}: {reply:?}"))
    }

    /// The value stored at `key` (a string key), or `None` if it is missing.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.cmd(&[b"GET", key.as_bytes()]) {
            Reply::Bulk(value) => value,
            other => panic!("unexpected GET reply for {key:?}: {other:?}"),
        }
    }

    /// Stores `value` at `key` with a plain `SET` (no expiry).
    pub fn set_raw(&self, key: &str, value: &[u8]) {
        let reply = self.cmd(&[b"SET", key.as_bytes(), value]);
        assert!(reply.is_ok(), "unexpected SET reply for {key:?}: {reply:?}");
    }

    /// Deletes every key on the server.
    pub fn flushall(&self) {
        let reply = self.cmd(&[b"FLUSHALL"]);
        assert!(reply.is_ok(), "unexpected FLUSHALL reply: {reply:?}");
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The directory goes with the `dir` field, after this.
        self.kill();
    }
}

/// Outcome of waiting for a freshly spawned server.
enum Ready {
    /// Our process answers `PING`.
    Yes,
    /// The process exited before answering (typically: port taken).
    Exited(ExitStatus),
    /// Something answers on the port, but it is not our process.
    Foreign,
    /// Nothing answered in time.
    TimedOut,
}

/// Reserves a free loopback port by binding port 0 and releasing it.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Creates a fresh, uniquely named directory for `what` (`server`, `cluster`, ...) under the
/// system temp dir.
pub fn create_temp_dir(what: &str) -> TempDir {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut last_error = None;
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "redis-test-{what}-{}-{n}-{nanos}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return TempDir(dir),
            Err(e) => last_error = Some(e),
        }
    }
    panic!(
        "could not create a temporary directory for the {what} under {}: {last_error:?}",
        base.display()
    );
}

/// Launches `redis-server` on `port`; its output goes to `redis.log` in `dir`.
fn spawn(port: u16, extra_args: &[String], dir: &Path) -> Child {
    let log = open_log(dir);
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("could not duplicate the redis-server log handle: {e}"));
    let port = port.to_string();
    let result = Command::new(PROGRAM)
        .args(["--port", &port, "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
        Err(e) => panic!("could not start redis-server: {e}"),
    }
}

fn open_log(dir: &Path) -> File {
    let path = dir.join("redis.log");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("could not open {}: {e}", path.display()))
}

/// The last lines of the server log, for panic messages.
fn log_tail(dir: &Path) -> String {
    match fs::read_to_string(dir.join("redis.log")) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(20);
            lines.get(start..).unwrap_or_default().join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// Polls the port until `child` answers `PING`, exits, or time runs out.
fn wait_until_ready(child: &mut Child, port: u16) -> Ready {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Ready::Exited(status);
        }
        if answers_ping(&addr) {
            // Make sure the answer came from our process and not from
            // something that grabbed the port first (our server would then
            // fail to bind and exit).
            return match server_pid(&addr) {
                Some(pid) if pid == child.id() => Ready::Yes,
                _ => match child.try_wait() {
                    Ok(Some(status)) => Ready::Exited(status),
                    _ => Ready::Foreign,
                },
            };
        }
        if Instant::now() >= deadline {
            return Ready::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True if a plain `PING\r\n` on a new connection gets `+PONG` back.
fn answers_ping(addr: &SocketAddr) -> bool {
    let probe = || -> io::Result<bool> {
        let timeout = Duration::from_millis(500);
        let stream = TcpStream::connect_timeout(addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        (&stream).write_all(b"PING\r\n")?;
        let mut line = Vec::new();
        BufReader::new(&stream)
            .take(64)
            .read_until(b'\n', &mut line)?;
        Ok(line.starts_with(b"+PONG"))
    };
    probe().unwrap_or(false)
}

/// The `process_id` reported by `INFO server` at `addr`.
fn server_pid(addr: &SocketAddr) -> Option<u32> {
    let timeout = Duration::from_millis(500);
    let stream = TcpStream::connect_timeout(addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    (&stream).write_all(&encode(&[b"INFO", b"server"])).ok()?;
    let reply = read_reply(&mut BufReader::new(&stream), 0).ok()?;
    let text = String::from_utf8_lossy(reply.as_bytes()?).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Kills (SIGKILL) and reaps a child, ignoring one that already exited.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends signal `name` (e.g. `STOP`) to `pid` with the shell's `kill`.
fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -s {name} {pid}: {status}")))
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A short printable form of a command for panic messages.
fn describe(args: &[&[u8]]) -> String {
    let words: Vec<String> = args
        .iter()
        .take(4)
        .map(|a| String::from_utf8_lossy(a.get(..a.len().min(40)).unwrap_or(a)).into_owned())
        .collect();
    let more = if args.len() > 4 { " ..." } else { "" };
    format!("`{}{more}`", words.join(" "))
}

fn protocol_error(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one CRLF-terminated line without the terminator.
fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("reply line not terminated by CRLF"));
    }
    line.truncate(line.len().saturating_sub(2));
    Ok(line)
}

fn parse_int(bytes: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol_error(format!("bad integer {:?}", String::from_utf8_lossy(bytes))))
}

/// Reads one RESP2 reply.
fn read_reply(reader: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > MAX_DEPTH {
        return Err(protocol_error("reply nested too deeply"));
    }
    let line = read_line(reader)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| protocol_error("empty reply line"))?;
    match kind {
        b'+' => Ok(Reply::Simple(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => parse_int(rest).map(Reply::Int),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= MAX_BULK)
                .ok_or_else(|| protocol_error(format!("bulk string too long: {len}")))?;
            let mut data = vec![0; len];
            reader.read_exact(&mut data)?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(protocol_error("bulk string not terminated by CRLF"));
            }
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let count = parse_int(rest)?;
            if count < 0 {
                return Ok(Reply::Array(None));
            }
            let count = usize::try_from(count)
                .map_err(|_| protocol_error(format!("array too long: {count}")))?;
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                items.push(read_reply(reader, depth.saturating_add(1))?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(protocol_error(format!(
            "unknown reply type byte {:?}",
            char::from(*other)
        ))),
    }
}
