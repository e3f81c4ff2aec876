//! `--metrics ADDR`: Prometheus (OpenMetrics text) at `/metrics`, a health check at
//! `/healthz`, the status page at `/` (`server::page`) and its figures at `/status.json`
//! (`server::report`), for watching an overnight run from outside. Off by default; the address
//! is loopback unless the user names another.
//!
//! Each scrape encodes the same figures as the status line (`status::snapshot`), taken
//! at that moment, so the two never disagree and nothing is counted twice.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ctx::Ctx;
use super::hub::Hub;
use super::status::{snapshot, Snapshot};

/// A request head larger than this is refused (nothing we serve needs more).
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

type Labels = Vec<(String, String)>;

/// Every `reason` of `chaarfm_paused` (`Intake::label`).
const PAUSE_REASONS: [&str; 6] = ["disk", "youtube", "battery", "hours", "disk_space", "busy"];

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The snapshot as OpenMetrics text.
pub fn render(s: &Snapshot) -> String {
    let mut reg = Registry::with_prefix("chaarfm");
    let jobs = Family::<Labels, Counter>::default();
    let stored = s.summary.jobs_done.saturating_sub(s.summary.failed);
    for (outcome, n) in [
        ("stored", stored),
        ("failed", s.summary.failed),
        ("handed_back", s.summary.handed_back),
    ] {
        jobs.get_or_create(&label("outcome", outcome))
            .inc_by(n as u64);
    }
    reg.register(
        "jobs",
        "Jobs finished, by outcome (failed: the track's fault; handed_back: returned to the server)",
        jobs,
    );
    reg.register(
        "audio_seconds",
        "Seconds of audio embedded",
        ConstCounter::new(s.audio_s),
    );
    let restarts = Family::<Labels, Counter>::default();
    for (cause, n) in &s.restarts_by {
        restarts.get_or_create(&label("cause", cause)).inc_by(*n);
    }
    reg.register(
        "child_restarts",
        "Child processes restarted, by cause",
        restarts,
    );
    // Values of this moment: constant gauges of the snapshot.
    for (name, help, v) in [
        ("children", "Child processes configured", s.children as i64),
        ("children_alive", "Child processes alive", s.alive as i64),
        ("queue_depth", "Jobs waiting for a child", s.queued as i64),
        (
            "outbox_results",
            "Results held until the server has them",
            s.outbox as i64,
        ),
        (
            "connected",
            "1 when connected to the ChaarFM server",
            i64::from(s.connected),
        ),
        (
            "downloads_in_flight",
            "Downloads under way",
            s.downloads as i64,
        ),
    ] {
        reg.register(name, help, ConstGauge::new(v));
    }
    let paused = Family::<Labels, Gauge>::default();
    for reason in PAUSE_REASONS {
        paused
            .get_or_create(&label("reason", reason))
            .set(i64::from(s.paused == Some(reason)));
    }
    reg.register(
        "paused",
        "1 while intake is paused, by reason (disk: the state dir cannot be written; youtube: YouTube refuses this machine; the preferences: battery, hours, disk_space, busy)",
        paused,
    );
    reg.register(
        "last_error_timestamp_seconds",
        "Unix time of the last child death, job failure or lost connection (0: none)",
        ConstGauge::new(s.last_error_unix as i64),
    );
    reg.register(
        "download_oldest_seconds",
        "Age of the oldest download under way (0: none)",
        ConstGauge::new(s.oldest_download_s),
    );
    reg.register(
        "uptime_seconds",
        "Seconds since the worker started",
        ConstGauge::new(s.elapsed_s),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// Binds `addr` (before the worker starts, so a taken port is a clear error at once).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {addr}: {e} (choose another --metrics address)")
    })
}

/// Serves `/metrics` and `/healthz` until cancelled.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, hub: Hub) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of fds or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (ctx, hub) = (ctx.clone(), hub.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(sock, &ctx, &hub)).await;
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut sock: TcpStream, ctx: &Ctx, hub: &Hub) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&snapshot(ctx, hub).await),
        ),
        ("GET", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            super::page::html(&super::report::build(ctx, hub).await),
        ),
        ("GET", "/status.json") => (
            "200 OK",
            "application/json",
            serde_json::to_string(&super::report::build(ctx, hub).await).unwrap_or_default(),
        ),
        ("GET", "/healthz") => {
            let s = snapshot(ctx, hub).await;
            if s.alive > 0 {
                (
                    "200 OK",
                    "text/plain",
                    format!("ok: {}/{} children alive\n", s.alive, s.children),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "no child alive\n".to_string(),
                )
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "/, /status.json, /metrics or /healthz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(reply.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_are_the_status_line_figures() {
        let s = crate::server::status::example();
        let s = Snapshot {
            audio_s: 9000.5,
            downloads: 2,
            oldest_download_s: 42.0,
            ..s
        };
        let text = render(&s);
        for line in [
            "chaarfm_jobs_total{outcome=\"stored\"} 39",
            "chaarfm_jobs_total{outcome=\"failed\"} 3",
            "chaarfm_jobs_total{outcome=\"handed_back\"} 1",
            "chaarfm_audio_seconds_total 9000.5",
            "chaarfm_child_restarts_total{cause=\"crash\"} 4",
            "chaarfm_child_restarts_total{cause=\"timeout\"} 1",
            "chaarfm_children_alive 2",
            "chaarfm_queue_depth 7",
            "chaarfm_outbox_results 1",
            "chaarfm_connected 1",
            "chaarfm_downloads_in_flight 2",
            "chaarfm_download_oldest_seconds 42.0",
            "chaarfm_paused{reason=\"disk\"} 0",
            "chaarfm_paused{reason=\"youtube\"} 0",
            "chaarfm_paused{reason=\"battery\"} 0",
            "chaarfm_paused{reason=\"busy\"} 0",
            "chaarfm_last_error_timestamp_seconds 1790000000",
            "# TYPE chaarfm_jobs counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        let paused = render(&Snapshot {
            paused: Some("battery"),
            ..s
        });
        for line in [
            "chaarfm_paused{reason=\"battery\"} 1",
            "chaarfm_paused{reason=\"youtube\"} 0",
            "chaarfm_paused{reason=\"disk\"} 0",
        ] {
            assert!(
                paused.lines().any(|l| l == line),
                "{line} missing in:\n{paused}"
            );
        }
    }
}
