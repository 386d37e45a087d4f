//! Tests of the private redis-server fixture itself.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::redis_server::{RedisServer, Reply};

fn pong() -> Reply {
    Reply::Simple("PONG".to_owned())
}

fn bulk(value: &str) -> Reply {
    Reply::Bulk(Some(value.as_bytes().to_vec()))
}

/// True if `kill -0 pid` succeeds, i.e. the process still exists.
fn process_exists(pid: u32) -> bool {
    Command::new("sh")
        .args(["-c", "kill -0 \"$1\"", "sh", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn max_memory(server: &RedisServer) -> Reply {
    server.cmd_str(&["CONFIG", "GET", "maxmemory"])
}

#[test]
fn a_started_server_answers_ping_on_its_own_port() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_ne!(server.port(), 0);
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.addr().port(), server.port());
    assert!(server.addr().ip().is_loopback());
    assert!(server.is_running());
    assert_eq!(server.cmd_str(&["PING"]), pong());
    let reported = server.cmd_str(&["CONFIG", "GET", "port"]);
    assert_eq!(
        reported,
        Reply::Array(Some(vec![bulk("port"), bulk(&server.port().to_string())]))
    );
}

#[test]
fn two_servers_get_different_ports_and_separate_data() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.set_raw("only-in-a", b"1");
    assert_eq!(a.get("only-in-a"), Some(b"1".to_vec()));
    assert_eq!(b.get("only-in-a"), None);
    assert!(b.keys("*").is_empty());
}

#[test]
fn a_killed_server_refuses_connections() {
    let mut server = RedisServer::start();
    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    let err = TcpStream::connect(server.addr()).expect_err("connected to a killed server");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(server.try_cmd(&[b"PING"]).is_err());
    // Killing twice is harmless.
    server.kill();
    assert!(!server.is_running());
}

#[test]
fn a_restarted_server_answers_on_the_same_port_with_no_data() {
    let mut server = RedisServer::start();
    let port = server.port();
    let old_pid = server.pid();
    server.set_raw("before-restart", b"value");
    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_ne!(server.pid(), old_pid);
    assert_eq!(server.cmd_str(&["PING"]), pong());
    assert_eq!(server.get("before-restart"), None);
    assert_eq!(server.cmd_str(&["DBSIZE"]), Reply::Int(0));
}

#[test]
fn a_killed_server_can_be_restarted() {
    let mut server = RedisServer::start();
    server.kill();
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.cmd_str(&["PING"]), pong());
}

#[test]
fn a_paused_server_accepts_connections_but_does_not_answer_until_resumed() {
    let server = RedisServer::start();
    server.pause();
    assert!(server.is_running());

    let mut stream = TcpStream::connect(server.addr()).expect("the kernel accepts the connection");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("set read timeout");
    stream.write_all(b"PING\r\n").expect("write PING");
    let mut buf = [0u8; 16];
    let err = stream
        .read(&mut buf)
        .expect_err("a paused server must not answer");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "unexpected error kind {:?}",
        err.kind()
    );

    server.resume();
    // The PING sent while paused is answered once the server runs again.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let mut line = [0u8; 7];
    stream.read_exact(&mut line).expect("answer after resume");
    assert_eq!(&line, b"+PONG\r\n");
    assert_eq!(server.cmd_str(&["PING"]), pong());
}

#[test]
fn dropping_a_server_kills_the_process_and_removes_its_directory() {
    let server = RedisServer::start();
    let pid = server.pid().expect("a started server has a pid");
    let dir = server.dir().to_path_buf();
    assert!(process_exists(pid));
    assert!(dir.is_dir());
    drop(server);
    assert!(!process_exists(pid), "redis-server {pid} survived the drop");
    assert!(!dir.exists(), "{} survived the drop", dir.display());
}

#[test]
fn dropping_a_paused_server_still_kills_it() {
    let server = RedisServer::start();
    let pid = server.pid().expect("a started server has a pid");
    server.pause();
    drop(server);
    assert!(
        !process_exists(pid),
        "paused redis-server {pid} survived the drop"
    );
}

#[test]
fn extra_arguments_apply_and_survive_a_restart() {
    let mut server = RedisServer::start_with(&["--maxmemory", "2mb"]);
    let expected = Reply::Array(Some(vec![bulk("maxmemory"), bulk("2097152")]));
    assert_eq!(max_memory(&server), expected);
    server.restart();
    assert_eq!(max_memory(&server), expected);
}

#[test]
fn the_default_server_persists_nothing() {
    let server = RedisServer::start();
    assert_eq!(
        server.cmd_str(&["CONFIG", "GET", "save"]),
        Reply::Array(Some(vec![bulk("save"), bulk("")]))
    );
    assert_eq!(
        server.cmd_str(&["CONFIG", "GET", "appendonly"]),
        Reply::Array(Some(vec![bulk("appendonly"), bulk("no")]))
    );
}

#[test]
fn keys_follows_the_scan_cursor_past_one_batch() {
    let server = RedisServer::start();
    let names: Vec<String> = (0..2500).map(|i| format!("bulk:{i:04}")).collect();
    for chunk in names.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for name in chunk {
            args.push(name.as_bytes());
            args.push(b"x");
        }
        assert!(server.cmd(&args).is_ok());
    }
    server.set_raw("other:1", b"x");

    let keys = server.keys("bulk:*");
    assert_eq!(keys.len(), 2500);
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(server.keys("other:*"), vec!["other:1".to_owned()]);
    assert!(server.keys("missing:*").is_empty());
}

#[test]
fn ttl_reports_missing_persistent_and_expiring_keys() {
    let server = RedisServer::start();
    assert_eq!(server.ttl("missing"), -2);
    server.set_raw("forever", b"1");
    assert_eq!(server.ttl("forever"), -1);
    assert!(server.cmd_str(&["SET", "soon", "1", "EX", "100"]).is_ok());
    let ttl = server.ttl("soon");
    assert!(ttl > 0 && ttl <= 100, "ttl was {ttl}");
}

#[test]
fn binary_values_round_trip() {
    let server = RedisServer::start();
    let value: Vec<u8> = (0..=255u8).chain([b'\r', b'\n', 0, b'$', b'*']).collect();
    server.set_raw("binary", &value);
    assert_eq!(server.get("binary"), Some(value.clone()));
    assert_eq!(server.cmd(&[b"GET", b"binary"]), Reply::Bulk(Some(value)));
    assert_eq!(server.get("absent"), None);
}

#[test]
fn flushall_removes_every_key() {
    let server = RedisServer::start();
    server.set_raw("a", b"1");
    server.set_raw("b", b"2");
    server.flushall();
    assert!(server.keys("*").is_empty());
}

#[test]
fn replies_of_every_kind_are_decoded() {
    let server = RedisServer::start();
    assert!(matches!(
        server.cmd_str(&["NO-SUCH-COMMAND"]),
        Reply::Error(message) if message.starts_with("ERR")
    ));
    assert_eq!(server.cmd_str(&["INCR", "counter"]), Reply::Int(1));
    assert_eq!(server.cmd_str(&["GET", "nothing"]), Reply::Bulk(None));
    assert!(server.cmd_str(&["RPUSH", "list", "a", "b"]).as_int() == Some(2));
    assert_eq!(
        server.cmd_str(&["LRANGE", "list", "0", "-1"]),
        Reply::Array(Some(vec![bulk("a"), bulk("b")]))
    );
    assert_eq!(
        server.cmd_str(&["BLPOP", "empty-list", "0.01"]),
        Reply::Array(None)
    );
    let nested = server.cmd_str(&["SCAN", "0", "COUNT", "10"]);
    assert!(matches!(
        nested.as_array(),
        Some([Reply::Bulk(Some(_)), Reply::Array(Some(_))])
    ));
}

#[tokio::test]
async fn the_fixture_can_be_used_inside_a_tokio_test() {
    let mut server = RedisServer::start();
    server.set_raw("async", b"yes");
    // The server is an independent process, so async clients can talk to it
    // while the runtime keeps running.
    let addr = server.addr();
    let reply = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"PING\r\n").await.expect("write");
        let mut line = [0u8; 7];
        stream.read_exact(&mut line).await.expect("read");
        line
    })
    .await
    .expect("task");
    assert_eq!(&reply, b"+PONG\r\n");
    server.restart();
    assert_eq!(server.get("async"), None);
}
