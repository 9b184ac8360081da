//! A scripted HTTP proxy in front of the S3 test server, for the faults moto cannot
//! produce: a 503 answer to a write (without passing it on), a write that reaches the
//! server but whose answer is lost (the connection is closed instead), and a store that
//! ignores conditional headers (they are removed on the way).
//!
//! Each client connection carries one request: the proxy reads it (head and
//! `Content-Length` body), forwards it with `Connection: close` on a new connection to
//! the server, and copies the answer back until the server closes. Request signatures are
//! not re-made; moto does not check them.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Service Unavailable` without passing the request on.
    Unavailable,
    /// Pass the request on, then close the client's connection without its answer.
    LoseAnswer,
    /// Remove `If-None-Match` and `If-Match` before passing it on.
    IgnoreConditions,
}

/// A fault for the `nth` (from 1) PUT whose path contains `path_part`, or for every such
/// PUT when `nth` is 0.
#[derive(Debug, Clone)]
pub struct Rule {
    pub fault: Fault,
    pub path_part: String,
    pub nth: usize,
}

#[derive(Default)]
pub struct Log {
    /// (method, path) of every request, in order of arrival.
    pub requests: Mutex<Vec<(String, String)>>,
    /// Faults applied, with the request path.
    pub applied: Mutex<Vec<(Fault, String)>>,
}

pub struct Proxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub log: Arc<Log>,
}

/// Starts the proxy in front of `upstream` (`http://host:port`) on a free loopback port,
/// on the current tokio runtime.
pub async fn start(upstream: &str, rules: Vec<Rule>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
    let port = listener.local_addr().expect("local address").port();
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let log = Arc::new(Log::default());
    let counters: Arc<Vec<AtomicUsize>> =
        Arc::new(rules.iter().map(|_| AtomicUsize::new(0)).collect());
    let rules = Arc::new(rules);
    let task_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let rules = rules.clone();
            let counters = counters.clone();
            let log = task_log.clone();
            tokio::spawn(async move {
                let _ = serve(client, &upstream, &rules, &counters, &log).await;
            });
        }
    });
    Proxy {
        endpoint: format!("http://127.0.0.1:{port}"),
        log,
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &[Rule],
    counters: &[AtomicUsize],
    log: &Log,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    log.requests
        .lock()
        .unwrap()
        .push((method.clone(), path.clone()));

    let mut fault = None;
    if method == "PUT" {
        for (rule, count) in rules.iter().zip(counters) {
            if path.contains(&rule.path_part) {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if rule.nth == 0 || rule.nth == n {
                    fault = Some(rule.fault);
                    break;
                }
            }
        }
    }
    if let Some(f) = fault {
        log.applied.lock().unwrap().push((f, path.clone()));
    }
    if fault == Some(Fault::Unavailable) {
        let answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                      Content-Length: 96\r\nConnection: close\r\n\r\n\
                      <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>    ";
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }

    let mut forwarded = String::new();
    forwarded.push_str(&request_line);
    forwarded.push_str("\r\n");
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name == "connection" {
            continue;
        }
        if fault == Some(Fault::IgnoreConditions) && (name == "if-none-match" || name == "if-match")
        {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&body).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    if fault == Some(Fault::LoseAnswer) {
        // The write happened; the client never hears of it.
        drop(client);
        return Ok(());
    }
    client.write_all(&answer).await?;
    client.shutdown().await
}

/// The request head (without the final blank line) and its body; `None` at end of stream.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}
