//! `GET /` with `--metrics`: the report (`server::report`) as one small HTML page, with
//! an inline SVG chart of tracks stored per hour over the last 24 hours. No script and
//! no external asset: it reloads itself every 30 s. Each figure carries an `id` (the
//! report's field name), so a test reads the page as a person sees it.

use super::report::{Report, State};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The per-hour chart: one bar per hour, the scale from the busiest hour.
fn chart(per_hour: &[u64]) -> String {
    const W: usize = 480;
    const H: usize = 120;
    let max = per_hour.iter().copied().max().unwrap_or(0).max(1);
    let n = per_hour.len().max(1);
    let step = W / n;
    let mut bars = String::new();
    for (i, v) in per_hour.iter().enumerate() {
        let h = (*v as f64 / max as f64 * (H - 20) as f64).round() as usize;
        let ago = n - 1 - i;
        bars.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"#3b7dd8\"><title>{v} track(s), {}</title></rect>",
            i * step + 1,
            H - 14 - h,
            step.saturating_sub(2),
            if ago == 0 { "this hour".to_string() } else { format!("{ago} h ago") }
        ));
    }
    format!(
        "<svg id=\"per_hour\" data-values=\"{}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"tracks stored per hour, last 24 hours\">{bars}<line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#888\"/><text x=\"0\" y=\"{H}\" font-size=\"11\">24 h ago</text><text x=\"{W}\" y=\"{H}\" font-size=\"11\" text-anchor=\"end\">now</text><text x=\"0\" y=\"10\" font-size=\"11\">max {max}/h</text></svg>",
        per_hour.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        y = H - 14,
    )
}

/// The page.
pub fn html(r: &Report) -> String {
    let (state, colour) = match r.state {
        State::Working => ("working", "#1a7f37"),
        State::Paused => ("paused", "#9a6700"),
        State::Disconnected => ("disconnected", "#cf222e"),
    };
    let reason = r
        .reason
        .as_deref()
        .map(|s| format!(": <span id=\"reason\">{}</span>", esc(s)))
        .unwrap_or_default();
    let row = |label: &str, id: &str, value: String| {
        format!(
            "<tr><th>{label}</th><td id=\"{id}\">{}</td></tr>",
            esc(&value)
        )
    };
    let failures: String = r
        .last_failures
        .iter()
        .rev()
        .map(|f| {
            format!(
                "<li><span class=\"when\">{}</span> {}: {}</li>",
                esc(&crate::clock::local_text(f.at)),
                esc(&f.job),
                esc(&f.reason)
            )
        })
        .collect();
    let rows = [
        row("tracks today", "tracks_today", r.tracks_today.to_string()),
        row("tracks in all", "tracks_total", r.tracks_total.to_string()),
        row("failed today", "failed_today", r.failed_today.to_string()),
        row("failed in all", "failed_total", r.failed_total.to_string()),
        row(
            "speed (x realtime)",
            "x_realtime",
            format!("{:.1}", r.x_realtime),
        ),
        row(
            "children alive",
            "children_alive",
            format!("{}/{}", r.children_alive, r.children),
        ),
        row("restarts", "restarts", r.restarts.to_string()),
        row("results in the outbox", "outbox", r.outbox.to_string()),
        row("yt-dlp", "ytdlp", super::report::ytdlp_text(r)),
        row("up for", "uptime", super::report::duration(r.uptime_s)),
    ]
    .concat();
    format!(
        "<!DOCTYPE html>
<html lang=\"en\"><head><meta charset=\"utf-8\">
<meta http-equiv=\"refresh\" content=\"30\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>chaarfm-super: {state}</title>
<style>body{{font:15px/1.4 system-ui,sans-serif;margin:2em;max-width:40em}}th{{text-align:left;font-weight:normal;color:#555;padding-right:1.5em}}td{{font-variant-numeric:tabular-nums}}#state{{color:{colour};font-weight:bold}}</style>
</head><body>
<h1>chaarfm-super {version}</h1>
<p><span id=\"state\">{state}</span>{reason} since <span id=\"since\" data-unix=\"{since_unix}\">{since}</span></p>
<table>{rows}</table>
<h2>Tracks stored per hour</h2>
{chart}
<h2>Last failures</h2>
<ul id=\"last_failures\">{failures}</ul>
<p><small>pid {pid}; this page reloads every 30 s; the same figures: <a href=\"/status.json\">/status.json</a>, <a href=\"/metrics\">/metrics</a></small></p>
</body></html>
",
        version = esc(&r.version),
        since_unix = r.since_unix,
        since = esc(&crate::clock::local_text(r.since_unix)),
        chart = chart(&r.per_hour),
        pid = r.pid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_the_report_escaped_and_has_no_script() {
        let r = super::super::report::example();
        let page = html(&r);
        for want in [
            "<meta http-equiv=\"refresh\" content=\"30\">",
            "<span id=\"state\">paused</span>: <span id=\"reason\">on battery (42%)</span>",
            "<td id=\"tracks_today\">312</td>",
            "<td id=\"tracks_total\">4210</td>",
            "<td id=\"x_realtime\">110.5</td>",
            "<td id=\"children_alive\">2/2</td>",
            "<td id=\"outbox\">3</td>",
            "no audio stream &lt;b&gt;",
            "data-values=\"0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\"",
        ] {
            assert!(page.contains(want), "{want:?} missing in:\n{page}");
        }
        assert_eq!(page.matches("<rect ").count(), 24);
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://")
        );
    }
}
