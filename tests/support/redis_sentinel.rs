//! A private Sentinel-managed Redis for integration tests: a primary, one replica and three
//! sentinels, all `redis-server` processes on free loopback ports.
//!
//! [`RedisSentinelSet::start`] starts the primary and the replica (through
//! [`RedisServer`]), writes one configuration file per sentinel (`sentinel monitor` with a
//! quorum of 2, a one second `down-after-milliseconds`, a three second `failover-timeout`),
//! starts the sentinels with `redis-server <conf> --sentinel`, and waits until every sentinel
//! sees the replica and the replica is in sync. Dropping the fixture kills every process and
//! removes the temporary directories. The shared system Redis, if there is one, is never used.
//!
//! The fixture talks to the servers through the `redis` crate, so it exists only with the
//! crate's `redis` feature.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::redis_server::{create_temp_dir, free_port, RedisServer, TempDir};

/// The name the sentinels know the master set by.
pub const MASTER: &str = "mymaster";

const PROGRAM: &str = "redis-server";
const NOT_FOUND: &str = "redis-server not found on PATH: install it with \
    `apt-get install -y redis-server` (the test script scripts/test.sh does this)";

/// Sentinels in the set.
const SENTINELS: usize = 3;
/// How long the sentinels have to answer and to see the replica.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect, read and write timeout of the fixture's own commands.
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// A primary, a replica and three sentinels; see the module documentation.
pub struct RedisSentinelSet {
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    // Declared last so it is removed after the processes are gone.
    dir: TempDir,
}

impl std::fmt::Debug for RedisSentinelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinelSet")
            .field("servers", &self.server_ports())
            .field("sentinels", &self.sentinel_ports())
            .finish()
    }
}

/// One sentinel process.
struct SentinelProcess {
    port: u16,
    child: Child,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisSentinelSet {
    /// Starts the set and waits until it is ready for a failover.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or the set did not come up in time.
    pub fn start() -> RedisSentinelSet {
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port]);
        let dir = create_temp_dir("sentinel");
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for index in 0..SENTINELS {
            sentinels.push(start_sentinel(&dir.0, index, primary.port()));
        }
        let set = RedisSentinelSet {
            servers: vec![primary, replica],
            sentinels,
            dir,
        };
        set.wait_until_ready();
        set
    }

    /// The `redis://` URLs of the sentinels.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports()
            .into_iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The ports of the two data servers (the first one started as the primary).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(RedisServer::port).collect()
    }

    /// The data server on `port`.
    ///
    /// # Panics
    ///
    /// If no server of the set listens there.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of the set on port {port}"))
    }

    /// The port of the primary as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinel_ports().into_iter().find_map(|port| {
            let reply: Vec<String> = query(
                port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER),
            )
            .ok()?;
            reply.get(1)?.parse().ok()
        })
    }

    /// The role (`master` or `slave`) the server on `port` reports.
    pub fn role_of(&self, port: u16) -> Option<String> {
        let info: String = query(port, redis::cmd("INFO").arg("replication")).ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("role:"))
            .map(|role| role.trim().to_owned())
    }

    /// Asks the first sentinel to fail the master over to the replica (`SENTINEL FAILOVER`).
    ///
    /// # Panics
    ///
    /// If the sentinel refuses.
    pub fn failover(&self) {
        let port = self.sentinels.first().map(|s| s.port).unwrap_or_default();
        let reply: Result<String, _> =
            query(port, redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER));
        assert!(
            matches!(reply.as_deref(), Ok("OK")),
            "SENTINEL FAILOVER refused: {reply:?}"
        );
    }

    /// Waits until the sentinels name a primary other than `old` and that server reports
    /// itself a master. Returns its port.
    pub fn wait_for_new_primary(&self, old: u16, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(port) = self.primary_port().filter(|port| *port != old) {
                if self.role_of(port).as_deref() == Some("master") {
                    return Some(port);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the server on `port` reports `role` (`master` or `slave`).
    pub fn wait_for_role(&self, port: u16, role: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.role_of(port).as_deref() == Some(role) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Crashes the data server on `port` (SIGKILL), as [`RedisServer::kill`].
    ///
    /// # Panics
    ///
    /// If no server of the set listens there.
    pub fn kill(&mut self, port: u16) {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of the set on port {port}"))
            .kill();
    }

    /// The private directory of the sentinels (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Waits until every sentinel sees the replica and the replica is in sync.
    fn wait_until_ready(&self) {
        let replica_port = self.servers.get(1).map(RedisServer::port).unwrap_or(0);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let sentinels_see_it = self.sentinel_ports().into_iter().all(|port| {
                query::<Vec<HashMap<String, String>>>(
                    port,
                    redis::cmd("SENTINEL").arg("replicas").arg(MASTER),
                )
                .map(|replicas| {
                    replicas.iter().any(|replica| {
                        replica.get("port").map(String::as_str)
                            == Some(replica_port.to_string().as_str())
                            && replica
                                .get("flags")
                                .is_some_and(|flags| !flags.contains("disconnected"))
                    })
                })
                .unwrap_or(false)
            });
            let in_sync = query::<String>(replica_port, redis::cmd("INFO").arg("replication"))
                .map(|info| info.contains("master_link_status:up"))
                .unwrap_or(false);
            if sentinels_see_it && in_sync {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the sentinels did not see the replica within {READY_TIMEOUT:?} \
                     (replica in sync: {in_sync}); logs:\n{}",
                    self.log_tails()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tails(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| {
                let text = fs::read_to_string(self.dir.0.join(format!("sentinel-{}.log", s.port)))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(10);
                format!(
                    "sentinel {}:\n{}",
                    s.port,
                    lines.get(start..).unwrap_or_default().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisSentinelSet {
    fn drop(&mut self) {
        // Sentinels first, so that they do not react to the servers going away.
        self.sentinels.clear();
        self.servers.clear();
    }
}

/// One command to the server on `port`, over a fresh connection with a timeout.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = client.get_connection_with_timeout(CMD_TIMEOUT)?;
    connection.set_read_timeout(Some(CMD_TIMEOUT))?;
    connection.set_write_timeout(Some(CMD_TIMEOUT))?;
    cmd.query(&mut connection)
}

/// Writes the configuration of sentinel `index` and starts it, retrying on another port if the
/// one picked was taken in between; waits until it answers `PING`.
fn start_sentinel(dir: &Path, index: usize, primary_port: u16) -> SentinelProcess {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = match free_port() {
            Ok(port) => port,
            Err(e) => {
                failures.push(format!("no free port: {e}"));
                continue;
            }
        };
        let work = dir.join(format!("sentinel-{index}-{port}"));
        if let Err(e) = fs::create_dir_all(&work) {
            panic!("could not create {}: {e}", work.display());
        }
        let conf = work.join("sentinel.conf");
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             dir {}\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            work.display()
        );
        if let Err(e) = fs::write(&conf, text) {
            panic!("could not write {}: {e}", conf.display());
        }
        let log_path = dir.join(format!("sentinel-{port}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("could not open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("could not duplicate the sentinel log handle: {e}"));
        let spawned = Command::new(PROGRAM)
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let mut sentinel = match spawned {
            Ok(child) => SentinelProcess { port, child },
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Err(e) => panic!("could not start a sentinel: {e}"),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = sentinel.child.try_wait() {
                failures.push(format!("port {port}: the sentinel exited with {status}"));
                break;
            }
            if query::<String>(port, &redis::cmd("PING")).as_deref() == Ok("PONG") {
                return sentinel;
            }
            if Instant::now() >= deadline {
                panic!("the sentinel on port {port} did not answer PING within {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start a sentinel: {}", failures.join("; "));
}
