//! A mock ChaarFM server on loopback that behaves as ChaarFM's coordinator does
//! (`../shared/PROTOCOL.md`, "What the server does with workers"; its
//! `music_pipeline/web_app.py`, class `Coordinator`):
//! - a session per pairing code, made by the first connection (any code is accepted,
//!   unless [`MockConfig::refuse_other_codes`]) or by queueing jobs;
//! - one job per connection at a time; it dispatches only when a worker connects, a
//!   result arrives, a worker disconnects while others remain, or jobs are queued (the
//!   UI's start). An idle connection while the queue holds work stays idle otherwise;
//! - a closed connection's job goes back to the front of the queue;
//! - when the last worker connection of a session closes and no UI holds it
//!   ([`Mock::hold_ui`]), the session is deleted with its queue and its jobs in flight;
//! - a result for a job id it does not know is still stored, in the session's current
//!   table; a known one in its job's table. Storage skips duplicates by youtube_id and by
//!   (artist, title), per table;
//! - no two jobs with one key out at once: a queued job whose key is out is dropped, as
//!   the coordinator drops it.
//!
//! Differences, on purpose: a job keeps its id when requeued (the coordinator makes a new
//! one at each dispatch; tests follow jobs by id), and [`Mock::restart`] models a server
//! whose state survives a restart (the coordinator keeps everything in memory).
//! Optionally it speaks protocol 2 (welcome + acks, several jobs per connection, pause,
//! resume, release).
//!
//! The same port serves HTTP: `/api/keepalive`, `/audio/<file>` from a folder, `/cut/<file>`
//! (the first request for each file is cut mid-body, later ones are whole), `/huge.mp3`
//! (announces 10 GB), `/stall.mp3` (sends a little, then nothing), `/trickle.mp3` (a byte a
//! second), `/page.mp3` (a web page served as `audio/mpeg`), `/page.html` (`text/html`),
//! and 404 otherwise. Knobs make it drop connections, send garbage, oversized and unknown
//! messages, and ping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaarfm_shared::server::{announces_protocol2, PROTOCOL, PROTOCOL_HEADER};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The code whose session [`Mock::add_job`] fills.
    pub code: String,
    /// Refuse (HTTP 403) worker connections with any other code. The coordinator accepts
    /// every code (a new code is a new, empty session); a server that checks codes does not.
    pub refuse_other_codes: bool,
    /// `Some(slots)`: answer `hello` with a protocol-2 welcome.
    pub protocol2: Option<usize>,
    /// With protocol 2: announce it in the handshake answer to a worker that offers it
    /// (`docs/PROTOCOL.md`). Off: a protocol-2 server that says so only in its `welcome`.
    pub announce: bool,
    pub audio_dir: PathBuf,
    /// Close every worker connection this long after it opened.
    pub drop_after: Option<Duration>,
    /// On each connection, first send garbage: not JSON, an unknown type, a 10 MB message,
    /// a job without id, and a ping.
    pub garbage: bool,
    /// With protocol 2: acknowledge results (off: results stay in the worker's outbox).
    pub ack: bool,
    /// How long `/audio/` waits before it answers: a download that takes seconds, as
    /// yt-dlp's from YouTube does (the server bench's `--download-delay-ms`).
    pub audio_delay: Duration,
    pub port: u16,
}

impl MockConfig {
    pub fn new(audio_dir: PathBuf) -> Self {
        Self {
            code: "TEST42".into(),
            refuse_other_codes: false,
            protocol2: None,
            announce: true,
            audio_dir,
            drop_after: None,
            garbage: false,
            ack: true,
            audio_delay: Duration::ZERO,
            port: 0,
        }
    }
}

/// A result as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub job_id: String,
    /// Whether the id was one of a job in flight in that session.
    pub known: bool,
    /// The pairing code of the connection it arrived on.
    pub code: String,
    /// The table it was stored in (`None`: the session had no table, nothing stored).
    pub table: Option<String>,
    pub msg: Value,
}

type ConnId = u64;

/// One pairing code's session, as the coordinator keeps it.
#[derive(Default)]
struct Session {
    queue: VecDeque<(String, Value)>,
    /// The session's current table (the last queued job's `table_name`).
    table: Option<String>,
    /// Worker connections, in the order they connected.
    workers: Vec<ConnId>,
    /// A browser tab holds the session's `/ingest` page.
    ui: bool,
    /// Keys of jobs out with workers.
    assigned: HashSet<String>,
    /// Jobs out with workers: id -> (connection, payload).
    active: HashMap<String, (ConnId, Value)>,
}

struct Conn {
    code: String,
    out: mpsc::UnboundedSender<Message>,
    /// Jobs this connection may hold at once: 1, or what a protocol-2 welcome granted.
    slots: usize,
    busy: usize,
    /// Protocol 2: the worker said `pause`.
    paused: bool,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    /// Successful results that storage skipped because that track was stored already
    /// (a result delivered twice).
    duplicates: usize,
    received: Vec<Received>,
    /// Storage: table -> youtube_id -> vector, with (artist, title) dedupe per table.
    stored: HashMap<String, HashMap<String, Vec<f64>>>,
    stored_titles: HashSet<(String, String, String)>,
    keepalive_hits: usize,
    pongs: usize,
    hellos: usize,
    /// Handshakes that offered protocol 2 in their header.
    offers: usize,
    connections: usize,
    /// Jobs put back in the queue: a connection closed holding them, or `release`d.
    requeued: usize,
    released: Vec<String>,
    /// Sessions deleted because their last connection closed with no UI holding them,
    /// and the jobs (queued or in flight) that went with them.
    sessions_deleted: usize,
    jobs_lost: usize,
    /// Queued jobs dropped because a job with the same key was out.
    dropped: usize,
    /// Requests per `/cut/<file>` path.
    cut_requests: HashMap<String, usize>,
    /// Frozen: connections neither read nor write (a SIGSTOPped server).
    frozen: bool,
}

fn job_key(payload: &Value) -> String {
    match payload.get("youtube_url").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => format!(
            "{}::{}",
            payload
                .get("artist")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim(),
            payload
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
        )
        .to_lowercase(),
    }
}

impl State {
    /// The coordinator's `dispatch_next_job`: every connection of the session with a
    /// free slot gets the next jobs of the queue.
    fn dispatch(&mut self, code: &str) {
        let Some(sess) = self.sessions.get_mut(code) else {
            return;
        };
        for cid in sess.workers.clone() {
            let Some(conn) = self.conns.get_mut(&cid) else {
                continue;
            };
            while conn.busy < conn.slots && !conn.paused {
                let Some((id, payload)) = sess.queue.pop_front() else {
                    return;
                };
                let key = job_key(&payload);
                if !sess.assigned.insert(key) {
                    self.dropped += 1;
                    continue;
                }
                conn.busy += 1;
                let msg = json!({"type": "job", "job_id": id, "payload": payload}).to_string();
                sess.active.insert(id, (cid, payload));
                // A closed connection's receiver is gone: its close puts the job back.
                let _ = conn.out.send(Message::text(msg));
            }
        }
    }

    /// Puts jobs back at the front of their session's queue, in their order.
    fn requeue_front(&mut self, code: &str, ids: Vec<String>) {
        let Some(sess) = self.sessions.get_mut(code) else {
            return;
        };
        for id in ids.into_iter().rev() {
            if let Some((cid, payload)) = sess.active.remove(&id) {
                sess.assigned.remove(&job_key(&payload));
                if let Some(c) = self.conns.get_mut(&cid) {
                    c.busy = c.busy.saturating_sub(1);
                }
                sess.queue.push_front((id, payload));
                self.requeued += 1;
            }
        }
    }

    fn connect(&mut self, code: &str, out: mpsc::UnboundedSender<Message>) -> ConnId {
        self.next_conn += 1;
        let cid = self.next_conn;
        self.connections += 1;
        self.conns.insert(
            cid,
            Conn {
                code: code.to_string(),
                out,
                slots: 1,
                busy: 0,
                paused: false,
            },
        );
        let sess = self.sessions.entry(code.to_string()).or_default();
        sess.workers.push(cid);
        if !sess.queue.is_empty() {
            self.dispatch(code);
        }
        cid
    }

    /// The coordinator's `disconnect`: the connection's jobs back to the front, then the
    /// session deleted if nothing holds it, else a dispatch to the others.
    fn disconnect(&mut self, cid: ConnId) {
        let Some(conn) = self.conns.remove(&cid) else {
            return;
        };
        let code = conn.code;
        let Some(sess) = self.sessions.get_mut(&code) else {
            return;
        };
        let mut held: Vec<String> = sess
            .active
            .iter()
            .filter(|(_, (c, _))| *c == cid)
            .map(|(id, _)| id.clone())
            .collect();
        held.sort();
        for id in held.iter().rev() {
            if let Some((_, payload)) = sess.active.remove(id) {
                sess.assigned.remove(&job_key(&payload));
                sess.queue.push_front((id.clone(), payload));
                self.requeued += 1;
            }
        }
        sess.workers.retain(|c| *c != cid);
        if sess.workers.is_empty() && !sess.ui {
            self.sessions_deleted += 1;
            self.jobs_lost += sess.queue.len() + sess.active.len();
            self.sessions.remove(&code);
        } else if !sess.workers.is_empty() && !sess.queue.is_empty() {
            self.dispatch(&code);
        }
    }

    /// The coordinator's `handle_worker_result`.
    fn result(&mut self, cid: ConnId, v: &Value) {
        let Some(code) = self.conns.get(&cid).map(|c| c.code.clone()) else {
            return;
        };
        let id = v
            .get("job_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(sess) = self.sessions.get_mut(&code) else {
            return; // a code with no session: dropped silently
        };
        let (known, table) = match sess.active.remove(&id) {
            Some((holder, payload)) => {
                sess.assigned.remove(&job_key(&payload));
                if let Some(c) = self.conns.get_mut(&holder) {
                    c.busy = c.busy.saturating_sub(1);
                }
                let table = payload
                    .get("table_name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| sess.table.clone());
                (true, table)
            }
            None => (false, sess.table.clone()),
        };
        if let Some(t) = &table {
            self.store(t, v);
        }
        self.received.push(Received {
            job_id: id,
            known,
            code: code.clone(),
            table,
            msg: v.clone(),
        });
        self.dispatch(&code);
    }

    fn store(&mut self, table: &str, msg: &Value) {
        if msg.get("status").and_then(Value::as_str) != Some("success") {
            return;
        }
        let Some(data) = msg.get("data") else { return };
        let (Some(yt), Some(vec)) = (
            data.get("youtube_id").and_then(Value::as_str),
            data.get("vector").and_then(Value::as_array),
        ) else {
            return;
        };
        let lower = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_lowercase()
        };
        let rows = self.stored.entry(table.to_string()).or_default();
        if rows.contains_key(yt)
            || !self
                .stored_titles
                .insert((table.to_string(), lower("artist"), lower("title")))
        {
            self.duplicates += 1;
            return; // the server's storage skips duplicates
        }
        rows.insert(
            yt.to_string(),
            vec.iter().filter_map(Value::as_f64).collect(),
        );
    }
}

/// A running mock; stops when dropped.
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cfg: Arc<MockConfig>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Mock {
    /// Starts the mock on 127.0.0.1 (port 0: any free port).
    pub fn start(cfg: MockConfig) -> Mock {
        Mock::try_start(cfg).expect("bind mock server")
    }

    /// Starts the mock, or says why its port could not be bound.
    pub fn try_start(cfg: MockConfig) -> std::io::Result<Mock> {
        let state = Arc::new(Mutex::new(State::default()));
        let cfg = Arc::new(cfg);
        let (rt, addr) = serve(&state, &cfg, cfg.port)?;
        Ok(Mock {
            addr,
            state,
            cfg,
            rt: Some(rt),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stops and starts again on the same port, as a restarted server whose database
    /// survives: queues and storage stay, every connection closes, and the jobs that
    /// were out with workers go back to the front of their queues.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        {
            let mut s = self.state();
            let mut requeued = 0;
            for sess in s.sessions.values_mut() {
                let mut out: Vec<(String, Value)> =
                    sess.active.drain().map(|(id, (_, p))| (id, p)).collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                sess.assigned.clear();
                sess.workers.clear();
                requeued += out.len();
                for job in out.into_iter().rev() {
                    sess.queue.push_front(job);
                }
            }
            s.requeued += requeued;
            s.conns.clear();
        }
        // The port was just freed; bind it again (a few tries: the OS may lag).
        let mut last = None;
        for _ in 0..50 {
            match serve(&self.state, &self.cfg, self.addr.port()) {
                Ok((rt, _)) => {
                    self.rt = Some(rt);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("cannot bind")))
    }

    /// Successful results storage skipped as already stored (deliveries twice).
    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `chaarfm-super` in connect mode against this mock, with [`MockConfig::code`] and
    /// `state` as its state dir; callers add the rest.
    pub fn worker(&self, state: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::binary());
        cmd.args([
            "--url",
            &self.base_url(),
            "--code",
            &self.cfg.code,
            "--state-dir",
        ])
        .arg(state);
        crate::machine_neutral(&mut cmd);
        cmd
    }

    /// Queues a job in the session of [`MockConfig::code`]; returns its id.
    pub fn add_job(&self, payload: Value) -> String {
        self.add_job_to(&self.cfg.code.clone(), payload)
    }

    /// Queues a job in `code`'s session (made if need be), and dispatches, as the UI's
    /// start does; returns its id.
    pub fn add_job_to(&self, code: &str, payload: Value) -> String {
        // Unique in the test process, across mocks, as the coordinator's uuids are.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("job-{n:04}-{}", std::process::id());
        let mut s = self.state();
        let sess = s.sessions.entry(code.to_string()).or_default();
        if let Some(t) = payload.get("table_name").and_then(Value::as_str) {
            sess.table = Some(t.to_string());
        }
        sess.queue.push_back((id.clone(), payload));
        s.dispatch(code);
        id
    }

    /// A download job for `/audio/<file>` on this mock.
    pub fn add_audio_job(&self, file: &str) -> String {
        self.add_audio_job_from(&self.base_url(), file)
    }

    /// A download job for `/audio/<file>` on the mock at `base` (a separate audio host,
    /// as YouTube is for ChaarFM: restarting this one leaves downloads alone).
    pub fn add_audio_job_from(&self, base: &str, file: &str) -> String {
        let url = format!("{base}/audio/{file}");
        self.add_job(
            json!({"artist": null, "title": null, "table_name": "tracks", "youtube_url": url}),
        )
    }

    /// A browser tab holds (or stops holding) the `/ingest` page of [`MockConfig::code`]'s
    /// session: while one does, the session outlives its worker connections.
    pub fn hold_ui(&self, held: bool) {
        let code = self.cfg.code.clone();
        let mut s = self.state();
        s.sessions.entry(code.clone()).or_default().ui = held;
        let gone = s
            .sessions
            .get(&code)
            .is_some_and(|x| !x.ui && x.workers.is_empty());
        if gone {
            s.sessions_deleted += 1;
            let lost = s
                .sessions
                .get(&code)
                .map_or(0, |x| x.queue.len() + x.active.len());
            s.jobs_lost += lost;
            s.sessions.remove(&code);
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// youtube_id -> stored vector, over every table.
    pub fn stored(&self) -> HashMap<String, Vec<f64>> {
        self.state()
            .stored
            .values()
            .flat_map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// Asserts that every corpus file with a reference vector is stored (under its
    /// file's stem, its youtube_id) within cosine 0.9999 of Essentia's, and that the
    /// files without one (too short) are not; prints each cosine.
    pub fn assert_stored_like_essentia(&self) {
        let stored = self.stored();
        for (name, r) in &crate::references() {
            let id = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
            match &r.vector {
                Some(want) => {
                    let got: Vec<f32> = stored
                        .get(id)
                        .unwrap_or_else(|| panic!("{name} not stored"))
                        .iter()
                        .map(|&x| x as f32)
                        .collect();
                    let c = crate::cosine(&got, want);
                    println!("{name:22} stored, cosine {c:.7}");
                    assert!(c >= 0.9999, "{name}: cosine {c}");
                }
                None => assert!(!stored.contains_key(id), "{name} should have failed"),
            }
        }
    }

    /// youtube_id -> stored vector in `table`.
    pub fn stored_in(&self, table: &str) -> HashMap<String, Vec<f64>> {
        self.state().stored.get(table).cloned().unwrap_or_default()
    }

    /// How many tracks are stored (without copying them, for polling loops).
    pub fn stored_len(&self) -> usize {
        self.state().stored.values().map(HashMap::len).sum()
    }

    /// Jobs queued in [`MockConfig::code`]'s session (0 when it has none).
    pub fn queued(&self) -> usize {
        self.state()
            .sessions
            .get(&self.cfg.code)
            .map_or(0, |s| s.queue.len())
    }

    /// Queues `n` YouTube jobs (`vid001`, `vid002`, ... in table `t`); returns their ids.
    pub fn add_youtube_jobs(&self, n: usize) -> Vec<String> {
        (1..=n)
            .map(|i| {
                self.add_job(
                    json!({"artist": "A", "title": format!("song {i}"), "table_name": "t",
                    "youtube_url": format!("https://www.youtube.com/watch?v=vid{i:03}")}),
                )
            })
            .collect()
    }

    /// Ids of the jobs queued in [`MockConfig::code`]'s session, in order.
    pub fn queued_ids(&self) -> Vec<String> {
        self.state()
            .sessions
            .get(&self.cfg.code)
            .map(|s| s.queue.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether `code` has a session now.
    pub fn has_session(&self, code: &str) -> bool {
        self.state().sessions.contains_key(code)
    }

    /// Worker connections open now in `code`'s session.
    pub fn workers(&self, code: &str) -> usize {
        self.state()
            .sessions
            .get(code)
            .map_or(0, |s| s.workers.len())
    }

    /// Sessions deleted because their last worker connection closed with no UI.
    pub fn sessions_deleted(&self) -> usize {
        self.state().sessions_deleted
    }

    /// Jobs (queued or in flight) that went with deleted sessions.
    pub fn jobs_lost(&self) -> usize {
        self.state().jobs_lost
    }

    /// Requests made to `/cut/<file>`.
    pub fn cut_requests(&self, file: &str) -> usize {
        self.state().cut_requests.get(file).copied().unwrap_or(0)
    }

    pub fn keepalive_hits(&self) -> usize {
        self.state().keepalive_hits
    }

    pub fn pongs(&self) -> usize {
        self.state().pongs
    }

    pub fn hellos(&self) -> usize {
        self.state().hellos
    }

    /// Handshakes that offered protocol 2 (`x-chaarfm-protocol`).
    pub fn offers(&self) -> usize {
        self.state().offers
    }

    pub fn connections(&self) -> usize {
        self.state().connections
    }

    /// Jobs put back in the queue so far (closed connections holding them, releases).
    pub fn requeued(&self) -> usize {
        self.state().requeued
    }

    /// Job ids the worker `release`d (protocol 2).
    pub fn released(&self) -> Vec<String> {
        self.state().released.clone()
    }

    /// From now on, worker connections neither read nor write, as a SIGSTOPped server.
    pub fn freeze(&self) {
        self.state().frozen = true;
    }

    /// Results with status "failed".
    pub fn failed(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.msg.get("status").and_then(Value::as_str) == Some("failed"))
            .collect()
    }

    /// Polls until `n` results with distinct job ids arrived, or `timeout`.
    pub fn wait_results(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || {
            let ids: HashSet<String> = self.received().into_iter().map(|r| r.job_id).collect();
            ids.len() >= n
        })
    }

    /// Stops serving: every connection closes, nothing more is accepted. Waits (at most
    /// 5 s) until the tasks holding the listener and the connections are dropped, so the
    /// port is free when this returns.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A runtime serving the mock on `port` (0: any free port).
fn serve(
    state: &Arc<Mutex<State>>,
    cfg: &Arc<MockConfig>,
    port: u16,
) -> std::io::Result<(tokio::runtime::Runtime, SocketAddr)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(TcpListener::bind(("127.0.0.1", port)))?;
    let addr = listener.local_addr()?;
    let (st, cfg) = (Arc::clone(state), Arc::clone(cfg));
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(handle(sock, Arc::clone(&st), Arc::clone(&cfg)));
        }
    });
    Ok((rt, addr))
}

/// A web page, as a misconfigured or hostile source serves one.
const PAGE: &str = "<!DOCTYPE html><html><head><title>Not here</title></head><body><h1>404</h1><p>The page you asked for is not here. Try the home page.</p></body></html>\n";

async fn handle(mut sock: TcpStream, st: Arc<Mutex<State>>, cfg: Arc<MockConfig>) {
    // Route on the request line without consuming it (the WebSocket handshake reads it).
    let mut head = [0u8; 512];
    let n = match tokio::time::timeout(Duration::from_secs(5), sock.peek(&mut head)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let line = String::from_utf8_lossy(&head[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    if path.starts_with("/ws/") {
        worker(sock, st, cfg).await;
        return;
    }
    let mut buf = vec![0u8; 8192];
    let _ = sock.read(&mut buf).await;
    let reply = |status: &str, ctype: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{ctype}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let audio_file = |name: &str| {
        let name = name.split('?').next().unwrap_or("").to_string();
        (!name.contains("..")).then(|| cfg.audio_dir.join(&name))
    };
    if path == "/api/keepalive" {
        st.lock().unwrap().keepalive_hits += 1;
        let _ = sock
            .write_all(&reply("200 OK", "", br#"{"ok": true}"#))
            .await;
    } else if path == "/huge.mp3" {
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(600)).await;
    } else if path == "/stall.mp3" {
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\nID3")
            .await;
        tokio::time::sleep(Duration::from_secs(600)).await;
    } else if path == "/trickle.mp3" {
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n")
            .await;
        for _ in 0..600 {
            if sock.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    } else if path == "/page.mp3" || path == "/page.html" {
        let ctype = if path.ends_with(".mp3") {
            "Content-Type: audio/mpeg\r\n"
        } else {
            "Content-Type: text/html; charset=utf-8\r\n"
        };
        let body = PAGE.repeat(5000);
        let _ = sock
            .write_all(&reply("200 OK", ctype, body.as_bytes()))
            .await;
    } else if let Some((cut, name)) = path
        .strip_prefix("/cut/")
        .map(|n| (true, n))
        .or_else(|| path.strip_prefix("/audio/").map(|n| (false, n)))
    {
        let cut_now = cut && {
            let mut s = st.lock().unwrap();
            let n = s.cut_requests.entry(name.to_string()).or_default();
            *n += 1;
            *n == 1
        };
        tokio::time::sleep(cfg.audio_delay).await;
        match audio_file(name).map(std::fs::read) {
            Some(Ok(bytes)) if cut_now => {
                // Announce it all, send a third, and close: a cut connection.
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&bytes[..bytes.len() / 3]).await;
            }
            Some(Ok(bytes)) => {
                let _ = sock.write_all(&reply("200 OK", "", &bytes)).await;
            }
            _ => {
                let _ = sock
                    .write_all(&reply("404 Not Found", "", b"not found"))
                    .await;
            }
        }
    } else {
        let _ = sock
            .write_all(&reply("404 Not Found", "", b"not found"))
            .await;
    }
}

async fn worker(sock: TcpStream, st: Arc<Mutex<State>>, cfg: Arc<MockConfig>) {
    let code = Arc::new(Mutex::new(None::<String>));
    let seen = Arc::clone(&code);
    let only = cfg.refuse_other_codes.then(|| cfg.code.clone());
    let announce = cfg.protocol2.is_some() && cfg.announce;
    let offers = Arc::clone(&st);
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path().to_string();
        let c = path
            .strip_prefix("/ws/remote/")
            .and_then(|r| r.strip_suffix("/worker"))
            .filter(|c| !c.is_empty() && !c.contains('/'))
            .map(str::to_string);
        match c {
            Some(c) if only.as_ref().is_none_or(|o| *o == c) => {
                *seen.lock().unwrap() = Some(c);
                let offered = announces_protocol2(
                    req.headers()
                        .get(PROTOCOL_HEADER)
                        .and_then(|v| v.to_str().ok()),
                );
                let mut resp = resp;
                if offered {
                    offers.lock().unwrap().offers += 1;
                    if announce {
                        resp.headers_mut()
                            .insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL));
                    }
                }
                Ok(resp)
            }
            _ => {
                let mut e = ErrorResponse::new(Some("unknown pairing code".into()));
                *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
                Err(e)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
        return;
    };
    let Some(code) = code.lock().unwrap().clone() else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    if cfg.garbage {
        let big = format!(
            "{{\"type\":\"noise\",\"pad\":\"{}\"}}",
            "x".repeat(10 * 1024 * 1024)
        );
        for m in [
            "this is not json",
            r#"{"type":"surprise","x":1}"#,
            &big,
            r#"{"type":"job","payload":{"youtube_url":"http://x/y.mp3"}}"#,
            r#"{"type":"ping"}"#,
        ] {
            if tx.send(Message::text(m)).await.is_err() {
                return;
            }
        }
    }
    let (out, mut out_rx) = mpsc::unbounded_channel();
    let cid = st.lock().unwrap().connect(&code, out);
    let opened = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        if cfg.drop_after.is_some_and(|d| opened.elapsed() >= d) {
            break;
        }
        if st.lock().unwrap().frozen {
            // What was dispatched before the freeze is on its way (in the socket's
            // buffers, for a stopped process); then neither read nor write until the
            // runtime is shut down.
            while let Ok(msg) = out_rx.try_recv() {
                let _ = tx.send(msg).await;
            }
            std::future::pending::<()>().await;
        }
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                let mut s = st.lock().unwrap();
                match v.get("type").and_then(Value::as_str) {
                    Some("hello") => {
                        s.hellos += 1;
                        if let Some(m) = cfg.protocol2 {
                            let slots = m.max(1);
                            if let Some(c) = s.conns.get_mut(&cid) {
                                c.slots = slots;
                                let w = json!({"type": "welcome", "protocol": 2, "slots": slots});
                                let _ = c.out.send(Message::text(w.to_string()));
                            }
                            s.dispatch(&code);
                        }
                    }
                    Some("pong") => s.pongs += 1,
                    Some("pause") if cfg.protocol2.is_some() => {
                        if let Some(c) = s.conns.get_mut(&cid) {
                            c.paused = true;
                        }
                    }
                    Some("resume") if cfg.protocol2.is_some() => {
                        if let Some(c) = s.conns.get_mut(&cid) {
                            c.paused = false;
                        }
                        s.dispatch(&code);
                    }
                    Some("release") if cfg.protocol2.is_some() => {
                        let id = v.get("job_id").and_then(Value::as_str).unwrap_or("").to_string();
                        let mine = s
                            .sessions
                            .get(&code)
                            .is_some_and(|x| x.active.get(&id).is_some_and(|(c, _)| *c == cid));
                        if mine {
                            s.released.push(id.clone());
                            s.requeue_front(&code, vec![id]);
                            s.dispatch(&code);
                        }
                    }
                    Some("result") => {
                        s.result(cid, &v);
                        if cfg.protocol2.is_some() && cfg.ack {
                            let id = v.get("job_id").cloned().unwrap_or(Value::Null);
                            if let Some(c) = s.conns.get(&cid) {
                                let ack = json!({"type": "ack", "job_id": id});
                                let _ = c.out.send(Message::text(ack.to_string()));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(msg) = out_rx.recv() => {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {}
        }
    }
    // The connection closed: its jobs go back to the front of the queue.
    st.lock().unwrap().disconnect(cid);
    let _ = tx.close().await;
}
