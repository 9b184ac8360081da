//! The S3 side of the test server (moto answers S3 on the same port as EC2, path-style):
//! a fresh bucket per test, its [`S3Location`], and the credentials moto accepts, set in
//! the environment where imgraph's standard AWS chain looks for them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use imgraph::config::model::S3Location;

/// Sets the credentials and region moto accepts (any values do) in this process's
/// environment, once; child processes (the binary) inherit them.
pub fn test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Set before any client or thread reads the environment.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
    });
}

/// The test server's URL (`None` outside CI when it is not running; a panic under CI).
pub fn endpoint() -> Option<String> {
    test_credentials();
    crate::aws::endpoint()
}

/// Creates a bucket no other test uses, on `endpoint`, and returns its name.
pub fn fresh_bucket(endpoint: &str, what: &str) -> String {
    let name = crate::aws::unique(&format!("imgraph-{what}"))
        .to_ascii_lowercase()
        .replace('_', "-");
    let name: String = name.chars().take(63).collect();
    let status = raw_request(endpoint, "PUT", &format!("/{name}"), &[]);
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "create bucket {name} on {endpoint}: {status}"
    );
    name
}

/// A location in `bucket` under `prefix` on `endpoint`.
pub fn location(endpoint: &str, bucket: &str, prefix: &str) -> S3Location {
    S3Location {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        region: "us-east-1".to_owned(),
        endpoint: Some(endpoint.to_owned()),
    }
}

/// One plain HTTP/1.1 request; returns the status line.
pub fn raw_request(endpoint: &str, method: &str, path: &str, body: &[u8]) -> String {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).expect("connect to the test server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the request");
    stream.write_all(body).expect("send the body");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("read the test server's answer");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
