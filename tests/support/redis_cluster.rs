//! A private Redis Cluster for integration tests: six `redis-server` processes (three
//! primaries, three replicas) on free loopback ports, formed with `redis-cli --cluster create`.
//!
//! [`RedisCluster::start`] picks ports whose cluster bus port (port + 10000) is free too,
//! starts the nodes with persistence off in a temporary directory of their own, forms the
//! cluster and waits until every node reports `cluster_state:ok`. Dropping the fixture kills
//! every node and removes the directory. The shared system Redis, if there is one, is never
//! used.
//!
//! A small blocking RESP client ([`RedisCluster::cmd`]) talks to one node at a time, so tests
//! can look at what each primary holds; [`RedisCluster::kill`] crashes one node to make the
//! cluster fail over, and [`RedisCluster::migrate_slot`] moves one hash slot to another primary
//! the way `redis-cli --cluster reshard` does.
//!
//! [`RedisCluster::start_tls`] starts the same cluster with TLS as well: every node also
//! listens on a TLS port, and the cluster bus and replication run over TLS, with the
//! certificates of a [`TestCertificates`] (made by `openssl` for the test). The plain ports
//! stay open for the fixture's own client.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::redis_server::{create_temp_dir, Reply, TempDir};

const SERVER: &str = "redis-server";
const CLI: &str = "redis-cli";
const INSTALL_HINT: &str = "install it with `apt-get install -y redis-server` \
    (which brings redis-cli too; the test script scripts/test.sh does this)";

/// Nodes in the cluster: three primaries, each with one replica.
const NODES: usize = 6;
/// `--cluster-node-timeout`, in milliseconds: how long a node may be silent before its peers
/// fail it over.
const NODE_TIMEOUT_MS: u64 = 2000;
/// Offset of the cluster bus port from the client port (fixed by Redis).
const BUS_OFFSET: u16 = 10000;
/// How long the nodes have to answer `PING` after they were started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster has to reach `cluster_state:ok` after it was formed.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of [`RedisCluster::cmd`].
const CMD_TIMEOUT: Duration = Duration::from_secs(5);
/// How many fresh sets of ports [`RedisCluster::start`] tries.
const START_ATTEMPTS: usize = 3;

/// Port choice and startup are serialised within the test binary, so that two tests starting
/// clusters at once do not pick the same ports.
static STARTING: Mutex<()> = Mutex::new(());

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

/// A running six-node Redis Cluster; see the module documentation.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Mutex<Vec<Node>>,
    ports: Vec<u16>,
    tls_ports: Vec<u16>,
    ca_file: Option<PathBuf>,
    // Declared last so it is removed after the processes are gone.
    dir: TempDir,
}

impl RedisCluster {
    /// Starts six nodes, forms the cluster (one replica per primary) and waits until every
    /// node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is not on `PATH`, or no cluster came up.
    pub fn start() -> RedisCluster {
        Self::start_inner(None)
    }

    /// Like [`RedisCluster::start`], with TLS on every node too (client ports, cluster bus and
    /// replication), using `certificates`; see the module documentation.
    ///
    /// # Panics
    ///
    /// Like [`RedisCluster::start`].
    pub fn start_tls(certificates: &TestCertificates) -> RedisCluster {
        Self::start_inner(Some(certificates))
    }

    fn start_inner(tls: Option<&TestCertificates>) -> RedisCluster {
        check_installed(SERVER);
        check_installed(CLI);
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = create_temp_dir("cluster");
            let started = {
                let _guard = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
                start_nodes(&dir.0, tls)
            };
            let nodes = match started {
                Ok(nodes) => nodes,
                Err(problem) => {
                    failures.push(problem);
                    continue;
                }
            };
            let ports = nodes.iter().map(|node| node.port).collect();
            let tls_ports = nodes.iter().filter_map(|node| node.tls_port).collect();
            let cluster = RedisCluster {
                nodes: Mutex::new(nodes),
                ports,
                tls_ports,
                ca_file: tls.map(|certificates| certificates.ca_file()),
                dir,
            };
            cluster.form();
            return cluster;
        }
        panic!(
            "could not start the cluster's nodes after {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        );
    }

    /// Every node's URL, `redis://127.0.0.1:PORT`.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The node URLs as one comma-separated list.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's TLS URL, `rediss://127.0.0.1:TLS_PORT` (empty without TLS).
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|port| format!("rediss://127.0.0.1:{port}"))
            .collect()
    }

    /// Every node's port, in start order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The ports of the nodes that are primaries now (and not failed), from the view of a
    /// live node, sorted.
    pub fn primaries(&self) -> Vec<u16> {
        self.cluster_nodes()
            .into_iter()
            .filter(|line| line.is_primary && !line.failed)
            .map(|line| line.port)
            .collect()
    }

    /// Waits until the first live node that answers sees exactly `count` primaries (right after
    /// the cluster forms, it may still take a node that is to become a replica for a primary
    /// without slots), at most `timeout`; returns whether it did.
    pub fn wait_until_primaries(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.primaries().len() == count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the live nodes that replicate the primary on `port`, sorted.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let nodes = self.cluster_nodes();
        let Some(id) = nodes
            .iter()
            .find(|line| line.port == port)
            .map(|line| line.id.clone())
        else {
            return Vec::new();
        };
        nodes
            .into_iter()
            .filter(|line| !line.is_primary && !line.failed && line.primary_id == id)
            .map(|line| line.port)
            .collect()
    }

    /// Whether the node on `port` is still running.
    pub fn is_running(&self, port: u16) -> bool {
        let mut nodes = self.lock_nodes();
        nodes
            .iter_mut()
            .find(|node| node.port == port)
            .and_then(|node| node.child.as_mut())
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the node on `port` abruptly (SIGKILL), like a crash, and waits for it to exit.
    pub fn kill(&self, port: u16) {
        let mut nodes = self.lock_nodes();
        if let Some(node) = nodes.iter_mut().find(|node| node.port == port) {
            if let Some(mut child) = node.child.take() {
                reap(&mut child);
            }
        }
    }

    /// Waits until every live node reports `cluster_state:ok`, at most `timeout`; returns
    /// whether they did.
    pub fn wait_until_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<u16> = self
                .ports
                .iter()
                .copied()
                .filter(|port| self.is_running(*port))
                .collect();
            if !live.is_empty() && live.iter().all(|port| self.state_ok(*port)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live replica's link to its primary is up, at most `timeout`; returns
    /// whether it was.
    pub fn wait_until_replicas_in_sync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let in_sync = self
                .ports
                .iter()
                .copied()
                .filter(|port| self.is_running(*port))
                .all(|port| {
                    let info = self.info(port, "replication");
                    !info.contains("role:slave") || info.contains("master_link_status:up")
                });
            if in_sync {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command to the node on `port` and reads one reply, over a fresh connection
    /// with a 5 s timeout. Error replies come back as [`Reply::Error`].
    ///
    /// # Panics
    ///
    /// On a connection or protocol failure (use [`RedisCluster::try_cmd`] to observe those).
    pub fn cmd(&self, port: u16, args: &[&str]) -> Reply {
        self.try_cmd(port, args)
            .unwrap_or_else(|e| panic!("redis command {args:?} on port {port} failed: {e}"))
    }

    /// Like [`RedisCluster::cmd`], but returns connection and protocol failures.
    pub fn try_cmd(&self, port: u16, args: &[&str]) -> io::Result<Reply> {
        command(port, args)
    }

    /// All keys matching `pattern` on the node on `port` (its own keyspace only), sorted.
    pub fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let reply = self.cmd(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
            let (next, batch) = match reply.as_array() {
                Some([Reply::Bulk(Some(next)), Reply::Array(Some(batch))]) => {
                    (String::from_utf8_lossy(next).into_owned(), batch.clone())
                }
                _ => panic!("unexpected SCAN reply from port {port}: {reply:?}"),
            };
            for key in batch {
                match key {
                    Reply::Bulk(Some(k)) => keys.push(String::from_utf8_lossy(&k).into_owned()),
                    other => panic!("unexpected key in SCAN reply: {other:?}"),
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// All keys matching `pattern` on every live primary, with the primary's port, sorted.
    pub fn keys_by_primary(&self, pattern: &str) -> Vec<(u16, Vec<String>)> {
        self.primaries()
            .into_iter()
            .map(|port| (port, self.keys_on(port, pattern)))
            .collect()
    }

    /// All keys matching `pattern` on every live primary together, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .keys_by_primary(pattern)
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect();
        keys.sort();
        keys
    }

    /// The remaining time to live of `key` in seconds, asked of the live primary that holds
    /// it: -2 if no primary has it, -1 if it has no expiry.
    pub fn ttl(&self, key: &str) -> i64 {
        for port in self.primaries() {
            if let Reply::Int(ttl) = self.cmd(port, &["TTL", key]) {
                if ttl != -2 {
                    return ttl;
                }
            }
        }
        -2
    }

    /// The hash slot of `key`, as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.any_live_port();
        match self.cmd(port, &["CLUSTER", "KEYSLOT", key]) {
            Reply::Int(slot) => u16::try_from(slot).unwrap(),
            other => panic!("unexpected CLUSTER KEYSLOT reply: {other:?}"),
        }
    }

    /// The cluster node id of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        match self.cmd(port, &["CLUSTER", "MYID"]) {
            Reply::Bulk(Some(id)) => String::from_utf8_lossy(&id).into_owned(),
            other => panic!("unexpected CLUSTER MYID reply from port {port}: {other:?}"),
        }
    }

    /// The port of the primary that owns `slot` in the view of the node on `viewer`, if any.
    pub fn owner_seen_by(&self, viewer: u16, slot: u16) -> Option<u16> {
        match self.try_cmd(viewer, &["CLUSTER", "NODES"]) {
            Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text)
                .lines()
                .filter_map(NodeLine::parse)
                .find(|line| line.is_primary && line.owns(slot))
                .map(|line| line.port),
            _ => None,
        }
    }

    /// The port of the primary that owns `slot`, in the view of the first live node that
    /// answers.
    pub fn owner_of(&self, slot: u16) -> Option<u16> {
        self.cluster_nodes()
            .into_iter()
            .find(|line| line.is_primary && line.owns(slot))
            .map(|line| line.port)
    }

    /// Waits until every live node says the primary on `port` owns `slot`, at most `timeout`;
    /// returns whether they did.
    pub fn wait_until_slot_owned_by(&self, slot: u16, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let agreed = self
                .ports
                .iter()
                .copied()
                .filter(|viewer| self.is_running(*viewer))
                .all(|viewer| self.owner_seen_by(viewer, slot) == Some(port));
            if agreed {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many keys of `slot` the node on `port` holds (`CLUSTER COUNTKEYSINSLOT`).
    pub fn count_keys_in_slot(&self, port: u16, slot: u16) -> i64 {
        let slot = slot.to_string();
        match self.cmd(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot]) {
            Reply::Int(count) => count,
            other => panic!("unexpected CLUSTER COUNTKEYSINSLOT reply from port {port}: {other:?}"),
        }
    }

    /// Moves `slot` from the primary on `from` to the primary on `to`, as a reshard does:
    /// `SETSLOT IMPORTING` on the target and `MIGRATING` on the source, then the keys in about
    /// `batches` `MIGRATE` calls (`CLUSTER GETKEYSINSLOT` on the source until it has none
    /// left), then `SETSLOT NODE` on the target, the source and every other primary.
    ///
    /// `pause` is slept after the slot is marked and after every batch, so that clients meet
    /// the slot while it is moving (`ASK`, and `TRYAGAIN` for multi-key commands while its keys
    /// are split between the two nodes). Returns how many keys were moved.
    ///
    /// # Panics
    ///
    /// If a node refuses a step.
    pub fn migrate_slot(
        &self,
        slot: u16,
        from: u16,
        to: u16,
        batches: usize,
        pause: Duration,
    ) -> usize {
        let from_id = self.node_id(from);
        let to_id = self.node_id(to);
        let slot_text = slot.to_string();
        let expect_ok = |port: u16, args: &[&str]| {
            let reply = self.cmd(port, args);
            assert!(reply.is_ok(), "{args:?} on port {port}: {reply:?}");
        };
        expect_ok(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        );
        expect_ok(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        );
        thread::sleep(pause);
        let total = usize::try_from(self.count_keys_in_slot(from, slot)).unwrap_or(0);
        let batch = total.div_ceil(batches.max(1)).max(1).to_string();
        let to_port = to.to_string();
        let timeout_ms = CMD_TIMEOUT.as_millis().to_string();
        let mut moved = 0;
        loop {
            let reply = self.cmd(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, &batch]);
            let keys: Vec<String> = match reply.as_array() {
                Some(keys) => keys
                    .iter()
                    .map(|key| match key.as_bytes() {
                        Some(key) => String::from_utf8_lossy(key).into_owned(),
                        None => panic!("unexpected key in GETKEYSINSLOT reply: {key:?}"),
                    })
                    .collect(),
                None => panic!("unexpected CLUSTER GETKEYSINSLOT reply from {from}: {reply:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &to_port,
                "",
                "0",
                &timeout_ms,
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            match self.cmd(from, &args) {
                // NOKEY: the keys expired or were deleted in the meantime.
                Reply::Simple(status) if status == "OK" || status == "NOKEY" => {}
                other => panic!("MIGRATE of slot {slot} from {from} to {to} failed: {other:?}"),
            }
            moved += keys.len();
            thread::sleep(pause);
        }
        // The target first, so that the slot is never left without an owner that has its keys.
        let others: Vec<u16> = self
            .primaries()
            .into_iter()
            .filter(|port| *port != from && *port != to)
            .collect();
        for port in [to, from].into_iter().chain(others) {
            expect_ok(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
        moved
    }

    /// The error replies every live node has sent since it started, by error code
    /// (`INFO errorstats`: `MOVED`, `ASK`, `TRYAGAIN`, `CROSSSLOT`, ...), added up over the nodes.
    pub fn error_replies(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for port in self.ports.iter().copied().filter(|p| self.is_running(*p)) {
            for line in self.info(port, "errorstats").lines() {
                // errorstat_MOVED:count=12
                let Some((code, count)) = line
                    .strip_prefix("errorstat_")
                    .and_then(|rest| rest.split_once(":count="))
                else {
                    continue;
                };
                let count: u64 = count.trim().parse().unwrap_or(0);
                *counts.entry(code.to_owned()).or_insert(0) += count;
            }
        }
        counts
    }

    /// How many clients subscribe to `channel`, added up over every live node (a node counts
    /// only its own subscribers).
    pub fn subscribers(&self, channel: &str) -> i64 {
        self.ports
            .iter()
            .copied()
            .filter(|port| self.is_running(*port))
            .map(
                |port| match self.try_cmd(port, &["PUBSUB", "NUMSUB", channel]) {
                    Ok(reply) => match reply.as_array() {
                        Some([_, Reply::Int(n)]) => *n,
                        _ => 0,
                    },
                    Err(_) => 0,
                },
            )
            .sum()
    }

    /// The cluster's temporary directory (node logs and configuration files).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn any_live_port(&self) -> u16 {
        self.ports
            .iter()
            .copied()
            .find(|port| self.is_running(*port))
            .expect("no node of the cluster is running")
    }

    fn info(&self, port: u16, section: &str) -> String {
        match self.try_cmd(port, &["INFO", section]) {
            Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
            _ => String::new(),
        }
    }

    fn state_ok(&self, port: u16) -> bool {
        match self.try_cmd(port, &["CLUSTER", "INFO"]) {
            Ok(Reply::Bulk(Some(text))) => {
                String::from_utf8_lossy(&text).contains("cluster_state:ok")
            }
            _ => false,
        }
    }

    /// `CLUSTER NODES` from the first live node that answers, parsed.
    fn cluster_nodes(&self) -> Vec<NodeLine> {
        for port in self.ports.iter().copied().filter(|p| self.is_running(*p)) {
            if let Ok(Reply::Bulk(Some(text))) = self.try_cmd(port, &["CLUSTER", "NODES"]) {
                let mut lines: Vec<NodeLine> = String::from_utf8_lossy(&text)
                    .lines()
                    .filter_map(NodeLine::parse)
                    .collect();
                lines.sort_by_key(|line| line.port);
                return lines;
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// Runs `redis-cli --cluster create` and waits for `cluster_state:ok` everywhere.
    fn form(&self) {
        // Over TLS when the bus runs over TLS: the nodes then meet on their TLS ports.
        let ports = if self.tls_ports.is_empty() {
            &self.ports
        } else {
            &self.tls_ports
        };
        let addrs: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut cli = Command::new(CLI);
        if let Some(ca) = &self.ca_file {
            cli.arg("--tls").arg("--cacert").arg(ca);
        }
        let output = cli
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run {CLI}: {e}"));
        assert!(
            output.status.success(),
            "{CLI} --cluster create failed ({}):\n{}\n{}\nlogs:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tails()
        );
        assert!(
            self.wait_until_ok(FORM_TIMEOUT),
            "the cluster did not reach cluster_state:ok within {FORM_TIMEOUT:?}; logs:\n{}",
            self.log_tails()
        );
    }

    fn log_tails(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("--- node {port}\n{}", log_tail(&self.dir.0, *port)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in self.lock_nodes().iter_mut() {
            if let Some(mut child) = node.child.take() {
                reap(&mut child);
            }
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    is_primary: bool,
    failed: bool,
    primary_id: String,
    /// The slot ranges the node owns, inclusive (migration markers `[slot->-id]` left out).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// `<id> <ip:port@cport> <flags> <primary id or -> <ping> <pong> <epoch> <link> <slots...>`
    fn parse(line: &str) -> Option<NodeLine> {
        let mut fields = line.split_whitespace();
        let id = fields.next()?.to_owned();
        let addr = fields.next()?;
        let flags = fields.next()?;
        let primary_id = fields.next()?.to_owned();
        let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let flags: Vec<&str> = flags.split(',').collect();
        let slots = fields
            .skip(4)
            .filter(|range| !range.starts_with('['))
            .filter_map(|range| match range.split_once('-') {
                Some((start, end)) => Some((start.parse().ok()?, end.parse().ok()?)),
                None => range.parse().ok().map(|slot| (slot, slot)),
            })
            .collect();
        Some(NodeLine {
            id,
            port,
            is_primary: flags.contains(&"master"),
            failed: flags.contains(&"fail") || flags.contains(&"fail?"),
            primary_id,
            slots,
        })
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&slot))
    }
}

/// Panics with the install hint if `program` cannot be run.
fn check_installed(program: &str) {
    let result = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::NotFound {
            panic!("{program} not found on PATH: {INSTALL_HINT}");
        }
        panic!("could not run {program}: {e}");
    }
}

/// Picks ports, starts a node on each and waits until all answer `PING` as themselves. On a
/// failure every node started so far is killed.
fn start_nodes(dir: &Path, tls: Option<&TestCertificates>) -> Result<Vec<Node>, String> {
    // With TLS the bus port follows the TLS port: twelve ports, each with its bus port free.
    let wanted = if tls.is_some() { 2 * NODES } else { NODES };
    let mut ports = free_cluster_ports(wanted).map_err(|e| format!("no free ports: {e}"))?;
    let tls_ports: Vec<Option<u16>> = if tls.is_some() {
        ports.split_off(NODES).into_iter().map(Some).collect()
    } else {
        vec![None; NODES]
    };
    let mut nodes: Vec<Node> = Vec::with_capacity(NODES);
    let kill_all = |nodes: &mut Vec<Node>| {
        for node in nodes.iter_mut() {
            if let Some(mut child) = node.child.take() {
                reap(&mut child);
            }
        }
    };
    for (port, tls_port) in ports.into_iter().zip(tls_ports) {
        let tls = tls.zip(tls_port);
        match spawn(port, tls, dir) {
            Ok(child) => nodes.push(Node {
                port,
                tls_port,
                child: Some(child),
            }),
            Err(problem) => {
                kill_all(&mut nodes);
                return Err(problem);
            }
        }
    }
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    for index in 0..nodes.len() {
        let Some(node) = nodes.get_mut(index) else {
            break;
        };
        let port = node.port;
        let Some(child) = node.child.as_mut() else {
            break;
        };
        let pid = child.id();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = log_tail(dir, port);
                kill_all(&mut nodes);
                return Err(format!("node on port {port} exited with {status}: {log}"));
            }
            if let Ok(Reply::Bulk(Some(info))) = command(port, &["INFO", "server"]) {
                let text = String::from_utf8_lossy(&info).into_owned();
                let answered_by = text
                    .lines()
                    .find_map(|line| line.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if answered_by == Some(pid) {
                    break;
                }
                kill_all(&mut nodes);
                return Err(format!("another process answers on port {port}"));
            }
            if Instant::now() >= deadline {
                let log = log_tail(dir, port);
                kill_all(&mut nodes);
                return Err(format!(
                    "node on port {port} did not answer within {STARTUP_TIMEOUT:?}: {log}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(nodes)
}

/// `count` ports below 55536 whose cluster bus port is free too, all different (bus ports
/// included).
fn free_cluster_ports(count: usize) -> io::Result<Vec<u16>> {
    let mut held: Vec<(TcpListener, TcpListener)> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let Some(bus) = port.checked_add(BUS_OFFSET) else {
            continue;
        };
        let clashes = ports
            .iter()
            .any(|p| *p == bus || p.checked_add(BUS_OFFSET) == Some(port));
        if port >= 55536 || clashes {
            continue;
        }
        let Ok(bus_listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, bus)) else {
            continue;
        };
        held.push((listener, bus_listener));
        ports.push(port);
    }
    if ports.len() < count {
        return Err(io::Error::other("not enough free port pairs"));
    }
    // The listeners are closed here, just before the nodes bind the ports.
    drop(held);
    Ok(ports)
}

/// Launches one cluster node on `port`; its output goes to `node-PORT.log` in `dir`.
fn spawn(port: u16, tls: Option<(&TestCertificates, u16)>, dir: &Path) -> Result<Child, String> {
    let log = open_log(dir, port);
    let log_err = log
        .try_clone()
        .map_err(|e| format!("could not duplicate a log handle: {e}"))?;
    let port_text = port.to_string();
    let config = dir.join(format!("nodes-{port}.conf"));
    let mut server = Command::new(SERVER);
    if let Some((certificates, tls_port)) = tls {
        server
            .args(["--tls-port", &tls_port.to_string()])
            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .args(certificates.server_args());
    }
    let result = server
        .args(["--port", &port_text, "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(&config)
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn();
    match result {
        Ok(child) => Ok(child),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("{SERVER} not found on PATH: {INSTALL_HINT}")
        }
        Err(e) => Err(format!("could not start {SERVER}: {e}")),
    }
}

fn open_log(dir: &Path, port: u16) -> File {
    let path = dir.join(format!("node-{port}.log"));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("could not open {}: {e}", path.display()))
}

fn log_tail(dir: &Path, port: u16) -> String {
    match fs::read_to_string(dir.join(format!("node-{port}.log"))) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(15);
            lines.get(start..).unwrap_or_default().join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One command to the node on `port`, one RESP2 reply back.
fn command(port: u16, args: &[&str]) -> io::Result<Reply> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, CMD_TIMEOUT)?;
    stream.set_read_timeout(Some(CMD_TIMEOUT))?;
    stream.set_write_timeout(Some(CMD_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&out)?;
    read_reply(&mut BufReader::new(&stream), 0)
}

fn protocol_error(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.take(1 << 20).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("reply line not terminated by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn read_len(bytes: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol_error("bad length"))
}

fn read_reply(reader: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > 32 {
        return Err(protocol_error("reply nested too deeply"));
    }
    let line = read_line(reader)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| protocol_error("empty reply line"))?;
    match kind {
        b'+' => Ok(Reply::Simple(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => read_len(rest).map(Reply::Int),
        b'$' => {
            let Ok(len) = usize::try_from(read_len(rest)?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; len.min(512 << 20)];
            reader.read_exact(&mut data)?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let Ok(count) = usize::try_from(read_len(rest)?) else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                items.push(read_reply(reader, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(protocol_error(format!(
            "unknown reply type {:?}",
            char::from(*other)
        ))),
    }
}

/// A test certificate authority and a server certificate it signed for `127.0.0.1`, made
/// with `openssl` in a temporary directory of their own (removed on drop).
#[derive(Debug)]
pub struct TestCertificates {
    dir: TempDir,
}

impl TestCertificates {
    /// Makes a new authority and server certificate (P-256 keys, valid for two days).
    ///
    /// # Panics
    ///
    /// If `openssl` is not on `PATH` or fails.
    pub fn generate() -> TestCertificates {
        let dir = create_temp_dir("cluster");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .output();
            match output {
                Ok(output) if output.status.success() => {}
                Ok(output) => panic!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                    "openssl not found on PATH: install it with `apt-get install -y openssl`"
                ),
                Err(e) => panic!("could not run openssl: {e}"),
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test ca",
        ]);
        run(&ca);
        let mut request = vec!["req"];
        request.extend_from_slice(&ec);
        request.extend_from_slice(&[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&request);
        fs::write(
            dir.0.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap_or_else(|e| panic!("could not write the certificate extensions: {e}"));
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestCertificates { dir }
    }

    /// The authority's certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// The authority's certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.ca_file()).unwrap_or_else(|e| panic!("could not read ca.crt: {e}"))
    }

    /// The `redis-server` settings that serve TLS with the server certificate (clients need no
    /// certificate of their own). Add `--tls-port PORT`.
    pub fn server_args(&self) -> Vec<String> {
        let file = |name: &str| self.dir.0.join(name).display().to_string();
        vec![
            "--tls-cert-file".to_owned(),
            file("server.crt"),
            "--tls-key-file".to_owned(),
            file("server.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]
    }
}
