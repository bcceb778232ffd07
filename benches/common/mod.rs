//! Helpers shared by the benches: raw HTTP/1.1 and RESP round trips on keep-alive
//! connections, and a `redis-server` on a free loopback port.
#![allow(dead_code)] // each bench uses a different subset

use std::time::{Duration, Instant};

/// Sends one HTTP/1.1 request on a keep-alive connection, reads one response; its status.
pub async fn http_round_trip(
    conn: &mut tokio::net::TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> u16 {
    round_trip(conn, req, buf, |b| {
        http_response_len(b).is_some_and(|n| b.len() >= n)
    })
    .await;
    std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
}

/// Length of the HTTP response at the start of `buf`, once its head has arrived.
pub fn http_response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    let body: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    Some(end + 4 + body)
}

/// Sends one request and reads until `done` says the response is complete.
pub async fn round_trip(
    conn: &mut tokio::net::TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(req).await.unwrap();
    buf.clear();
    while !done(buf) {
        let mut chunk = [0u8; 512];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A RESP `SET key value` command.
pub fn resp_set(key: &str, value: &str) -> String {
    format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        key.len(),
        value.len()
    )
}

/// `redis-server` on a free loopback port with `args` added (persistence and so on); None
/// when redis-server is not installed. The caller kills the child.
pub fn spawn_redis(args: &[&str]) -> Option<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--daemonize", "no"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some((child, port))
}

/// A connection to a server on `port` that may still be starting (10 s at most).
pub async fn connect_when_up(port: u16) -> tokio::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(c) => {
                c.set_nodelay(true).unwrap();
                return c;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("server on port {port} did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
