//! Webhooks: each `[[webhooks]]` entry gets its own bounded queue and sender task, so a
//! slow or failing receiver delays only its own messages — never serving, never the
//! incident engine (which only `try_send`s) and never the other webhooks. Messages to
//! one webhook go in order; each is retried with doubling waits on transport errors,
//! 408, 429 and 5xx, up to `max_attempts`. The URL is a secret: it is used to send and
//! never logged; logs and metrics name the webhook.

use std::{sync::Mutex, time::Duration};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Event, Incident, Severity};
use crate::config::{Webhook, WebhookFormat};

/// Messages waiting per webhook; beyond it new ones are dropped (and counted).
const QUEUE: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

struct Message {
    event: Event,
    incident: Incident,
}

struct Hook {
    name: String,
    config: Webhook,
    tx: mpsc::Sender<Message>,
    rx: Mutex<Option<mpsc::Receiver<Message>>>,
}

pub struct Notifier {
    hooks: Vec<Hook>,
    public_url: Option<String>,
}

impl Notifier {
    pub fn new(webhooks: &[Webhook], public_url: Option<String>) -> Self {
        Notifier {
            hooks: webhooks
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    Hook {
                        name: w.name.clone().unwrap_or_else(|| format!("webhook-{i}")),
                        config: w.clone(),
                        tx,
                        rx: Mutex::new(Some(rx)),
                    }
                })
                .collect(),
            public_url,
        }
    }

    /// Queues the incident as it is now for every webhook that wants its severity.
    /// Never waits.
    pub fn send(&self, event: Event, incident: &Incident) {
        for hook in &self.hooks {
            if incident.severity < hook.config.min_severity {
                continue;
            }
            let message = Message {
                event,
                incident: incident.clone(),
            };
            if hook.tx.try_send(message).is_err() {
                crate::metrics::webhook(&hook.name, "dropped");
                tracing::warn!(
                    webhook = %hook.name,
                    "webhook queue full ({QUEUE} waiting): incident {} not sent there",
                    incident.id
                );
            }
        }
    }

    /// Starts one sender per webhook (once; later calls do nothing).
    pub fn spawn(&self, tasks: &TaskTracker, stop: CancellationToken) {
        if self.hooks.is_empty() {
            return;
        }
        let client = match reqwest::Client::builder()
            .user_agent(concat!("outlast/", env!("CARGO_PKG_VERSION")))
            // Sent only where configured: a receiver's 3xx is its answer (a failure,
            // not retried), never followed to wherever `Location` points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "cannot build the HTTP client for webhooks ({e}); webhooks are off"
                );
                return;
            }
        };
        for hook in &self.hooks {
            let Some(rx) = hook.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                continue;
            };
            tasks.spawn(deliver(
                hook.name.clone(),
                hook.config.clone(),
                client.clone(),
                rx,
                self.public_url.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn deliver(
    name: String,
    config: Webhook,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Message>,
    public_url: Option<String>,
    stop: CancellationToken,
) {
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let body = payload(
            config.format,
            message.event,
            &message.incident,
            public_url.as_deref(),
        );
        let id = message.incident.id;
        let mut wait = Duration::from_millis(config.backoff_ms);
        for attempt in 1..=config.max_attempts.max(1) {
            let sent = client
                .post(config.url.expose().clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .timeout(timeout)
                .send()
                .await;
            let (retry, why, asked_wait) = match sent {
                Ok(r) if r.status().is_success() => {
                    crate::metrics::webhook(&name, "delivered");
                    tracing::debug!(webhook = %name, id, attempt, "webhook delivered");
                    break;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (
                        matches!(status, 408 | 429 | 500..=599),
                        format!("HTTP {status}"),
                        retry_after,
                    )
                }
                Err(e) => (true, cause(&e), None),
            };
            if !retry || attempt == config.max_attempts.max(1) {
                crate::metrics::webhook(&name, "failed");
                tracing::error!(
                    webhook = %name,
                    id,
                    "webhook gave up after {attempt} attempt(s): {why}"
                );
                break;
            }
            crate::metrics::webhook(&name, "retried");
            let pause = asked_wait.unwrap_or(wait).min(MAX_BACKOFF);
            tracing::warn!(
                webhook = %name,
                id,
                attempt,
                "webhook failed ({why}); trying again in {} ms",
                pause.as_millis()
            );
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}

/// The innermost cause of a reqwest error, without the URL (it holds the secret).
fn cause(e: &reqwest::Error) -> String {
    let mut last = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    last.unwrap_or_else(|| {
        if e.is_timeout() {
            "timed out".into()
        } else {
            "request failed".into()
        }
    })
}

/// The link to the incident on the status page, when the public URL is known.
fn link(public_url: Option<&str>, id: u64) -> Option<String> {
    public_url.map(|u| format!("{}/status#incident-{id}", u.trim_end_matches('/')))
}

/// The body for `format`.
pub fn payload(
    format: WebhookFormat,
    event: Event,
    i: &Incident,
    public_url: Option<&str>,
) -> Value {
    let message = i.updates.last().map_or("", |u| u.message.as_str());
    let url = link(public_url, i.id);
    let affected = i
        .upstreams
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let headline = format!(
        "[{}] #{} {}",
        match event {
            Event::Opened => "Opened",
            Event::Updated => "Updated",
            Event::Resolved => "Resolved",
        },
        i.id,
        i.title
    );
    match format {
        WebhookFormat::Json => json!({
            "event": event.as_str(),
            "incident": i,
            "url": url,
        }),
        WebhookFormat::Slack => {
            let icon = match event {
                Event::Resolved => "✅",
                _ if i.severity == Severity::Critical => "🔴",
                _ if i.severity == Severity::Major => "🟠",
                _ => "🟡",
            };
            let mut text = format!("{icon} *{headline}* ({})\n{message}", i.severity);
            if !affected.is_empty() {
                text.push_str(&format!("\nAffected: {affected}"));
            }
            if let Some(u) = &url {
                text.push_str(&format!("\n<{u}|Status page>"));
            }
            json!({ "text": text })
        }
        WebhookFormat::Discord => {
            let color = match event {
                Event::Resolved => 0x2e_a0_43,
                _ if i.severity == Severity::Critical => 0xd1_24_2f,
                _ if i.severity == Severity::Major => 0xe3_6c_09,
                _ => 0xd4_a7_2c,
            };
            let mut fields =
                vec![json!({"name": "Severity", "value": i.severity.to_string(), "inline": true})];
            if !affected.is_empty() {
                fields.push(
                    json!({"name": "Affected", "value": cut(&affected, 1000), "inline": false}),
                );
            }
            let mut embed = json!({
                "title": cut(&headline, 256),
                "description": cut(message, 4000),
                "color": color,
                "timestamp": i.updated().rfc3339(),
                "fields": fields,
            });
            if let Some(u) = url {
                embed["url"] = json!(u);
            }
            json!({ "username": "Outlast", "embeds": [embed] })
        }
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars().take(max - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::{Kind, Time, Update, UpstreamRef};

    fn incident() -> Incident {
        Incident {
            id: 7,
            key: "correlated:place:aws/us-east-1".into(),
            kind: Kind::CorrelatedFailure,
            severity: Severity::Major,
            title: "2 of 5 upstreams down, all on aws/us-east-1".into(),
            chains: vec!["local".into()],
            upstreams: vec![
                UpstreamRef {
                    chain: "local".into(),
                    name: "u0".into(),
                },
                UpstreamRef {
                    chain: "local".into(),
                    name: "u1".into(),
                },
            ],
            factor: Some("aws/us-east-1".into()),
            started: Time(1_700_000_000_000),
            resolved: None,
            updates: vec![Update {
                at: Time(1_700_000_000_000),
                event: Event::Opened,
                message: "2 upstreams down together".into(),
            }],
            evidence: None,
            window: None,
        }
    }

    #[test]
    fn each_format_carries_the_title_and_link() {
        let i = incident();
        let url = Some("https://rpc.example.com/");
        let json = payload(WebhookFormat::Json, Event::Opened, &i, url);
        assert_eq!(json["event"], "opened");
        assert_eq!(json["incident"]["id"], 7);
        assert_eq!(json["incident"]["factor"], "aws/us-east-1");
        assert_eq!(json["url"], "https://rpc.example.com/status#incident-7");

        let slack = payload(WebhookFormat::Slack, Event::Opened, &i, url);
        let text = slack["text"].as_str().expect("slack text");
        assert!(
            text.contains("*[Opened] #7 2 of 5 upstreams down, all on aws/us-east-1*"),
            "{text}"
        );
        assert!(text.contains("Affected: local/u0, local/u1"), "{text}");
        assert!(
            text.contains("<https://rpc.example.com/status#incident-7|Status page>"),
            "{text}"
        );

        let discord = payload(WebhookFormat::Discord, Event::Resolved, &i, None);
        let embed = &discord["embeds"][0];
        assert_eq!(
            embed["title"],
            "[Resolved] #7 2 of 5 upstreams down, all on aws/us-east-1"
        );
        assert_eq!(embed["color"], 0x2ea043);
        assert_eq!(embed["timestamp"], "2023-11-14T22:13:20Z");
        assert!(embed.get("url").is_none());
    }
}
