//! The HTTP side: `GET /metrics` (text format 0.0.4), `GET /` (a link page), 404 otherwise.
//! May import: crate::render, crate::snapshot, tokio.
//!
//! A deliberately tiny HTTP/1.1 responder on tokio (one request per connection, then close),
//! not a framework: Prometheus sends a plain GET and reads until the connection closes, and
//! this keeps the unprivileged exporter's dependency tree to tokio + zbus. Request heads over
//! 8 KiB or slower than 10 s are dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::render::render;
use crate::snapshot::{ExporterCounters, Snapshot};

const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const INDEX: &str = "<html><head><title>gpuvirt exporter</title></head><body>\
<h1>gpuvirt exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// Serves until the listener fails.
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    counters: watch::Sender<ExporterCounters>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let snapshot = snapshot.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _ = answer(stream, snapshot, counters).await;
        });
    }
}

/// The request line's method and path, once the head is complete; `None` while incomplete.
fn request_line(head: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.contains("\r\n\r\n") && !text.contains("\n\n") {
        return None;
    }
    let mut parts = text.lines().next()?.split_whitespace();
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

async fn answer(
    mut stream: TcpStream,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    counters: watch::Sender<ExporterCounters>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let (method, path) = loop {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(line) = request_line(&head) {
            break line;
        }
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    };
    let path = path.split('?').next().unwrap_or("").to_string();
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n",
        )
        .await;
    }
    // HEAD: the same head (Content-Length included), no body.
    let head_only = method == "HEAD";
    let body = match path.as_str() {
        "/metrics" => {
            counters.send_modify(|c| c.scrapes += 1);
            let current = snapshot.borrow().clone();
            let text = render(&current, Some(*counters.borrow()));
            return respond_to(&mut stream, head_only, "200 OK", CONTENT_TYPE, &text).await;
        }
        "/" => INDEX,
        _ => return respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    };
    respond_to(
        &mut stream,
        head_only,
        "200 OK",
        "text/html; charset=utf-8",
        body,
    )
    .await
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_to(stream, false, status, content_type, body).await
}

async fn respond_to(
    stream: &mut TcpStream,
    head_only: bool,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
