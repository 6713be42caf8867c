//! What the status page shows, rendered as strings by pure functions: the HTML page, the
//! 24-hour SVG timeline and the Prometheus text. No I/O and no clock reads: the time and
//! the local UTC offset come in as arguments, so every output is tested as text.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::health::{DirectionHealth, Health, Verdict};
use crate::history::{History, Point};

/// The page reloads itself this often.
pub const REFRESH_S: u32 = 20;
/// Minutes on the timeline.
pub const TIMELINE_MINUTES: usize = 24 * 60;

/// Everything the page needs.
pub struct View<'a> {
    pub site_name: &'a str,
    /// `None` until the health loop has produced its first health.
    pub health: Option<&'a Health>,
    pub history: &'a History,
    pub now: SystemTime,
    /// The box's local offset from UTC, seconds (times are shown in local time).
    pub utc_offset_s: i64,
    /// The state document's update block, when there is one.
    pub update: Option<&'a crate::updates::UpdateStatus>,
}

/// The running version and what the last update did, in one line.
pub fn software_words(update: Option<&crate::updates::UpdateStatus>) -> String {
    let mut out = format!("tether {}", crate::version::current());
    let Some(u) = update else {
        return out;
    };
    match u.state.as_str() {
        "on_trial" => out.push_str(", just updated: proving itself"),
        "downloading" => out.push_str(&format!(
            ", downloading {}",
            u.target.as_deref().unwrap_or("an update")
        )),
        "installing" | "restarting" => out.push_str(&format!(
            ", restarting into {}",
            u.target.as_deref().unwrap_or("an update")
        )),
        _ => {}
    }
    if let (Some(result), Some(version)) = (&u.last_result, &u.last_version) {
        out.push_str(&format!(
            "; last update: {version} {}",
            crate::updates::result_words(result)
        ));
    }
    if let Some(e) = &u.error {
        out.push_str(&format!(" ({e})"));
    }
    out
}

/// The LED colour of a verdict, as the page paints it.
pub fn colour(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::InSync | Verdict::CatchingUp => "#1e8e3e",
        Verdict::LinkDown => "#f29900",
        Verdict::NeedsAttention => "#d93025",
    }
}

/// The band colour of a minute on the timeline.
fn band_colour(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::InSync) => "#1e8e3e",
        Some(Verdict::CatchingUp) => "#81c995",
        Some(Verdict::LinkDown) => "#f29900",
        Some(Verdict::NeedsAttention) => "#d93025",
        None => "#dadce0",
    }
}

/// Escapes text for HTML and XML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM` in local time.
pub fn clock(unix: u64, utc_offset_s: i64) -> String {
    let local = (unix as i64 + utc_offset_s).rem_euclid(86_400);
    format!("{:02}:{:02}", local / 3600, local % 3600 / 60)
}

/// `YYYY-MM-DD HH:MM` in local time.
pub fn date_time(unix: u64, utc_offset_s: i64) -> String {
    let local = unix as i64 + utc_offset_s;
    let days = local.div_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {}", clock(unix, utc_offset_s))
}

/// "3 min ago", "2 h 5 min ago".
pub fn ago(seconds: u64) -> String {
    let d = match seconds {
        s if s < 60 => return "just now".into(),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    };
    format!("{d} ago")
}

/// A moment for people: local time, with how long ago (the date when not today).
fn moment(at: u64, now: u64, utc_offset_s: i64) -> String {
    let shown = if now.saturating_sub(at) < 20 * 3600 {
        clock(at, utc_offset_s)
    } else {
        date_time(at, utc_offset_s)
    };
    format!("{shown} ({})", ago(now.saturating_sub(at)))
}

fn direction_words(d: &DirectionHealth) -> String {
    let running = match (d.io_running, d.sql_running) {
        (Some(true), Some(true)) => "running",
        (_, Some(false)) => "stopped",
        // The SQL thread applies what arrived; the IO thread waits for the link.
        (_, Some(true)) => "reconnecting",
        (None, None) if d.last_error.is_empty() => "not set up",
        _ => "status unknown",
    }
    .to_owned();
    match d.lag_s {
        Some(lag) => format!("{running}, {lag} s behind"),
        None => running,
    }
}

/// The whole page.
pub fn html(view: &View) -> String {
    let now = unix_s(view.now);
    let off = view.utc_offset_s;
    let mut body = String::new();
    let (verdict_class, colour_hex, words) = match view.health {
        Some(h) => (h.verdict.as_str(), colour(h.verdict), h.verdict.headline()),
        None => ("starting", "#5f6368", "Starting"),
    };
    let text_colour = if view.health.is_some_and(|h| h.verdict == Verdict::LinkDown) {
        "#202124"
    } else {
        "#ffffff"
    };
    let _ = write!(
        body,
        "<header id=\"verdict\" class=\"verdict {verdict_class}\" style=\"background:{colour_hex};color:{text_colour}\">\
         <h1>{words}</h1>"
    );
    match view.health {
        Some(h) => {
            let _ = write!(
                body,
                "<p class=\"meaning\">{}</p><p class=\"since\">Since {}</p></header>",
                h.verdict.meaning(),
                moment(unix_s(h.since), now, off)
            );
            let _ = write!(
                body,
                "<section id=\"todo\"><h2>What to do</h2><p class=\"next\">{}</p>",
                h.verdict.next_step()
            );
            if !h.reasons.is_empty() && h.verdict != Verdict::InSync {
                body.push_str("<ul class=\"reasons\">");
                for r in &h.reasons {
                    let _ = write!(body, "<li>{}</li>", esc(r));
                }
                body.push_str("</ul>");
            }
            body.push_str("</section><section id=\"facts\"><h2>Details</h2><dl>");
            let last_sync = if h.verdict == Verdict::InSync {
                "now".to_owned()
            } else if view.history.last_in_sync_unix_s > 0 {
                moment(view.history.last_in_sync_unix_s, now, off)
            } else {
                "not seen yet".to_owned()
            };
            let _ = write!(
                body,
                "<dt>Last successful sync</dt><dd id=\"last-sync\">{last_sync}</dd>"
            );
            let link = match (h.tunnel.up, h.tunnel.since) {
                (true, Some(since)) => format!("up since {}", moment(unix_s(since), now, off)),
                (true, None) => "up".to_owned(),
                (false, _) => match &h.tunnel.last_error {
                    Some(e) => format!("down: {}", esc(e)),
                    None => "down".to_owned(),
                },
            };
            let _ = write!(
                body,
                "<dt>Link to the hub</dt><dd id=\"link\">{link}</dd>\
                 <dt>Reconnects</dt><dd>{}</dd>",
                h.tunnel.reconnects
            );
            let _ = write!(
                body,
                "<dt>Hub &rarr; office</dt><dd>{}</dd><dt>Office &rarr; hub</dt><dd>{}</dd>",
                esc(&direction_words(&h.replication.hub_to_office)),
                esc(&direction_words(&h.replication.office_to_hub))
            );
            let _ = write!(
                body,
                "<dt>Software</dt><dd id=\"software\">{}</dd>",
                esc(&software_words(view.update))
            );
            body.push_str("</dl></section>");
        }
        None => body.push_str(
            "<p class=\"meaning\">The agent has just started and has nothing to report yet.</p></header>",
        ),
    }
    let _ = write!(
        body,
        "<section id=\"day\"><h2>Last 24 hours</h2>{}\
         <p class=\"legend\"><span style=\"background:#1e8e3e\"></span>in sync \
         <span style=\"background:#81c995\"></span>catching up \
         <span style=\"background:#f29900\"></span>link down \
         <span style=\"background:#d93025\"></span>needs attention \
         <span style=\"background:#dadce0\"></span>box off<br>\
         second row: link outages; lines: lag <b style=\"color:#1a73e8\">hub &rarr; office</b> \
         and <b style=\"color:#9334e6\">office &rarr; hub</b></p></section>",
        timeline_svg(view.history, now, off)
    );
    let _ = write!(
        body,
        "<footer>{} &middot; updated {} &middot; tether {} &middot; \
         <a href=\"/status.json\">status.json</a> &middot; <a href=\"/metrics\">metrics</a></footer>",
        esc(view.site_name),
        date_time(now, off),
        crate::version::current()
    );
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>{words} &middot; {} &middot; tether</title><style>{STYLE}</style></head>\
         <body>{body}</body></html>",
        esc(view.site_name)
    )
}

const STYLE: &str = "\
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#202124;background:#fff;line-height:1.4}\
.verdict{padding:1.2rem 1rem}\
.verdict h1{font-size:3rem;margin:0;line-height:1.1}\
.verdict p{margin:.4rem 0 0;font-size:1.15rem}\
section{padding:.4rem 1rem}\
h2{font-size:1.1rem;margin:.8rem 0 .3rem;color:#3c4043}\
.next{font-size:1.3rem;font-weight:600;margin:.2rem 0}\
.reasons li{font-size:1.1rem;margin:.3rem 0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}\
dt{color:#5f6368}dd{margin:0}\
svg{width:100%;height:auto;display:block}\
.legend{font-size:.85rem;color:#5f6368}\
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .2em 0 .6em;vertical-align:middle}\
footer{padding:1rem;font-size:.85rem;color:#5f6368}\
a{color:#1a73e8}";

/// Runs of equal values: (first index, last index, value).
fn runs<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Vec<(usize, usize, T)> {
    let mut out: Vec<(usize, usize, T)> = Vec::new();
    for (i, v) in items.enumerate() {
        match out.last_mut() {
            Some((_, end, last)) if *last == v && *end + 1 == i => *end = i,
            _ => out.push((i, i, v)),
        }
    }
    out
}

/// Viewbox width: two minutes a unit.
const W: f64 = 720.0;
const BAND_Y: f64 = 0.0;
const BAND_H: f64 = 30.0;
const OUT_Y: f64 = 36.0;
const OUT_H: f64 = 14.0;
const LAG_Y: f64 = 58.0;
const LAG_H: f64 = 130.0;
const AXIS_Y: f64 = 214.0;
const H: f64 = 222.0;

/// The last 24 hours as SVG: verdict bands, link outages (one `rect.outage` per outage
/// with `data-from`/`data-to` in Unix seconds), and lag per direction. Pure.
pub fn timeline_svg(history: &History, now_unix: u64, utc_offset_s: i64) -> String {
    let end_minute = (now_unix / 60) as u32;
    let points = history.window(end_minute, TIMELINE_MINUTES);
    let first_minute = u64::from(end_minute) + 1 - TIMELINE_MINUTES as u64;
    let x = |i: usize| i as f64 * W / TIMELINE_MINUTES as f64;
    let minute_unix = |i: usize| (first_minute + i as u64) * 60;
    let span = |a: usize, b: usize| {
        format!(
            "{}&#8211;{}",
            clock(minute_unix(a), utc_offset_s),
            clock(minute_unix(b + 1), utc_offset_s)
        )
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"The last 24 hours\" font-family=\"sans-serif\" font-size=\"20\">"
    );
    svg.push_str("<g class=\"bands\">");
    for (a, b, v) in runs(points.iter().map(Point::verdict)) {
        let name = v.map(Verdict::headline).unwrap_or("Box off");
        let _ = write!(
            svg,
            "<rect class=\"band {}\" x=\"{:.1}\" y=\"{BAND_Y}\" width=\"{:.1}\" height=\"{BAND_H}\" fill=\"{}\"><title>{name} {}</title></rect>",
            v.map(Verdict::as_str).unwrap_or("no_data"),
            x(a),
            x(b + 1) - x(a),
            band_colour(v),
            span(a, b)
        );
    }
    svg.push_str("</g><g class=\"outages\">");
    let _ = write!(
        svg,
        "<rect x=\"0\" y=\"{OUT_Y}\" width=\"{W}\" height=\"{OUT_H}\" fill=\"#f1f3f4\"/>"
    );
    for (a, b, down) in runs(points.iter().map(|p| p.down_s > 0)) {
        if !down {
            continue;
        }
        let seconds: u64 = points[a..=b].iter().map(|p| u64::from(p.down_s)).sum();
        // At least 2 units wide, so a one-minute outage shows on a phone.
        let width = (x(b + 1) - x(a)).max(2.0);
        let _ = write!(
            svg,
            "<rect class=\"outage\" data-from=\"{}\" data-to=\"{}\" x=\"{:.1}\" y=\"{OUT_Y}\" width=\"{width:.1}\" height=\"{OUT_H}\" fill=\"#d93025\"><title>Link down {} ({seconds} s)</title></rect>",
            minute_unix(a),
            minute_unix(b + 1),
            x(a).min(W - width),
            span(a, b)
        );
    }
    svg.push_str("</g><g class=\"lag\">");
    let max_lag = points
        .iter()
        .flat_map(|p| [p.lag(0), p.lag(1)])
        .flatten()
        .max()
        .unwrap_or(0);
    let scale = nice_ceiling(u64::from(max_lag).max(10));
    let _ = write!(
        svg,
        "<rect x=\"0\" y=\"{LAG_Y}\" width=\"{W}\" height=\"{LAG_H}\" fill=\"#f8f9fa\"/>\
         <text x=\"4\" y=\"{}\" fill=\"#5f6368\">lag, up to {scale} s</text>",
        LAG_Y + 20.0
    );
    for (dir, (name, colour)) in [("hub_to_office", "#1a73e8"), ("office_to_hub", "#9334e6")]
        .into_iter()
        .enumerate()
    {
        let y = |lag: u16| LAG_Y + LAG_H - (f64::from(lag) / scale as f64).min(1.0) * LAG_H;
        for (a, b, known) in runs(points.iter().map(|p| p.lag(dir).is_some())) {
            if !known {
                continue;
            }
            // A step line with a vertex pair only where the lag changes: a steady day
            // is a handful of points, not 2880.
            let lag_at = |i: usize| points[i].lag(dir).unwrap_or(0);
            let mut line = format!("{:.1},{:.1} ", x(a), y(lag_at(a)));
            for i in a + 1..=b {
                if lag_at(i) != lag_at(i - 1) {
                    let _ = write!(
                        line,
                        "{:.1},{:.1} {:.1},{:.1} ",
                        x(i),
                        y(lag_at(i - 1)),
                        x(i),
                        y(lag_at(i))
                    );
                }
            }
            let _ = write!(line, "{:.1},{:.1}", x(b + 1), y(lag_at(b)));
            let _ = write!(
                svg,
                "<polyline class=\"lag {name}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                line
            );
        }
    }
    svg.push_str("</g><g class=\"axis\" fill=\"#5f6368\">");
    for (i, label) in ["24 h ago", "18 h", "12 h", "6 h", "now"]
        .iter()
        .enumerate()
    {
        let xi = W * i as f64 / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<line x1=\"{xi}\" x2=\"{xi}\" y1=\"{}\" y2=\"{}\" stroke=\"#bdc1c6\"/>\
             <text x=\"{xi}\" y=\"{AXIS_Y}\" text-anchor=\"{anchor}\">{label}</text>",
            BAND_Y,
            LAG_Y + LAG_H
        );
    }
    svg.push_str("</g></svg>");
    svg
}

/// 10, 20, 50, 100, 200, 500, ... at or above `v`.
fn nice_ceiling(v: u64) -> u64 {
    let mut base = 10u64;
    loop {
        for m in [1, 2, 5] {
            if base * m >= v {
                return base * m;
            }
        }
        base = base.saturating_mul(10);
        if base == u64::MAX {
            return v;
        }
    }
}

/// Prometheus text exposition (version 0.0.4).
pub fn metrics(health: Option<&Health>, history: &History, uptime: Duration) -> String {
    let mut m = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let verdict = family(
        "tether_verdict",
        "gauge",
        "1 for the current verdict, 0 for the others.",
    );
    let mut lines = Vec::new();
    for v in Verdict::ALL {
        let on = health.is_some_and(|h| h.verdict == v);
        lines.push(format!(
            "{verdict}{{verdict=\"{}\"}} {}",
            v.as_str(),
            u8::from(on)
        ));
    }
    let up = family(
        "tether_tunnel_up",
        "gauge",
        "1 while the SSH link to the hub is up.",
    );
    lines.push(format!(
        "{up} {}",
        u8::from(health.is_some_and(|h| h.tunnel.up))
    ));
    let reconnects = family(
        "tether_tunnel_reconnects_total",
        "counter",
        "SSH sessions established after the first one.",
    );
    lines.push(format!(
        "{reconnects} {}",
        health.map(|h| h.tunnel.reconnects).unwrap_or(0)
    ));
    let outage = family(
        "tether_link_outage_seconds_total",
        "counter",
        "Seconds the link to the hub was down, as recorded in the history.",
    );
    lines.push(format!("{outage} {}", history.total_down_s));
    let lag = family(
        "tether_replication_lag_seconds",
        "gauge",
        "True replication lag per direction (absent while unknown).",
    );
    let running = family(
        "tether_replication_running",
        "gauge",
        "1 while both replication threads of a direction run.",
    );
    if let Some(h) = health {
        for (name, d) in [
            ("hub_to_office", &h.replication.hub_to_office),
            ("office_to_hub", &h.replication.office_to_hub),
        ] {
            if let Some(l) = d.lag_s {
                lines.push(format!("{lag}{{direction=\"{name}\"}} {l}"));
            }
            let both = d.io_running == Some(true) && d.sql_running == Some(true);
            lines.push(format!(
                "{running}{{direction=\"{name}\"}} {}",
                u8::from(both)
            ));
        }
    }
    let last = family(
        "tether_last_in_sync_timestamp_seconds",
        "gauge",
        "The last moment everything was in sync (Unix time; 0 never).",
    );
    lines.push(format!("{last} {}", history.last_in_sync_unix_s));
    let up_s = family(
        "tether_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    lines.push(format!("{up_s} {}", uptime.as_secs()));
    // The families' HELP/TYPE lines first, then the samples, grouped per family.
    let mut out = String::new();
    for block in m.split("# HELP ").filter(|b| !b.is_empty()) {
        let name = block.split_whitespace().next().unwrap_or_default();
        out.push_str("# HELP ");
        out.push_str(block);
        for l in &lines {
            if l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{ReplicationHealth, TunnelHealth};
    use crate::history::Sample;

    const NOW: u64 = 1_800_000_000 / 60 * 60 + 30;

    fn health(verdict: Verdict, reasons: &[&str]) -> Health {
        Health {
            verdict,
            since: UNIX_EPOCH + Duration::from_secs(NOW - 300),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            tunnel: TunnelHealth {
                up: verdict != Verdict::LinkDown,
                since: Some(UNIX_EPOCH + Duration::from_secs(NOW - 3600)),
                reconnects: 2,
                last_error: None,
            },
            replication: ReplicationHealth {
                hub_to_office: DirectionHealth {
                    io_running: Some(true),
                    sql_running: Some(true),
                    lag_s: Some(1),
                    ..Default::default()
                },
                office_to_hub: DirectionHealth::default(),
            },
        }
    }

    /// An hour in sync, a 3-minute cut 30 minutes ago, lag 0..5 s.
    fn day() -> History {
        let mut h = History::new();
        for s in (NOW - 3600)..=NOW {
            let cut = (NOW - 1800..NOW - 1620).contains(&s);
            h.observe(
                s,
                &Sample {
                    verdict: if cut {
                        Verdict::LinkDown
                    } else {
                        Verdict::InSync
                    },
                    tunnel_up: !cut,
                    lag_s: [(!cut).then_some(s % 6), (!cut).then_some(0)],
                },
            );
        }
        h
    }

    fn view<'a>(h: Option<&'a Health>, history: &'a History) -> View<'a> {
        View {
            site_name: "Main <office>",
            health: h,
            history,
            now: UNIX_EPOCH + Duration::from_secs(NOW),
            utc_offset_s: 3600,
            update: None,
        }
    }

    #[test]
    fn needs_attention_says_whom_to_call_and_what_to_tell_them() {
        let h = health(
            Verdict::NeedsAttention,
            &["Replication stopped on a duplicate key in table `orders` <key 'A-7'>."],
        );
        let hist = day();
        let page = html(&view(Some(&h), &hist));
        assert!(page.contains("<h1>Needs attention</h1>"), "{page}");
        assert!(page.contains("background:#d93025"));
        assert!(page.contains("Call IT and tell them:"));
        assert!(page.contains("duplicate key in table `orders` &lt;key &#39;A-7&#39;&gt;"));
        assert!(page.contains("Main &lt;office&gt;"));
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(page.contains("name=\"viewport\""));
        // Since 5 minutes ago, shown in local time (UTC+1).
        assert!(
            page.contains(&format!("Since {} (5 min ago)", clock(NOW - 300, 3600))),
            "{page}"
        );
        assert!(!page.contains("<script"), "no JavaScript");
    }

    #[test]
    fn in_sync_and_link_down_and_starting() {
        let hist = day();
        let ok = health(Verdict::InSync, &[]);
        let page = html(&view(Some(&ok), &hist));
        assert!(page.contains("<h1>In sync</h1>") && page.contains("Nothing to do."));
        assert!(page.contains("id=\"last-sync\">now<"));
        let down = health(Verdict::LinkDown, &["The hub cannot be reached."]);
        let page = html(&view(Some(&down), &hist));
        assert!(page.contains("background:#f29900;color:#202124"));
        assert!(page.contains("Check the office Internet connection"));
        assert!(page.contains("<li>The hub cannot be reached.</li>"));
        assert!(
            page.contains(&format!("id=\"last-sync\">{} (", clock(NOW, 3600))),
            "{page}"
        );
        let page = html(&view(None, &hist));
        assert!(page.contains("<h1>Starting</h1>"));
    }

    #[test]
    fn the_timeline_shows_the_cut_as_one_outage_and_bands_for_each_verdict() {
        let svg = timeline_svg(&day(), NOW, 0);
        assert_eq!(svg.matches("class=\"outage\"").count(), 1, "{svg}");
        let from = NOW / 60 * 60 - 1800 - 30 + 30;
        assert!(
            svg.contains(&format!("data-from=\"{from}\" data-to=\"{}\"", from + 240)),
            "{svg}"
        );
        assert!(svg.contains("(180 s)"), "{svg}");
        assert!(svg.contains("class=\"band no_data\""));
        assert_eq!(svg.matches("class=\"band link_down\"").count(), 1);
        assert_eq!(svg.matches("class=\"band in_sync\"").count(), 2);
        // Lag lines break at the outage: two runs per direction.
        assert_eq!(svg.matches("class=\"lag hub_to_office\"").count(), 2);
        assert!(svg.contains("lag, up to 10 s"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn a_steady_lag_is_a_short_line() {
        let mut h = History::new();
        for s in (NOW - 86_400)..=NOW {
            h.observe(
                s,
                &Sample {
                    verdict: Verdict::InSync,
                    tunnel_up: true,
                    lag_s: [Some(0), Some(u64::from(s > NOW - 60))],
                },
            );
        }
        let svg = timeline_svg(&h, NOW, 0);
        assert!(svg.contains("points=\"0.0,188.0 720.0,188.0\""), "{svg}");
        // One step up for the last two minutes.
        assert!(
            svg.contains("719.0,188.0 719.0,175.0 720.0,175.0\""),
            "{svg}"
        );
        assert!(svg.len() < 4000, "{} bytes", svg.len());
    }

    #[test]
    fn an_empty_history_is_one_grey_band() {
        let svg = timeline_svg(&History::new(), NOW, 0);
        assert_eq!(svg.matches("<rect class=\"band").count(), 1);
        assert!(!svg.contains("class=\"outage\""));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let h = health(Verdict::InSync, &[]);
        let text = metrics(Some(&h), &day(), Duration::from_secs(42));
        for line in [
            "tether_verdict{verdict=\"in_sync\"} 1",
            "tether_verdict{verdict=\"link_down\"} 0",
            "tether_tunnel_up 1",
            "tether_tunnel_reconnects_total 2",
            "tether_link_outage_seconds_total 180",
            "tether_replication_lag_seconds{direction=\"hub_to_office\"} 1",
            "tether_replication_running{direction=\"office_to_hub\"} 0",
            "tether_uptime_seconds 42",
            "# TYPE tether_link_outage_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(!text.contains("tether_replication_lag_seconds{direction=\"office_to_hub\"}"));
        // Each family's samples follow its own HELP and TYPE.
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        let mut seen = names.clone();
        seen.dedup();
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen.len(), sorted.len(), "grouped: {text}");
    }

    #[test]
    fn replication_in_words() {
        let d = |io, sql, lag, err: &str| DirectionHealth {
            io_running: io,
            sql_running: sql,
            lag_s: lag,
            last_errno: 0,
            last_error: err.into(),
        };
        assert_eq!(
            direction_words(&d(Some(true), Some(true), Some(0), "")),
            "running, 0 s behind"
        );
        assert_eq!(
            direction_words(&d(Some(false), Some(true), Some(4), "")),
            "reconnecting, 4 s behind"
        );
        assert_eq!(
            direction_words(&d(Some(true), Some(false), None, "")),
            "stopped"
        );
        assert_eq!(direction_words(&d(None, None, None, "")), "not set up");
        assert_eq!(
            direction_words(&d(None, None, None, "status unknown: x")),
            "status unknown"
        );
    }

    #[test]
    fn times() {
        assert_eq!(date_time(0, 0), "1970-01-01 00:00");
        assert_eq!(date_time(1_709_210_096, 0), "2024-02-29 12:34");
        assert_eq!(date_time(1_709_210_096, -13 * 3600), "2024-02-28 23:34");
        assert_eq!(ago(30), "just now");
        assert_eq!(ago(7_500), "2 h 5 min ago");
        assert_eq!(nice_ceiling(10), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(4000), 5000);
    }
}
