//! Connect mode: `chaarfm-super --code CODE`. One machine, one worker with many slots.
//!
//! - Lane 0 connects to `{base}/ws/remote/{code}/worker` and says `hello` (protocol 2,
//!   slots = children + 1). A server that answers `welcome` keeps up to its `slots` jobs
//!   outstanding on that one connection and acknowledges results. Today's server ignores
//!   the hello; after 3 s without a welcome, more lanes (connections) are opened, one per
//!   extra slot, since it gives one job per connection (`--lanes off` keeps one).
//! - Every lane reconnects after any loss (`server::reconnect`: 2 s, x1.5, at most 60 s,
//!   reset after a stable connection). A 4xx on the handshake is a bad code: stop.
//! - Each job: download (in the supervisor) -> pool -> result, written to the outbox first,
//!   then sent on the lane that got it. A job re-sent while its key is being worked on
//!   attaches to that work.

pub mod download;
pub mod outbox;
pub mod work;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chaarfm_shared::server::{parse_server, Incoming, WorkerMsg, PROTOCOL};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::pool::Pool;
use crate::signals::Signals;
use outbox::{Entry, Outbox};

/// How long to wait for a `welcome` before assuming today's one-job-per-connection server.
const WELCOME_WAIT: Duration = Duration::from_secs(3);
/// Keepalive period (the hosting platform sleeps idle servers).
const KEEPALIVE: Duration = Duration::from_secs(600);

/// Connect-mode settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub base: String,
    pub code: String,
    /// Open extra connections for a legacy server.
    pub lanes: bool,
    pub state_dir: PathBuf,
}

/// The pairing code as logs may show it: first two characters only.
pub fn mask(code: &str) -> String {
    let head: String = code.chars().take(2).collect();
    format!("{head}***")
}

/// `{base}/ws/remote/{code}/worker` with http(s) -> ws(s).
pub fn worker_url(base: &str, code: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        anyhow::bail!("server URL {base:?} must start with http:// or https://");
    };
    anyhow::ensure!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "the pairing code must be letters, digits, '-' or '_'"
    );
    Ok(format!("{ws}/ws/remote/{code}/worker"))
}

/// The reconnect delay: 2 s, x1.5 per failure, at most 60 s; reset after a stable
/// connection (`server::reconnect`).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = Duration::from_secs_f64((self.next.as_secs_f64() * 1.5).min(60.0));
        d
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What the lanes share.
pub struct Ctx {
    pub pool: Pool,
    pub outbox: Outbox,
    pub limits: download::Limits,
    pub ytdlp: Option<PathBuf>,
    pub tmp: PathBuf,
    url: String,
    masked_url: String,
    /// The pairing code as logs and errors may show it.
    masked_code: String,
    base: String,
    protocol2: AtomicBool,
    lanes: Mutex<Vec<mpsc::UnboundedSender<Entry>>>,
    pub work: work::Work,
    /// Jobs accepted and not yet answered, per lane.
    busy: Mutex<Vec<usize>>,
    draining: watch::Sender<bool>,
    welcome: watch::Sender<Option<usize>>,
    connected: watch::Sender<bool>,
    fatal: watch::Sender<Option<String>>,
    pub jobs_done: AtomicUsize,
    /// Children + 1: the next download overlaps inference.
    slots: usize,
}

impl Ctx {
    fn lane_count(&self) -> usize {
        self.lanes.lock().map(|l| l.len()).unwrap_or(1)
    }

    /// Hands a stored result to the lane that got the job (or lane 0 if that lane does
    /// not exist in this run).
    pub fn deliver(&self, entry: Entry) {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = if entry.lane < lanes.len() {
            entry.lane
        } else {
            0
        };
        if let Some(tx) = lanes.get(lane) {
            let _ = tx.send(entry);
        }
    }

    fn set_busy(&self, lane: usize, delta: isize) {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() <= lane {
            b.resize(lane + 1, 0);
        }
        b[lane] = (b[lane] as isize + delta).max(0) as usize;
    }

    fn busy(&self, lane: usize) -> usize {
        self.busy
            .lock()
            .map(|b| b.get(lane).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A private directory for downloads (0700), emptied at start.
fn private_tmp(state_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    crate::private_dir::fresh(&state_dir.join("tmp"))
}

/// Runs connect mode until a signal (drain, exit 0) or a fatal error.
pub async fn run(opts: Options, pool: Pool, children: usize) -> anyhow::Result<()> {
    let url = worker_url(&opts.base, &opts.code)?;
    let masked_url = url.replace(
        &format!("/{}/", opts.code),
        &format!("/{}/", mask(&opts.code)),
    );
    let ytdlp = download::find_ytdlp();
    match &ytdlp {
        Some(p) => tracing::info!(path = %p.display(), "yt-dlp found"),
        None => tracing::warn!(
            "yt-dlp not found: only direct audio URLs can be downloaded (run scripts/setup.sh)"
        ),
    }
    let outbox = Outbox::open(&opts.state_dir.join("outbox")).context("opening the outbox")?;
    let pending = outbox.pending().len();
    if pending > 0 {
        tracing::info!(
            pending,
            "results from a previous run are waiting in the outbox; sending them first"
        );
    }
    let ctx = Arc::new(Ctx {
        pool,
        outbox,
        limits: download::Limits::from_env(),
        ytdlp,
        tmp: private_tmp(&opts.state_dir).context("creating the download directory")?,
        url,
        masked_url,
        masked_code: mask(&opts.code),
        base: opts.base.trim_end_matches('/').to_string(),
        protocol2: AtomicBool::new(false),
        lanes: Mutex::new(Vec::new()),
        work: work::Work::default(),
        busy: Mutex::new(Vec::new()),
        draining: watch::channel(false).0,
        welcome: watch::channel(None).0,
        connected: watch::channel(false).0,
        fatal: watch::channel(None).0,
        jobs_done: AtomicUsize::new(0),
        slots: children + 1,
    });
    let slots = ctx.slots;
    tracing::info!(url = %ctx.masked_url, slots, "connecting to ChaarFM");
    let mut lanes = tokio::task::JoinSet::new();
    spawn_lane(&ctx, &mut lanes);
    tokio::spawn(keepalive(Arc::clone(&ctx)));

    let mut signals = Signals::new()?;
    let mut connected = ctx.connected.subscribe();
    let mut welcome = ctx.welcome.subscribe();
    let mut fatal = ctx.fatal.subscribe();
    // Legacy or protocol 2: decided once, on the first connection.
    let decide = async {
        let _ = connected.wait_for(|c| *c).await;
        match tokio::time::timeout(WELCOME_WAIT, welcome.wait_for(|w| w.is_some())).await {
            Ok(Ok(w)) => *w,
            _ => None,
        }
    };
    tokio::pin!(decide);
    let mut decided = false;
    loop {
        tokio::select! {
            w = &mut decide, if !decided => {
                decided = true;
                match w {
                    Some(m) => tracing::info!(server_slots = m, "server speaks protocol 2: one connection, {m} jobs outstanding"),
                    None if opts.lanes => {
                        tracing::info!("no welcome: today's server, one job per connection; opening {} more connection(s)", slots - 1);
                        for _ in 1..slots {
                            spawn_lane(&ctx, &mut lanes);
                        }
                    }
                    None => tracing::info!("no welcome and --lanes off: one connection, one job at a time"),
                }
            }
            _ = signals.next() => {
                if *ctx.draining.borrow() {
                    eprintln!("chaarfm-super: second interrupt, stopping now");
                    std::process::exit(130);
                }
                tracing::warn!("interrupted: finishing the jobs in flight and sending their results (interrupt again to stop now)");
                let _ = ctx.draining.send(true);
            }
            msg = fatal.wait_for(|f| f.is_some()) => {
                let msg = msg.map(|m| m.clone().unwrap_or_default()).unwrap_or_default();
                anyhow::bail!("{msg}");
            }
            msg = ctx.pool.fatal() => anyhow::bail!("{msg}"),
            j = lanes.join_next() => {
                if let Some(msg) = ctx.fatal.borrow().clone() {
                    anyhow::bail!("{msg}");
                }
                if j.is_none() || (*ctx.draining.borrow() && lanes.is_empty()) {
                    break;
                }
            }
        }
    }
    while lanes.join_next().await.is_some() {}
    println!(
        "chaarfm-super: stopped after {} job(s); {} result(s) left in the outbox",
        ctx.jobs_done.load(Ordering::Relaxed),
        ctx.outbox.pending().len()
    );
    ctx.pool.shutdown().await;
    Ok(())
}

fn spawn_lane(ctx: &Arc<Ctx>, set: &mut tokio::task::JoinSet<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = {
        let mut lanes = ctx.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.push(tx);
        lanes.len() - 1
    };
    set.spawn(lane(Arc::clone(ctx), id, rx));
}

enum Ended {
    Lost(String),
    Drained,
}

/// One connection, reconnected after any loss until the drain is complete.
async fn lane(ctx: Arc<Ctx>, id: usize, mut results: mpsc::UnboundedReceiver<Entry>) {
    let mut backoff = Backoff::default();
    let mut draining = ctx.draining.subscribe();
    loop {
        if *draining.borrow() && ctx.busy(id) == 0 && !has_pending(&ctx, id) {
            return;
        }
        let attempt = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::connect_async(ctx.url.as_str()),
        )
        .await;
        let ws = match attempt {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp)))
                if resp.status().is_client_error() =>
            {
                let msg = format!(
                    "the server refused pairing code {} (HTTP {}): check --code / CHAARFM_CODE against the code shown on the /ingest page",
                    ctx.masked_code,
                    resp.status()
                );
                let _ = ctx.fatal.send(Some(msg));
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lane = id, error = %e, "cannot connect");
                let d = backoff.next_delay();
                if wait_or_drain(&mut draining, d).await && ctx.busy(id) == 0 {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::warn!(lane = id, "connecting timed out");
                let d = backoff.next_delay();
                if wait_or_drain(&mut draining, d).await && ctx.busy(id) == 0 {
                    return;
                }
                continue;
            }
        };
        let since = Instant::now();
        match serve_connection(&ctx, id, ws, &mut results, &mut draining).await {
            Ended::Drained => return,
            Ended::Lost(why) => tracing::warn!(lane = id, %why, "connection lost; reconnecting"),
        }
        if since.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let d = backoff.next_delay();
        let _ = wait_or_drain(&mut draining, d).await;
    }
}

fn has_pending(ctx: &Ctx, lane: usize) -> bool {
    let n = ctx.lane_count();
    ctx.outbox
        .pending()
        .iter()
        .any(|e| e.lane == lane || (lane == 0 && e.lane >= n))
}

/// Sleeps `d`; returns early (true) when a drain starts.
async fn wait_or_drain(draining: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let drained = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = draining.wait_for(|d| *d) => r.is_ok(),
    };
    drained || *draining.borrow()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn serve_connection(
    ctx: &Arc<Ctx>,
    id: usize,
    ws: Ws,
    results: &mut mpsc::UnboundedReceiver<Entry>,
    draining: &mut watch::Receiver<bool>,
) -> Ended {
    let (mut sink, mut stream) = ws.split();
    let _ = ctx.connected.send(true);
    tracing::info!(lane = id, "connected");
    let p2 = || ctx.protocol2.load(Ordering::Relaxed);
    if id == 0 {
        let hello = WorkerMsg::Hello {
            agent: concat!("chaarfm-super/", env!("CARGO_PKG_VERSION")).into(),
            slots: ctx.slots,
            protocol: PROTOCOL,
        };
        if let Err(e) = send_json(&mut sink, &hello).await {
            return Ended::Lost(e);
        }
    }
    // Results from before this connection (or this run) go first.
    let mut sent: HashSet<String> = HashSet::new();
    let n = ctx.lane_count();
    for e in ctx.outbox.pending() {
        if e.lane == id || (id == 0 && e.lane >= n) {
            if let Err(err) = send_json(&mut sink, &e.msg).await {
                return Ended::Lost(err);
            }
            if !p2() {
                ctx.outbox.remove(&e.job_id);
            }
            sent.insert(e.job_id);
        }
    }
    loop {
        if *draining.borrow() && ctx.busy(id) == 0 && !has_pending(ctx, id) {
            let _ = sink.send(Message::Close(None)).await;
            return Ended::Drained;
        }
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return Ended::Lost("closed by the server".into()),
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    Some(Ok(_)) => continue, // pings are answered by tungstenite; binary is not ours
                };
                match parse_server(text.as_str()) {
                    Incoming::Ping => {
                        if let Err(e) = send_json(&mut sink, &WorkerMsg::Pong).await {
                            return Ended::Lost(e);
                        }
                    }
                    Incoming::Welcome { protocol, slots } if protocol >= PROTOCOL => {
                        ctx.protocol2.store(true, Ordering::Relaxed);
                        let _ = ctx.welcome.send(Some(slots));
                    }
                    Incoming::Welcome { protocol, .. } => tracing::warn!(protocol, "welcome for an unknown protocol; ignored"),
                    Incoming::Ack { job_id } => ctx.outbox.remove(&job_id),
                    Incoming::Job(job) => {
                        if *draining.borrow() {
                            // Not taken: the server requeues it when this connection closes.
                            tracing::info!(lane = id, job = %job.job_id, "draining: job left for another worker");
                            continue;
                        }
                        ctx.set_busy(id, 1);
                        tokio::spawn(work::run(Arc::clone(ctx), id, job));
                    }
                    Incoming::Ignored(why) => {
                        let shown: String = why.chars().take(200).collect();
                        tracing::warn!(lane = id, reason = %shown, "ignored a message from the server");
                    }
                }
            }
            Some(entry) = results.recv() => {
                if sent.contains(&entry.job_id) {
                    continue;
                }
                if let Err(e) = send_json(&mut sink, &entry.msg).await {
                    return Ended::Lost(e); // still in the outbox: sent after reconnecting
                }
                if !p2() {
                    ctx.outbox.remove(&entry.job_id);
                }
                sent.insert(entry.job_id);
            }
            _ = draining.changed() => {}
        }
    }
}

async fn send_json<S>(sink: &mut S, msg: &WorkerMsg) -> Result<(), String>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    sink.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// `GET {base}/api/keepalive` every 10 minutes, so the hosting platform keeps the server up.
async fn keepalive(ctx: Arc<Ctx>) {
    let url = format!("{}/api/keepalive", ctx.base);
    loop {
        let u = url.clone();
        let r = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            agent.get(&u).call().map(|r| r.status().as_u16())
        })
        .await;
        match r {
            Ok(Ok(status)) => tracing::debug!(status, "keepalive"),
            Ok(Err(e)) => tracing::debug!(error = %e, "keepalive failed"),
            Err(_) => {}
        }
        tokio::time::sleep(KEEPALIVE).await;
    }
}
