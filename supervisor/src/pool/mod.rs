//! The pool of crash-isolated children. One task (the event loop in [`run`]) owns every
//! job and every child; the rest of the supervisor talks to it through [`Pool`].
//!
//! - A job goes to an idle child; its deadline is set when the child reports the audio's
//!   length ([`job_timeout`]).
//! - A child that dies, hangs past its deadline, stops sending heartbeats or exceeds the
//!   memory ceiling is killed if need be, and its job is handed on by [`policy::reassign`].
//! - Children are respawned: at once after a death with a job, with backoff when they die
//!   before saying hello; five such deaths in a row stop the pool with the cause.

pub mod policy;
pub mod proc;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaarfm_shared::ipc::{self, FromChild, Job, JobOutput, ToChild};
use tokio::sync::{mpsc, oneshot, watch};

use policy::{Attempts, Ending, KillReason, Verdict};
pub use proc::ChildSpec;
use proc::{Event, Handle, Tag};

/// Heartbeats come every second; this long without any frame means the child is frozen.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A child must say hello (model loaded) within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of a job until the child reports the audio's length (decoding a 1-hour file
/// takes ~10 s here).
const DECODE_TIMEOUT: Duration = Duration::from_secs(120);
/// Children dying before hello this many times in a row stop the pool.
const MAX_EARLY_DEATHS: u32 = 5;

/// Time allowed for a job's inference once its audio length is known: 60 s, or a quarter
/// of the audio's duration if longer (inference runs ~50x realtime per core here, so this
/// leaves a >10x margin for slower machines). `--job-timeout` replaces the whole rule.
pub fn job_timeout(duration_s: f64) -> Duration {
    Duration::from_secs_f64((duration_s * 0.25).max(60.0))
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub exe: PathBuf,
    pub model: PathBuf,
    pub children: Vec<ChildSpec>,
    /// Fixed per-job timeout (`--job-timeout`), replacing [`job_timeout`].
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
}

impl Stats {
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

/// Why a job produced no vector.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobFailure {
    /// The file's own problem, reported by a healthy child.
    #[error("{0}")]
    File(String),
    /// Its children kept dying (see `policy`).
    #[error("{0}")]
    Crashed(String),
    /// Not run: the pool is stopping or gave up.
    #[error("not run: {0}")]
    Cancelled(String),
}

enum Command {
    Submit {
        path: String,
        tags: bool,
        reply: oneshot::Sender<Result<JobOutput, JobFailure>>,
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
    fatal: watch::Receiver<Option<String>>,
}

impl Pool {
    /// Starts the children and the event loop (on the current tokio runtime).
    pub fn start(cfg: PoolConfig) -> std::io::Result<(Pool, tokio::task::JoinHandle<()>)> {
        let socket_dir = private_dir()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (fatal_tx, fatal) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let state = State::new(cfg, socket_dir, Arc::clone(&stats), fatal_tx);
        let task = tokio::spawn(run(state, rx));
        Ok((Pool { tx, stats, fatal }, task))
    }

    /// Embeds one file in some child; retried across child deaths per `policy`.
    pub async fn embed(
        &self,
        path: impl Into<String>,
        tags: bool,
    ) -> Result<JobOutput, JobFailure> {
        let (reply, rx) = oneshot::channel();
        let gone = || JobFailure::Cancelled("the pool has stopped".into());
        self.tx
            .send(Command::Submit {
                path: path.into(),
                tags,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Resolves with the reason when the pool gives up (children cannot start).
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(msg) = rx.borrow_and_update().clone() {
                return msg;
            }
            if rx.changed().await.is_err() {
                return "the pool has stopped".into();
            }
        }
    }

    /// Stops the children once their current jobs are done; unstarted jobs are cancelled.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A private directory for the sockets (0700 on Unix), swept of a previous run's.
fn private_dir() -> std::io::Result<PathBuf> {
    crate::private_dir::fresh(
        &std::env::temp_dir().join(format!("chaarfm-super-{}", std::process::id())),
    )
}

enum SlotState {
    Starting,
    Idle,
    Busy {
        job: u64,
        sent: Instant,
        deadline: Instant,
        timeout: Duration,
    },
    Stopping {
        since: Instant,
    },
    Dead {
        restart_at: Option<Instant>,
    },
}

struct Slot {
    spec: ChildSpec,
    gen: u64,
    state: SlotState,
    handle: Option<Handle>,
    spawned_at: Instant,
    last_seen: Instant,
    hello: bool,
    served: u32,
    kill_sent: Option<KillReason>,
    eof_at: Option<Instant>,
}

struct JobState {
    path: String,
    tags: bool,
    reply: oneshot::Sender<Result<JobOutput, JobFailure>>,
    attempts: Attempts,
}

struct State {
    cfg: PoolConfig,
    socket_dir: PathBuf,
    slots: Vec<Slot>,
    jobs: HashMap<u64, JobState>,
    queue: VecDeque<u64>,
    next_id: u64,
    early_deaths: u32,
    stats: Arc<Stats>,
    fatal_tx: watch::Sender<Option<String>>,
    fatal: Option<String>,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: Option<mpsc::UnboundedReceiver<Event>>,
    sys: sysinfo::System,
    last_memory_check: Instant,
}

async fn run(mut st: State, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut events = st.events_rx.take().expect("events receiver");
    for i in 0..st.slots.len() {
        st.spawn(i);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands_open = true;
    loop {
        tokio::select! {
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
            Some(ev) = events.recv() => st.on_event(ev),
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
    let _ = std::fs::remove_dir_all(&st.socket_dir);
}

impl State {
    fn new(
        cfg: PoolConfig,
        socket_dir: PathBuf,
        stats: Arc<Stats>,
        fatal_tx: watch::Sender<Option<String>>,
    ) -> Self {
        let now = Instant::now();
        let slots = cfg
            .children
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                gen: 0,
                state: SlotState::Dead { restart_at: None },
                handle: None,
                spawned_at: now,
                last_seen: now,
                hello: false,
                served: 0,
                kill_sent: None,
                eof_at: None,
            })
            .collect();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        State {
            cfg,
            socket_dir,
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
            sys: sysinfo::System::new(),
            last_memory_check: now,
        }
    }

    fn submit(
        &mut self,
        path: String,
        tags: bool,
        reply: oneshot::Sender<Result<JobOutput, JobFailure>>,
    ) {
        if let Some(f) = &self.fatal {
            let _ = reply.send(Err(JobFailure::Cancelled(f.clone())));
            return;
        }
        if self.shutting_down {
            let _ = reply.send(Err(JobFailure::Cancelled("shutting down".into())));
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
        let slot = &mut self.slots[i];
        slot.gen += 1;
        let tag = Tag {
            slot: i,
            gen: slot.gen,
        };
        match proc::launch(
            &self.cfg.exe,
            &self.cfg.model,
            &self.socket_dir,
            &slot.spec,
            tag,
            self.events_tx.clone(),
        ) {
            Ok(handle) => {
                tracing::debug!(slot = i, pid = handle.pid, "child started");
                let now = Instant::now();
                slot.handle = Some(handle);
                slot.state = SlotState::Starting;
                slot.spawned_at = now;
                slot.last_seen = now;
                slot.hello = false;
                slot.served = 0;
                slot.kill_sent = None;
                slot.eof_at = None;
                self.stats.alive.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.give_up(format!(
                "cannot start a child process ({}): {e}",
                self.cfg.exe.display()
            )),
        }
    }

    fn kill(&mut self, i: usize, why: KillReason) {
        let slot = &mut self.slots[i];
        if slot.kill_sent.is_none() {
            slot.kill_sent = Some(why);
        }
        if let Some(h) = &slot.handle {
            h.kill();
        }
    }

    fn dispatch(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        for i in 0..self.slots.len() {
            if !matches!(self.slots[i].state, SlotState::Idle) {
                continue;
            }
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let timeout = self.cfg.job_timeout.unwrap_or(DECODE_TIMEOUT);
            let slot = &mut self.slots[i];
            if let Some(h) = &slot.handle {
                h.send(ToChild::Job(Job {
                    id,
                    path: job.path.clone(),
                    tags: job.tags,
                }));
            }
            let now = Instant::now();
            slot.state = SlotState::Busy {
                job: id,
                sent: now,
                deadline: now + timeout,
                timeout,
            };
        }
    }

    fn on_event(&mut self, ev: Event) {
        let tag = match &ev {
            Event::Frame(t, _) | Event::Eof(t, _) | Event::Exited(t, _) => *t,
        };
        if self.slots[tag.slot].gen != tag.gen {
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
                if matches!(self.slots[i].state, SlotState::Starting) {
                    self.slots[i].state = if self.shutting_down {
                        self.stop(i)
                    } else {
                        SlotState::Idle
                    };
                }
                self.early_deaths = 0;
            }
            FromChild::Fatal { message } => self.give_up(message),
            FromChild::Decoded { id, duration_s } => {
                if let SlotState::Busy {
                    job,
                    deadline,
                    timeout,
                    ..
                } = &mut self.slots[i].state
                {
                    if *job == id && self.cfg.job_timeout.is_none() {
                        *timeout = job_timeout(duration_s);
                        *deadline = now + *timeout;
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
        let SlotState::Busy { job, sent, .. } = self.slots[i].state else {
            return;
        };
        if job != id {
            return;
        }
        if let Ok(out) = &result {
            let overhead_us = (sent.elapsed().as_secs_f64() * 1e3 - out.wall_ms).max(0.0) * 1e3;
            self.stats
                .overhead_us
                .fetch_add(overhead_us as u64, Ordering::Relaxed);
            self.stats.overhead_jobs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(j) = self.jobs.remove(&id) {
            let _ = j.reply.send(result);
        }
        self.slots[i].served += 1;
        let served = self.slots[i].served;
        let recycle = self.cfg.max_jobs_per_child.is_some_and(|m| served >= m);
        self.slots[i].state = if self.shutting_down || recycle {
            self.stop(i)
        } else {
            SlotState::Idle
        };
    }

    /// Asks child `i` to exit; returns its new state.
    fn stop(&self, i: usize) -> SlotState {
        if let Some(h) = &self.slots[i].handle {
            h.send(ToChild::Shutdown);
        }
        SlotState::Stopping {
            since: Instant::now(),
        }
    }

    fn on_exit(&mut self, i: usize, ending: Ending) {
        let sent = self.slots[i].kill_sent.take();
        let state = std::mem::replace(
            &mut self.slots[i].state,
            SlotState::Dead { restart_at: None },
        );
        self.slots[i].handle = None;
        self.stats.alive.fetch_sub(1, Ordering::Relaxed);
        let cause = policy::classify(ending, sent);
        let early = !self.slots[i].hello;
        if let SlotState::Busy { job, .. } = state {
            if let Some(j) = self.jobs.get_mut(&job) {
                match policy::reassign(&mut j.attempts, &cause) {
                    Verdict::Retry => {
                        tracing::warn!(slot = i, path = %j.path, cause = ?cause, "child died; job goes to another child");
                        self.queue.push_front(job);
                    }
                    Verdict::Fail(reason) => {
                        tracing::warn!(slot = i, path = %j.path, %reason, "job failed");
                        if let Some(j) = self.jobs.remove(&job) {
                            let _ = j.reply.send(Err(JobFailure::Crashed(reason)));
                        }
                    }
                }
            }
        } else if !matches!(state, SlotState::Stopping { .. }) {
            tracing::warn!(slot = i, cause = ?cause, "child died");
        }
        if self.shutting_down || self.fatal.is_some() {
            return;
        }
        let recycled = matches!(state, SlotState::Stopping { .. });
        let delay = if early {
            self.early_deaths += 1;
            if self.early_deaths >= MAX_EARLY_DEATHS {
                let what = match cause {
                    policy::Cause::Job(s) | policy::Cause::External(s) => s,
                };
                self.give_up(format!(
                    "children keep dying before they are ready ({} times in a row; last: {what})",
                    self.early_deaths
                ));
                return;
            }
            Duration::from_millis(250 << self.early_deaths.min(6)).min(Duration::from_secs(10))
        } else {
            Duration::ZERO
        };
        if !recycled {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.slots[i].state = SlotState::Dead {
            restart_at: Some(Instant::now() + delay),
        };
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.handle.is_none() {
                if let SlotState::Dead {
                    restart_at: Some(t),
                } = slot.state
                {
                    if t <= now && !self.shutting_down && self.fatal.is_none() {
                        self.spawn(i);
                    }
                }
                continue;
            }
            let silent = now.duration_since(slot.last_seen);
            let why = match &slot.state {
                SlotState::Busy {
                    deadline, timeout, ..
                } if now > *deadline => Some(KillReason::Timeout(*timeout)),
                SlotState::Starting if now.duration_since(slot.spawned_at) > HELLO_TIMEOUT => {
                    Some(KillReason::Heartbeat(HELLO_TIMEOUT))
                }
                SlotState::Stopping { since }
                    if now.duration_since(*since) > Duration::from_secs(5) =>
                {
                    Some(KillReason::Routine)
                }
                _ if slot.hello && silent > HEARTBEAT_TIMEOUT => {
                    Some(KillReason::Heartbeat(HEARTBEAT_TIMEOUT))
                }
                _ => slot
                    .eof_at
                    .filter(|t| now.duration_since(*t) > Duration::from_secs(2))
                    .map(|_| KillReason::Disconnected),
            };
            if let Some(why) = why {
                if slot.kill_sent.is_none() {
                    tracing::warn!(slot = i, reason = ?why, "killing child");
                }
                self.kill(i, why);
            }
        }
        if now.duration_since(self.last_memory_check) >= Duration::from_millis(500) {
            self.last_memory_check = now;
            self.check_memory();
        }
    }

    fn check_memory(&mut self) {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};
        let pids: Vec<Pid> = self
            .slots
            .iter()
            .filter_map(|s| s.handle.as_ref())
            .map(|h| Pid::from_u32(h.pid))
            .collect();
        if pids.is_empty() {
            return;
        }
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let limit_mb = self.cfg.max_child_memory_mb;
        for i in 0..self.slots.len() {
            let Some(pid) = self.slots[i].handle.as_ref().map(|h| h.pid) else {
                continue;
            };
            let Some(p) = self.sys.process(Pid::from_u32(pid)) else {
                continue;
            };
            let rss_mb = p.memory() / (1 << 20);
            if rss_mb > limit_mb && self.slots[i].kill_sent.is_none() {
                tracing::warn!(
                    slot = i,
                    rss_mb,
                    limit_mb,
                    "child over its memory ceiling; killing it"
                );
                self.kill(i, KillReason::Memory { rss_mb, limit_mb });
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for id in std::mem::take(&mut self.queue) {
            if let Some(j) = self.jobs.remove(&id) {
                let _ = j
                    .reply
                    .send(Err(JobFailure::Cancelled("shutting down".into())));
            }
        }
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                SlotState::Idle => self.slots[i].state = self.stop(i),
                SlotState::Starting => self.kill(i, KillReason::Routine),
                _ => {}
            }
        }
    }

    /// Stops everything: the pool cannot work (model missing, children cannot start...).
    fn give_up(&mut self, message: String) {
        if self.fatal.is_some() {
            return;
        }
        tracing::error!(%message, "stopping the pool");
        self.fatal = Some(message.clone());
        let _ = self.fatal_tx.send(Some(message.clone()));
        self.queue.clear();
        for (_, j) in self.jobs.drain() {
            let _ = j.reply.send(Err(JobFailure::Cancelled(message.clone())));
        }
        for i in 0..self.slots.len() {
            self.kill(i, KillReason::Routine);
        }
    }

    fn all_dead(&self) -> bool {
        self.slots.iter().all(|s| s.handle.is_none())
    }
}
