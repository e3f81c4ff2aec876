//! What `chaarfm-super status` prints and the page at `GET /` shows: working, paused
//! (why, since when) or disconnected (since when); tracks today and in all, the last
//! failures, speed, children, the outbox, yt-dlp's age. One [`Report`], built from the
//! status line's figures and the record, so no two views disagree.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ctx::Ctx;
use super::hub::Hub;
use super::intake::Intake;
use super::record::Failure;
use super::status::snapshot;

/// What the worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Working,
    Paused,
    Disconnected,
}

/// The figures a person wants in the morning (`status --json` prints this object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub state: State,
    /// Why paused (`on battery (42%)`), or what a disconnected worker is doing.
    pub reason: Option<String>,
    /// When this state began: RFC 3339, local offset; and as unix time.
    pub since: String,
    pub since_unix: u64,
    pub tracks_today: u64,
    pub failed_today: u64,
    pub tracks_total: u64,
    pub failed_total: u64,
    /// The last failures (the track's fault), newest last.
    pub last_failures: Vec<Failure>,
    /// Audio embedded per second of this run.
    pub x_realtime: f64,
    pub children_alive: usize,
    pub children: usize,
    pub restarts: usize,
    /// Results waiting in the outbox for the server.
    pub outbox: usize,
    pub ytdlp_version: Option<String>,
    pub ytdlp_age_days: Option<i64>,
    /// Tracks stored in each of the last 24 hours, oldest first (the last: this hour).
    pub per_hour: Vec<u64>,
    pub uptime_s: u64,
    pub version: String,
    pub pid: u32,
}

/// The state and its reason, from whether a lane is connected and the intake.
pub fn state_of(connected: bool, intake: &Intake) -> (State, Option<String>) {
    if !connected {
        return (State::Disconnected, Some("connecting to ChaarFM".into()));
    }
    match intake.reason() {
        Some(r) => (State::Paused, Some(r.to_string())),
        None => (State::Working, None),
    }
}

/// What makes a new "since": the state and the pause's kind (not its changing figures).
fn key(connected: bool, intake: &Intake) -> String {
    let (state, _) = state_of(connected, intake);
    format!("{state:?}/{}", intake.label().unwrap_or(""))
}

/// Notes each change of state in the record, so "since" is when it began.
pub async fn track(ctx: Arc<Ctx>) {
    let mut intake = ctx.watch.intake.clone();
    let mut connected = ctx.watch.connected.clone();
    loop {
        let k = key(*connected.borrow_and_update(), &intake.borrow_and_update());
        ctx.record.mark(&k);
        tokio::select! {
            r = intake.changed() => if r.is_err() { return },
            r = connected.changed() => if r.is_err() { return },
        }
    }
}

/// The report now.
pub async fn build(ctx: &Ctx, hub: &Hub) -> Report {
    let s = snapshot(ctx, hub).await;
    let intake = ctx.watch.intake.borrow().clone();
    let (state, mut reason) = state_of(s.connected, &intake);
    if let (State::Paused, Intake::Preference(_), Some(p)) = (state, &intake, ctx.prefs.pause()) {
        reason = Some(p.reason); // its figures now, not at the pause
    }
    let since_unix = ctx.record.mark(&key(s.connected, &intake));
    let h = ctx.record.history();
    let now = crate::date::unix_now();
    let (tracks_today, failed_today) = h.today(crate::clock::local_midnight());
    let ytdlp_version = ytdlp_version(ctx).await;
    Report {
        state,
        reason,
        since: crate::clock::local_rfc3339(since_unix),
        since_unix,
        tracks_today,
        failed_today,
        tracks_total: h.done,
        failed_total: h.failed,
        last_failures: h.failures.clone(),
        x_realtime: if s.elapsed_s > 0.0 {
            s.audio_s / s.elapsed_s
        } else {
            0.0
        },
        children_alive: s.alive,
        children: s.children,
        restarts: s.restarts,
        outbox: s.outbox,
        ytdlp_age_days: ytdlp_version
            .as_deref()
            .and_then(|v| crate::date::version_age(v, crate::date::today())),
        ytdlp_version,
        per_hour: h.per_hour(now).to_vec(),
        uptime_s: s.elapsed_s as u64,
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    }
}

/// yt-dlp's version, asked at most once an hour (it may be updated while we run).
async fn ytdlp_version(ctx: &Ctx) -> Option<String> {
    let y = ctx.ytdlp.as_ref()?;
    let fresh = |c: &Option<(Instant, String)>| {
        c.as_ref()
            .filter(|(t, _)| t.elapsed().as_secs() < 3600)
            .map(|(_, v)| v.clone())
    };
    if let Some(v) = ctx.ytdlp_seen.lock().ok().and_then(|c| fresh(&c)) {
        return Some(v);
    }
    let v = y.version().await.ok()?;
    if let Ok(mut c) = ctx.ytdlp_seen.lock() {
        *c = Some((Instant::now(), v.clone()));
    }
    Some(v)
}

/// A duration for a person: `2 h 05 min`, `7 min`, `40 s`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The report as `status` prints it.
pub fn text(r: &Report, now: u64) -> String {
    let mut out = String::new();
    let ago = duration(now.saturating_sub(r.since_unix));
    let since = crate::clock::local_text(r.since_unix);
    let state = match r.state {
        State::Working => format!("working since {since} ({ago})"),
        State::Paused => format!(
            "paused since {since} ({ago}): {}",
            r.reason.as_deref().unwrap_or("")
        ),
        State::Disconnected => format!("disconnected since {since} ({ago})"),
    };
    out.push_str(&format!(
        "chaarfm-super {} (pid {}): {state}\n",
        r.version, r.pid
    ));
    out.push_str(&format!(
        "tracks:   {} today, {} in all; failed {} today, {} in all\n",
        r.tracks_today, r.tracks_total, r.failed_today, r.failed_total
    ));
    for f in r.last_failures.iter().rev() {
        out.push_str(&format!(
            "  failed {} {}: {}\n",
            crate::clock::local_text(f.at),
            f.job,
            f.reason
        ));
    }
    out.push_str(&format!(
        "speed:    {:.1}x realtime over {}\n",
        r.x_realtime,
        duration(r.uptime_s)
    ));
    out.push_str(&format!(
        "children: {}/{} alive, {} restart(s)\n",
        r.children_alive, r.children, r.restarts
    ));
    out.push_str(&format!(
        "outbox:   {} result(s) waiting for the server\n",
        r.outbox
    ));
    out.push_str(&format!("yt-dlp:   {}\n", ytdlp_text(r)));
    out
}

/// yt-dlp's version and age, as `status` and the page show them.
pub fn ytdlp_text(r: &Report) -> String {
    match (&r.ytdlp_version, r.ytdlp_age_days) {
        (Some(v), Some(d)) => format!("{v} ({d} days old)"),
        (Some(v), None) => v.clone(),
        (None, _) => "not found (only direct audio URLs can be downloaded)".into(),
    }
}

/// A report for tests of what shows it (`status`, the page).
#[cfg(test)]
pub fn example() -> Report {
    Report {
        state: State::Paused,
        reason: Some("on battery (42%)".into()),
        since: "2026-12-02T01:00:00+00:00".into(),
        since_unix: 1_796_000_000,
        tracks_today: 312,
        failed_today: 2,
        tracks_total: 4210,
        failed_total: 12,
        last_failures: vec![Failure {
            job: "j-7".into(),
            reason: "no audio stream <b>".into(),
            at: 1_795_990_000,
        }],
        x_realtime: 110.46,
        children_alive: 2,
        children: 2,
        restarts: 1,
        outbox: 3,
        ytdlp_version: Some("2026.10.26".into()),
        ytdlp_age_days: Some(37),
        per_hour: (0..24).collect(),
        uptime_s: 7500,
        version: "0.1.0".into(),
        pid: 4242,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::decide::Pause;

    #[test]
    fn the_state_is_disconnected_paused_or_working() {
        assert_eq!(state_of(false, &Intake::Open).0, State::Disconnected);
        assert_eq!(state_of(true, &Intake::Open), (State::Working, None));
        let battery = Intake::Preference(Pause {
            label: "battery",
            reason: "on battery (42%)".into(),
        });
        assert_eq!(
            state_of(true, &battery),
            (State::Paused, Some("on battery (42%)".into()))
        );
        // A new figure is not a new state; a new kind of pause is.
        let lower = Intake::Preference(Pause {
            label: "battery",
            reason: "on battery (41%)".into(),
        });
        assert_eq!(key(true, &battery), key(true, &lower));
        assert_ne!(
            key(true, &battery),
            key(true, &Intake::Paused("disk".into()))
        );
    }

    #[test]
    fn the_text_says_what_a_person_asks_in_the_morning() {
        let r = example();
        let t = text(&r, r.since_unix + 3 * 3600 + 120);
        for want in [
            "(pid 4242): paused since ",
            " (3 h 02 min): on battery (42%)\n",
            "tracks:   312 today, 4210 in all; failed 2 today, 12 in all\n",
            " j-7: no audio stream <b>\n",
            "speed:    110.5x realtime over 2 h 05 min\n",
            "children: 2/2 alive, 1 restart(s)\n",
            "outbox:   3 result(s) waiting for the server\n",
            "yt-dlp:   2026.10.26 (37 days old)\n",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"], "paused");
        assert_eq!(json["reason"], "on battery (42%)");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
