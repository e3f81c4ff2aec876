//! A mock ChaarFM server on loopback, with the semantics of `../shared/PROTOCOL.md`:
//! one job per connection at a time, a closed connection's job back to the front of the
//! queue, results for unknown ids still stored, no two jobs with one key out at once,
//! storage that skips duplicates by youtube_id and by (artist, title). Optionally it
//! speaks protocol 2 (welcome + acks, several jobs outstanding per connection).
//!
//! The same port serves HTTP: `/api/keepalive`, `/audio/<file>` from a folder, `/huge.mp3`
//! (announces 10 GB), `/stall.mp3` (sends a little, then nothing), and 404 otherwise.
//! Knobs make it drop connections, send garbage, oversized and unknown messages, and ping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub code: String,
    /// `Some(slots)`: answer `hello` with a protocol-2 welcome.
    pub protocol2: Option<usize>,
    pub audio_dir: PathBuf,
    /// Close every worker connection this long after it opened.
    pub drop_after: Option<Duration>,
    /// On each connection, first send garbage: not JSON, an unknown type, a 10 MB message,
    /// a job without id, and a ping.
    pub garbage: bool,
    /// With protocol 2: acknowledge results (off: results stay in the worker's outbox).
    pub ack: bool,
    pub port: u16,
}

impl MockConfig {
    pub fn new(audio_dir: PathBuf) -> Self {
        Self {
            code: "TEST42".into(),
            protocol2: None,
            audio_dir,
            drop_after: None,
            garbage: false,
            ack: true,
            port: 0,
        }
    }
}

/// A result as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub job_id: String,
    /// Whether the id was one the mock had handed out on that connection.
    pub known: bool,
    pub msg: Value,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(String, Value)>,
    /// Keys of jobs out with workers.
    out_keys: HashSet<String>,
    /// Jobs out with workers, by id: a restarted server puts them back in the queue.
    assigned: HashMap<String, Value>,
    /// Successful results that storage skipped because that track was stored already
    /// (a result delivered twice).
    duplicates: usize,
    received: Vec<Received>,
    /// Storage: youtube_id -> vector, with (artist, title) dedupe as the server does.
    stored: HashMap<String, Vec<f64>>,
    stored_titles: HashSet<(String, String)>,
    keepalive_hits: usize,
    pongs: usize,
    hellos: usize,
    connections: usize,
    next_id: u64,
    /// Jobs put back in the queue: a connection closed holding them, or `release`d.
    requeued: usize,
    released: Vec<String>,
    /// Frozen: connections neither read nor write (a SIGSTOPped server).
    frozen: bool,
}

fn job_key(payload: &Value) -> String {
    match payload.get("youtube_url").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => format!(
            "{}::{}",
            payload.get("artist").and_then(Value::as_str).unwrap_or(""),
            payload.get("title").and_then(Value::as_str).unwrap_or("")
        )
        .to_lowercase(),
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

    /// Stops and starts again on the same port, as a restarted server whose database
    /// survives: the queue and storage stay, every connection closes, and the jobs that
    /// were out with workers go back to the front of the queue.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        {
            let mut s = self.state.lock().unwrap();
            let out: Vec<(String, Value)> = s.assigned.drain().collect();
            s.out_keys.clear();
            s.requeued += out.len();
            for job in out {
                s.queue.push_front(job);
            }
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
        self.state.lock().unwrap().duplicates
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a job; returns its id.
    pub fn add_job(&self, payload: Value) -> String {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("job-{:04}-{}", s.next_id, std::process::id());
        s.queue.push_back((id.clone(), payload));
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

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// youtube_id -> stored vector.
    pub fn stored(&self) -> HashMap<String, Vec<f64>> {
        self.state.lock().unwrap().stored.clone()
    }

    /// How many tracks are stored (without copying them, for polling loops).
    pub fn stored_len(&self) -> usize {
        self.state.lock().unwrap().stored.len()
    }

    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    pub fn keepalive_hits(&self) -> usize {
        self.state.lock().unwrap().keepalive_hits
    }

    pub fn pongs(&self) -> usize {
        self.state.lock().unwrap().pongs
    }

    pub fn hellos(&self) -> usize {
        self.state.lock().unwrap().hellos
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Jobs put back in the queue so far (closed connections holding them, releases).
    pub fn requeued(&self) -> usize {
        self.state.lock().unwrap().requeued
    }

    /// Job ids the worker `release`d (protocol 2).
    pub fn released(&self) -> Vec<String> {
        self.state.lock().unwrap().released.clone()
    }

    /// From now on, worker connections neither read nor write, as a SIGSTOPped server.
    pub fn freeze(&self) {
        self.state.lock().unwrap().frozen = true;
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
    let reply = |status: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    if path == "/api/keepalive" {
        st.lock().unwrap().keepalive_hits += 1;
        let _ = sock.write_all(&reply("200 OK", br#"{"ok": true}"#)).await;
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
    } else if let Some(name) = path.strip_prefix("/audio/") {
        let name = name.split('?').next().unwrap_or("");
        let file = cfg.audio_dir.join(name);
        match (name.contains(".."), tokio::fs::read(&file).await) {
            (false, Ok(bytes)) => {
                let _ = sock.write_all(&reply("200 OK", &bytes)).await;
            }
            _ => {
                let _ = sock.write_all(&reply("404 Not Found", b"not found")).await;
            }
        }
    } else {
        let _ = sock.write_all(&reply("404 Not Found", b"not found")).await;
    }
}

fn take_job(st: &Mutex<State>) -> Option<(String, Value)> {
    let mut s = st.lock().unwrap();
    let pos = s
        .queue
        .iter()
        .position(|(_, p)| !s.out_keys.contains(&job_key(p)))?;
    let (id, payload) = s.queue.remove(pos)?;
    s.out_keys.insert(job_key(&payload));
    s.assigned.insert(id.clone(), payload.clone());
    Some((id, payload))
}

fn requeue_front(st: &Mutex<State>, jobs: Vec<(String, Value)>) {
    let mut s = st.lock().unwrap();
    s.requeued += jobs.len();
    for (id, payload) in jobs.into_iter().rev() {
        s.out_keys.remove(&job_key(&payload));
        s.assigned.remove(&id);
        s.queue.push_front((id, payload));
    }
}

fn store(s: &mut State, msg: &Value) {
    let Some(data) = msg.get("data") else { return };
    let (Some(yt), Some(vec)) = (
        data.get("youtube_id").and_then(Value::as_str),
        data.get("vector").and_then(Value::as_array),
    ) else {
        return;
    };
    let artist = data
        .get("artist")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let title = data
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    if s.stored.contains_key(yt) || !s.stored_titles.insert((artist, title)) {
        s.duplicates += 1;
        return; // the server's storage skips duplicates
    }
    s.stored.insert(
        yt.to_string(),
        vec.iter().filter_map(Value::as_f64).collect(),
    );
}

async fn worker(sock: TcpStream, st: Arc<Mutex<State>>, cfg: Arc<MockConfig>) {
    let expected = format!("/ws/remote/{}/worker", cfg.code);
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == expected {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("unknown pairing code".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
            Err(e)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
        return;
    };
    st.lock().unwrap().connections += 1;
    let (mut tx, mut rx) = ws.split();
    let opened = Instant::now();
    let mut slots = 1usize;
    let mut outstanding: Vec<(String, Value)> = Vec::new();
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
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut paused = false;
    loop {
        if cfg.drop_after.is_some_and(|d| opened.elapsed() >= d) {
            break;
        }
        if st.lock().unwrap().frozen {
            // Neither read nor write until the runtime is shut down.
            std::future::pending::<()>().await;
        }
        while outstanding.len() < slots && !paused {
            let Some((id, payload)) = take_job(&st) else {
                break;
            };
            let msg = json!({"type": "job", "job_id": id, "payload": payload}).to_string();
            outstanding.push((id, payload));
            if tx.send(Message::text(msg)).await.is_err() {
                requeue_front(&st, outstanding);
                return;
            }
        }
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v.get("type").and_then(Value::as_str) {
                    Some("hello") => {
                        st.lock().unwrap().hellos += 1;
                        if let Some(m) = cfg.protocol2 {
                            slots = m.max(1);
                            let w = json!({"type": "welcome", "protocol": 2, "slots": slots}).to_string();
                            if tx.send(Message::text(w)).await.is_err() { break; }
                        }
                    }
                    Some("pong") => st.lock().unwrap().pongs += 1,
                    Some("pause") => paused = true,
                    Some("resume") => paused = false,
                    Some("release") => {
                        let id = v.get("job_id").and_then(Value::as_str).unwrap_or("").to_string();
                        if let Some(i) = outstanding.iter().position(|(j, _)| *j == id) {
                            let job = outstanding.remove(i);
                            st.lock().unwrap().released.push(id);
                            requeue_front(&st, vec![job]);
                        }
                    }
                    Some("result") => {
                        let id = v.get("job_id").and_then(Value::as_str).unwrap_or("").to_string();
                        let known = if let Some(i) = outstanding.iter().position(|(j, _)| *j == id) {
                            let (_, payload) = outstanding.remove(i);
                            let mut s = st.lock().unwrap();
                            s.out_keys.remove(&job_key(&payload));
                            s.assigned.remove(&id);
                            true
                        } else {
                            false
                        };
                        {
                            let mut s = st.lock().unwrap();
                            s.received.push(Received { job_id: id.clone(), known, msg: v.clone() });
                            store(&mut s, &v);
                        }
                        if cfg.protocol2.is_some() && cfg.ack {
                            let ack = json!({"type": "ack", "job_id": id}).to_string();
                            if tx.send(Message::text(ack)).await.is_err() { break; }
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {}
        }
    }
    // The connection closed: its jobs go back to the front of the queue.
    requeue_front(&st, outstanding);
    let _ = tx.close().await;
}
