//! The status page (`GET /status`): one server-rendered HTML document, readable on a
//! phone, that reloads itself (`<meta http-equiv="refresh">`) and needs no JavaScript.
//! Built from the status snapshot and the incident history only, so it can show
//! names, labels and numbers but never an upstream URL; every text is HTML-escaped.

use std::{fmt::Write as _, time::Duration};

use super::{ChainStatus, Snapshot, UpstreamStatus};
use crate::incidents::{Event, Incident, Incidents, Kind, Severity, Time, uptime::Bar};

/// Past incidents shown; older ones stay in `/api/v1/incidents`.
const PAST_SHOWN: usize = 50;

pub fn render(snapshot: &Snapshot, incidents: &Incidents, now: Time) -> String {
    let settings = incidents.settings();
    let all = incidents.list();
    let (open, past): (Vec<&Incident>, Vec<&Incident>) = all.iter().partition(|i| i.is_open());
    // Maintenance not started yet is announced apart, and does not colour the banner.
    let (scheduled, open): (Vec<&Incident>, Vec<&Incident>) =
        open.into_iter().partition(|i| i.is_scheduled(now));
    let mut h = String::with_capacity(64 * 1024);
    let title = esc(&settings.title);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>{title}</title>
<link rel="alternate" type="application/atom+xml" title="{title}: incidents" href="/feed.atom">
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<h1>{title}</h1>
<p class="muted">Updated {updated} · reloads every {refresh} s</p>
</header>
"#,
        refresh = settings.refresh_secs,
        updated = clock(now),
    );
    banner(&mut h, &open, snapshot);

    h.push_str("<section id=\"open\">\n<h2>Open incidents</h2>\n");
    if open.is_empty() {
        h.push_str("<p class=\"muted\">No open incidents.</p>\n");
    }
    for i in &open {
        incident(&mut h, i, now, true);
    }
    h.push_str("</section>\n");
    if !scheduled.is_empty() {
        h.push_str("<section id=\"scheduled\">\n<h2>Scheduled maintenance</h2>\n");
        for i in &scheduled {
            incident(&mut h, i, now, true);
        }
        h.push_str("</section>\n");
    }

    for chain in &snapshot.chains {
        chain_section(&mut h, chain, incidents, &open, now);
    }

    h.push_str("<section id=\"past\">\n<h2>Past incidents</h2>\n");
    if past.is_empty() {
        h.push_str("<p class=\"muted\">None recorded.</p>\n");
    }
    for i in past.iter().take(PAST_SHOWN) {
        incident(&mut h, i, now, false);
    }
    h.push_str(
        r#"</section>
<footer class="muted">
Outlast · JSON: <a href="/api/v1/status">status</a>, <a href="/api/v1/incidents">incidents</a> · <a href="/feed.atom">Atom feed</a> · <a href="/metrics">metrics</a>
</footer>
</main>
</body>
</html>
"#,
    );
    h
}

/// The one line that says how things are, in the colour of the worst open incident.
fn banner(h: &mut String, open: &[&Incident], snapshot: &Snapshot) {
    let worst = open.iter().map(|i| i.severity).max();
    let (class, text) = match worst {
        None => ("ok", "All systems operational".to_owned()),
        Some(Severity::Minor) => (
            "minor",
            format!(
                "Minor issues: every chain is serving ({})",
                count(open.len(), "open incident")
            ),
        ),
        Some(Severity::Major) => (
            "major",
            format!("Partial outage ({})", count(open.len(), "open incident")),
        ),
        Some(Severity::Critical) => {
            let down: Vec<&str> = snapshot
                .chains
                .iter()
                .filter(|c| c.state == "down")
                .map(|c| c.name.as_str())
                .collect();
            let what = if down.is_empty() {
                String::new()
            } else {
                format!(": {} down", down.join(", "))
            };
            ("critical", format!("Major outage{}", esc(&what)))
        }
    };
    let _ = writeln!(h, "<p class=\"banner {class}\" id=\"overall\">{text}</p>");
}

fn incident(h: &mut String, i: &Incident, now: Time, open: bool) {
    let sev = i.severity;
    let span = match (i.window, i.resolved) {
        (Some(w), None) => format!("maintenance {} → {}", clock(w.starts), clock(w.ends)),
        _ => String::new(),
    };
    let span = match i.resolved {
        None if !span.is_empty() => span,
        Some(end) => format!(
            "{} → {} ({})",
            clock(i.started),
            clock(end),
            took(end.0.saturating_sub(i.started.0))
        ),
        None => format!(
            "since {} ({})",
            clock(i.started),
            took(now.0.saturating_sub(i.started.0))
        ),
    };
    let affected = if i.upstreams.is_empty() {
        i.chains.join(", ")
    } else {
        i.upstreams
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let head = format!(
        "<span class=\"pill {sev}\">{sev}</span> {state}{title}",
        state = if open {
            ""
        } else {
            "<span class=\"state-word\">Resolved:</span> "
        },
        title = esc(&i.title),
    );
    let meta = format!(
        "#{} · {} · {} · {}",
        i.id,
        kind_words(i.kind),
        esc(&span),
        esc(&affected)
    );
    if open {
        let _ = writeln!(
            h,
            "<article class=\"incident {sev}\" id=\"incident-{id}\">\n<h3>{head}</h3>\n<p class=\"meta\">{meta}</p>",
            id = i.id
        );
    } else {
        let _ = writeln!(
            h,
            "<details class=\"incident past\" id=\"incident-{id}\">\n<summary>{head}<br><span class=\"meta\">{meta}</span></summary>",
            id = i.id
        );
    }
    h.push_str("<ul class=\"timeline\">\n");
    for u in i.updates.iter().rev() {
        let _ = writeln!(
            h,
            "<li class=\"{event}\"><time datetime=\"{at}\">{when}</time> <b>{word}</b> {msg}</li>",
            event = u.event.as_str(),
            at = u.at.rfc3339(),
            when = clock(u.at),
            word = match u.event {
                Event::Opened => "Opened",
                Event::Updated => "Update",
                Event::Resolved => "Resolved",
            },
            msg = esc(&u.message),
        );
    }
    h.push_str("</ul>\n");
    h.push_str(if open { "</article>\n" } else { "</details>\n" });
}

fn chain_section(
    h: &mut String,
    c: &ChainStatus,
    incidents: &Incidents,
    open: &[&Incident],
    now: Time,
) {
    let stalled = open
        .iter()
        .any(|i| i.kind == Kind::HeadStalled && i.chains.contains(&c.name));
    let (class, word) = match c.state {
        "down" => ("critical", "down"),
        "degraded" => ("major", "degraded"),
        _ if stalled => ("major", "stalled"),
        _ => ("ok", "operational"),
    };
    let serving = c.upstreams.iter().filter(|u| u.state == "ready").count();
    let head = match &c.head {
        Some(head) => format!(
            "head #{}{}",
            head.number,
            if head.confirmed { "" } else { " (unconfirmed)" }
        ),
        None => "head unknown".into(),
    };
    let finalized = c
        .finalized
        .map(|f| format!(" · finalized #{f}"))
        .unwrap_or_default();
    let _ = writeln!(
        h,
        r#"<section class="chain" id="chain-{name}">
<h2>{name} <span class="pill {class}">{word}</span></h2>
<p class="meta">chain id {id} · {head}{finalized} · quorum {quorum} · {serving} of {total} upstreams serving</p>"#,
        name = esc(&c.name),
        id = c.chain_id,
        quorum = c.quorum,
        total = c.upstreams.len(),
    );
    let view = incidents.uptime(&c.name, now);
    uptime_rows(
        h,
        "Chain",
        &view.last_24h,
        view.ratio_24h,
        &view.last_90d,
        view.ratio_90d,
    );
    h.push_str("<ul class=\"upstreams\">\n");
    for u in &c.upstreams {
        upstream_row(h, c, u, incidents, open, now);
    }
    h.push_str("</ul>\n</section>\n");
}

fn upstream_row(
    h: &mut String,
    c: &ChainStatus,
    u: &UpstreamStatus,
    incidents: &Incidents,
    open: &[&Incident],
    now: Time,
) {
    let concerns = |kind: Kind| {
        open.iter().any(|i| {
            i.kind == kind
                && i.upstreams
                    .iter()
                    .any(|r| r.chain == c.name && r.name == u.name)
        })
    };
    let lag_limit = incidents.settings().lag_blocks;
    let (class, word) = if concerns(Kind::UpstreamLying) {
        ("critical", "banned: caught lying".to_owned())
    } else {
        match u.state {
            "ready" if u.lag.is_some_and(|l| l >= lag_limit) => {
                ("major", format!("lagging {} blocks", u.lag.unwrap_or(0)))
            }
            "ready" => ("ok", "serving".to_owned()),
            "cooling-down" => ("critical", "down".to_owned()),
            "unresponsive" => ("critical", "not answering".to_owned()),
            "banned" => ("critical", "banned: caught lying".to_owned()),
            "wrong-chain" => ("critical", "wrong chain".to_owned()),
            _ => ("muted", "checking".to_owned()),
        }
    };
    let place = match (&u.cloud, &u.region) {
        (Some(c), Some(r)) => format!(" · {c}/{r}"),
        (Some(c), None) => format!(" · {c}"),
        _ => String::new(),
    };
    let mut stats = Vec::new();
    if u.state != "ready" {
        // Out of rotation: its old latency says nothing; when it last answered does.
        stats.push(match u.last_success_secs {
            Some(s) => format!("last answer {s} s ago"),
            None => "no answer yet".to_owned(),
        });
    } else if let Some(ms) = u.latency_ms {
        stats.push(format!("latency {ms:.1} ms"));
    }
    if let Some(lag) = u.lag.filter(|_| u.state == "ready") {
        stats.push(format!("lag {lag}"));
    }
    if let Some(head) = u.head {
        stats.push(format!("head #{head}"));
    }
    let _ = writeln!(
        h,
        r#"<li class="upstream" id="upstream-{chain}-{name}">
<div class="row"><span class="dot {class}"></span><b>{name}</b> <span class="muted">{operator}{place} · tier {tier}</span> <span class="state {class}">{word}</span></div>
<div class="meta">{stats}</div>"#,
        chain = esc(&c.name),
        name = esc(&u.name),
        operator = esc(&u.operator),
        place = esc(&place),
        tier = u.tier,
        word = esc(&word),
        stats = esc(&stats.join(" · ")),
    );
    let view = incidents.uptime(&format!("{}/{}", c.name, u.name), now);
    uptime_rows(
        h,
        "",
        &view.last_24h,
        view.ratio_24h,
        &view.last_90d,
        view.ratio_90d,
    );
    h.push_str("</li>\n");
}

fn uptime_rows(
    h: &mut String,
    label: &str,
    day: &[Bar],
    day_ratio: Option<f64>,
    quarter: &[Bar],
    quarter_ratio: Option<f64>,
) {
    for (span, bars, ratio, fine) in [
        ("24 h", day, day_ratio, true),
        ("90 d", quarter, quarter_ratio, false),
    ] {
        let _ = write!(
            h,
            "<div class=\"uptime\"><span class=\"span\">{label} {span}</span><span class=\"bars\" role=\"img\" aria-label=\"uptime, last {span}: {pct}\">",
            pct = percent(ratio),
        );
        for b in bars {
            let when = if fine {
                format!("{}–{} UTC", clock_short(b.start), hhmm(b.end))
            } else {
                day_of(b.start)
            };
            let what =
                b.up.map_or("no data".to_owned(), |r| format!("{} up", percent(Some(r))));
            let _ = write!(
                h,
                "<i class=\"{}\" title=\"{when}: {what}\"></i>",
                bar_class(b.up)
            );
        }
        let _ = writeln!(
            h,
            "</span><span class=\"pct\">{}</span></div>",
            percent(ratio)
        );
    }
}

fn bar_class(up: Option<f64>) -> &'static str {
    match up {
        None => "n",
        Some(r) if r >= 0.999 => "g",
        Some(r) if r >= 0.99 => "l",
        Some(r) if r >= 0.95 => "y",
        Some(r) if r >= 0.5 => "o",
        Some(_) => "r",
    }
}

fn percent(r: Option<f64>) -> String {
    match r {
        None => "no data".into(),
        Some(r) if r >= 1.0 => "100%".into(),
        Some(r) => {
            // Never round a bad period up to 100%.
            let p = (r * 10_000.0).floor() / 100.0;
            format!("{p:.2}%")
        }
    }
}

fn kind_words(kind: Kind) -> &'static str {
    match kind {
        Kind::UpstreamDown => "upstream down",
        Kind::UpstreamLagging => "upstream lagging",
        Kind::UpstreamLying => "upstream lying",
        Kind::ChainDegraded => "chain degraded",
        Kind::ChainDown => "chain down",
        Kind::HeadStalled => "head stalled",
        Kind::CorrelatedFailure => "correlated failure",
        Kind::ProvidersUnreachable => "providers unreachable",
        Kind::Manual => "announcement",
        Kind::Maintenance => "maintenance",
    }
}

fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `2026-11-03 14:03:07 UTC`.
fn clock(t: Time) -> String {
    let s = t.rfc3339();
    format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
}

/// `2026-11-03 14:00`.
fn clock_short(t: Time) -> String {
    let s = t.rfc3339();
    s.get(..16).unwrap_or(&s).replace('T', " ")
}

fn hhmm(t: Time) -> String {
    let s = t.rfc3339();
    s.get(11..16).unwrap_or(&s).to_owned()
}

fn day_of(t: Time) -> String {
    let s = t.rfc3339();
    s.get(..10).unwrap_or(&s).to_owned()
}

/// `3m 12s`, to the second.
fn took(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

const CSS: &str = r#"
:root{--bg:#f6f8fa;--card:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;
--ok:#1a7f37;--minor:#9a6700;--major:#bc4c00;--critical:#cf222e;
--g:#2da44e;--l:#7cc16a;--y:#d4a72c;--o:#e16f24;--r:#cf222e;--n:#d1d9e0}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#151b23;--fg:#e6edf3;--muted:#9198a1;--line:#3d444d;--n:#3d444d}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:960px;margin:0 auto;padding:16px}
h1{font-size:1.6em;margin:.2em 0}
h2{font-size:1.2em;margin:0 0 .4em}
h3{font-size:1.05em;margin:0 0 .3em;overflow-wrap:anywhere}
a{color:inherit}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:14px 0}
.muted,.meta{color:var(--muted)}
.meta{font-size:.9em;margin:.2em 0}
.banner{border-radius:10px;padding:14px 16px;margin:14px 0;font-weight:600;font-size:1.1em;color:#fff}
.banner.ok{background:var(--ok)}.banner.minor{background:var(--minor)}.banner.major{background:var(--major)}.banner.critical{background:var(--critical)}
.pill{display:inline-block;border-radius:999px;padding:0 .6em;font-size:.78em;font-weight:600;color:#fff;vertical-align:middle;text-transform:uppercase;letter-spacing:.03em}
.pill.ok{background:var(--ok)}.pill.minor{background:var(--minor)}.pill.major{background:var(--major)}.pill.critical{background:var(--critical)}
.incident{border-left:4px solid var(--line);padding:4px 0 4px 12px;margin:10px 0}
.incident.minor{border-color:var(--minor)}.incident.major{border-color:var(--major)}.incident.critical{border-color:var(--critical)}
.incident.past summary{cursor:pointer}
.state-word{font-weight:600}
.timeline{margin:.4em 0 0;padding:0;list-style:none}
.timeline li{margin:.3em 0;padding-left:.8em;border-left:2px solid var(--line);overflow-wrap:anywhere}
.timeline li.resolved{border-color:var(--ok)}
.timeline time{color:var(--muted);font-variant-numeric:tabular-nums;font-size:.9em}
.upstreams{list-style:none;margin:10px 0 0;padding:0}
.upstream{border-top:1px solid var(--line);padding:8px 0}
.row{display:flex;flex-wrap:wrap;gap:.4em;align-items:center}
.state{margin-left:auto;font-weight:600}
.state.ok{color:var(--ok)}.state.major{color:var(--major)}.state.critical{color:var(--critical)}
.dot{width:.7em;height:.7em;border-radius:50%;background:var(--n);display:inline-block}
.dot.ok{background:var(--g)}.dot.major{background:var(--o)}.dot.critical{background:var(--r)}
.uptime{display:flex;align-items:center;gap:8px;margin:4px 0;font-size:.8em;color:var(--muted)}
.uptime .span{flex:0 0 5.5em;white-space:nowrap}
.uptime .pct{flex:0 0 4.8em;text-align:right;font-variant-numeric:tabular-nums}
.bars{flex:1;display:flex;gap:1px;height:18px;min-width:0}
.bars i{flex:1;min-width:1px;border-radius:1px;background:var(--n)}
.bars i.g{background:var(--g)}.bars i.l{background:var(--l)}.bars i.y{background:var(--y)}.bars i.o{background:var(--o)}.bars i.r{background:var(--r)}
footer{margin:18px 0;font-size:.9em;text-align:center}
@media (max-width:560px){main{padding:8px}section{padding:10px}.uptime .span{flex-basis:4.5em}.state{margin-left:0;width:100%}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_percentages_never_round_up_to_100() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(percent(Some(0.99999)), "99.99%");
        assert_eq!(percent(Some(1.0)), "100%");
        assert_eq!(percent(None), "no data");
        assert_eq!(clock(Time(1_700_000_000_000)), "2023-11-14 22:13:20 UTC");
    }
}
