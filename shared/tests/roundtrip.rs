//! Every message that crosses a boundary, on generated values: IPC frames survive
//! encoding and any split of the byte stream; worker messages, outbox entries and
//! ingest records survive JSON; the server's job frames parse to what was sent; and no
//! input makes a parser panic. (Floats are generated as exact binary fractions, so the
//! JSON round-trips compare equal without depending on decimal rounding.)

use chaarfm_shared::ipc::{
    encode, ChildSpec, Device, Engine, FrameReader, FromChild, Job, JobError, JobOutput, Start,
    Timings, ToChild, WirePath,
};
use chaarfm_shared::record::{done_files, FileStamp, JsonPath, Record};
use chaarfm_shared::server::{
    parse_server, Destination, DownloadJob, GenreJob, Incoming, JobKind, JobResult, OutboxEntry,
    Outcome, ServerJob, TrackData, WorkerMsg,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn f32s(max: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((-4096i32..4096).prop_map(|i| i as f32 / 64.0), 0..max)
}

fn f64s() -> impl Strategy<Value = f64> {
    (0u32..1 << 20).prop_map(|i| f64::from(i) / 16.0)
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, quotes, backslashes and control characters included.
    any::<String>()
}

fn to_child() -> impl Strategy<Value = ToChild> {
    prop_oneof![
        (
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>()
        )
            .prop_map(|(id, path, tags)| ToChild::Job(Job {
                id,
                path: WirePath::from_bytes(path),
                tags
            })),
        Just(ToChild::Shutdown),
        (
            (any::<bool>(), any::<u32>(), any::<bool>()),
            (any::<usize>(), any::<usize>(), any::<i32>()),
            (prop::collection::vec(any::<u8>(), 0..64), any::<u32>()),
        )
            .prop_map(
                |((gpu, index, patch), (threads, batch, nice), (model, parent_pid))| {
                    ToChild::Start(Start {
                        spec: ChildSpec {
                            device: if gpu {
                                Device::Cuda(index)
                            } else {
                                Device::Cpu
                            },
                            threads,
                            batch,
                            engine: if patch { Engine::Patch } else { Engine::Shared },
                            nice,
                        },
                        model: WirePath::from_bytes(model),
                        parent_pid,
                    })
                }
            ),
    ]
}

fn job_output() -> impl Strategy<Value = JobOutput> {
    (
        (f32s(256), f32s(64), any::<u32>(), f64s()),
        (f64s(), f64s(), f64s(), f64s()),
        (any::<u64>(), f64s()),
        (prop::option::of(text()), prop::option::of(text())),
    )
        .prop_map(
            |(
                (vector, tags, patches, duration_s),
                (decode_ms, resample_ms, features_ms, infer_ms),
                (peak_rss_kib, wall_ms),
                (artist, title),
            )| JobOutput {
                vector,
                tags,
                patches,
                duration_s,
                timings: Timings {
                    decode_ms,
                    resample_ms,
                    features_ms,
                    infer_ms,
                },
                peak_rss_kib,
                wall_ms,
                artist,
                title,
            },
        )
}

fn from_child() -> impl Strategy<Value = FromChild> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), text(), text()).prop_map(
            |(protocol, pid, device, model_sha256)| FromChild::Hello {
                protocol,
                pid,
                device,
                model_sha256
            }
        ),
        text().prop_map(|message| FromChild::Fatal { message }),
        (any::<u64>(), f64s()).prop_map(|(id, audio_s)| FromChild::Progress { id, audio_s }),
        (any::<u64>(), job_output()).prop_map(|(id, output)| FromChild::Done { id, output }),
        (any::<u64>(), text()).prop_map(|(id, message)| FromChild::Failed {
            id,
            error: JobError { message }
        }),
        Just(FromChild::Heartbeat),
    ]
}

/// Feeds `bytes` to a reader in pieces cut at `cuts` (positions, any order) and takes
/// every message that comes out.
fn split_feed<T: for<'a> serde::Deserialize<'a>>(bytes: &[u8], cuts: &[usize]) -> Vec<T> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    for w in at.windows(2) {
        reader.feed(&bytes[w[0]..w[1]]);
        while let Some(msg) = reader.take().expect("a valid stream decodes") {
            out.push(msg);
        }
    }
    assert!(reader.is_empty(), "bytes left over after the last frame");
    out
}

fn job_id() -> impl Strategy<Value = String> {
    // Server ids are non-empty strings (numbers are accepted and become strings).
    "[A-Za-z0-9_:.-]{1,24}"
}

fn server_job() -> impl Strategy<Value = ServerJob> {
    let opt = || prop::option::of(text());
    let download = (opt(), opt(), opt(), opt()).prop_map(|(artist, title, table_name, url)| {
        JobKind::Download(DownloadJob {
            artist,
            title,
            table_name,
            youtube_url: url,
        })
    });
    let genre = (text(), prop::option::of(any::<u64>())).prop_map(|(genre, limit)| {
        JobKind::Genre(GenreJob {
            genre,
            limit,
            quality_config: None,
        })
    });
    (job_id(), prop_oneof![download, genre]).prop_map(|(job_id, kind)| ServerJob { job_id, kind })
}

/// A job frame as ChaarFM's server writes it (`../shared/PROTOCOL.md`).
fn server_frame(job: &ServerJob) -> String {
    let payload = match &job.kind {
        JobKind::Download(d) => serde_json::to_value(d).expect("serializable"),
        JobKind::Genre(g) => {
            let mut v = serde_json::to_value(g).expect("serializable");
            v["job_type"] = json!("fetch_genre");
            v
        }
    };
    json!({"type": "job", "job_id": job.job_id, "payload": payload}).to_string()
}

fn worker_msg() -> impl Strategy<Value = WorkerMsg> {
    let success = (
        job_id(),
        text(),
        text(),
        text(),
        f32s(256),
        prop::option::of(text()),
    )
        .prop_map(|(job_id, artist, title, youtube_id, vector, source_url)| {
            let data = TrackData {
                artist,
                title,
                youtube_id,
                vector,
                source_url,
            };
            WorkerMsg::Result(JobResult {
                job_id,
                outcome: Outcome::Success {
                    data: serde_json::to_value(data).expect("serializable"),
                },
            })
        });
    prop_oneof![
        (text(), any::<usize>(), any::<u32>()).prop_map(|(agent, slots, protocol)| {
            WorkerMsg::Hello {
                agent,
                slots,
                protocol,
            }
        }),
        Just(WorkerMsg::Pong),
        success,
        (job_id(), text()).prop_map(|(job_id, error)| WorkerMsg::Result(JobResult {
            job_id,
            outcome: Outcome::Failed { error }
        })),
        (job_id(), text()).prop_map(|(job_id, reason)| WorkerMsg::Release { job_id, reason }),
        text().prop_map(|reason| WorkerMsg::Pause { reason }),
        Just(WorkerMsg::Resume),
    ]
}

fn json_path() -> impl Strategy<Value = JsonPath> {
    prop_oneof![
        text().prop_map(JsonPath::Text),
        "[A-Za-z0-9+/]{0,16}".prop_map(|bytes| JsonPath::Bytes { bytes }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    let stamp =
        (any::<u64>(), any::<u64>()).prop_map(|(size, mtime_ns)| FileStamp { size, mtime_ns });
    prop_oneof![
        (json_path(), f32s(256), any::<u32>(), f64s(), stamp.clone()).prop_map(
            |(path, vector, patches, duration_s, file)| Record::Ok {
                path,
                vector,
                patches: patches as usize,
                duration_s,
                tags: None,
                file: Some(file),
            }
        ),
        (json_path(), text(), stamp).prop_map(|(path, error, file)| Record::Failed {
            path,
            error,
            file: Some(file),
        }),
    ]
}

/// Found by fuzzing `outbox_entry`: without serde_json's `float_roundtrip`, a long number
/// was read one ulp off, so an outbox entry read back, written and read again changed.
#[test]
fn fuzz_regression_outbox_number_read_back_exactly() {
    let text = br#"{"job_id":"7","lane":1,"msg":{"type":"result","job_id":"7","status":"success","data":{"vector":[0.5,555555555555555555555555555555551.0]}}}"#;
    let entry = OutboxEntry::parse(text).expect("parses");
    let again = serde_json::to_vec(&entry).expect("serializable");
    assert_eq!(OutboxEntry::parse(&again), Some(entry.clone()));
    let WorkerMsg::Result(JobResult {
        outcome: Outcome::Success { data },
        ..
    }) = &entry.msg
    else {
        panic!("not a success");
    };
    assert_eq!(data["vector"][1].as_f64(), Some(5.555_555_555_555_555_6e32));
}

proptest! {
    #[test]
    fn ipc_frames_survive_any_split_of_the_stream(
        down in prop::collection::vec(to_child(), 1..6),
        up in prop::collection::vec(from_child(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes: Vec<u8> = down.iter().flat_map(|m| encode(m).expect("encodes")).collect();
        prop_assert_eq!(split_feed::<ToChild>(&bytes, &cuts), down);
        let bytes: Vec<u8> = up.iter().flat_map(|m| encode(m).expect("encodes")).collect();
        prop_assert_eq!(split_feed::<FromChild>(&bytes, &cuts), up);
    }

    #[test]
    fn worker_messages_and_outbox_entries_survive_json(msg in worker_msg(), lane in 0usize..64) {
        let text = serde_json::to_string(&msg).expect("serializable");
        prop_assert_eq!(&serde_json::from_str::<WorkerMsg>(&text).expect("parses"), &msg);
        let dest = (lane % 2 == 0).then(|| Destination {
            server: "https://chaarfm.example".into(),
            code: "AB***".into(),
            id: format!("{lane:064x}"),
        });
        let entry = OutboxEntry { job_id: "j".into(), lane, msg, dest, made: Some(lane as u64) };
        let bytes = serde_json::to_vec(&entry).expect("serializable");
        prop_assert_eq!(OutboxEntry::parse(&bytes), Some(entry));
    }

    #[test]
    fn any_number_in_a_result_survives_the_outbox(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let entry = OutboxEntry {
            job_id: "7".into(),
            lane: 0,
            msg: WorkerMsg::Result(JobResult {
                job_id: "7".into(),
                outcome: Outcome::Success { data: json!({"vector": [x]}) },
            }),
            dest: None,
            made: None,
        };
        let bytes = serde_json::to_vec(&entry).expect("serializable");
        prop_assert_eq!(OutboxEntry::parse(&bytes), Some(entry));
    }

    #[test]
    fn server_job_frames_parse_to_what_was_sent(job in server_job()) {
        prop_assert_eq!(parse_server(&server_frame(&job)), Incoming::Job(job));
    }

    #[test]
    fn welcome_and_ack_frames_parse(protocol in any::<u32>(), slots in 1usize..1000, id in job_id()) {
        let welcome = json!({"type": "welcome", "protocol": protocol, "slots": slots}).to_string();
        prop_assert_eq!(parse_server(&welcome), Incoming::Welcome { protocol, slots });
        let ack = json!({"type": "ack", "job_id": id}).to_string();
        prop_assert_eq!(parse_server(&ack), Incoming::Ack { job_id: id });
    }

    #[test]
    fn ingest_records_are_found_again_on_resume(records in prop::collection::vec(record(), 0..8)) {
        let mut text = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut text, r).expect("serializable");
            text.push(b'\n');
        }
        for r in &records {
            let line = serde_json::to_string(r).expect("serializable");
            prop_assert_eq!(&serde_json::from_str::<Record>(&line).expect("parses"), r);
        }
        let done = done_files(&mut text.as_slice()).expect("reads");
        let want: std::collections::HashSet<_> = records
            .iter()
            .filter_map(|r| Some((r.path().clone(), r.file()?)))
            .collect();
        prop_assert_eq!(done, want);
    }

    #[test]
    fn no_input_makes_a_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_server(&String::from_utf8_lossy(&bytes));
        let _ = OutboxEntry::parse(&bytes);
        let _ = done_files(&mut bytes.as_slice());
        let mut reader = FrameReader::default();
        reader.feed(&bytes);
        while let Ok(Some(_)) = reader.take::<FromChild>() {}
        let _: Option<Value> = serde_json::from_slice(&bytes).ok();
    }
}
