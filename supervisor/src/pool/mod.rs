//! The pool of crash-isolated children. One task (the event loop in [`run`]) owns every
//! job and every child; the rest of the supervisor talks to it through [`Pool`].
//!
//! - Each child is in exactly one [`Life`] state; only `Idle` children receive jobs.
//! - A job goes to an idle child, which must keep reporting progress: a job with no
//!   `Progress` for [`PROGRESS_TIMEOUT`] (or, with `--job-timeout`, not done within it) is
//!   hung, however long its track.
//! - A child that dies, hangs past its deadline, stops sending heartbeats or exceeds the
//!   memory ceiling is killed if need be, and its job is handed on by [`policy::reassign`].
//!   The supervisor's own routine kills are never charged to a job.
//! - Children are respawned: at once after a death with a job, with backoff when they die
//!   before saying hello or cannot be started; five early deaths in a row, a child's
//!   `Fatal`, or a pool that cannot start any child stop the pool: every job then gets
//!   [`JobFailure::Stopped`], a local fault, never the track's.
//! - Time is judged on what arrived after the loop last ran: a paused or stalled
//!   supervisor (SIGSTOP, a blocked thread) never kills a healthy child.

pub mod policy;
pub mod proc;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chaarfm_shared::ipc::{self, FromChild, Job, JobOutput, ToChild, WirePath};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;

use policy::{Attempts, Ending, Fault, KillReason, Verdict};
pub use proc::ChildSpec;
use proc::{Control, Event, SpawnError, Spawner, Tag};

/// Heartbeats come every second; this long without any frame means the child is frozen.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before restarting a child that could not be started (0.5 s, doubling, 10 s)...
const START_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(10));
/// ...or that died before it was ready (0.25 s, doubling, 10 s).
const EARLY_DEATH_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(250), 2.0, Duration::from_secs(10));
/// A child must say hello (model loaded) within this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// Time from dispatch to a job's first progress report (opening and probing the file,
/// then decoding and embedding its first [`ipc::PROGRESS_EVERY_S`] of audio: ~1 s here).
pub const FIRST_PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// Time between two progress reports of a job ([`ipc::PROGRESS_EVERY_S`] of audio, ~1 s
/// of a core here: a >50x margin for slower machines and GPU batches).
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Children dying before hello this many times in a row stop the pool.
const MAX_EARLY_DEATHS: u32 = 5;
/// With no child alive, this many failed starts in a row stop the pool.
const MAX_START_FAILURES: u32 = 8;
/// The housekeeping period; a gap much longer than this means the loop did not run.
const TICK: Duration = Duration::from_millis(100);
/// A gap between ticks longer than this is a pause or stall of the supervisor.
const STALL: Duration = Duration::from_secs(1);
/// A child asked to exit gets this long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The socket closed but the process lives on: killed after this.
const EOF_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub children: Vec<ChildSpec>,
    /// Fixed per-job timeout (`--job-timeout`), replacing the progress deadlines.
    pub job_timeout: Option<Duration>,
    pub max_child_memory_mb: u64,
    /// Recycle a child after this many jobs (`--max-jobs-per-child`).
    pub max_jobs_per_child: Option<u32>,
}

/// Counters for progress display.
#[derive(Debug, Default)]
pub struct Stats {
    pub alive: AtomicUsize,
    pub restarts: AtomicUsize,
    /// Sum over finished jobs of (dispatch to result) minus the child's own wall time for
    /// the job, in µs: what IPC and scheduling cost.
    pub overhead_us: AtomicU64,
    pub overhead_jobs: AtomicU64,
    /// Audio embedded by finished jobs, in ms (for x realtime).
    pub audio_ms: AtomicU64,
    /// Restarts by [`policy::Cause::label`] (recycling and shutdown are not restarts).
    pub restarts_by: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Jobs waiting for a child, as of the last housekeeping tick.
    pub queued: AtomicUsize,
    /// Unix time (s) of the last child death or job failure; 0: none yet.
    pub last_error_unix: AtomicU64,
}

impl Stats {
    /// Records that something went wrong now (`/metrics`' last error time).
    pub fn note_error(&self) {
        self.last_error_unix
            .store(crate::date::unix_now(), Ordering::Relaxed);
    }

    fn count_restart(&self, label: &'static str) {
        if let Ok(mut m) = self.restarts_by.lock() {
            *m.entry(label).or_insert(0) += 1;
        }
    }

    /// Mean IPC + scheduling overhead per finished job, in ms.
    pub fn overhead_ms(&self) -> f64 {
        let n = self.overhead_jobs.load(Ordering::Relaxed);
        if n == 0 {
            0.0
        } else {
            self.overhead_us.load(Ordering::Relaxed) as f64 / n as f64 / 1e3
        }
    }
}

/// Why the pool stopped: the machine's problem, not any track's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PoolStopped {
    pub message: String,
}

/// Why a job produced no vector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobFailure {
    /// The file's own problem, reported by a healthy child.
    #[error("{0}")]
    File(String),
    /// Its children kept dying (see `policy`).
    #[error("{0}")]
    Crashed(String),
    /// Not run: the pool stopped (a local fault; see [`PoolStopped`]).
    #[error("not run: {0}")]
    Stopped(PoolStopped),
    /// Not run: the pool is shutting down.
    #[error("not run: shutting down")]
    ShuttingDown,
}

impl JobFailure {
    /// A failure of this machine rather than of the track: the job is handed back, never
    /// reported failed.
    pub fn is_local(&self) -> bool {
        matches!(self, JobFailure::Stopped(_) | JobFailure::ShuttingDown)
    }
}

type Reply = oneshot::Sender<Result<JobOutput, JobFailure>>;

enum Command {
    Submit {
        path: WirePath,
        tags: bool,
        reply: Reply,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    tx: mpsc::UnboundedSender<Command>,
    pub stats: Arc<Stats>,
    fatal: watch::Receiver<Option<PoolStopped>>,
}

impl Pool {
    /// Starts the children and the event loop (on the current tokio runtime).
    pub fn start(
        cfg: PoolConfig,
        spawner: Box<dyn Spawner>,
    ) -> (Pool, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let state = State::new(cfg, spawner, Arc::clone(&stats), fatal_tx);
        let task = tokio::spawn(run(state, rx));
        (Pool { tx, stats, fatal }, task)
    }

    /// Embeds one file in some child; retried across child deaths per `policy`.
    pub async fn embed(
        &self,
        path: impl Into<WirePath>,
        tags: bool,
    ) -> Result<JobOutput, JobFailure> {
        let (reply, rx) = oneshot::channel();
        let gone = || self.stopped_failure();
        self.tx
            .send(Command::Submit {
                path: path.into(),
                tags,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The failure of a job that could not reach the event loop: the pool's stop reason
    /// if it stopped, else shutdown.
    fn stopped_failure(&self) -> JobFailure {
        match self.fatal.borrow().clone() {
            Some(s) => JobFailure::Stopped(s),
            None => JobFailure::ShuttingDown,
        }
    }

    /// Resolves with the reason when the pool gives up (children cannot start).
    pub async fn fatal(&self) -> PoolStopped {
        let mut rx = self.fatal.clone();
        let got = rx
            .wait_for(|f| f.is_some())
            .await
            .ok()
            .and_then(|f| f.clone());
        got.unwrap_or_else(|| PoolStopped {
            message: "the pool has stopped".into(),
        })
    }

    /// Stops the children once their current jobs are done; unstarted jobs are cancelled.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A job in a child.
#[derive(Debug, Clone, Copy)]
struct Busy {
    job: u64,
    sent: Instant,
    deadline: Instant,
    timeout: Duration,
}

/// The one lifecycle of a child slot. Only `Idle` receives jobs.
#[derive(Debug, Clone, Copy)]
enum Life {
    /// Process started, no hello yet.
    Starting {
        since: Instant,
    },
    Idle,
    Busy(Busy),
    /// Asked to exit (shutdown, recycling); killed if it lingers.
    Stopping {
        since: Instant,
    },
    /// SIGKILL sent; the exit event settles the job it held, if any.
    Killing {
        reason: KillReason,
        job: Option<u64>,
    },
    /// No process; respawned at `restart_at` (never, when `None`).
    Dead {
        restart_at: Option<Instant>,
    },
}

struct Slot {
    spec: ChildSpec,
    gen: u64,
    life: Life,
    ctl: Option<Box<dyn Control>>,
    last_seen: Instant,
    hello: bool,
    served: u32,
    eof_at: Option<Instant>,
    /// Failed starts in a row (spawn errors), for backoff and the log.
    start_failures: u32,
}

struct JobState {
    path: WirePath,
    tags: bool,
    reply: Reply,
    attempts: Attempts,
}

struct State {
    cfg: PoolConfig,
    spawner: Box<dyn Spawner>,
    slots: Vec<Slot>,
    jobs: HashMap<u64, JobState>,
    queue: VecDeque<u64>,
    next_id: u64,
    early_deaths: u32,
    stats: Arc<Stats>,
    fatal_tx: watch::Sender<Option<PoolStopped>>,
    fatal: Option<PoolStopped>,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: Option<mpsc::UnboundedReceiver<Event>>,
    last_tick: Instant,
    last_memory_check: Instant,
}

async fn run(mut st: State, mut commands: mpsc::UnboundedReceiver<Command>) {
    let Some(mut events) = st.events_rx.take() else {
        return;
    };
    for i in 0..st.slots.len() {
        st.spawn(i);
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands_open = true;
    loop {
        // Child events first: after a pause, what the children said meanwhile counts
        // before any deadline is judged.
        tokio::select! {
            biased;
            Some(ev) = events.recv() => st.on_event(ev),
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::Submit { path, tags, reply }) => st.submit(path, tags, reply),
                Some(Command::Shutdown { done }) => {
                    st.shutdown_waiters.push(done);
                    st.begin_shutdown();
                }
                None => {
                    commands_open = false;
                    st.begin_shutdown();
                }
            },
            _ = tick.tick() => st.housekeeping(),
        }
        st.dispatch();
        if (st.shutting_down || st.fatal.is_some()) && st.all_dead() {
            break;
        }
    }
    for w in st.shutdown_waiters.drain(..) {
        let _ = w.send(());
    }
}

impl State {
    fn new(
        cfg: PoolConfig,
        spawner: Box<dyn Spawner>,
        stats: Arc<Stats>,
        fatal_tx: watch::Sender<Option<PoolStopped>>,
    ) -> Self {
        let now = Instant::now();
        let slots = cfg
            .children
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                gen: 0,
                life: Life::Dead { restart_at: None },
                ctl: None,
                last_seen: now,
                hello: false,
                served: 0,
                eof_at: None,
                start_failures: 0,
            })
            .collect();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        State {
            cfg,
            spawner,
            slots,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
            early_deaths: 0,
            stats,
            fatal_tx,
            fatal: None,
            shutting_down: false,
            shutdown_waiters: Vec::new(),
            events_tx,
            events_rx: Some(events_rx),
            last_tick: now,
            last_memory_check: now,
        }
    }

    fn submit(&mut self, path: WirePath, tags: bool, reply: Reply) {
        if let Some(f) = &self.fatal {
            let _ = reply.send(Err(JobFailure::Stopped(f.clone())));
            return;
        }
        if self.shutting_down {
            let _ = reply.send(Err(JobFailure::ShuttingDown));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.jobs.insert(
            id,
            JobState {
                path,
                tags,
                reply,
                attempts: Attempts::default(),
            },
        );
        self.queue.push_back(id);
    }

    fn spawn(&mut self, i: usize) {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        slot.gen += 1;
        let tag = Tag {
            slot: i,
            gen: slot.gen,
        };
        match self.spawner.spawn(&slot.spec, tag, self.events_tx.clone()) {
            Ok(ctl) => {
                tracing::debug!(slot = i, pid = ctl.pid(), "child started");
                if slot.start_failures > 0 {
                    tracing::info!(slot = i, "child process started again");
                }
                slot.ctl = Some(ctl);
                slot.life = Life::Starting { since: now };
                slot.last_seen = now;
                slot.hello = false;
                slot.served = 0;
                slot.eof_at = None;
                slot.start_failures = 0;
                self.stats.alive.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.start_failed(i, e),
        }
    }

    /// A child could not be started: retry with backoff; stop the pool only when no
    /// child is alive and starts keep failing (a service manager then restarts us).
    fn start_failed(&mut self, i: usize, e: SpawnError) {
        let shortage = e.is_resource_shortage();
        let slot = &mut self.slots[i];
        slot.start_failures += 1;
        let n = slot.start_failures;
        let delay = if shortage {
            Duration::from_secs(30)
        } else {
            START_BACKOFF.delay(n)
        };
        slot.life = Life::Dead {
            restart_at: Some(Instant::now() + delay),
        };
        if n == 1 {
            if shortage {
                tracing::warn!(slot = i, error = %e, "the machine is short of processes or memory: running with fewer children for now, retrying every 30 s");
            } else {
                tracing::warn!(slot = i, error = %e, "cannot start a child; retrying with backoff");
            }
        }
        let none_alive = self.slots.iter().all(|s| s.ctl.is_none());
        if none_alive && n >= MAX_START_FAILURES {
            self.give_up(format!(
                "no child process can be started ({n} attempts in a row): {e}"
            ));
        }
    }

    /// SIGKILLs child `i`; its job (if any) stays with it until the exit event.
    fn kill(&mut self, i: usize, reason: KillReason) {
        let slot = &mut self.slots[i];
        let job = match slot.life {
            Life::Busy(b) => Some(b.job),
            Life::Killing { job, .. } => job,
            _ => None,
        };
        if !matches!(slot.life, Life::Killing { .. }) {
            slot.life = Life::Killing { reason, job };
        }
        if let Some(c) = &slot.ctl {
            c.kill();
        }
    }

    fn dispatch(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        for i in 0..self.slots.len() {
            if !matches!(self.slots[i].life, Life::Idle) {
                continue;
            }
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let timeout = self.cfg.job_timeout.unwrap_or(FIRST_PROGRESS_TIMEOUT);
            let slot = &mut self.slots[i];
            if let Some(c) = &slot.ctl {
                c.send(ToChild::Job(Job {
                    id,
                    path: job.path.clone(),
                    tags: job.tags,
                }));
            }
            let now = Instant::now();
            slot.life = Life::Busy(Busy {
                job: id,
                sent: now,
                deadline: now + timeout,
                timeout,
            });
        }
    }

    fn on_event(&mut self, ev: Event) {
        let tag = match &ev {
            Event::Frame(t, _) | Event::Eof(t, _) | Event::Exited(t, _) => *t,
        };
        if self.slots.get(tag.slot).is_none_or(|s| s.gen != tag.gen) {
            return; // a previous incarnation's late news
        }
        match ev {
            Event::Frame(_, msg) => self.on_frame(tag.slot, msg),
            Event::Eof(_, why) => {
                tracing::debug!(slot = tag.slot, %why, "child connection ended");
                self.slots[tag.slot].eof_at.get_or_insert(Instant::now());
            }
            Event::Exited(_, ending) => self.on_exit(tag.slot, ending),
        }
    }

    fn on_frame(&mut self, i: usize, msg: FromChild) {
        let now = Instant::now();
        self.slots[i].last_seen = now;
        match msg {
            FromChild::Hello {
                protocol,
                pid,
                device,
                model_sha256,
            } => {
                if protocol != ipc::PROTOCOL_VERSION {
                    self.give_up(format!(
                        "child speaks IPC protocol {protocol}, this supervisor {}: the executable was replaced by another version while running; restart chaarfm-super",
                        ipc::PROTOCOL_VERSION
                    ));
                    return;
                }
                tracing::info!(slot = i, pid, %device, model = &model_sha256[..12.min(model_sha256.len())], "child ready");
                self.slots[i].hello = true;
                if matches!(self.slots[i].life, Life::Starting { .. }) {
                    self.slots[i].life = if self.shutting_down {
                        self.stop(i)
                    } else {
                        Life::Idle
                    };
                }
                self.early_deaths = 0;
            }
            FromChild::Fatal { message } => self.give_up(message),
            FromChild::Progress { id, .. } => {
                if let Life::Busy(b) = &mut self.slots[i].life {
                    if b.job == id && self.cfg.job_timeout.is_none() {
                        b.timeout = PROGRESS_TIMEOUT;
                        b.deadline = now + b.timeout;
                    }
                }
            }
            FromChild::Done { id, output } => self.finish(i, id, Ok(output)),
            FromChild::Failed { id, error } => {
                self.finish(i, id, Err(JobFailure::File(error.message)))
            }
            FromChild::Heartbeat => {}
        }
    }

    fn finish(&mut self, i: usize, id: u64, result: Result<JobOutput, JobFailure>) {
        let Life::Busy(b) = self.slots[i].life else {
            return;
        };
        if b.job != id {
            return;
        }
        if let Ok(out) = &result {
            let overhead_us = (b.sent.elapsed().as_secs_f64() * 1e3 - out.wall_ms).max(0.0) * 1e3;
            self.stats
                .overhead_us
                .fetch_add(overhead_us as u64, Ordering::Relaxed);
            self.stats.overhead_jobs.fetch_add(1, Ordering::Relaxed);
            self.stats
                .audio_ms
                .fetch_add((out.duration_s * 1e3) as u64, Ordering::Relaxed);
        }
        if let Some(j) = self.jobs.remove(&id) {
            let _ = j.reply.send(result);
        }
        self.slots[i].served += 1;
        let served = self.slots[i].served;
        let recycle = self.cfg.max_jobs_per_child.is_some_and(|m| served >= m);
        self.slots[i].life = if self.shutting_down || recycle {
            self.stop(i)
        } else {
            Life::Idle
        };
    }

    /// Asks child `i` to exit; returns its new state.
    fn stop(&self, i: usize) -> Life {
        if let Some(c) = &self.slots[i].ctl {
            c.send(ToChild::Shutdown);
        }
        Life::Stopping {
            since: Instant::now(),
        }
    }

    fn on_exit(&mut self, i: usize, ending: Ending) {
        let life = std::mem::replace(&mut self.slots[i].life, Life::Dead { restart_at: None });
        self.slots[i].ctl = None;
        self.stats.alive.fetch_sub(1, Ordering::Relaxed);
        let (job, kill) = match life {
            Life::Busy(b) => (Some(b.job), None),
            Life::Killing { reason, job } => (job, Some(reason)),
            _ => (None, None),
        };
        let cause = policy::classify(ending, kill);
        let early = !self.slots[i].hello;
        let asked_to_stop = matches!(life, Life::Stopping { .. });
        if let Some(job) = job {
            if let Some(j) = self.jobs.get_mut(&job) {
                match policy::reassign(&mut j.attempts, &cause) {
                    Verdict::Retry => {
                        tracing::warn!(slot = i, path = %j.path, %cause, "child died; the job goes to another child");
                        self.queue.push_front(job);
                    }
                    Verdict::Fail { cause, attempts } => {
                        let reason = Verdict::message(&cause, attempts);
                        tracing::warn!(slot = i, path = %j.path, %reason, "job failed");
                        if let Some(j) = self.jobs.remove(&job) {
                            let _ = j.reply.send(Err(JobFailure::Crashed(reason)));
                        }
                    }
                }
            }
        } else if !asked_to_stop && cause.fault != Fault::Supervisor {
            tracing::warn!(slot = i, %cause, "child died");
        }
        if self.shutting_down || self.fatal.is_some() {
            return;
        }
        let delay = if early {
            self.early_deaths += 1;
            if self.early_deaths >= MAX_EARLY_DEATHS {
                self.give_up(format!(
                    "children keep dying before they are ready ({} times in a row; last: {cause})",
                    self.early_deaths
                ));
                return;
            }
            EARLY_DEATH_BACKOFF.delay(self.early_deaths)
        } else {
            Duration::ZERO
        };
        if !asked_to_stop {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            self.stats.count_restart(cause.label());
            if cause.fault != Fault::Supervisor {
                self.stats.note_error();
            }
        }
        self.slots[i].life = Life::Dead {
            restart_at: Some(Instant::now() + delay),
        };
    }

    fn housekeeping(&mut self) {
        self.stats.queued.store(self.queue.len(), Ordering::Relaxed);
        let now = Instant::now();
        let gap = now.duration_since(self.last_tick);
        self.last_tick = now;
        if gap > STALL {
            self.forgive(gap.saturating_sub(TICK));
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.ctl.is_none() {
                if let Life::Dead {
                    restart_at: Some(t),
                } = slot.life
                {
                    if t <= now && !self.shutting_down && self.fatal.is_none() {
                        self.spawn(i);
                    }
                }
                continue;
            }
            let silent = now.duration_since(slot.last_seen);
            let why = match &slot.life {
                Life::Killing { .. } => None,
                Life::Busy(b) if now > b.deadline => Some(match self.cfg.job_timeout {
                    Some(t) => KillReason::Timeout(t),
                    None => KillReason::Stalled(b.timeout),
                }),
                Life::Starting { since } if now.duration_since(*since) > HELLO_TIMEOUT => {
                    Some(KillReason::HelloTimeout(HELLO_TIMEOUT))
                }
                Life::Stopping { since } if now.duration_since(*since) > STOP_GRACE => {
                    Some(KillReason::Shutdown)
                }
                _ if slot.hello && silent > HEARTBEAT_TIMEOUT => {
                    Some(KillReason::Heartbeat(HEARTBEAT_TIMEOUT))
                }
                _ => slot
                    .eof_at
                    .filter(|t| now.duration_since(*t) > EOF_GRACE)
                    .map(|_| KillReason::Disconnected),
            };
            if let Some(why) = why {
                if why != KillReason::Shutdown {
                    let cause = policy::classify(Ending::Signal(9), Some(why));
                    tracing::warn!(slot = i, %cause, "killing child");
                }
                self.kill(i, why);
            }
        }
        if now.duration_since(self.last_memory_check) >= Duration::from_millis(500) {
            self.last_memory_check = now;
            self.check_memory();
        }
    }

    /// The loop did not run for `d` (the supervisor was paused or its thread blocked):
    /// the children were not heard meanwhile through no fault of theirs, so every clock
    /// that judges them moves forward by `d`.
    fn forgive(&mut self, d: Duration) {
        tracing::warn!(
            paused_s = format!("{:.1}", d.as_secs_f64()),
            "the supervisor did not run for a while (paused or stalled); children are not judged on that time"
        );
        for s in &mut self.slots {
            s.last_seen += d;
            if let Some(t) = &mut s.eof_at {
                *t += d;
            }
            match &mut s.life {
                Life::Busy(b) => b.deadline += d,
                Life::Starting { since } | Life::Stopping { since } => *since += d,
                _ => {}
            }
        }
    }

    fn check_memory(&mut self) {
        let pids: Vec<u32> = self
            .slots
            .iter()
            .filter(|s| !matches!(s.life, Life::Killing { .. }))
            .filter_map(|s| s.ctl.as_ref().map(|c| c.pid()))
            .collect();
        if pids.is_empty() {
            return;
        }
        let limit_mb = self.cfg.max_child_memory_mb;
        for (pid, rss_mb) in self.spawner.rss_mb(&pids) {
            if rss_mb <= limit_mb {
                continue;
            }
            let Some(i) = self
                .slots
                .iter()
                .position(|s| s.ctl.as_ref().is_some_and(|c| c.pid() == pid))
            else {
                continue;
            };
            tracing::warn!(
                slot = i,
                rss_mb,
                limit_mb,
                "child over its memory ceiling; killing it"
            );
            self.kill(i, KillReason::Memory { rss_mb, limit_mb });
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for id in std::mem::take(&mut self.queue) {
            if let Some(j) = self.jobs.remove(&id) {
                let _ = j.reply.send(Err(JobFailure::ShuttingDown));
            }
        }
        for i in 0..self.slots.len() {
            match self.slots[i].life {
                Life::Idle => self.slots[i].life = self.stop(i),
                Life::Starting { .. } => self.kill(i, KillReason::Shutdown),
                Life::Dead { .. } => self.slots[i].life = Life::Dead { restart_at: None },
                _ => {}
            }
        }
    }

    /// Stops everything: the pool cannot work (model missing, children cannot start...).
    /// Every job, queued or running, gets the same typed failure, once.
    fn give_up(&mut self, message: String) {
        if self.fatal.is_some() {
            return;
        }
        tracing::error!(%message, "stopping the pool");
        let stopped = PoolStopped { message };
        self.fatal = Some(stopped.clone());
        let _ = self.fatal_tx.send(Some(stopped.clone()));
        self.queue.clear();
        for (_, j) in self.jobs.drain() {
            let _ = j.reply.send(Err(JobFailure::Stopped(stopped.clone())));
        }
        for i in 0..self.slots.len() {
            if self.slots[i].ctl.is_some() {
                self.kill(i, KillReason::PoolStopped);
            } else {
                self.slots[i].life = Life::Dead { restart_at: None };
            }
        }
    }

    fn all_dead(&self) -> bool {
        self.slots.iter().all(|s| s.ctl.is_none())
    }
}
