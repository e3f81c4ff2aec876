//! Local time, for the `hours` preference and "tracks done today": the system's time
//! zone with its DST rules (jiff reads the tz database; Windows bundles one).

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Minutes since local midnight at `t` in `tz`: wall-clock time, so a window such as
/// 22:00-07:00 follows the clock across a DST change.
pub fn minute_of_day(t: Timestamp, tz: &TimeZone) -> u16 {
    let c = t.to_zoned(tz.clone()).time();
    (c.hour() as u16) * 60 + c.minute() as u16
}

/// Unix time of the local midnight that began the day of `t` in `tz`.
pub fn midnight(t: Timestamp, tz: &TimeZone) -> i64 {
    t.to_zoned(tz.clone())
        .start_of_day()
        .map_or(t.as_second() - t.as_second().rem_euclid(86_400), |z| {
            z.timestamp().as_second()
        })
}

/// The system's time zone (UTC when it cannot be read).
pub fn system_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// Minutes since local midnight now.
pub fn local_minute() -> u16 {
    minute_of_day(Timestamp::now(), &system_zone())
}

/// Unix time of today's local midnight.
pub fn local_midnight() -> i64 {
    midnight(Timestamp::now(), &system_zone())
}

/// `unix` as local time for a person: `2026-12-02 13:04`.
pub fn local_text(unix: u64) -> String {
    local_format(unix, "%Y-%m-%d %H:%M")
}

/// `unix` in RFC 3339 with the local offset: `2026-12-02T13:04:05+01:00`.
pub fn local_rfc3339(unix: u64) -> String {
    local_format(unix, "%Y-%m-%dT%H:%M:%S%:z")
}

fn local_format(unix: u64, fmt: &str) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    t.to_zoned(system_zone()).strftime(fmt).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn local_minutes_follow_the_wall_clock_across_dst() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00.
        assert_eq!(minute_of_day(at("2026-03-29T00:30:00Z"), &berlin), 90); // 01:30 CET
        assert_eq!(minute_of_day(at("2026-03-29T01:00:00Z"), &berlin), 180); // 03:00 CEST
                                                                             // 2026-10-25: clocks go from 03:00 back to 02:00; 02:30 happens twice.
        assert_eq!(minute_of_day(at("2026-10-25T00:30:00Z"), &berlin), 150); // 02:30 CEST
        assert_eq!(minute_of_day(at("2026-10-25T01:30:00Z"), &berlin), 150); // 02:30 CET
        assert_eq!(minute_of_day(at("2026-10-25T02:00:00Z"), &berlin), 180); // 03:00 CET
                                                                             // A window 22:00-07:00 in Berlin time, around the spring change.
        let night: crate::prefs::settings::Hours = "22:00-07:00".parse().unwrap();
        assert!(night.contains(minute_of_day(at("2026-03-29T04:59:00Z"), &berlin))); // 06:59 CEST
        assert!(!night.contains(minute_of_day(at("2026-03-29T05:00:00Z"), &berlin))); // 07:00 CEST
        assert!(night.contains(minute_of_day(at("2026-03-28T05:59:00Z"), &berlin))); // 06:59 CET
                                                                                     // The 23-hour day starts at its own midnight.
        assert_eq!(
            midnight(at("2026-03-29T12:00:00Z"), &berlin),
            at("2026-03-28T23:00:00Z").as_second()
        );
        assert_eq!(
            midnight(at("2026-03-30T12:00:00Z"), &berlin),
            at("2026-03-29T22:00:00Z").as_second()
        );
    }
}
