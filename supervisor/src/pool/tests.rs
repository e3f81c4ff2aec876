//! The pool's state machine without processes or wall clock: a fake spawner whose
//! children the test drives by hand, and tokio's paused time.

use std::sync::{Arc, Mutex};

use chaarfm_child::Device;
use chaarfm_shared::ipc::{JobError, JobOutput, Timings};

use super::*;

/// What the fake children were told, and their event senders, shared with the test.
#[derive(Default)]
struct World {
    /// One entry per spawn: (tag, events).
    spawned: Vec<(Tag, mpsc::UnboundedSender<Event>)>,
    /// Frames sent to each spawned child (by spawn index).
    sent: Vec<Vec<ToChild>>,
    killed: Vec<Tag>,
    rss_mb: u64,
    /// Spawns fail while this is set.
    fail_spawn: bool,
    /// Killed children exit at once (else the test delivers the exit).
    linger_after_kill: bool,
}

struct Fake(Arc<Mutex<World>>);

struct FakeChild {
    index: usize,
    tag: Tag,
    world: Arc<Mutex<World>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Control for FakeChild {
    fn pid(&self) -> u32 {
        1000 + self.index as u32
    }
    fn send(&self, msg: ToChild) {
        self.world.lock().unwrap().sent[self.index].push(msg);
    }
    fn kill(&self) {
        let mut w = self.world.lock().unwrap();
        if !w.killed.contains(&self.tag) {
            w.killed.push(self.tag);
            if w.linger_after_kill {
                return;
            }
            // A killed process exits by SIGKILL, as the OS would report it.
            let _ = self.events.send(Event::Exited(self.tag, Ending::Signal(9)));
        }
    }
}

impl Spawner for Fake {
    fn spawn(
        &mut self,
        _spec: &ChildSpec,
        tag: Tag,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Box<dyn Control>, SpawnError> {
        let mut w = self.0.lock().unwrap();
        if w.fail_spawn {
            return Err(SpawnError::Exec {
                exe: "/gone/chaarfm-super".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let index = w.spawned.len();
        w.spawned.push((tag, events.clone()));
        w.sent.push(Vec::new());
        Ok(Box::new(FakeChild {
            index,
            tag,
            world: Arc::clone(&self.0),
            events,
        }))
    }
    fn rss_mb(&mut self, pids: &[u32]) -> Vec<(u32, u64)> {
        let rss = self.0.lock().unwrap().rss_mb;
        pids.iter().map(|&p| (p, rss)).collect()
    }
}

struct Harness {
    world: Arc<Mutex<World>>,
    pool: Pool,
}

fn start(children: usize) -> Harness {
    let world = Arc::new(Mutex::new(World {
        rss_mb: 90,
        ..World::default()
    }));
    let cfg = PoolConfig {
        children: (0..children)
            .map(|_| ChildSpec {
                device: Device::Cpu,
                threads: 1,
                batch: 1,
                engine: chaarfm_child::Engine::Shared,
                nice: 0,
            })
            .collect(),
        job_timeout: None,
        max_child_memory_mb: 600,
        max_jobs_per_child: None,
    };
    let (pool, _task) = Pool::start(cfg, Box::new(Fake(Arc::clone(&world))));
    Harness { world, pool }
}

fn hello() -> FromChild {
    FromChild::Hello {
        protocol: ipc::PROTOCOL_VERSION,
        pid: 1,
        device: "cpu".into(),
        model_sha256: "0123456789abcdef".into(),
    }
}

fn output() -> JobOutput {
    JobOutput {
        vector: vec![0.5; 200],
        tags: vec![],
        patches: 1,
        duration_s: 10.0,
        timings: Timings::default(),
        peak_rss_kib: 1,
        wall_ms: 1.0,
        artist: None,
        title: None,
    }
}

impl Harness {
    /// Lets the pool's task run until it waits again (no time passes).
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn spawned(&self) -> usize {
        self.world.lock().unwrap().spawned.len()
    }

    fn say(&self, index: usize, msg: FromChild) {
        let w = self.world.lock().unwrap();
        let (tag, tx) = &w.spawned[index];
        let _ = tx.send(Event::Frame(*tag, msg));
    }

    fn exit(&self, index: usize, ending: Ending) {
        let w = self.world.lock().unwrap();
        let (tag, tx) = &w.spawned[index];
        let _ = tx.send(Event::Exited(*tag, ending));
    }

    fn jobs_sent_to(&self, index: usize) -> Vec<u64> {
        self.world.lock().unwrap().sent[index]
            .iter()
            .filter_map(|m| match m {
                ToChild::Job(j) => Some(j.id),
                ToChild::Shutdown | ToChild::Start(_) => None,
            })
            .collect()
    }

    /// Child `index` finishes job `id` with a good result.
    fn done(&self, index: usize, id: u64) {
        self.say(
            index,
            FromChild::Done {
                id,
                output: output(),
            },
        );
    }

    fn killed(&self) -> usize {
        self.world.lock().unwrap().killed.len()
    }

    fn submit(&self, name: &str) -> tokio::task::JoinHandle<Result<JobOutput, JobFailure>> {
        let pool = self.pool.clone();
        let path = std::path::PathBuf::from(name);
        tokio::spawn(async move { pool.embed(path, false).await })
    }

    /// Moves paused time forward in small steps, with heartbeats from the live children
    /// `beating` on every step.
    async fn run_for(&self, d: Duration, beating: &[usize]) {
        let step = Duration::from_millis(100);
        let mut t = Duration::ZERO;
        while t < d {
            for &i in beating {
                self.say(i, FromChild::Heartbeat);
            }
            tokio::time::advance(step).await;
            self.settle().await;
            t += step;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_while_jobs_are_queued_fails_every_job_as_a_pool_stop() {
    let h = start(1);
    h.settle().await;
    let jobs: Vec<_> = (0..3).map(|i| h.submit(&format!("{i}.wav"))).collect();
    h.settle().await;
    h.say(
        0,
        FromChild::Fatal {
            message: "model missing".into(),
        },
    );
    for j in jobs {
        let r = j.await.unwrap();
        assert_eq!(
            r,
            Err(JobFailure::Stopped(PoolStopped {
                message: "model missing".into()
            }))
        );
        assert!(r.unwrap_err().is_local());
    }
    assert_eq!(h.pool.fatal().await.message, "model missing");
    // A job submitted afterwards gets the same typed answer, not a generic one.
    let late = h.submit("late.wav").await.unwrap();
    assert!(matches!(late, Err(JobFailure::Stopped(_))), "{late:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_child_being_killed_gets_no_job_and_the_job_is_not_charged() {
    let h = start(1);
    h.settle().await;
    h.say(0, hello());
    h.settle().await;
    h.world.lock().unwrap().linger_after_kill = true;
    // Over the ceiling while idle: killed at the next memory check.
    h.world.lock().unwrap().rss_mb = 5000;
    tokio::time::advance(Duration::from_millis(600)).await;
    h.settle().await;
    assert_eq!(h.killed(), 1);
    h.world.lock().unwrap().rss_mb = 90;
    // A job arriving now must wait for the replacement, not land on the dying child.
    let job = h.submit("a.wav");
    h.run_for(Duration::from_millis(300), &[0]).await;
    assert!(h.jobs_sent_to(0).is_empty(), "a job went to a dying child");
    h.exit(0, Ending::Signal(9));
    h.run_for(Duration::from_millis(300), &[]).await;
    assert_eq!(h.spawned(), 2, "no replacement child");
    h.say(1, hello());
    h.settle().await;
    let sent = h.jobs_sent_to(1);
    assert_eq!(sent.len(), 1);
    h.done(1, sent[0]);
    assert!(job.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_paused_supervisor_does_not_kill_healthy_children() {
    let h = start(1);
    h.settle().await;
    h.say(0, hello());
    h.settle().await;
    let job = h.submit("a.wav");
    h.settle().await;
    let id = h.jobs_sent_to(0)[0];
    h.say(0, FromChild::Progress { id, audio_s: 30.0 });
    h.run_for(Duration::from_secs(2), &[0]).await;
    // SIGSTOP for 30 s: the clock jumps, nothing was heard (the loop did not run).
    tokio::time::advance(Duration::from_secs(30)).await;
    h.settle().await;
    h.run_for(Duration::from_secs(2), &[0]).await;
    assert_eq!(h.killed(), 0, "a healthy child was killed after a pause");
    h.done(0, id);
    assert!(job.await.unwrap().is_ok());
    // Silence after the pause is still judged: 10 s without a frame kills it.
    h.run_for(HEARTBEAT_TIMEOUT + Duration::from_secs(1), &[])
        .await;
    assert_eq!(h.killed(), 1, "a silent child was not killed");
}

#[tokio::test(start_paused = true)]
async fn a_child_over_the_memory_ceiling_charges_its_job_three_times() {
    let h = start(1);
    h.settle().await;
    let job = h.submit("hog.wav");
    for n in 0..3 {
        h.say(n, hello());
        h.settle().await;
        assert_eq!(h.jobs_sent_to(n).len(), 1, "attempt {n} not dispatched");
        h.world.lock().unwrap().rss_mb = 5000;
        h.run_for(Duration::from_millis(600), &[n]).await;
        h.world.lock().unwrap().rss_mb = 90;
        h.run_for(Duration::from_millis(200), &[]).await;
    }
    match job.await.unwrap() {
        Err(JobFailure::Crashed(m)) => {
            assert_eq!(
                m,
                "child exceeded the memory limit (5000 MB > 600 MB) on 3 attempts"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_that_never_says_hello_is_killed_for_it_and_replaced() {
    let h = start(1);
    h.settle().await;
    h.run_for(HELLO_TIMEOUT + Duration::from_secs(1), &[]).await;
    assert_eq!(h.killed(), 1);
    h.run_for(Duration::from_secs(1), &[]).await;
    assert_eq!(h.spawned(), 2, "not replaced after the hello timeout");
    assert!(h.pool.fatal.borrow().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_outside_sigkill_retries_the_job_and_a_file_error_is_the_files() {
    let h = start(1);
    h.settle().await;
    h.say(0, hello());
    let job = h.submit("a.wav");
    h.settle().await;
    h.exit(0, Ending::Signal(9));
    h.run_for(Duration::from_millis(200), &[]).await;
    h.say(1, hello());
    h.settle().await;
    let id = h.jobs_sent_to(1)[0];
    h.say(
        1,
        FromChild::Failed {
            id,
            error: JobError {
                message: "audio too short".into(),
            },
        },
    );
    let r = job.await.unwrap();
    assert_eq!(r, Err(JobFailure::File("audio too short".into())));
    assert!(!r.unwrap_err().is_local());
}

#[tokio::test(start_paused = true)]
async fn children_that_cannot_start_are_retried_then_the_pool_stops_with_the_cause() {
    let h = start(1);
    h.world.lock().unwrap().fail_spawn = true;
    h.settle().await;
    let job = h.submit("a.wav");
    // Backoff 1 s, 2 s, 4 s, 8 s, 10 s...: well within two minutes for 8 attempts.
    h.run_for(Duration::from_secs(120), &[]).await;
    match job.await.unwrap() {
        Err(JobFailure::Stopped(s)) => {
            assert!(s.message.contains("/gone/chaarfm-super"), "{}", s.message)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_failure_that_clears_recovers_by_itself() {
    let h = start(1);
    h.world.lock().unwrap().fail_spawn = true;
    h.settle().await;
    let job = h.submit("a.wav");
    h.run_for(Duration::from_secs(3), &[]).await;
    h.world.lock().unwrap().fail_spawn = false;
    h.run_for(Duration::from_secs(5), &[]).await;
    assert_eq!(h.spawned(), 1);
    h.say(0, hello());
    h.settle().await;
    let id = h.jobs_sent_to(0)[0];
    h.done(0, id);
    assert!(job.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn shutdown_kills_are_routine_and_queued_jobs_are_not_run() {
    let h = start(1);
    h.settle().await;
    // Still starting: shutdown kills it; nothing is charged or reported as outside.
    let queued = h.submit("q.wav");
    h.settle().await;
    let pool = h.pool.clone();
    let done = tokio::spawn(async move { pool.shutdown().await });
    h.settle().await;
    assert_eq!(queued.await.unwrap(), Err(JobFailure::ShuttingDown));
    assert_eq!(h.killed(), 1);
    done.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_long_job_lives_while_it_progresses_and_is_killed_when_it_stalls() {
    let h = start(1);
    h.settle().await;
    h.say(0, hello());
    h.settle().await;
    let job = h.submit("four-hours.flac");
    h.settle().await;
    let id = h.jobs_sent_to(0)[0];
    // Ten minutes of steady progress: far past any fixed deadline a short track gets.
    for k in 1..=20 {
        h.run_for(Duration::from_secs(30), &[0]).await;
        h.say(
            0,
            FromChild::Progress {
                id,
                audio_s: 30.0 * f64::from(k),
            },
        );
        h.settle().await;
    }
    assert_eq!(
        h.killed(),
        0,
        "a job that kept reporting progress was killed"
    );
    // Then nothing but heartbeats: the decoder or the model hangs.
    h.run_for(PROGRESS_TIMEOUT - Duration::from_secs(1), &[0])
        .await;
    assert_eq!(h.killed(), 0, "killed before the progress deadline");
    h.run_for(Duration::from_secs(2), &[0]).await;
    assert_eq!(h.killed(), 1, "a stalled job was not killed");
    h.exit(0, Ending::Signal(9));
    h.run_for(Duration::from_millis(300), &[]).await;
    assert_eq!(h.spawned(), 2, "no replacement child");
    h.say(1, hello());
    h.settle().await;
    assert_eq!(
        h.jobs_sent_to(1),
        vec![id],
        "the stalled job was not handed on"
    );
    h.done(1, id);
    assert!(job.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_job_with_no_first_progress_is_killed_after_the_first_deadline() {
    let h = start(1);
    h.settle().await;
    h.say(0, hello());
    h.settle().await;
    let _job = h.submit("stuck-open.wav");
    h.settle().await;
    h.run_for(FIRST_PROGRESS_TIMEOUT - Duration::from_secs(1), &[0])
        .await;
    assert_eq!(h.killed(), 0, "killed before the first-progress deadline");
    h.run_for(Duration::from_secs(2), &[0]).await;
    assert_eq!(h.killed(), 1, "a job that never progressed was not killed");
}
