//! Connect mode: `chaarfm-super --code CODE`. One machine, one worker with many slots.
//!
//! - Lane 0 connects to `{base}/ws/remote/{code}/worker`, offering protocol 2 in a
//!   handshake header, and says `hello` (slots = children + 1). A server that announces
//!   protocol 2 in its handshake answer and says `welcome` keeps up to its `slots` jobs
//!   outstanding on that one connection and acknowledges results. Today's server answers
//!   without the header, so at once (or after 3 s without the welcome announced) more
//!   lanes (connections) are opened, one per extra slot, since it gives one job per
//!   connection (`--lanes off` keeps one). When downloads take long next to embeddings
//!   (YouTube's seconds), `pace` asks for more, up to 4 x children + 1, and more lanes open.
//! - Every lane (`server::lane`) reconnects after any loss (`Backoff::reconnect`: 2 s,
//!   x1.5, at most 60 s, reset after a stable connection). A 401/403 on the handshake is a bad code, another
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
//!
//! Who does what: `run` (here) wires the parts and waits for the end; `lane` does one
//! connection's I/O, `protocol` decides what it says (`Legacy` or `V2`), `hub` owns the
//! jobs and every published fact, `work` runs one job, `recover` ends a fault's pause.

pub mod control;
pub mod ctx;
pub mod download;
pub mod facts;
pub mod guard;
pub mod hub;
pub mod intake;
pub mod lane;
pub mod metrics;
pub mod names;
pub mod outbox;
pub mod pace;
pub mod page;
pub mod probe;
pub mod protocol;
pub mod record;
pub mod recover;
pub mod report;
pub mod status;
pub mod stopping;
pub mod url;
pub mod work;
pub mod youtube;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exit::Exit;
use crate::pool::Pool;
use crate::prefs::decide::Readings;
use crate::prefs::monitor::{Decider, Source};
use crate::prefs::settings::Prefs;
use crate::signals::{Hangups, Signals};
use ctx::Ctx;
use facts::Published;
use hub::Hub;
use intake::Intake;
use names::mask;
use outbox::Outbox;

pub use recover::probe_disk;

/// How long a server that announced protocol 2 in its handshake has to say `welcome`
/// before it is taken for today's one-job-per-connection server.
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

/// Saves the record of tracks done every minute (and the caller saves it at exit).
async fn save_record(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(status::EVERY);
    loop {
        tick.tick().await;
        let c = Arc::clone(&ctx);
        let _ = tokio::task::spawn_blocking(move || c.record.save()).await;
    }
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

/// The tasks that run beside the lanes, all ended by one token once the lanes are done.
struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    async fn end(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Opens the outbox for this server and code, and says what it holds.
fn open_outbox(opts: &Options) -> anyhow::Result<Outbox> {
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
    Ok(outbox)
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
    let outbox = open_outbox(&opts)?;
    // The first decision before any connection: a worker started on battery takes no job.
    let decider = Arc::new(Decider::new(opts.prefs.clone(), &opts.state_dir));
    decider.observe(&Readings {
        power: Some(crate::prefs::power::read()),
        minute: Some(crate::clock::local_minute()),
        free_disk: crate::os::free_bytes(&opts.state_dir),
        others_cpu: None,
    });
    let first = decider.pause();
    let (published, watch) = Published::new(first.map_or(Intake::Open, Intake::Preference));
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
        tmp: recover::private_tmp(&opts.state_dir).context("creating the download directory")?,
        breaker: Default::default(),
        updater: youtube::Updater::new(&opts.state_dir),
        downloads: Default::default(),
        pace: pace::Pace::new(children),
        url,
        masked_url,
        masked_code: mask(&opts.code),
        base: opts.base.trim_end_matches('/').to_string(),
        watch: watch.clone(),
        children,
        slots: children + 1,
        started: Instant::now(),
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
    let (hub, hub_task) = Hub::start(Arc::clone(&ctx.outbox), published, facts, runner);
    tracing::info!(url = %ctx.masked_url, slots, "connecting to ChaarFM");
    let mut lanes = tokio::task::JoinSet::new();
    spawn_lanes(&ctx, &hub, &mut lanes, 1).await;
    let background = Background {
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
    };
    background.spawn(keepalive(Arc::clone(&ctx)));
    background.spawn(status::every(Arc::clone(&ctx), hub.clone()));
    background.spawn(recover::disk(Arc::clone(&ctx), hub.clone()));
    background.spawn(recover::youtube(Arc::clone(&ctx), hub.clone()));
    background.spawn(crate::prefs::monitor::run(
        Arc::clone(&decider),
        opts.prefs_source.clone(),
        hangups,
    ));
    background.spawn(report::track(Arc::clone(&ctx)));
    background.spawn(save_record(Arc::clone(&ctx)));
    // Removes the control socket's address file when dropped.
    let published_control = control.map(|(listener, published)| {
        background.spawn(control::serve(listener, Arc::clone(&ctx), hub.clone()));
        published
    });
    if let Some(l) = metrics_listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!("status page on http://{a}/ (also /status.json, /metrics, /healthz)");
        }
        background.spawn(metrics::serve(l, Arc::clone(&ctx), hub.clone()));
    }

    let decide = decide_protocol(watch.clone());
    tokio::pin!(decide);
    let mut decided = false;
    // Against today's server with --lanes: the connections opened, and how many are wanted.
    let mut opened: Option<usize> = None;
    let mut wanted = ctx.pace.subscribe();
    let mut stopping = false;
    let stopped: Option<String> = loop {
        tokio::select! {
            w = &mut decide, if !decided => {
                decided = true;
                match w {
                    _ if stopping => {}
                    Some(m) => tracing::info!(server_slots = m, "server speaks protocol 2: one connection, {m} jobs outstanding"),
                    None if opts.lanes => {
                        tracing::info!("today's server: one job per connection; opening {} more connection(s)", slots - 1);
                        spawn_lanes(&ctx, &hub, &mut lanes, slots - 1).await;
                        opened = Some(slots);
                    }
                    None => tracing::info!("today's server and --lanes off: one connection, one job at a time"),
                }
            }
            Ok(()) = wanted.changed(), if opened.is_some() && !stopping => {
                let want = *wanted.borrow_and_update();
                if let Some(have) = opened.filter(|&have| want > have) {
                    let (d, e) = ctx.pace.averages();
                    tracing::info!("downloads take {d:.1} s a job against {e:.1} s of embedding: opening {} more connection(s), {want} in all, so the children are not kept waiting", want - have);
                    spawn_lanes(&ctx, &hub, &mut lanes, want - have).await;
                    opened = Some(want);
                }
            }
            _ = signals.next() => {
                if stopping {
                    crate::logging::eprint("chaarfm-super: second interrupt, stopping now\n");
                    crate::signals::exit_now(130);
                }
                stopping = true;
                tracing::warn!("stopping: no new jobs or connections; downloads in flight are cancelled and their jobs handed back to the server, embeddings in flight finish and their results are sent (interrupt again to stop now)");
                if !ctx.protocol2() {
                    tracing::warn!("today's server keeps the jobs handed back in its queue only while the session stays open: its /ingest page open in a browser, or another worker connected with this code");
                }
                hub.drain();
            }
            stop = ctx.pool.fatal() => {
                // Jobs held are handed back: closing their connections requeues them.
                // This is the one stop that cannot keep a connection open.
                if !ctx.protocol2() {
                    tracing::warn!("closing every connection to ChaarFM: today's server keeps its queue (and the jobs handed back) only while its /ingest page is open in a browser");
                }
                break Some(format!("{stop}; the jobs in hand were handed back to the server"));
            }
            j = lanes.join_next() => match j {
                None => break None,
                // The server refused the pairing code.
                Some(Ok(Some(refused))) => break Some(refused),
                Some(_) if stopping && lanes.is_empty() => break None,
                Some(_) => {}
            }
        }
    };
    if stopped.is_some() {
        lanes.shutdown().await;
    }
    while lanes.join_next().await.is_some() {}
    background.end().await;
    drop(published_control);
    if let Err(e) = ctx.record.save() {
        tracing::warn!(error = %e, "cannot save the record of tracks done");
    }
    ctx.updater.finish().await;
    let last = status::snapshot(&ctx, &hub).await;
    hub.stop();
    let _ = hub_task.await;
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

/// Legacy or protocol 2, decided once, from lane 0's first handshake: `Some(slots)` for
/// protocol 2. A server that did not announce protocol 2 in it is today's, known at once,
/// so the extra lanes open without a wait (their children would idle meanwhile); one that
/// did has [`WELCOME_WAIT`] to say `welcome`.
async fn decide_protocol(mut watch: facts::Watch) -> Option<usize> {
    let announced = watch
        .announced
        .wait_for(Option::is_some)
        .await
        .ok()?
        .unwrap_or(false);
    if !announced {
        return None;
    }
    match tokio::time::timeout(WELCOME_WAIT, watch.welcome.wait_for(Option::is_some)).await {
        Ok(Ok(w)) => *w,
        _ => None,
    }
}

/// Opens `n` more lanes.
async fn spawn_lanes(
    ctx: &Arc<Ctx>,
    hub: &Hub,
    set: &mut tokio::task::JoinSet<Option<String>>,
    n: usize,
) {
    for _ in 0..n {
        let Some(me) = hub.add_lane().await else {
            return;
        };
        let lane = lane::Lane {
            hub: hub.clone(),
            me,
            watch: ctx.watch.clone(),
            slots: ctx.slots,
        };
        set.spawn(lane::run(Arc::clone(ctx), lane));
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

    use super::facts::Published;
    use super::intake::Intake;
    use super::{decide_protocol, WELCOME_WAIT};
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_server_that_does_not_announce_protocol_2_is_todays_at_once() {
        let (published, watch) = Published::new(Intake::Open);
        let t0 = Instant::now();
        let decide = tokio::spawn(decide_protocol(watch));
        // Undecided while no handshake has answered, however long that takes.
        tokio::time::sleep(WELCOME_WAIT * 100).await;
        assert!(!decide.is_finished());
        let answered = Instant::now();
        published.out.announced.send_replace(Some(false));
        assert_eq!(decide.await.unwrap(), None);
        assert_eq!(Instant::now() - answered, std::time::Duration::ZERO);
        assert_eq!(answered - t0, WELCOME_WAIT * 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_announces_protocol_2_has_its_welcome_awaited() {
        let (published, watch) = Published::new(Intake::Open);
        published.out.announced.send_replace(Some(true));
        let t0 = Instant::now();
        let decide = tokio::spawn(decide_protocol(watch));
        tokio::time::sleep(WELCOME_WAIT / 2).await;
        assert!(!decide.is_finished());
        published.out.welcome.send_replace(Some(3));
        assert_eq!(decide.await.unwrap(), Some(3));
        assert_eq!(Instant::now() - t0, WELCOME_WAIT / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_server_without_a_welcome_is_taken_for_todays_after_the_wait() {
        let (published, watch) = Published::new(Intake::Open);
        published.out.announced.send_replace(Some(true));
        let t0 = Instant::now();
        assert_eq!(decide_protocol(watch).await, None);
        assert_eq!(Instant::now() - t0, WELCOME_WAIT);
    }
}
