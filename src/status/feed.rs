//! Incidents as an Atom feed (RFC 4287) at `GET /feed.atom`: one entry per incident,
//! newest change first, updated as the incident changes. Entry ids are tag URIs built
//! from the deployment's host and the incident's start, so they stay unique across
//! deployments and across a wiped history.

use std::fmt::Write as _;

use crate::incidents::{Event, Incident, Time};

/// Entries in the feed.
const ENTRIES: usize = 50;

/// `base` is where people reach this Outlast (`https://rpc.example.com`, no trailing `/`).
pub fn render(title: &str, base: &str, incidents: &[Incident], now: Time) -> String {
    let mut sorted: Vec<&Incident> = incidents.iter().collect();
    sorted.sort_by_key(|i| std::cmp::Reverse((i.updated(), i.id)));
    sorted.truncate(ENTRIES);
    let updated = sorted.first().map_or(now, |i| i.updated());
    let host = authority(base);
    let mut x = String::with_capacity(8 * 1024);
    let _ = write!(
        x,
        r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title>{title}: incidents</title>
<subtitle>Incidents opened, updated and resolved automatically by Outlast</subtitle>
<id>{base}/feed.atom</id>
<link rel="self" type="application/atom+xml" href="{base}/feed.atom"/>
<link rel="alternate" type="text/html" href="{base}/status"/>
<updated>{updated}</updated>
<author><name>Outlast</name></author>
<generator version="{version}">Outlast</generator>
"#,
        title = xml(title),
        base = xml(base),
        updated = updated.rfc3339(),
        version = env!("CARGO_PKG_VERSION"),
    );
    for i in sorted {
        entry(&mut x, i, base, &host);
    }
    x.push_str("</feed>\n");
    x
}

fn entry(x: &mut String, i: &Incident, base: &str, host: &str) {
    let state = if i.is_open() { "Open" } else { "Resolved" };
    let day = i
        .started
        .rfc3339()
        .get(..10)
        .unwrap_or("2024-01-01")
        .to_owned();
    let link = format!("{base}/status#incident-{}", i.id);
    let summary = i.updates.last().map_or("", |u| u.message.as_str());
    let mut html = String::new();
    let _ = write!(
        html,
        "<p><b>{}</b> · {} · {}</p><ul>",
        i.severity,
        i.kind.as_str(),
        crate::status::page::esc(&i.chains.join(", "))
    );
    for u in i.updates.iter().rev() {
        let _ = write!(
            html,
            "<li>{} <b>{}</b>: {}</li>",
            u.at.rfc3339(),
            match u.event {
                Event::Opened => "opened",
                Event::Updated => "update",
                Event::Resolved => "resolved",
            },
            crate::status::page::esc(&u.message)
        );
    }
    html.push_str("</ul>");
    let _ = write!(
        x,
        r#"<entry>
<id>tag:{host},{day}:incident-{id}-{started}</id>
<title>[{state}] {title}</title>
<link rel="alternate" type="text/html" href="{link}"/>
<published>{published}</published>
<updated>{updated}</updated>
<category term="{kind}"/>
<category term="{severity}"/>
<summary>{summary}</summary>
<content type="html">{content}</content>
</entry>
"#,
        host = xml(host),
        id = i.id,
        started = i.started.0,
        title = xml(&i.title),
        link = xml(&link),
        published = i.started.rfc3339(),
        updated = i.updated().rfc3339(),
        kind = i.kind.as_str(),
        severity = i.severity,
        summary = xml(summary),
        content = xml(&html),
    );
}

/// The host (and port) of `base`, for tag URIs; `localhost` when there is none.
fn authority(base: &str) -> String {
    url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "localhost".into())
}

/// Escapes text for XML content and attribute values.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(xml("a<b & 'c'\u{1}"), "a&lt;b &amp; &apos;c&apos;");
        assert_eq!(authority("https://rpc.example.com:8443"), "rpc.example.com");
        assert_eq!(authority("nonsense"), "localhost");
    }

    #[test]
    fn an_empty_history_is_still_a_feed() {
        let feed = render("T", "http://127.0.0.1:1", &[], Time(1_700_000_000_000));
        assert!(
            feed.contains("<updated>2023-11-14T22:13:20Z</updated>"),
            "{feed}"
        );
        assert!(feed.ends_with("</feed>\n"));
    }
}
