//! The mock behaves as ChaarFM's coordinator does (`../shared/PROTOCOL.md`, "What the
//! server does with workers"), seen from raw WebSocket clients: one job per
//! connection, dispatch on connect and on result, a closed connection's job back to
//! the front, the session deleted with its queue when its last connection closes and
//! no UI holds it, results for unknown ids stored in the session's current table.

use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{corpus_dir, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

async fn connect(mock: &Mock, code: &str) -> Ws {
    let tcp = TcpStream::connect(mock.addr).await.unwrap();
    let url = format!("ws://{}/ws/remote/{code}/worker", mock.addr);
    tokio_tungstenite::client_async(url, tcp).await.unwrap().0
}

/// The next job id sent on `ws`, or `None` if none comes within `wait`.
async fn next_job(ws: &mut Ws, wait: Duration) -> Option<String> {
    let got = tokio::time::timeout(wait, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "job" {
                    return v["job_id"].as_str().map(str::to_string);
                }
            }
        }
        None
    })
    .await;
    got.ok().flatten()
}

async fn result(ws: &mut Ws, id: &str, yt: &str) {
    let v: Vec<f64> = vec![0.5; 200];
    let msg = json!({"type": "result", "job_id": id, "status": "success",
        "data": {"artist": yt, "title": yt, "youtube_id": yt, "vector": v, "source_url": null}});
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

fn job(mock: &Mock, n: u32) -> String {
    mock.add_job(json!({"artist": "A", "title": format!("t{n}"), "table_name": "tracks_a", "youtube_url": null}))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const SOON: Duration = Duration::from_secs(5);
const NOT_AT_ALL: Duration = Duration::from_millis(300);

#[test]
fn one_job_per_connection_dispatched_on_connect_and_on_result() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let (j1, j2, j3) = (job(&mock, 1), job(&mock, 2), job(&mock, 3));
    rt().block_on(async {
        let mut a = connect(&mock, "TEST42").await;
        assert_eq!(
            next_job(&mut a, SOON).await,
            Some(j1.clone()),
            "dispatched on connect"
        );
        assert_eq!(
            next_job(&mut a, NOT_AT_ALL).await,
            None,
            "one job at a time"
        );
        result(&mut a, &j1, "y1").await;
        assert_eq!(
            next_job(&mut a, SOON).await,
            Some(j2.clone()),
            "dispatched on result"
        );
        let mut b = connect(&mock, "TEST42").await;
        assert_eq!(next_job(&mut b, SOON).await, Some(j3.clone()));
        // a closes holding j2: it goes back to the front, but b is busy and nothing else
        // wakes the coordinator until b's result.
        mock.hold_ui(true);
        drop(a);
        assert!(wait_until(SOON, || mock.queued() == 1));
        result(&mut b, &j3, "y3").await;
        assert_eq!(
            next_job(&mut b, SOON).await,
            Some(j2.clone()),
            "the requeued job, first"
        );
    });
    let r = mock.received();
    assert!(r
        .iter()
        .all(|r| r.known && r.table.as_deref() == Some("tracks_a")));
}

#[test]
fn the_last_connection_closing_deletes_the_session_and_its_queue_unless_the_ui_holds_it() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    for n in 0..4 {
        job(&mock, n);
    }
    rt().block_on(async {
        let mut a = connect(&mock, "TEST42").await;
        assert!(next_job(&mut a, SOON).await.is_some());
        drop(a);
    });
    assert!(wait_until(SOON, || !mock.has_session("TEST42")));
    assert_eq!((mock.sessions_deleted(), mock.jobs_lost()), (1, 4));
    assert_eq!(mock.queued(), 0);
    // With the page open, the same close keeps the session and requeues the job.
    mock.hold_ui(true);
    let j = job(&mock, 9);
    rt().block_on(async {
        let mut a = connect(&mock, "TEST42").await;
        assert_eq!(next_job(&mut a, SOON).await, Some(j));
        drop(a);
    });
    assert!(wait_until(SOON, || mock.queued() == 1));
    assert!(mock.has_session("TEST42"));
    assert_eq!(mock.sessions_deleted(), 1);
}

#[test]
fn a_result_for_an_unknown_id_is_stored_in_the_sessions_current_table() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    mock.hold_ui(true);
    job(&mock, 1);
    let other = mock.add_job_to(
        "OTHER1",
        json!({"artist": "B", "title": "t", "table_name": "tracks_b", "youtube_url": null}),
    );
    rt().block_on(async {
        let mut a = connect(&mock, "TEST42").await;
        let j1 = next_job(&mut a, SOON).await.unwrap();
        // A result made for the other session arrives here: stored here all the same.
        result(&mut a, &other, "stray").await;
        result(&mut a, &j1, "mine").await;
        assert!(wait_until(SOON, || mock.received().len() == 2));
    });
    let stray = &mock.received()[0];
    assert!(!stray.known);
    assert_eq!(stray.table.as_deref(), Some("tracks_a"));
    assert!(mock.stored_in("tracks_a").contains_key("stray"));
    assert!(mock.stored_in("tracks_b").is_empty());
}
