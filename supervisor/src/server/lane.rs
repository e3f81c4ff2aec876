//! One lane: a worker connection to the server, reconnected after any loss until the
//! drain is complete ([`run`]), and the I/O of one connection ([`Lane::serve`]). What to
//! say and when is the protocol's (`server::protocol`); what the jobs are is the hub's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaarfm_shared::server::{parse_server, Incoming, WorkerMsg, PROTOCOL};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::ctx::Ctx;
use super::facts::Watch;
use super::hub::{Hub, LaneCmd, LaneHandle, LaneView};
use super::intake::Intake;
use super::probe;
use super::protocol::{HandBack, Now, Protocol, Refusal, Step};
use crate::backoff::Backoff;

/// A WebSocket ping this often...
const PING_EVERY: Duration = Duration::from_secs(10);
/// ...and a connection that has said nothing for this long is dead (a frozen server).
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Draining: how long to wait for the server's answer to our close, which shows it
/// received every frame sent before it.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Lost(String),
    /// Closed to hand a job back, or to stop taking jobs while paused.
    HandedBack,
    Drained,
}

/// What one lane works with.
pub struct Lane {
    pub hub: Hub,
    pub me: LaneHandle,
    pub watch: Watch,
    /// The slots said in lane 0's `hello`.
    pub slots: usize,
}

/// One lane until its drain is complete. `Some(message)`: the server refused the
/// pairing code, and connect mode stops with that message.
pub async fn run(ctx: Arc<Ctx>, mut lane: Lane) -> Option<String> {
    let id = lane.me.id;
    let mut backoff = Backoff::reconnect();
    let mut draining = lane.watch.draining.clone();
    let mut intake = lane.watch.intake.clone();
    let mut connected = lane.watch.connected.clone();
    let settled = |v: &watch::Receiver<LaneView>| {
        let v = v.borrow();
        v.busy == 0 && v.pending.is_empty()
    };
    loop {
        if *draining.borrow() {
            // Stopping: no new connection, except to deliver results of jobs that
            // finished (an embedding in flight when the stop came, its connection lost).
            loop {
                if settled(&lane.me.view) {
                    return None;
                }
                if !lane.me.view.borrow().pending.is_empty() {
                    break;
                }
                if lane.me.view.changed().await.is_err() {
                    return None;
                }
            }
        }
        // Today's server: a connection asks for a job, so none while paused, even for a
        // lane whose job is still running (its result waits for the resume, or a drain
        // delivers it); reconnecting would only fetch jobs to hand back.
        while !*draining.borrow()
            && !Protocol::may_connect(ctx.protocol2(), id, ctx.paused(), *connected.borrow())
        {
            tokio::select! {
                _ = intake.changed() => {}
                _ = draining.changed() => {}
                _ = connected.changed() => {}
            }
        }
        if *draining.borrow() && settled(&lane.me.view) {
            return None;
        }
        let ws = match probe::handshake(&ctx.url, &ctx.base, &ctx.masked_code).await {
            Ok(opened) => {
                if id == 0 {
                    lane.hub.announced(opened.protocol2);
                }
                opened.ws
            }
            Err(probe::Handshake::Refused(r)) => return Some(r.message),
            Err(e) => {
                match e {
                    probe::Handshake::Failed(e) => {
                        tracing::warn!(lane = id, error = %e, "cannot connect")
                    }
                    _ => tracing::warn!(lane = id, "connecting timed out"),
                }
                ctx.pool.stats.note_error();
                let d = backoff.next_delay();
                if wait_or_drain(&mut draining, d).await && lane.me.view.borrow().busy == 0 {
                    return None;
                }
                continue;
            }
        };
        let since = Instant::now();
        let mut useful = false;
        let (sink, stream) = ws.split();
        let ended = lane.serve(sink, stream, &mut useful).await;
        lane.hub.disconnected(id);
        match ended {
            Ended::Drained => return None,
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

impl Lane {
    /// What the protocol decides from: intake, the drain and this lane's view.
    fn now(&self, sent: &HashSet<String>) -> Now {
        let intake = self.watch.intake.borrow();
        let v = self.me.view.borrow();
        Now {
            paused: *intake != Intake::Open,
            reason: intake.reason().map(str::to_string),
            draining: *self.watch.draining.borrow(),
            busy: v.busy,
            unsent: v.pending.iter().any(|j| !sent.contains(j)),
            held: !v.pending.is_empty(),
            no_cmds: self.me.cmds.is_empty(),
        }
    }

    /// Serves one connection until it ends. `useful`: set once the server answered
    /// with a job, an ack or a welcome (the reconnect backoff resets after one).
    pub async fn serve<S, R, E>(&mut self, mut sink: S, mut stream: R, useful: &mut bool) -> Ended
    where
        S: Sink<Message> + Unpin,
        S::Error: std::fmt::Display,
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = self.me.id;
        tracing::info!(lane = id, "connected");
        let mut proto = Protocol::new(self.watch.welcome.borrow().is_some());
        if id == 0 {
            let hello = WorkerMsg::Hello {
                agent: concat!("chaarfm-super/", env!("CARGO_PKG_VERSION")).into(),
                slots: self.slots,
                protocol: PROTOCOL,
            };
            if let Err(e) = send_json(&mut sink, &hello).await {
                return Ended::Lost(e);
            }
        }
        // Results not yet shown processed go first (from before this connection or run).
        let mut sent: HashSet<String> = HashSet::new();
        for e in self.hub.connected(id).await {
            if let Err(err) = send_json(&mut sink, &e.msg).await {
                return Ended::Lost(err);
            }
            proto.sent(&e.job_id);
            sent.insert(e.job_id);
        }
        let mut intake = self.watch.intake.clone();
        let mut draining = self.watch.draining.clone();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            let now = self.now(&sent);
            match proto.next(&now, tokio::time::Instant::now()) {
                Step::Wait => {}
                Step::Send(msg) => {
                    if let Err(e) = send_json(&mut sink, &msg).await {
                        return Ended::Lost(e);
                    }
                    continue;
                }
                Step::Drain { confirm: true } => {
                    if close_acknowledged(&mut sink, &mut stream).await {
                        // The server answered our close, so it received every result
                        // sent before it; it handles them in order. Keeping them would
                        // send them again at the next start, perhaps into another
                        // session of this code.
                        self.hub.processed(proto.proven());
                    }
                    return Ended::Drained;
                }
                Step::Drain { confirm: false } => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ended::Drained;
                }
                Step::AskToClose => {
                    if self.hub.may_close(id).await {
                        let _ = sink.send(Message::Close(None)).await;
                        return Ended::HandedBack;
                    }
                    tracing::info!(lane = id, "paused: keeping this connection open, the session's last (closing it would delete the server's queue); a job sent on it waits for the pause to end");
                    proto.keep_open();
                    continue;
                }
            }
            let deadline = proto.deadline();
            let proof_wait = async move {
                match deadline {
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
                            self.hub.processed(proto.welcomed());
                            self.hub.welcome(slots);
                        }
                        Incoming::Welcome { protocol, .. } => tracing::warn!(protocol, "welcome for an unknown protocol; ignored"),
                        Incoming::Ack { job_id } => {
                            *useful = true;
                            self.hub.processed(vec![job_id]);
                        }
                        Incoming::Job(job) => {
                            *useful = true;
                            self.hub.processed(proto.proven());
                            let stopping = *draining.borrow();
                            let paused = *intake.borrow() != Intake::Open;
                            if !stopping && !paused {
                                self.hub.job(id, job).await;
                                continue;
                            }
                            let why = if paused { "paused" } else { "draining" };
                            tracing::info!(lane = id, job = %job.job_id, "{why}: job left for later");
                            match proto.refuse(&job.job_id, why, stopping) {
                                Refusal::Send(msg) => {
                                    if let Err(e) = send_json(&mut sink, &msg).await {
                                        return Ended::Lost(e);
                                    }
                                }
                                Refusal::Leave => {}
                                Refusal::CloseOrHold => {
                                    // Closing hands it back (the server requeues it), unless
                                    // this is the session's last connection: then it is held
                                    // until intake reopens.
                                    if self.hub.may_close(id).await {
                                        let _ = sink.send(Message::Close(None)).await;
                                        return Ended::HandedBack;
                                    }
                                    self.hub.job(id, job).await;
                                }
                            }
                        }
                        Incoming::Ignored(why) => {
                            let shown: String = why.chars().take(200).collect();
                            tracing::warn!(lane = id, reason = %shown, "ignored a message from the server");
                        }
                    }
                }
                Some(cmd) = self.me.cmds.recv() => match cmd {
                    LaneCmd::Result(entry) => {
                        if sent.contains(&entry.job_id) {
                            continue;
                        }
                        if let Err(e) = send_json(&mut sink, &entry.msg).await {
                            return Ended::Lost(e); // still in the outbox: sent after reconnecting
                        }
                        proto.sent(&entry.job_id);
                        sent.insert(entry.job_id);
                    }
                    LaneCmd::HandBack { job_id, reason } => match proto.hand_back(job_id, reason) {
                        HandBack::Send(msg) => {
                            if let Err(e) = send_json(&mut sink, &msg).await {
                                return Ended::Lost(e);
                            }
                        }
                        HandBack::Close => {
                            let _ = sink.send(Message::Close(None)).await;
                            return Ended::HandedBack;
                        }
                    },
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
                Ok(()) = self.me.view.changed() => {}
                _ = draining.changed() => {}
                _ = intake.changed() => {}
            }
        }
    }
}

/// Sends our close and waits (at most [`CLOSE_WAIT`]) for the server's; whether it came.
async fn close_acknowledged<S, R, E>(sink: &mut S, stream: &mut R) -> bool
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
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
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    sink.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// A lane served over an in-memory wire (no socket): the hub is real, each job's end is
/// the test's.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::decide::Pause;
    use crate::server::facts::Published;
    use crate::server::hub::{Facts, Runner};
    use crate::server::outbox::Outbox;
    use crate::server::work::{End, LocalFault, LocalKind};
    use chaarfm_shared::server::{Outcome, ServerJob};
    use std::pin::Pin;
    use std::sync::Mutex;
    use tokio::sync::{mpsc, oneshot};

    type Gates = Arc<Mutex<Vec<(String, oneshot::Sender<End>)>>>;
    type Out = Pin<Box<dyn Sink<Message, Error = String> + Send>>;
    type In = Pin<Box<dyn Stream<Item = Result<Message, String>> + Send>>;

    /// The server's end of one connection.
    struct Server {
        to_worker: mpsc::UnboundedSender<Result<Message, String>>,
        from_worker: mpsc::UnboundedReceiver<Message>,
    }

    fn wire() -> (Out, In, Server) {
        let (to_worker, rx) = mpsc::unbounded_channel();
        let (tx, from_worker) = mpsc::unbounded_channel::<Message>();
        let out: Out = Box::pin(futures_util::sink::unfold(tx, |tx, m| async move {
            tx.send(m).map_err(|_| "connection reset".to_string())?;
            Ok(tx)
        }));
        let inn: In = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        (
            out,
            inn,
            Server {
                to_worker,
                from_worker,
            },
        )
    }

    impl Server {
        fn say(&self, json: &str) {
            let _ = self.to_worker.send(Ok(Message::text(json)));
        }

        fn job(&self, id: &str) {
            self.say(&format!(
                r#"{{"type":"job","job_id":"{id}","payload":{{"youtube_url":"https://youtu.be/{id}"}}}}"#
            ));
        }

        /// The worker's next JSON message (pings skipped), or None once it closed.
        async fn next(&mut self) -> Option<serde_json::Value> {
            loop {
                match self.from_worker.recv().await? {
                    Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
                    Message::Close(_) => return None,
                    _ => {}
                }
            }
        }
    }

    struct Fixture {
        hub: Hub,
        watch: Watch,
        preference: watch::Sender<Option<Pause>>,
        gates: Gates,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("chaarfm-lane-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dest = crate::server::outbox::destination("http://127.0.0.1:9", "TEST42");
        let outbox = Arc::new(Outbox::open(&dir, dest).unwrap());
        let (published, watch) = Published::new(Intake::Open);
        let gates: Gates = Arc::default();
        let g = Arc::clone(&gates);
        let runner: Runner = Arc::new(move |job: ServerJob| {
            let (tx, rx) = oneshot::channel::<End>();
            g.lock().unwrap().push((job.job_id.clone(), tx));
            Box::pin(async move { rx.await.unwrap_or_else(|_| Ok(too_short())) })
        });
        let (preference, wanted) = watch::channel(None);
        let facts = Facts {
            preference: wanted,
            record: Arc::new(crate::server::record::Record::open(&dir)),
        };
        let (hub, _task) = Hub::start(outbox, published, facts, runner);
        Fixture {
            hub,
            watch,
            preference,
            gates,
            dir,
        }
    }

    fn too_short() -> Outcome {
        Outcome::Failed {
            error: "too short".into(),
        }
    }

    impl Fixture {
        async fn lane(&self) -> Lane {
            Lane {
                hub: self.hub.clone(),
                me: self.hub.add_lane().await.unwrap(),
                watch: self.watch.clone(),
                slots: 3,
            }
        }

        fn started(&self) -> Vec<String> {
            self.gates
                .lock()
                .unwrap()
                .iter()
                .map(|g| g.0.clone())
                .collect()
        }

        fn finish(&self, id: &str, end: End) {
            let mut g = self.gates.lock().unwrap();
            let i = g
                .iter()
                .position(|(j, _)| j == id)
                .expect("job not started");
            let (_, tx) = g.remove(i);
            let _ = tx.send(end);
        }

        fn pause(&self) {
            self.preference.send_replace(Some(Pause {
                label: "battery",
                reason: "on battery (42%)".into(),
            }));
        }
    }

    fn serve(mut lane: Lane, out: Out, inn: In) -> tokio::task::JoinHandle<(Lane, Ended)> {
        tokio::spawn(async move {
            let mut useful = false;
            let ended = lane.serve(out, inn, &mut useful).await;
            (lane, ended)
        })
    }

    #[tokio::test]
    async fn todays_server_a_result_cut_off_by_a_lost_connection_is_sent_again_until_proven() {
        let f = fixture("lost");
        let lane = f.lane().await;
        let (out, inn, mut server) = wire();
        let task = serve(lane, out, inn);
        assert_eq!(server.next().await.unwrap()["type"], "hello");
        server.job("j1");
        assert!(crate::server::tests::eventually(|| f.started() == ["j1"]).await);
        // The connection drops before the result goes out.
        drop(server);
        f.finish("j1", Ok(too_short()));
        let (mut lane, ended) = task.await.unwrap();
        assert!(matches!(ended, Ended::Lost(_)), "{ended:?}");
        f.hub.disconnected(lane.me.id);
        lane.me.view.wait_for(|v| v.busy == 0).await.unwrap();
        assert_eq!(lane.me.view.borrow().pending, ["j1"], "kept in the outbox");

        // The next connection sends it first; the next job proves it processed.
        let (out, inn, mut server) = wire();
        let task = serve(lane, out, inn);
        assert_eq!(server.next().await.unwrap()["type"], "hello");
        let resent = server.next().await.unwrap();
        assert_eq!(
            (resent["type"].as_str(), resent["job_id"].as_str()),
            (Some("result"), Some("j1"))
        );
        server.job("j2");
        assert!(crate::server::tests::eventually(|| f.started() == ["j2"]).await);
        let mut view = f.watch.connected.clone();
        assert!(*view.borrow_and_update());
        drop(server);
        let (lane, _) = task.await.unwrap();
        let mut v = lane.me.view.clone();
        v.wait_for(|v| v.pending.is_empty()).await.unwrap();
        assert_eq!(v.borrow().busy, 1, "j2 still held");
    }

    #[tokio::test]
    async fn todays_server_a_pause_keeps_the_sessions_last_connection_and_holds_its_job() {
        let f = fixture("keeper");
        f.pause();
        let mut intake = f.watch.intake.clone();
        intake.wait_for(|i| *i != Intake::Open).await.unwrap();
        let lane = f.lane().await;
        let mut view = lane.me.view.clone();
        let (out, inn, mut server) = wire();
        let task = serve(lane, out, inn);
        assert_eq!(server.next().await.unwrap()["type"], "hello");
        // The server sends a job on it: held, not run, the connection still open.
        server.job("j1");
        view.wait_for(|v| v.busy == 1).await.unwrap();
        assert!(f.started().is_empty(), "run while paused");
        assert!(
            !task.is_finished(),
            "the session's last connection was closed"
        );
        while let Ok(m) = server.from_worker.try_recv() {
            assert!(matches!(m, Message::Ping(_)), "said {m:?} while paused");
        }
        // Resumed: the held job runs and its result goes out on the same connection.
        f.preference.send_replace(None);
        assert!(crate::server::tests::eventually(|| f.started() == ["j1"]).await);
        f.finish("j1", Ok(too_short()));
        let result = server.next().await.unwrap();
        assert_eq!(
            (result["type"].as_str(), result["job_id"].as_str()),
            (Some("result"), Some("j1"))
        );
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn todays_server_a_paused_lane_closes_while_another_is_connected() {
        let f = fixture("spare");
        let keeper = f.lane().await;
        let spare = f.lane().await;
        f.hub.connected(keeper.me.id).await;
        f.pause();
        let mut intake = f.watch.intake.clone();
        intake.wait_for(|i| *i != Intake::Open).await.unwrap();
        let (out, inn, mut server) = wire();
        let (_, ended) = serve(spare, out, inn).await.unwrap();
        assert_eq!(ended, Ended::HandedBack, "another lane keeps the session");
        assert!(server.next().await.is_none(), "closed");
    }

    #[tokio::test]
    async fn protocol_2_pauses_releases_and_resumes_on_one_connection() {
        let f = fixture("v2");
        let lane = f.lane().await;
        let (out, inn, mut server) = wire();
        let task = serve(lane, out, inn);
        assert_eq!(server.next().await.unwrap()["type"], "hello");
        server.say(r#"{"type":"welcome","protocol":2,"slots":3}"#);
        let mut welcome = f.watch.welcome.clone();
        welcome.wait_for(|w| *w == Some(3)).await.unwrap();
        // A fault of this machine: released, not failed, and intake pauses.
        server.job("j1");
        assert!(crate::server::tests::eventually(|| f.started() == ["j1"]).await);
        f.finish(
            "j1",
            Err(LocalFault {
                kind: LocalKind::Disk,
                message: "No space left on device".into(),
            }),
        );
        let mut said = Vec::new();
        for _ in 0..2 {
            said.push(server.next().await.unwrap());
        }
        said.sort_by_key(|m| m["type"].as_str().unwrap_or("").to_string());
        assert_eq!(said[0]["type"], "pause");
        assert_eq!(
            (said[1]["type"].as_str(), said[1]["job_id"].as_str()),
            (Some("release"), Some("j1"))
        );
        // A job sent while paused is released at once.
        server.job("j2");
        let m = server.next().await.unwrap();
        assert_eq!(
            (m["type"].as_str(), m["job_id"].as_str()),
            (Some("release"), Some("j2"))
        );
        assert_eq!(m["reason"], "worker paused");
        // The disk works again: resume.
        f.hub.recovered().await;
        assert_eq!(server.next().await.unwrap()["type"], "resume");
        // An ack proves a result; a drain then closes the settled connection.
        server.job("j3");
        assert!(crate::server::tests::eventually(|| f.started() == ["j3"]).await);
        f.finish("j3", Ok(too_short()));
        let r = server.next().await.unwrap();
        assert_eq!(r["job_id"], "j3");
        server.say(r#"{"type":"ack","job_id":"j3"}"#);
        f.hub.drain();
        let (_, ended) = task.await.unwrap();
        assert_eq!(ended, Ended::Drained);
        assert!(server.next().await.is_none());
    }
}
