//! The dispatcher (`server::hub`): one task owns the server side's state - the lanes,
//! each lane's count of jobs held, the job keys in progress, and every change to the
//! outbox. Lanes (connections) and job tasks only send it events; it never awaits them,
//! so no lock is shared and no order of locks can deadlock.
//!
//! Each lane sees its part through a `watch` ([`LaneView`]: jobs held, results to send),
//! and receives results and hand-backs as [`LaneCmd`]s. A job task reports its end
//! through a guard, so a panicking job is handed back instead of held forever.
//!
//! The hub also knows which lanes are connected, and publishes whether any is
//! (`connected`). With today's server it keeps the session's last connection: the
//! server deletes a session and its queue when its last worker connection closes (and
//! no `/ingest` page holds it), so a lane may close on purpose only while another is
//! connected ([`Hub::may_close`]). A job that cannot be handed back for that reason,
//! or that arrives while intake is paused, is held here and started when intake
//! reopens.
//!
//! Every published fact has one writer, the hub (`facts::Published`): whether a lane is
//! connected, intake (faults, recoveries, the preferences), the server's `welcome`, the
//! drain. Everyone else reads them through `facts::Watch` and tells
//! the hub what happened.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chaarfm_shared::server::{JobResult, Outcome, ServerJob, WorkerMsg};
use tokio::sync::{mpsc, oneshot, watch};

use super::facts::{Out, Published};
use super::intake::{pause, pause_youtube, prefer, reopen, Intake};
use super::outbox::{Entry, Outbox};
use super::work::{End, LocalFault, LocalKind};

/// A job that failed locally this many times on the session's last connection is handed
/// back all the same (closing that connection), so a job that always fails locally
/// cannot loop.
const MAX_LOCAL_RETRIES: u32 = 3;

use super::outbox::Entry as OutboxEntry;

/// What the work tasks tell a lane.
#[derive(Debug)]
pub enum LaneCmd {
    /// A stored result to send.
    Result(OutboxEntry),
    /// A job not done for a local fault: release it (protocol 2) or close (today's server).
    HandBack { job_id: String, reason: String },
}

/// Runs one job to its end (the real one downloads and embeds: `work::run`).
pub type Runner = Arc<dyn Fn(ServerJob) -> Pin<Box<dyn Future<Output = End> + Send>> + Send + Sync>;

/// What one lane needs to know to decide whether it may close.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaneView {
    /// Jobs taken on this lane and not yet settled (result stored or handed back).
    pub busy: usize,
    /// Results for this lane held in the outbox, oldest first.
    pub pending: Vec<String>,
}

/// A lane as the hub hands it out.
pub struct LaneHandle {
    pub id: usize,
    pub cmds: mpsc::UnboundedReceiver<LaneCmd>,
    pub view: watch::Receiver<LaneView>,
}

/// Counts for the closing summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Results stored for sending: successes and the track's own failures.
    pub jobs_done: usize,
    /// Of those, failures (the track's fault: see the rule in docs/ARCHITECTURE.md).
    pub failed: usize,
    pub handed_back: usize,
}

enum Event {
    AddLane(oneshot::Sender<LaneHandle>),
    /// Lane 0's handshake answer: whether it announced protocol 2.
    Announced(bool),
    /// The server said `welcome` (protocol 2) with its number of slots.
    Welcome(usize),
    /// The state dir can be written again (`server::recover::disk`).
    Recovered(oneshot::Sender<()>),
    /// YouTube's back-off ended (`server::recover::youtube`): probe, or reopen.
    YouTubeWaitOver(oneshot::Sender<()>),
    /// The end of the run: the hub's task returns.
    Stop,
    /// A lane (re)connected: the results it must send first.
    Connected(usize, oneshot::Sender<Vec<Entry>>),
    /// A lane took a job; answered once the job is counted as held.
    Job(usize, ServerJob, oneshot::Sender<()>),
    /// A lane's connection ended.
    Disconnected(usize),
    /// May this lane close its connection on purpose? (Today's server: not the last.)
    MayClose(usize, oneshot::Sender<bool>),
    /// A drain started: jobs held for intake go back to the server.
    Drain,
    Settled(String, End),
    Stored(Vec<Entry>, Option<String>),
    /// The server has shown these results processed.
    Processed(Vec<String>),
    Removed,
    Summary(oneshot::Sender<Summary>),
}

/// The hub's address. Every request is answered by the hub's own loop, which awaits
/// nothing but its events, so these calls cannot hang while it runs.
#[derive(Clone)]
pub struct Hub(mpsc::UnboundedSender<Event>);

impl Hub {
    /// Starts the hub's task.
    pub fn start(
        outbox: Arc<Outbox>,
        published: Published,
        facts: Facts,
        runner: Runner,
    ) -> (Hub, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State {
            outbox,
            intake: published.intake,
            out: published.out,
            facts,
            runner,
            events: tx.clone(),
            lanes: Vec::new(),
            in_progress: HashMap::new(),
            held: Vec::new(),
            local_retries: HashMap::new(),
            probe: None,
            draining: false,
            summary: Summary::default(),
        };
        (Hub(tx), tokio::spawn(state.run(rx)))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.0.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub async fn add_lane(&self) -> Option<LaneHandle> {
        self.ask(Event::AddLane).await
    }

    /// `lane` is connected; returns the results it must send first.
    pub async fn connected(&self, lane: usize) -> Vec<Entry> {
        self.ask(|r| Event::Connected(lane, r))
            .await
            .unwrap_or_default()
    }

    /// `lane`'s connection ended (lost, or closed on purpose).
    pub fn disconnected(&self, lane: usize) {
        let _ = self.0.send(Event::Disconnected(lane));
    }

    /// Whether `lane` may close its connection on purpose. With today's server, only
    /// while another lane is connected: closing the session's last connection deletes
    /// the server's queue. A yes counts the lane as closed at once, so two lanes can
    /// never both close the last two connections.
    pub async fn may_close(&self, lane: usize) -> bool {
        self.ask(|r| Event::MayClose(lane, r)).await.unwrap_or(true)
    }

    /// A drain started: jobs held until intake reopens are handed back.
    pub fn drain(&self) {
        let _ = self.0.send(Event::Drain);
    }

    /// Lane 0's handshake answer announced protocol 2, or did not. The first one counts:
    /// connect mode decides the protocol once.
    pub fn announced(&self, protocol2: bool) {
        let _ = self.0.send(Event::Announced(protocol2));
    }

    /// The server said `welcome`: protocol 2, `slots` jobs outstanding.
    pub fn welcome(&self, slots: usize) {
        let _ = self.0.send(Event::Welcome(slots));
    }

    /// The state dir works again: intake reopens (into the preferences' pause, if any).
    /// Returns once applied.
    pub async fn recovered(&self) {
        let _ = self.ask(Event::Recovered).await;
    }

    /// YouTube's back-off ended: today's server gets one job as a probe, protocol 2
    /// simply resumes. Returns once applied.
    pub async fn youtube_wait_over(&self) {
        let _ = self.ask(Event::YouTubeWaitOver).await;
    }

    /// Ends the hub's task (after the last summary).
    pub fn stop(&self) {
        let _ = self.0.send(Event::Stop);
    }

    /// Hands a job taken on `lane` to the hub; returns once it counts as held.
    pub async fn job(&self, lane: usize, job: ServerJob) {
        let _ = self.ask(|r| Event::Job(lane, job, r)).await;
    }

    pub fn processed(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            let _ = self.0.send(Event::Processed(ids));
        }
    }

    pub async fn summary(&self) -> Summary {
        self.ask(Event::Summary).await.unwrap_or_default()
    }
}

/// Who waits for a job key's end: every (lane, job) that asked for it.
type Waiters = Vec<(usize, ServerJob)>;

/// What the hub reads besides its own events.
pub struct Facts {
    /// What the computing preferences want: intake follows it (`intake::prefer`), and a
    /// recovery reopens into its pause.
    pub preference: watch::Receiver<Option<crate::prefs::decide::Pause>>,
    /// Counts each result stored, for `status` and the page.
    pub record: Arc<super::record::Record>,
}

struct State {
    outbox: Arc<Outbox>,
    intake: Arc<watch::Sender<Intake>>,
    out: Out,
    facts: Facts,
    runner: Runner,
    events: mpsc::UnboundedSender<Event>,
    lanes: Vec<Lane>,
    in_progress: HashMap<String, Waiters>,
    /// Jobs waiting for intake to reopen, with the lane that holds each.
    held: Vec<(usize, ServerJob)>,
    /// Local faults per job id on the session's last connection.
    local_retries: HashMap<String, u32>,
    /// The key of the job run while `Intake::Probe`: its end decides whether YouTube
    /// takes this machine again.
    probe: Option<String>,
    draining: bool,
    summary: Summary,
}

struct Lane {
    cmds: mpsc::UnboundedSender<LaneCmd>,
    view: watch::Sender<LaneView>,
    busy: usize,
    connected: bool,
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut intake = self.intake.subscribe();
        let mut preference = self.facts.preference.clone();
        // What the preferences want now (intake's first value, unless they changed since).
        let wanted = preference.borrow_and_update().clone();
        prefer(&self.intake, wanted);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Stop) | None => return,
                    Some(ev) => self.handle(ev),
                },
                Ok(()) = preference.changed() => {
                    let wanted = preference.borrow_and_update().clone();
                    prefer(&self.intake, wanted);
                }
                Ok(()) = intake.changed() => {
                    let now = intake.borrow_and_update().clone();
                    match now {
                        Intake::Open => self.start_held(),
                        Intake::Probe => self.start_probe(),
                        _ => {}
                    }
                }
            }
            self.publish();
        }
    }

    fn protocol2(&self) -> bool {
        self.out.welcome.borrow().is_some()
    }

    fn paused(&self) -> bool {
        *self.intake.borrow() != Intake::Open
    }

    /// Whether a lane other than `lane` is connected.
    fn others_connected(&self, lane: usize) -> bool {
        self.lanes
            .iter()
            .enumerate()
            .any(|(i, l)| i != lane && l.connected)
    }

    /// The YouTube back-off ended: one held job runs to see whether YouTube takes this
    /// machine again; with none held, intake simply reopens.
    fn start_probe(&mut self) {
        if self.draining || self.probe.is_some() {
            return;
        }
        if self.held.is_empty() {
            tracing::info!("no job held to try YouTube with: taking jobs again");
            reopen(&self.intake, &self.facts.preference);
            return;
        }
        let (lane, job) = self.held.remove(0);
        tracing::info!(job = %job.job_id, "trying one job to see whether YouTube takes this machine again");
        self.probe = Some(job.key());
        self.start(lane, job);
    }

    /// Starts the jobs held for intake, oldest first.
    fn start_held(&mut self) {
        if self.draining {
            return;
        }
        for (lane, job) in std::mem::take(&mut self.held) {
            tracing::info!(job = %job.job_id, "intake open again: starting the job held meanwhile");
            self.start(lane, job);
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::AddLane(reply) => {
                let (cmds, cmds_rx) = mpsc::unbounded_channel();
                let (view, view_rx) = watch::channel(LaneView::default());
                self.lanes.push(Lane {
                    cmds,
                    view,
                    busy: 0,
                    connected: false,
                });
                let _ = reply.send(LaneHandle {
                    id: self.lanes.len() - 1,
                    cmds: cmds_rx,
                    view: view_rx,
                });
            }
            Event::Announced(protocol2) => {
                self.out.announced.send_if_modified(|a| {
                    let first = a.is_none();
                    if first {
                        *a = Some(protocol2);
                    }
                    first
                });
            }
            Event::Welcome(slots) => {
                self.out.welcome.send_replace(Some(slots));
            }
            Event::Recovered(done) => {
                if matches!(*self.intake.borrow(), Intake::Paused(_)) {
                    reopen(&self.intake, &self.facts.preference);
                }
                let _ = done.send(());
            }
            Event::YouTubeWaitOver(done) => {
                let next = if self.protocol2() {
                    Intake::Open
                } else {
                    Intake::Probe
                };
                self.intake.send_if_modified(|i| {
                    let yes = matches!(i, Intake::YouTube(_));
                    if yes {
                        *i = next;
                    }
                    yes
                });
                let _ = done.send(());
            }
            Event::Stop => {}
            Event::Connected(lane, reply) => {
                if let Some(l) = self.lanes.get_mut(lane) {
                    l.connected = true;
                }
                let n = self.lanes.len();
                let mine = self
                    .outbox
                    .pending()
                    .into_iter()
                    .filter(|e| owner(e.lane, n) == lane)
                    .collect();
                let _ = reply.send(mine);
            }
            Event::Disconnected(lane) => {
                if let Some(l) = self.lanes.get_mut(lane) {
                    l.connected = false;
                }
            }
            Event::MayClose(lane, reply) => {
                let yes = self.protocol2() || self.others_connected(lane);
                if yes {
                    if let Some(l) = self.lanes.get_mut(lane) {
                        l.connected = false;
                    }
                }
                let _ = reply.send(yes);
            }
            Event::Drain => {
                self.draining = true;
                self.out.draining.send_replace(true);
                for (lane, job) in std::mem::take(&mut self.held) {
                    self.summary.handed_back += 1;
                    self.release(lane);
                    tracing::info!(job = %job.job_id, "handed back: stopping (it was waiting for intake to reopen)");
                    self.send(
                        lane,
                        LaneCmd::HandBack {
                            job_id: job.job_id,
                            reason: "worker stopping".into(),
                        },
                    );
                }
            }
            Event::Job(lane, job, taken) => {
                let lane = owner(lane, self.lanes.len());
                if let Some(l) = self.lanes.get_mut(lane) {
                    l.busy += 1;
                }
                let probe_free = *self.intake.borrow() == Intake::Probe && self.probe.is_none();
                if probe_free && !self.draining {
                    self.probe = Some(job.key());
                    self.start(lane, job);
                } else if self.paused() && !self.draining {
                    // Today's server, on the session's last connection: held, not
                    // handed back, and worked when intake reopens.
                    tracing::info!(job = %job.job_id, "intake paused: job held until it reopens");
                    self.held.push((lane, job));
                } else {
                    self.start(lane, job);
                }
                // The lane reads its view as soon as it hears back: publish first, so
                // the count is right whatever the runtime's threading.
                self.publish();
                let _ = taken.send(());
            }
            Event::Settled(key, end) => {
                let waiters = self.in_progress.remove(&key).unwrap_or_default();
                if self.probe.as_deref() == Some(key.as_str()) {
                    self.probe = None;
                    match &end {
                        Err(f) if f.kind == LocalKind::YouTube => {} // hand_back pauses again
                        _ => {
                            tracing::info!(
                                "resumed: YouTube takes this machine again; taking jobs"
                            );
                            reopen(&self.intake, &self.facts.preference);
                        }
                    }
                }
                match end {
                    Ok(outcome) => {
                        for (_, job) in &waiters {
                            self.local_retries.remove(&job.job_id);
                        }
                        self.store(outcome, waiters)
                    }
                    Err(fault) => {
                        for (lane, job) in waiters {
                            self.hand_back(lane, job, &fault);
                        }
                    }
                }
            }
            Event::Stored(entries, error) => {
                if let Some(e) = error {
                    pause(
                        &self.intake,
                        format!("cannot write the outbox in the state dir: {e}; results are kept in memory until it works again"),
                    );
                }
                for entry in entries {
                    self.summary.jobs_done += 1;
                    if let WorkerMsg::Result(JobResult {
                        outcome: Outcome::Failed { error },
                        ..
                    }) = &entry.msg
                    {
                        self.summary.failed += 1;
                        self.facts.record.failed(&entry.job_id, error);
                    } else {
                        self.facts.record.stored();
                    }
                    self.release(entry.lane);
                    self.send(entry.lane, LaneCmd::Result(entry));
                }
            }
            Event::Processed(ids) => {
                let (ob, events) = (Arc::clone(&self.outbox), self.events.clone());
                tokio::task::spawn_blocking(move || {
                    for id in ids {
                        ob.remove(&id);
                    }
                    let _ = events.send(Event::Removed);
                });
            }
            Event::Removed => {} // the views are published after every event
            Event::Summary(reply) => {
                let _ = reply.send(self.summary);
            }
        }
    }

    /// Runs `job`, or attaches it to the work already under way for its key (the
    /// server re-sends a job after a lost connection; computing it twice wastes a slot).
    fn start(&mut self, lane: usize, job: ServerJob) {
        let key = job.key();
        if let Some(waiters) = self.in_progress.get_mut(&key) {
            tracing::info!(job = %job.job_id, key = %key, "same key already in progress; attaching to it");
            waiters.push((lane, job));
            return;
        }
        let run = (self.runner)(job.clone());
        self.in_progress.insert(key.clone(), vec![(lane, job)]);
        let settle = Settle {
            events: self.events.clone(),
            key: Some(key),
        };
        tokio::spawn(async move {
            let end = run.await;
            settle.settle(end);
        });
    }

    /// Stores one result per waiter in the outbox (off the event loop), then delivers.
    fn store(&mut self, outcome: Outcome, waiters: Waiters) {
        let entries: Vec<Entry> = waiters
            .into_iter()
            .map(|(lane, job)| {
                let job_id = job.job_id;
                if let Outcome::Failed { error } = &outcome {
                    tracing::warn!(job = %job_id, %error, "job failed");
                } else {
                    tracing::info!(job = %job_id, "job done");
                }
                let msg = WorkerMsg::Result(JobResult {
                    job_id: job_id.clone(),
                    outcome: outcome.clone(),
                });
                self.outbox.entry(job_id, lane, msg)
            })
            .collect();
        let (ob, events) = (Arc::clone(&self.outbox), self.events.clone());
        tokio::task::spawn_blocking(move || {
            let mut error = None;
            for e in &entries {
                if let Err(err) = ob.put(e) {
                    error.get_or_insert(err.to_string());
                }
            }
            let _ = events.send(Event::Stored(entries, error));
        });
    }

    /// A job not done for a fault of this machine goes back to the server, except on
    /// today's server's last connection: there it is held and started again once
    /// intake is open (closing that connection would delete the server's queue).
    fn hand_back(&mut self, lane: usize, job: ServerJob, fault: &LocalFault) {
        let lane = owner(lane, self.lanes.len());
        match fault.kind {
            LocalKind::Disk => pause(&self.intake, fault.message.clone()),
            LocalKind::YouTube => pause_youtube(&self.intake, fault.message.clone()),
            // `work::low_disk` found the disk low: the preferences say so already, and
            // intake follows them before this job is kept.
            LocalKind::Preference => {
                let wanted = self.facts.preference.borrow().clone();
                prefer(&self.intake, wanted);
            }
            LocalKind::Pool | LocalKind::Stopping | LocalKind::Network => {}
        }
        let job_id = job.job_id.clone();
        let tries = {
            let t = self.local_retries.entry(job_id.clone()).or_default();
            *t += 1;
            *t
        };
        let keep = !self.protocol2()
            && !self.draining
            && !matches!(fault.kind, LocalKind::Pool | LocalKind::Stopping)
            && (tries <= MAX_LOCAL_RETRIES
                || matches!(fault.kind, LocalKind::YouTube | LocalKind::Preference))
            && !self.others_connected(lane);
        if keep {
            tracing::warn!(job = %job_id, reason = %fault.message, "job kept for later (a fault of this machine, not the track's): its connection is the session's last, and closing it would delete the server's queue");
            self.held.push((lane, job));
            if !self.paused() {
                self.start_held();
            }
            return;
        }
        self.local_retries.remove(&job_id);
        if fault.kind == LocalKind::Stopping {
            tracing::info!(job = %job_id, "handed back: stopping (its download was cancelled)");
        } else {
            tracing::warn!(job = %job_id, reason = %fault.message, "job handed back to the server (a fault of this machine, not the track's)");
        }
        if !self.protocol2() {
            // The lane closes its connection to hand the job back.
            if let Some(l) = self.lanes.get_mut(lane) {
                l.connected = false;
            }
        }
        self.summary.handed_back += 1;
        self.release(lane);
        self.send(
            lane,
            LaneCmd::HandBack {
                job_id,
                reason: fault.message.clone(),
            },
        );
    }

    fn release(&mut self, lane: usize) {
        let lane = owner(lane, self.lanes.len());
        if let Some(l) = self.lanes.get_mut(lane) {
            l.busy = l.busy.saturating_sub(1);
        }
    }

    fn send(&self, lane: usize, cmd: LaneCmd) {
        if let Some(l) = self.lanes.get(owner(lane, self.lanes.len())) {
            let _ = l.cmds.send(cmd);
        }
    }

    /// Tells every lane what it holds (a lane wakes only when its own view changed), and
    /// everyone whether a lane is connected.
    fn publish(&self) {
        let any = self.lanes.iter().any(|l| l.connected);
        self.out.connected.send_if_modified(|c| {
            let changed = *c != any;
            *c = any;
            changed
        });
        let n = self.lanes.len();
        let mut pending: Vec<Vec<String>> = vec![Vec::new(); n];
        for (id, lane) in self.outbox.pending_ids() {
            if let Some(p) = pending.get_mut(owner(lane, n)) {
                p.push(id);
            }
        }
        for (l, pending) in self.lanes.iter().zip(pending) {
            let next = LaneView {
                busy: l.busy,
                pending,
            };
            l.view.send_if_modified(|v| {
                let changed = *v != next;
                *v = next;
                changed
            });
        }
    }
}

/// The lane that answers for results of `lane`: itself, or lane 0 for a lane that does
/// not exist in this run (results left by a previous run with more connections).
fn owner(lane: usize, lanes: usize) -> usize {
    if lane < lanes {
        lane
    } else {
        0
    }
}

/// Reports a job's end to the hub exactly once; dropped without a result (the job's
/// task panicked or was cancelled), it reports the job abandoned, which hands it back.
struct Settle {
    events: mpsc::UnboundedSender<Event>,
    key: Option<String>,
}

impl Settle {
    fn settle(mut self, end: End) {
        if let Some(key) = self.key.take() {
            let _ = self.events.send(Event::Settled(key, end));
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.events.send(Event::Settled(
                key,
                Err(LocalFault {
                    kind: LocalKind::Pool,
                    message: "the job's task ended without a result".into(),
                }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::facts::Watch;
    use chaarfm_shared::server::{DownloadJob, JobKind};
    use std::sync::Mutex;

    fn job(id: &str, url: &str) -> ServerJob {
        ServerJob {
            job_id: id.into(),
            kind: JobKind::Download(DownloadJob {
                youtube_url: Some(url.into()),
                artist: None,
                title: None,
                table_name: None,
            }),
        }
    }

    /// Each started job's release, in start order.
    type Gates = Arc<Mutex<Vec<(String, oneshot::Sender<End>)>>>;

    struct Fixture {
        hub: Hub,
        dir: std::path::PathBuf,
        /// The hub's own intake, written here to stand for the other writers' events.
        intake: Arc<watch::Sender<Intake>>,
        watch: Watch,
        /// What the preferences want (`prefs::monitor` in the worker).
        preference: watch::Sender<Option<crate::prefs::decide::Pause>>,
        /// Each started job's release: the test decides how it ends.
        gates: Gates,
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("chaarfm-hub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let outbox = Arc::new(Outbox::open(&dir, here()).unwrap());
        let (published, watch) = Published::new(Intake::Open);
        let intake = Arc::clone(&published.intake);
        let gates: Gates = Arc::default();
        let g = Arc::clone(&gates);
        let runner: Runner = Arc::new(move |job: ServerJob| {
            let (tx, rx) = oneshot::channel::<End>();
            g.lock().unwrap().push((job.job_id.clone(), tx));
            Box::pin(async move {
                match rx.await {
                    Ok(end) => end,
                    Err(_) => panic!("the test dropped the job: a panicking job task"),
                }
            })
        });
        let (preference, wanted) = watch::channel(None);
        let facts = Facts {
            preference: wanted,
            record: Arc::new(super::super::record::Record::open(&dir)),
        };
        let (hub, _task) = Hub::start(outbox, published, facts, runner);
        Fixture {
            hub,
            dir,
            intake,
            watch,
            preference,
            gates,
        }
    }

    fn here() -> super::super::outbox::Destination {
        super::super::outbox::destination("http://127.0.0.1:9", "TEST42")
    }

    fn disk_full() -> End {
        Err(LocalFault {
            kind: LocalKind::Disk,
            message: "No space left on device".into(),
        })
    }

    impl Fixture {
        fn started(&self) -> usize {
            self.gates.lock().unwrap().len()
        }

        fn finish(&self, i: usize, end: End) {
            let (_, tx) = self.gates.lock().unwrap().remove(i);
            tx.send(end).unwrap();
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn ok() -> End {
        Ok(Outcome::Failed {
            error: "too short".into(),
        })
    }

    #[tokio::test]
    async fn a_result_is_held_until_processed_and_busy_counts_follow() {
        let f = fixture("held");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        assert_eq!(lane.view.borrow().busy, 1, "counted before job() returns");
        f.finish(0, ok());
        let Some(LaneCmd::Result(entry)) = lane.cmds.recv().await else {
            panic!("no result")
        };
        assert_eq!(entry.job_id, "j1");
        let v = lane.view.wait_for(|v| v.busy == 0).await.unwrap().clone();
        assert_eq!(v.pending, vec!["j1".to_string()], "kept until processed");
        assert_eq!(
            f.hub.connected(lane.id).await.len(),
            1,
            "re-sent on reconnect"
        );
        f.hub.processed(vec!["j1".into()]);
        lane.view.wait_for(|v| v.pending.is_empty()).await.unwrap();
        assert_eq!(f.hub.summary().await.jobs_done, 1);
    }

    #[tokio::test]
    async fn a_resent_job_attaches_to_the_work_under_way() {
        let f = fixture("attach");
        let mut a = f.hub.add_lane().await.unwrap();
        let mut b = f.hub.add_lane().await.unwrap();
        f.hub.job(a.id, job("first", "https://youtu.be/same")).await;
        f.hub.job(b.id, job("again", "https://youtu.be/same")).await;
        assert_eq!(f.gates.lock().unwrap().len(), 1, "computed once");
        f.finish(0, ok());
        let (Some(LaneCmd::Result(x)), Some(LaneCmd::Result(y))) =
            (a.cmds.recv().await, b.cmds.recv().await)
        else {
            panic!("both lanes get a result")
        };
        assert_eq!((x.job_id.as_str(), y.job_id.as_str()), ("first", "again"));
        assert_eq!(f.hub.summary().await.jobs_done, 2);
    }

    #[tokio::test]
    async fn a_disk_fault_hands_back_and_pauses_intake() {
        let f = fixture("disk");
        let mut lane = f.hub.add_lane().await.unwrap();
        let other = f.hub.add_lane().await.unwrap();
        f.hub.connected(lane.id).await;
        f.hub.connected(other.id).await;
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        f.finish(0, disk_full());
        let Some(LaneCmd::HandBack { job_id, .. }) = lane.cmds.recv().await else {
            panic!("not handed back")
        };
        assert_eq!(job_id, "j1");
        assert!(matches!(*f.intake.borrow(), Intake::Paused(_)));
        let v = lane.view.wait_for(|v| v.busy == 0).await.unwrap().clone();
        assert!(v.pending.is_empty(), "nothing stored for a handed-back job");
        let s = f.hub.summary().await;
        assert_eq!((s.jobs_done, s.handed_back), (0, 1));
    }

    #[tokio::test]
    async fn a_panicking_job_is_handed_back_not_held_forever() {
        let f = fixture("panic");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        f.gates.lock().unwrap().clear(); // the job's future panics
        let Some(LaneCmd::HandBack { job_id, .. }) = lane.cmds.recv().await else {
            panic!("not handed back")
        };
        assert_eq!(job_id, "j1");
        lane.view.wait_for(|v| v.busy == 0).await.unwrap();
        assert_eq!(
            *f.intake.borrow(),
            Intake::Open,
            "a pool fault does not pause"
        );
    }

    #[tokio::test]
    async fn results_of_lanes_gone_since_the_last_run_go_to_lane_zero() {
        let f = fixture("orphans");
        let outbox = Outbox::open(&f.dir, here()).unwrap();
        outbox
            .put(&outbox.entry("old".into(), 7, WorkerMsg::Pong))
            .unwrap();
        outbox
            .put(&outbox.entry("mine".into(), 1, WorkerMsg::Pong))
            .unwrap();
        // A hub over the directory a previous run left.
        let facts = Facts {
            preference: watch::channel(None).1,
            record: Arc::new(super::super::record::Record::open(&f.dir)),
        };
        let (hub, _t) = Hub::start(
            Arc::new(Outbox::open(&f.dir, here()).unwrap()),
            Published::new(Intake::Open).0,
            facts,
            Arc::new(|_| Box::pin(async { ok() })),
        );
        let zero = hub.add_lane().await.unwrap();
        let one = hub.add_lane().await.unwrap();
        let ids = |v: Vec<Entry>| v.into_iter().map(|e| e.job_id).collect::<Vec<_>>();
        assert_eq!(ids(hub.connected(zero.id).await), vec!["old"]);
        assert_eq!(ids(hub.connected(one.id).await), vec!["mine"]);
    }

    #[tokio::test]
    async fn todays_servers_last_connection_is_never_closed_on_purpose() {
        let f = fixture("lastconn");
        let a = f.hub.add_lane().await.unwrap();
        let b = f.hub.add_lane().await.unwrap();
        assert!(
            !f.hub.may_close(a.id).await,
            "a lane never connected is no spare"
        );
        f.hub.connected(a.id).await;
        f.hub.connected(b.id).await;
        assert!(f.hub.may_close(a.id).await, "b stays connected");
        assert!(
            !f.hub.may_close(b.id).await,
            "b is now the session's last connection"
        );
        f.hub.disconnected(a.id);
        f.hub.connected(a.id).await;
        assert!(f.hub.may_close(b.id).await, "a is back");
        // Protocol 2 never deletes a session for a closed connection.
        f.hub.welcome(3);
        assert!(f.hub.may_close(a.id).await);
    }

    #[tokio::test]
    async fn the_first_handshake_answer_is_the_one_published() {
        let f = fixture("announced");
        assert_eq!(*f.watch.announced.borrow(), None);
        f.hub.announced(false);
        // A later reconnect's answer does not change a decision taken on the first.
        f.hub.announced(true);
        f.hub.summary().await; // the hub handled the events before it answers
        assert_eq!(*f.watch.announced.borrow(), Some(false));
    }

    #[tokio::test]
    async fn connected_is_published_and_cleared_when_every_lane_is_down() {
        let f = fixture("connected");
        let a = f.hub.add_lane().await.unwrap();
        let b = f.hub.add_lane().await.unwrap();
        let mut seen = f.watch.connected.clone();
        f.hub.connected(a.id).await;
        f.hub.connected(b.id).await;
        seen.wait_for(|c| *c).await.unwrap();
        f.hub.disconnected(a.id);
        f.hub.summary().await; // the hub handled the event before it answers
        assert!(*seen.borrow(), "b is still connected");
        f.hub.disconnected(b.id);
        seen.wait_for(|c| !*c).await.unwrap();
    }

    #[tokio::test]
    async fn a_disk_fault_on_the_last_connection_keeps_the_job_until_intake_reopens() {
        let f = fixture("keep");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.connected(lane.id).await;
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        f.finish(0, disk_full());
        let mut intake = f.intake.subscribe();
        intake.wait_for(|i| *i != Intake::Open).await.unwrap();
        f.hub.summary().await;
        assert!(
            lane.cmds.try_recv().is_err(),
            "handed back on the last connection"
        );
        assert_eq!(lane.view.borrow().busy, 1, "the job still counts as held");
        assert_eq!(f.started(), 0, "not run while paused");
        f.hub.recovered().await;
        assert!(
            crate::server::tests::eventually(|| f.started() == 1).await,
            "not started again once intake reopened"
        );
        f.finish(0, ok());
        let Some(LaneCmd::Result(e)) = lane.cmds.recv().await else {
            panic!("no result")
        };
        assert_eq!(e.job_id, "j1");
        assert_eq!(f.hub.summary().await.handed_back, 0);
    }

    #[tokio::test]
    async fn a_job_that_arrives_while_paused_is_held_then_worked_or_handed_back_at_a_drain() {
        let f = fixture("held");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.connected(lane.id).await;
        let _ = f.intake.send(Intake::Paused("disk".into()));
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        f.hub.job(lane.id, job("j2", "https://youtu.be/b")).await;
        assert_eq!(f.started(), 0);
        assert_eq!(lane.view.borrow().busy, 2);
        f.hub.recovered().await;
        assert!(crate::server::tests::eventually(|| f.started() == 2).await);
        // Paused again, a job arrives, and the worker stops: it goes back to the server.
        let _ = f.intake.send(Intake::Paused("disk".into()));
        f.hub.job(lane.id, job("j3", "https://youtu.be/c")).await;
        f.hub.drain();
        let Some(LaneCmd::HandBack { job_id, .. }) = lane.cmds.recv().await else {
            panic!("not handed back at the drain")
        };
        assert_eq!(job_id, "j3");
        assert_eq!(f.started(), 2, "j3 never ran");
    }

    #[tokio::test]
    async fn a_low_disk_preference_holds_the_job_however_often_until_the_preference_lifts() {
        use crate::prefs::decide::Pause;
        let f = fixture("lowdisk");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.connected(lane.id).await;
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        let low = Pause {
            label: "disk_space",
            reason: "0.4 GB free".into(),
        };
        // More often than a fault's retries: a preference never hands a job back.
        for round in 1..=MAX_LOCAL_RETRIES + 2 {
            // `work::low_disk` saw the disk low: the preferences say so first.
            f.preference.send_replace(Some(low.clone()));
            f.finish(
                0,
                Err(LocalFault {
                    kind: LocalKind::Preference,
                    message: low.reason.clone(),
                }),
            );
            f.hub.summary().await;
            assert!(
                lane.cmds.try_recv().is_err(),
                "handed back in round {round}"
            );
            assert_eq!(lane.view.borrow().busy, 1);
            assert_eq!(f.watch.intake.borrow().label(), Some("disk_space"));
            f.preference.send_replace(None);
            assert!(
                crate::server::tests::eventually(|| f.started() == 1).await,
                "not started again once the preference lifted (round {round})"
            );
        }
        f.finish(0, ok());
        let Some(LaneCmd::Result(e)) = lane.cmds.recv().await else {
            panic!("no result")
        };
        assert_eq!(e.job_id, "j1");
        assert_eq!(f.hub.summary().await.handed_back, 0);
    }

    #[tokio::test]
    async fn youtube_refusing_holds_the_job_then_one_probe_reopens_intake() {
        let f = fixture("probe");
        let mut lane = f.hub.add_lane().await.unwrap();
        f.hub.connected(lane.id).await;
        f.hub.job(lane.id, job("j1", "https://youtu.be/a")).await;
        let bot = || {
            Err(LocalFault {
                kind: LocalKind::YouTube,
                message: "Sign in to confirm you're not a bot".into(),
            })
        };
        f.finish(0, bot());
        let mut intake = f.intake.subscribe();
        intake
            .wait_for(|i| matches!(i, Intake::YouTube(_)))
            .await
            .unwrap();
        f.hub.summary().await;
        assert!(lane.cmds.try_recv().is_err(), "not failed, not handed back");
        // The back-off ends: one probe; YouTube still refuses: paused again, job kept.
        f.hub.youtube_wait_over().await;
        assert!(crate::server::tests::eventually(|| f.started() == 1).await);
        f.finish(0, bot());
        intake
            .wait_for(|i| matches!(i, Intake::YouTube(_)))
            .await
            .unwrap();
        // Next probe: YouTube answers; intake reopens and the result goes out.
        f.hub.youtube_wait_over().await;
        assert!(crate::server::tests::eventually(|| f.started() == 1).await);
        f.finish(0, ok());
        intake.wait_for(|i| *i == Intake::Open).await.unwrap();
        let Some(LaneCmd::Result(e)) = lane.cmds.recv().await else {
            panic!("no result")
        };
        assert_eq!(e.job_id, "j1");
        assert_eq!(f.hub.summary().await.handed_back, 0);
    }
}
