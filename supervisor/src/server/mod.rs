//! Connect mode: `chaarfm-super --code CODE`. One machine, one worker with many slots.
//!
//! - Lane 0 connects to `{base}/ws/remote/{code}/worker` and says `hello` (protocol 2,
//!   slots = children + 1). A server that answers `welcome` keeps up to its `slots` jobs
//!   outstanding on that one connection and acknowledges results. Today's server ignores
//!   the hello; after 3 s without a welcome, more lanes (connections) are opened, one per
//!   extra slot, since it gives one job per connection (`--lanes off` keeps one).
//! - Every lane reconnects after any loss (`server::reconnect`: 2 s, x1.5, at most 60 s,
//!   reset after a stable connection). A 401/403 on the handshake is a bad code, another
//!   4xx a URL without a worker endpoint: stop. A ping every 10 s; 30 s without hearing
//!   from the server is a dead connection.
//! - Each job: download (in the supervisor) -> pool -> result, held in the outbox until
//!   the server has shown it processed it, sent on the lane that got it. A job re-sent
//!   while its key is being worked on attaches to that work.
//! - A job that fails for a fault of this machine (disk, pool) is handed back, never
//!   reported failed: its connection is closed (today's server requeues it) or it is
//!   `release`d (protocol 2). A disk fault pauses intake until a probe succeeds.
//! - Today's server deletes a session and its queue when its last worker connection
//!   closes (unless its `/ingest` page is open), so no lane closes the session's last
//!   connection on purpose (`Hub::may_close`): while paused one stays open, and a job
//!   that arrives on it is held until intake reopens.

pub mod control;
pub mod ctx;
pub mod download;
pub mod guard;
pub mod hub;
pub mod intake;
pub mod metrics;
pub mod names;
pub mod outbox;
pub mod page;
pub mod probe;
pub mod record;
pub mod report;
pub mod status;
pub mod stopping;
pub mod url;
pub mod work;
pub mod youtube;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chaarfm_shared::server::{parse_server, Incoming, WorkerMsg, PROTOCOL};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;
use crate::exit::Exit;
use crate::pool::Pool;
use crate::prefs::decide::Readings;
use crate::prefs::monitor::{Decider, Source};
use crate::prefs::settings::Prefs;
use crate::signals::{Hangups, Signals};
use ctx::Ctx;
use hub::{Hub, LaneCmd, LaneHandle, LaneView};
use intake::Intake;
use names::mask;
use outbox::Outbox;

/// Draining: how long to wait for the server's answer to our close, which shows it
/// received every frame sent before it.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// How long to wait for a `welcome` before assuming today's one-job-per-connection server.
const WELCOME_WAIT: Duration = Duration::from_secs(3);
/// Keepalive period (the hosting platform sleeps idle servers).
const KEEPALIVE: Duration = Duration::from_secs(600);
/// A WebSocket ping this often...
const PING_EVERY: Duration = Duration::from_secs(10);
/// ...and a connection that has said nothing for this long is dead (a frozen server).
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Draining against today's server: how long to wait for the next job, which proves the
/// last result was processed, before closing anyway.
const PROOF_WAIT: Duration = Duration::from_secs(3);
/// Size of the probe file written to see whether the disk works again.
const PROBE_BYTES: usize = 1 << 20;

/// Connect-mode settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub base: String,
    pub code: String,
    /// Open extra connections for a legacy server.
    pub lanes: bool,
    /// Let jobs point at loopback, private and link-local addresses (`server::guard`).
    pub allow_private_urls: bool,
    pub state_dir: PathBuf,
    /// Serve `/metrics` and `/healthz` here (`server::metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// `--cookies FILE` for yt-dlp (checked private at start).
    pub cookies: Option<PathBuf>,
    /// The computing preferences in force at start, and where they are read again from.
    pub prefs: Prefs,
    pub prefs_source: Source,
    /// The pool's runtime dir: `status`'s control socket goes there too.
    pub runtime_dir: PathBuf,
}

/// `{base}/ws/remote/{code}/worker` with http(s) -> ws(s), the code checked.
pub fn worker_url(base: &str, code: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "the pairing code must be letters, digits, '-' or '_'"
    );
    url::worker_url(base, code).map_err(anyhow::Error::msg)
}

/// The first wait of a YouTube pause (`CHAARFM_YOUTUBE_BACKOFF_S`, default 5 min); it
/// doubles after each failed probe, up to [`YOUTUBE_BACKOFF_MAX`].
fn youtube_backoff() -> Duration {
    std::env::var("CHAARFM_YOUTUBE_BACKOFF_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(Duration::from_secs(300), Duration::from_secs_f64)
}

const YOUTUBE_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// While YouTube refuses this machine: wait, then let one job through (`Intake::Probe`;
/// the hub runs it and reopens intake if YouTube answered), doubling the wait after each
/// failed probe (5 min to 1 h).
async fn recover_youtube(ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(youtube_backoff(), 2.0, YOUTUBE_BACKOFF_MAX);
    let mut intake = ctx.intake.subscribe();
    loop {
        if intake
            .wait_for(|i| matches!(i, Intake::YouTube(_)))
            .await
            .is_err()
        {
            return;
        }
        let wait = backoff.next_delay();
        tracing::warn!(
            "YouTube paused: trying again in {} s (then one job first)",
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
        let next = if ctx.protocol2() {
            Intake::Open
        } else {
            Intake::Probe
        };
        ctx.intake.send_if_modified(|i| {
            let yes = matches!(i, Intake::YouTube(_));
            if yes {
                *i = next.clone();
            }
            yes
        });
        let Ok(after) = intake.wait_for(|i| *i != Intake::Probe).await else {
            return;
        };
        if !matches!(*after, Intake::YouTube(_)) {
            backoff.reset();
        }
    }
}

/// Writes and removes a probe file in `dir`: whether downloads can be stored again.
pub(crate) fn probe_disk(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    crate::os::ensure_private_dir(dir)?;
    let p = dir.join("probe.tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    r
}

/// While intake is paused: probe the disk with backoff, write what the outbox holds in
/// memory, and reopen intake when both work.
async fn recover(ctx: Arc<Ctx>) {
    let mut intake = ctx.intake.subscribe();
    loop {
        if intake
            .wait_for(|i| matches!(i, Intake::Paused(_)))
            .await
            .is_err()
        {
            return;
        }
        let mut backoff = Backoff::reconnect();
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            let c = Arc::clone(&ctx);
            let ok = tokio::task::spawn_blocking(move || {
                probe_disk(&c.tmp).and_then(|()| c.outbox.persist())
            })
            .await;
            match ok {
                Ok(Ok(())) => {
                    tracing::info!("the state dir can be written again: taking jobs");
                    intake::reopen(&ctx.intake, &ctx.prefs.subscribe());
                    break;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "state dir still failing"),
                Err(_) => {}
            }
        }
    }
}

/// Applies the preferences' pause to intake, now and at each change (`intake::prefer`).
async fn apply_preferences(ctx: Arc<Ctx>) {
    let mut wanted = ctx.prefs.subscribe();
    loop {
        let p = wanted.borrow_and_update().clone();
        intake::prefer(&ctx.intake, p);
        if wanted.changed().await.is_err() {
            return;
        }
    }
}

/// Saves the record of tracks done every minute (and the caller saves it at exit).
async fn save_record(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(status::EVERY);
    loop {
        tick.tick().await;
        let c = Arc::clone(&ctx);
        let _ = tokio::task::spawn_blocking(move || c.record.save()).await;
    }
}

/// A private directory for downloads (0700), emptied at start.
fn private_tmp(state_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    let dir = state_dir.join("tmp");
    crate::os::fresh_private_dir(&dir)?;
    Ok(dir)
}

/// Runs connect mode until a signal (drain, exit 0) or a fatal error.
pub async fn run(
    opts: Options,
    pool: Pool,
    children: usize,
    mut signals: Signals,
    hangups: Hangups,
) -> anyhow::Result<Exit> {
    let url = worker_url(&opts.base, &opts.code)?;
    let masked_url = url.replace(
        &format!("/{}/", opts.code),
        &format!("/{}/", mask(&opts.code)),
    );
    let ytdlp = download::YtDlp::find().map(|y| download::YtDlp {
        cookies: opts.cookies.clone(),
        ..y
    });
    match &ytdlp {
        Some(y) => tracing::info!(
            path = %y.path.display(),
            deno = ?y.deno.as_deref().map(Path::display),
            "yt-dlp found"
        ),
        None => tracing::warn!(
            "yt-dlp not found: only direct audio URLs can be downloaded (run scripts/setup.sh)"
        ),
    }
    let dest = outbox::destination(&opts.base, &opts.code);
    let outbox =
        Outbox::open(&opts.state_dir.join("outbox"), dest).context("opening the outbox")?;
    let pending = outbox.len();
    if pending > 0 {
        tracing::info!(
            pending,
            "results from a previous run for this server and code are waiting in the outbox; sending them first"
        );
    }
    for line in outbox::describe_others(outbox.others()) {
        tracing::warn!("{line}");
    }
    if let Some((n, path)) = outbox.exported() {
        tracing::warn!(
            path = %path.display(),
            "{n} result(s) for another server, older than 7 days, were moved from the outbox to {} (one JSON line each, as in the outbox); they were never sent",
            path.display()
        );
    }
    // The first decision before any connection: a worker started on battery takes no job.
    let decider = Arc::new(Decider::new(opts.prefs.clone(), &opts.state_dir));
    decider.observe(&Readings {
        power: Some(crate::prefs::power::read()),
        minute: Some(crate::clock::local_minute()),
        free_disk: crate::os::free_bytes(&opts.state_dir),
        others_cpu: None,
    });
    let first = decider.pause();
    let ctx = Arc::new(Ctx {
        pool,
        prefs: Arc::clone(&decider),
        record: Arc::new(record::Record::open(&opts.state_dir)),
        ytdlp_seen: Default::default(),
        outbox: Arc::new(outbox),
        limits: download::Limits {
            allow_private: opts.allow_private_urls,
            ..download::Limits::from_env()
        },
        ytdlp,
        tmp: private_tmp(&opts.state_dir).context("creating the download directory")?,
        breaker: Default::default(),
        updater: youtube::Updater::new(&opts.state_dir),
        downloads: Default::default(),
        url,
        masked_url,
        masked_code: mask(&opts.code),
        base: opts.base.trim_end_matches('/').to_string(),
        draining: watch::channel(false).0,
        intake: Arc::new(watch::channel(first.map_or(Intake::Open, Intake::Preference)).0),
        welcome: watch::channel(None).0,
        connected: Arc::new(watch::channel(false).0),
        fatal: watch::channel(None).0,
        slots: children + 1,
    });
    let slots = ctx.slots;
    let runner: hub::Runner = {
        let ctx = Arc::clone(&ctx);
        Arc::new(move |job| Box::pin(work::run(Arc::clone(&ctx), job)))
    };
    // Bound before connecting, so a taken port is an error at once, not mid-run.
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let facts = hub::Facts {
        welcome: ctx.welcome.subscribe(),
        connected: Arc::clone(&ctx.connected),
        preference: ctx.prefs.subscribe(),
        record: Arc::clone(&ctx.record),
    };
    // `chaarfm-super status` asks through this socket; a failure only costs that.
    let control = match control::listen(&opts.state_dir, &opts.runtime_dir) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the control socket: `chaarfm-super status` will not find this worker");
            None
        }
    };
    let (hub, hub_task) = Hub::start(
        Arc::clone(&ctx.outbox),
        Arc::clone(&ctx.intake),
        facts,
        runner,
    );
    tracing::info!(url = %ctx.masked_url, slots, "connecting to ChaarFM");
    let mut lanes = tokio::task::JoinSet::new();
    spawn_lane(&ctx, &hub, &mut lanes).await;
    let keep = tokio::spawn(keepalive(Arc::clone(&ctx)));
    let started = Instant::now();
    let status_task = tokio::spawn(status::every(
        Arc::clone(&ctx),
        hub.clone(),
        started,
        children,
    ));
    let rec = tokio::spawn(recover(Arc::clone(&ctx)));
    let rec_youtube = tokio::spawn(recover_youtube(Arc::clone(&ctx)));
    let prefs_task = tokio::spawn(crate::prefs::monitor::run(
        Arc::clone(&decider),
        opts.prefs_source.clone(),
        hangups,
    ));
    let apply_task = tokio::spawn(apply_preferences(Arc::clone(&ctx)));
    let track_task = tokio::spawn(report::track(Arc::clone(&ctx)));
    let save_task = tokio::spawn(save_record(Arc::clone(&ctx)));
    let (control_task, published) = match control {
        Some((listener, published)) => (
            Some(tokio::spawn(control::serve(
                listener,
                Arc::clone(&ctx),
                hub.clone(),
                started,
                children,
            ))),
            Some(published),
        ),
        None => (None, None),
    };
    let metrics_task = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!("status page on http://{a}/ (also /status.json, /metrics, /healthz)");
        }
        tokio::spawn(metrics::serve(
            l,
            Arc::clone(&ctx),
            hub.clone(),
            started,
            children,
        ))
    });

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
    let stopped: Option<String> = loop {
        tokio::select! {
            w = &mut decide, if !decided => {
                decided = true;
                match w {
                    _ if *ctx.draining.borrow() => {}
                    Some(m) => tracing::info!(server_slots = m, "server speaks protocol 2: one connection, {m} jobs outstanding"),
                    None if opts.lanes => {
                        tracing::info!("no welcome: today's server, one job per connection; opening {} more connection(s)", slots - 1);
                        for _ in 1..slots {
                            spawn_lane(&ctx, &hub, &mut lanes).await;
                        }
                    }
                    None => tracing::info!("no welcome and --lanes off: one connection, one job at a time"),
                }
            }
            _ = signals.next() => {
                if *ctx.draining.borrow() {
                    crate::logging::eprint("chaarfm-super: second interrupt, stopping now\n");
                    crate::signals::exit_now(130);
                }
                tracing::warn!("stopping: no new jobs or connections; downloads in flight are cancelled and their jobs handed back to the server, embeddings in flight finish and their results are sent (interrupt again to stop now)");
                if !ctx.protocol2() {
                    tracing::warn!("today's server keeps the jobs handed back in its queue only while the session stays open: its /ingest page open in a browser, or another worker connected with this code");
                }
                let _ = ctx.draining.send(true);
                hub.drain();
            }
            msg = fatal.wait_for(|f| f.is_some()) => {
                break Some(msg.map(|m| m.clone().unwrap_or_default()).unwrap_or_default());
            }
            stop = ctx.pool.fatal() => {
                // Jobs held are handed back: closing their connections requeues them.
                // This is the one stop that cannot keep a connection open.
                if !ctx.protocol2() {
                    tracing::warn!("closing every connection to ChaarFM: today's server keeps its queue (and the jobs handed back) only while its /ingest page is open in a browser");
                }
                break Some(format!("{stop}; the jobs in hand were handed back to the server"));
            }
            j = lanes.join_next() => {
                if let Some(msg) = ctx.fatal.borrow().clone() {
                    break Some(msg);
                }
                if j.is_none() || (*ctx.draining.borrow() && lanes.is_empty()) {
                    break None;
                }
            }
        }
    };
    if stopped.is_some() {
        lanes.shutdown().await;
    }
    while lanes.join_next().await.is_some() {}
    keep.abort();
    rec.abort();
    rec_youtube.abort();
    status_task.abort();
    for t in [prefs_task, apply_task, track_task, save_task] {
        t.abort();
    }
    if let Some(t) = &control_task {
        t.abort();
    }
    drop(published);
    if let Err(e) = ctx.record.save() {
        tracing::warn!(error = %e, "cannot save the record of tracks done");
    }
    if let Some(t) = &metrics_task {
        t.abort();
    }
    ctx.updater.finish().await;
    let last = status::snapshot(&ctx, &hub, started, children).await;
    hub_task.abort();
    let held = ctx.outbox.len();
    let unsaved = ctx.outbox.unsaved();
    if unsaved > 0 {
        tracing::warn!(
            unsaved,
            "results held only in memory: the outbox could not be written"
        );
    }
    let fallback = std::env::temp_dir().join(format!(
        "chaarfm-super-undelivered-{}.jsonl",
        std::process::id()
    ));
    let lost = ctx.outbox.rescue(&fallback);
    crate::logging::print(&format!(
        "chaarfm-super: stopped: {}. {held} result(s) kept in the outbox (sent again at the next start with this --url and --code)\n",
        status::line(&last),
    ));
    ctx.pool.shutdown().await;
    if let Some(msg) = stopped {
        anyhow::bail!("{msg}");
    }
    Ok(if lost > 0 { Exit::Lost(lost) } else { Exit::Ok })
}

async fn spawn_lane(ctx: &Arc<Ctx>, hub: &Hub, set: &mut tokio::task::JoinSet<()>) {
    if let Some(handle) = hub.add_lane().await {
        set.spawn(lane(Arc::clone(ctx), hub.clone(), handle));
    }
}

enum Ended {
    Lost(String),
    /// Closed to hand a job back, or to stop taking jobs while paused.
    HandedBack,
    Drained,
}

/// One connection, reconnected after any loss until the drain is complete.
async fn lane(ctx: Arc<Ctx>, hub: Hub, mut me: LaneHandle) {
    let id = me.id;
    let mut backoff = Backoff::reconnect();
    let mut draining = ctx.draining.subscribe();
    let mut intake = ctx.intake.subscribe();
    let mut connected = ctx.connected.subscribe();
    let settled = |v: &watch::Receiver<LaneView>| {
        let v = v.borrow();
        v.busy == 0 && v.pending.is_empty()
    };
    loop {
        if *draining.borrow() {
            // Stopping: no new connection, except to deliver results of jobs that
            // finished (an embedding in flight when the stop came, its connection lost).
            loop {
                if settled(&me.view) {
                    return;
                }
                if !me.view.borrow().pending.is_empty() {
                    break;
                }
                if me.view.changed().await.is_err() {
                    return;
                }
            }
        }
        // Today's server: a connection is a request for a job, so none while paused, even
        // for a lane whose job is still running (its result waits for the resume, or a
        // drain delivers it). Reconnecting then would only fetch jobs to hand back.
        // Except lane 0 when no lane is connected at all: the session's last connection
        // keeps the server's queue (a pause of hours must survive a lost connection).
        if !ctx.protocol2() {
            while ctx.paused() && !*draining.borrow() && (id != 0 || *connected.borrow()) {
                tokio::select! {
                    _ = intake.changed() => {}
                    _ = draining.changed() => {}
                    _ = connected.changed() => {}
                }
            }
            if *draining.borrow() && settled(&me.view) {
                return;
            }
        }
        let ws = match probe::handshake(&ctx.url, &ctx.base, &ctx.masked_code).await {
            Ok(ws) => ws,
            Err(probe::Handshake::Refused(r)) => {
                let _ = ctx.fatal.send(Some(r.message));
                return;
            }
            Err(e) => {
                match e {
                    probe::Handshake::Failed(e) => {
                        tracing::warn!(lane = id, error = %e, "cannot connect")
                    }
                    _ => tracing::warn!(lane = id, "connecting timed out"),
                }
                ctx.pool.stats.note_error();
                let d = backoff.next_delay();
                if wait_or_drain(&mut draining, d).await && me.view.borrow().busy == 0 {
                    return;
                }
                continue;
            }
        };
        let since = Instant::now();
        let mut useful = false;
        let ended = serve_connection(&ctx, &hub, &mut me, ws, &mut draining, &mut useful).await;
        hub.disconnected(id);
        match ended {
            Ended::Drained => return,
            Ended::HandedBack => {
                tracing::debug!(lane = id, "connection closed to hand a job back");
                continue;
            }
            Ended::Lost(why) => {
                tracing::warn!(lane = id, %why, "connection lost; reconnecting");
                ctx.pool.stats.note_error();
            }
        }
        let d = backoff.after_connection(since.elapsed(), useful);
        let _ = wait_or_drain(&mut draining, d).await;
    }
}

/// Sleeps `d`; returns early (true) when a drain starts.
async fn wait_or_drain(draining: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let drained = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = draining.wait_for(|d| *d) => r.is_ok(),
    };
    drained || *draining.borrow()
}

use probe::Ws;

async fn serve_connection(
    ctx: &Arc<Ctx>,
    hub: &Hub,
    me: &mut LaneHandle,
    ws: Ws,
    draining: &mut watch::Receiver<bool>,
    useful: &mut bool,
) -> Ended {
    let id = me.id;
    let (mut sink, mut stream) = ws.split();
    tracing::info!(lane = id, "connected");
    let p2 = || ctx.protocol2();
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
    // Results not yet shown processed go first (from before this connection or run).
    let mut sent: HashSet<String> = HashSet::new();
    // Today's server: results sent on this connection and not yet proven processed (the
    // next job on this connection proves them).
    let mut unproven: Vec<String> = Vec::new();
    for e in hub.connected(id).await {
        if let Err(err) = send_json(&mut sink, &e.msg).await {
            return Ended::Lost(err);
        }
        if !p2() {
            unproven.push(e.job_id.clone());
        }
        sent.insert(e.job_id);
    }
    let mut intake = ctx.intake.subscribe();
    let mut announced_pause = false;
    // Paused, and the hub said this is the session's last connection: it stays open.
    let mut keeper = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut proof_deadline: Option<tokio::time::Instant> = None;
    loop {
        let paused = ctx.paused();
        if !paused {
            keeper = false;
        }
        let (busy, unsent, held) = {
            let v = me.view.borrow();
            (
                v.busy,
                v.pending.iter().any(|j| !sent.contains(j)),
                !v.pending.is_empty(),
            )
        };
        if !p2() && busy == 0 && !unsent {
            if *draining.borrow() {
                // Wait a little for the next job, which proves the last result arrived.
                if unproven.is_empty()
                    || proof_deadline.is_some_and(|d| d <= tokio::time::Instant::now())
                {
                    if close_acknowledged(&mut sink, &mut stream).await {
                        // The server answered our close, so it received every result
                        // sent before it; it handles them in order. Keeping them would
                        // send them again at the next start, perhaps into another
                        // session of this code.
                        hub.processed(std::mem::take(&mut unproven));
                    }
                    return Ended::Drained;
                }
                proof_deadline.get_or_insert_with(|| tokio::time::Instant::now() + PROOF_WAIT);
            } else if paused && !keeper {
                // A connection asks today's server for a job: none while paused, except
                // the session's last, which keeps the server's queue alive.
                if hub.may_close(id).await {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ended::HandedBack;
                }
                tracing::info!(lane = id, "paused: keeping this connection open, the session's last (closing it would delete the server's queue); a job sent on it waits for the pause to end");
                keeper = true;
            }
        }
        if p2() {
            // A hand-back settles the job before its `release` is read from `cmds`:
            // send that first.
            if *draining.borrow() && busy == 0 && !held && me.cmds.is_empty() {
                let _ = sink.send(Message::Close(None)).await;
                return Ended::Drained;
            }
            if paused != announced_pause {
                let msg = match ctx.intake.borrow().reason() {
                    Some(reason) => WorkerMsg::Pause {
                        reason: reason.to_string(),
                    },
                    None => WorkerMsg::Resume,
                };
                if let Err(e) = send_json(&mut sink, &msg).await {
                    return Ended::Lost(e);
                }
                announced_pause = paused;
            }
        }
        let proof_wait = async {
            match proof_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = stream.next() => {
                heard = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return Ended::Lost("closed by the server".into()),
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    Some(Ok(_)) => continue, // pongs; pings are answered by tungstenite
                };
                match parse_server(text.as_str()) {
                    Incoming::Ping => {
                        if let Err(e) = send_json(&mut sink, &WorkerMsg::Pong).await {
                            return Ended::Lost(e);
                        }
                    }
                    Incoming::Welcome { protocol, slots } if protocol >= PROTOCOL => {
                        *useful = true;
                        hub.processed(std::mem::take(&mut unproven));
                        let _ = ctx.welcome.send(Some(slots));
                    }
                    Incoming::Welcome { protocol, .. } => tracing::warn!(protocol, "welcome for an unknown protocol; ignored"),
                    Incoming::Ack { job_id } => {
                        *useful = true;
                        hub.processed(vec![job_id]);
                    }
                    Incoming::Job(job) => {
                        *useful = true;
                        // Today's server sends the next job only once it has handled
                        // the last result on this connection.
                        hub.processed(std::mem::take(&mut unproven));
                        if *draining.borrow() || ctx.paused() {
                            let why = if ctx.paused() { "paused" } else { "draining" };
                            tracing::info!(lane = id, job = %job.job_id, "{why}: job left for later");
                            if p2() {
                                let release = WorkerMsg::Release {
                                    job_id: job.job_id.clone(),
                                    reason: format!("worker {why}"),
                                };
                                if let Err(e) = send_json(&mut sink, &release).await {
                                    return Ended::Lost(e);
                                }
                            } else if !*draining.borrow() {
                                // Closing hands it back (the server requeues it), unless
                                // this is the session's last connection: then it is held
                                // until intake reopens.
                                if hub.may_close(id).await {
                                    let _ = sink.send(Message::Close(None)).await;
                                    return Ended::HandedBack;
                                }
                                hub.job(id, job).await;
                            }
                            continue;
                        }
                        hub.job(id, job).await;
                    }
                    Incoming::Ignored(why) => {
                        let shown: String = why.chars().take(200).collect();
                        tracing::warn!(lane = id, reason = %shown, "ignored a message from the server");
                    }
                }
            }
            Some(cmd) = me.cmds.recv() => match cmd {
                LaneCmd::Result(entry) => {
                    if sent.contains(&entry.job_id) {
                        continue;
                    }
                    if let Err(e) = send_json(&mut sink, &entry.msg).await {
                        return Ended::Lost(e); // still in the outbox: sent after reconnecting
                    }
                    if !p2() {
                        unproven.push(entry.job_id.clone());
                    }
                    sent.insert(entry.job_id);
                }
                LaneCmd::HandBack { job_id, reason } => {
                    if p2() {
                        let release = WorkerMsg::Release { job_id, reason };
                        if let Err(e) = send_json(&mut sink, &release).await {
                            return Ended::Lost(e);
                        }
                    } else {
                        // Today's server requeues the job of a closed connection.
                        let _ = sink.send(Message::Close(None)).await;
                        return Ended::HandedBack;
                    }
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENCE_LIMIT {
                    return Ended::Lost(format!("nothing heard from the server for {} s", SILENCE_LIMIT.as_secs()));
                }
                if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                    return Ended::Lost(e.to_string());
                }
            }
            _ = proof_wait => {}
            Ok(()) = me.view.changed() => {}
            _ = draining.changed() => {}
            _ = intake.changed() => {}
        }
    }
}

/// Sends our close and waits (at most [`CLOSE_WAIT`]) for the server's; whether it came.
async fn close_acknowledged<S, R>(sink: &mut S, stream: &mut R) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    if sink.send(Message::Close(None)).await.is_err() {
        return false;
    }
    let answer = async {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    tokio::time::timeout(CLOSE_WAIT, answer)
        .await
        .unwrap_or(false)
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
    loop {
        let base = ctx.base.clone();
        let r =
            tokio::task::spawn_blocking(move || probe::keepalive(&base, Duration::from_secs(30)))
                .await;
        match r {
            Ok(Ok(status)) => tracing::debug!(status, "keepalive"),
            Ok(Err(e)) => tracing::debug!(error = %e, "keepalive failed"),
            Err(_) => {}
        }
        tokio::time::sleep(KEEPALIVE).await;
    }
}

#[cfg(test)]
mod tests {
    /// Yields to the runtime until `cond` holds (at most 10,000 times): for tests of
    /// tasks on the same current-thread runtime, without a clock.
    pub(crate) async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..10_000 {
            if cond() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        cond()
    }
}
