//! Incidents: periods in which something users feel is wrong — an upstream down, lagging
//! or caught lying, a chain degraded or down, a stalled head, several upstreams of one
//! cloud, region or operator failing together. Opened, updated and resolved by
//! themselves from what the gateway already measures, kept across restarts, and told to
//! people through the status page, the Atom feed and webhooks.
//!
//! - `detect` — pure: a sample of health in, changes out, with hysteresis (tables, no clock)
//! - `uptime` — pure: up/down time per upstream and chain, in 15-minute and daily buckets
//! - `store`  — the history on disk: an append-only JSON-lines file and an uptime snapshot
//! - `notify` — webhooks (JSON, Slack, Discord), each with its own queue and retries
//!
//! [`Incidents`] ties them together. `evaluate` is called by the background task
//! [`watch`], never on the request path. A ban for lying is read from the upstream's
//! health (`Status::Banned`, with its evidence). Reads only what health and heads
//! expose; never sees a provider URL, and never waits on the network while holding its lock.

pub mod detect;
pub mod notify;
pub mod store;
pub mod uptime;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config,
    route::Chain,
    upstream::health::{Cause, Status},
};
use detect::{Change, Detector, Finding};
use uptime::Uptime;

pub use crate::config::Severity;

/// What kind of problem an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    UpstreamDown,
    UpstreamLagging,
    UpstreamLying,
    ChainDegraded,
    ChainDown,
    HeadStalled,
    CorrelatedFailure,
    /// Every upstream of every chain fails to connect: this host's network, most likely.
    ProvidersUnreachable,
    /// Opened by a person through the admin API; resolved by a person.
    Manual,
    /// A maintenance window scheduled through the admin API: it starts and ends by
    /// itself, and automatic incidents about what it covers send no webhooks meanwhile.
    Maintenance,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UpstreamDown => "upstream_down",
            Kind::UpstreamLagging => "upstream_lagging",
            Kind::UpstreamLying => "upstream_lying",
            Kind::ChainDegraded => "chain_degraded",
            Kind::ChainDown => "chain_down",
            Kind::HeadStalled => "head_stalled",
            Kind::CorrelatedFailure => "correlated_failure",
            Kind::ProvidersUnreachable => "providers_unreachable",
            Kind::Manual => "manual",
            Kind::Maintenance => "maintenance",
        }
    }

    /// Made by people (the admin API), not by the detector.
    pub fn is_manual(self) -> bool {
        matches!(self, Kind::Manual | Kind::Maintenance)
    }
}

/// When a maintenance window runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub starts: Time,
    pub ends: Time,
}

/// Wall-clock time in milliseconds since the Unix epoch; RFC 3339 in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub fn now() -> Time {
        Time(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// `2026-11-03T14:03:07Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.system()).to_string()
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.system()))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Time(u64::try_from(ms).unwrap_or(u64::MAX)))
    }
}

/// One upstream, by chain and name (names are unique within a chain only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UpstreamRef {
    pub chain: String,
    pub name: String,
}

impl fmt::Display for UpstreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.chain, self.name)
    }
}

pub use crate::upstream::health::Evidence;

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub at: Time,
    pub event: Event,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Opened,
    Updated,
    Resolved,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Opened => "opened",
            Event::Updated => "updated",
            Event::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    /// What the incident is about, stable across restarts (`down:ethereum/infura`,
    /// `correlated:place:aws/us-east-1`…): the same problem continues the same incident.
    pub key: String,
    /// The worst kind and severity it reached.
    pub kind: Kind,
    pub severity: Severity,
    pub title: String,
    pub chains: Vec<String>,
    /// Every upstream it affected, while it lasted.
    pub upstreams: Vec<UpstreamRef>,
    /// What a correlated failure's upstreams have in common (`aws/us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<String>,
    pub started: Time,
    pub resolved: Option<Time>,
    pub updates: Vec<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// A maintenance window's times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.resolved.is_none()
    }

    /// A maintenance window that has not started yet.
    pub fn is_scheduled(&self, now: Time) -> bool {
        self.is_open() && self.window.is_some_and(|w| now < w.starts)
    }

    /// A maintenance window running at `now` that covers `chain`, or `upstream` of it.
    fn covers(&self, chain: &str, upstream: Option<&str>, now: Time) -> bool {
        let Some(w) = self.window else { return false };
        if !self.is_open() || now < w.starts || now >= w.ends {
            return false;
        }
        self.chains.iter().any(|c| c == chain)
            || upstream.is_some_and(|u| {
                self.upstreams
                    .iter()
                    .any(|r| r.chain == chain && r.name == u)
            })
    }

    /// When it last changed.
    pub fn updated(&self) -> Time {
        self.updates.last().map_or(self.started, |u| u.at)
    }
}

/// An upstream banned for lying, until when, and why.
#[derive(Debug, Clone)]
pub struct Ban {
    pub until: Time,
    pub evidence: Evidence,
}

/// The incident engine of one gateway: detector state, the incidents, bans, uptime.
pub struct Incidents {
    settings: config::Status,
    inner: Mutex<Inner>,
    notifier: notify::Notifier,
}

struct Inner {
    detector: Detector,
    /// By id, oldest first.
    incidents: BTreeMap<u64, Incident>,
    /// Key of each open incident → its id.
    open: HashMap<String, u64>,
    next_id: u64,
    uptime: Uptime,
    last_evaluation: Option<Time>,
    /// Incidents people changed (admin API) since the last evaluation: stored with its
    /// changes.
    touched: Vec<u64>,
}

/// Why the admin API could not change an incident.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("no incident #{0}")]
    NotFound(u64),
    #[error("incident #{0} is already resolved")]
    Resolved(u64),
    #[error(
        "incident #{0} was opened by Outlast and resolves itself when the problem is gone; post an update instead"
    )]
    Automatic(u64),
    #[error("{0}")]
    Invalid(String),
}

/// What a person says when opening an incident or scheduling maintenance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub title: String,
    pub message: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub chains: Vec<String>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamRef>,
}

/// Longest title and message a person may post (the page and webhooks show them).
const MAX_TITLE: usize = 200;
const MAX_MESSAGE: usize = 4000;

/// How the update that starts a maintenance window begins.
const STARTED: &str = "The maintenance window has started";

/// Timeline entries kept per incident: the first, and the latest after it.
const MAX_UPDATES: usize = 200;

/// The most one evaluation may count as observed time: a process that was stopped (or a
/// machine that slept) must not claim it saw the gap.
const MAX_OBSERVED_GAP: u64 = 5_000;

impl Incidents {
    pub fn new(settings: &config::Status, webhooks: &[config::Webhook]) -> Self {
        Incidents {
            inner: Mutex::new(Inner {
                detector: Detector::new(detect::Params::from(settings)),
                incidents: BTreeMap::new(),
                open: HashMap::new(),
                next_id: 1,
                uptime: Uptime::default(),
                last_evaluation: None,
                touched: Vec::new(),
            }),
            notifier: notify::Notifier::new(webhooks, settings.public_url.clone()),
            settings: settings.clone(),
        }
    }

    pub fn settings(&self) -> &config::Status {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change is made in one step under the lock; a panic elsewhere cannot leave
        // it half-written, so a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads history from the store: past incidents, open ones (which continue if the
    /// problem is still there, and resolve if not), and uptime.
    pub fn restore(&self, loaded: store::Loaded, now: Time) {
        let mut inner = self.lock();
        inner.uptime = loaded.uptime;
        for incident in loaded.incidents {
            inner.next_id = inner.next_id.max(incident.id + 1);
            if incident.is_open() {
                inner.open.insert(incident.key.clone(), incident.id);
                // People's incidents are not the detector's: it would resolve them.
                if !incident.kind.is_manual() {
                    inner.detector.adopt(&incident, now);
                }
            }
            inner.incidents.insert(incident.id, incident);
        }
    }

    /// Looks at every chain and upstream once: records uptime, opens, updates and
    /// resolves incidents, queues webhooks. Returns the incidents that changed, for the
    /// store. Called by `watch` every `evaluate_ms`.
    pub fn evaluate(&self, chains: &[Arc<Chain>], now: Time) -> Vec<Incident> {
        let sample = sample(chains, now);
        let mut inner = self.lock();
        let observed = inner
            .last_evaluation
            .map_or(0, |t| now.0.saturating_sub(t.0).min(MAX_OBSERVED_GAP));
        inner.last_evaluation = Some(now);
        for (key, up) in detect::uptime_states(&sample, self.settings.lag_blocks) {
            inner.uptime.record(&key, up, now, observed);
        }
        let changes = inner.detector.evaluate(&sample);
        let mut changed: Vec<u64> = std::mem::take(&mut inner.touched);
        let mut events = inner.maintenance(now);
        for (id, _) in &events {
            if !changed.contains(id) {
                changed.push(*id);
            }
        }
        for change in changes {
            if let Some((id, event)) = inner.apply(change, now, &self.settings) {
                if !changed.contains(&id) {
                    changed.push(id);
                }
                events.push((id, event));
            }
        }
        let history = u64::from(self.settings.history_days) * 86_400_000;
        inner
            .incidents
            .retain(|_, i| i.resolved.is_none_or(|r| r.0 + history > now.0));
        for (id, event) in events {
            if let Some(incident) = inner.incidents.get(&id) {
                log(incident, event);
                // Maintenance covering everything it concerns: shown, not sent.
                if !incident.kind.is_manual() && inner.quieted(incident, now) {
                    continue;
                }
                self.notifier.send(event, incident);
            }
        }
        changed
            .iter()
            .filter_map(|id| inner.incidents.get(id).cloned())
            .collect()
    }

    /// Every incident kept, newest first.
    pub fn list(&self) -> Vec<Incident> {
        self.lock().incidents.values().rev().cloned().collect()
    }

    pub fn open(&self) -> Vec<Incident> {
        self.lock()
            .incidents
            .values()
            .rev()
            .filter(|i| i.is_open())
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Incident> {
        self.lock().incidents.get(&id).cloned()
    }

    /// Uptime bars and ratios of one series (`chain` or `chain/upstream`).
    pub fn uptime(&self, key: &str, now: Time) -> uptime::View {
        self.lock().uptime.view(key, now)
    }

    fn uptime_snapshot(&self) -> Uptime {
        self.lock().uptime.clone()
    }

    /// Opens an incident a person announces (admin API); webhooks are sent at once.
    pub fn open_manual(&self, a: Announcement) -> Result<Incident, ManualError> {
        self.announce(a, Kind::Manual, None)
    }

    /// Schedules a maintenance window: shown from now as scheduled, updated when it
    /// starts, resolved when it ends (by `evaluate`).
    pub fn schedule(&self, a: Announcement, window: Window) -> Result<Incident, ManualError> {
        if window.ends <= window.starts {
            return Err(ManualError::Invalid("`ends` must be after `starts`".into()));
        }
        if window.ends <= Time::now() {
            return Err(ManualError::Invalid("`ends` is in the past".into()));
        }
        self.announce(a, Kind::Maintenance, Some(window))
    }

    fn announce(
        &self,
        a: Announcement,
        kind: Kind,
        window: Option<Window>,
    ) -> Result<Incident, ManualError> {
        let title = checked_text(&a.title, "title", MAX_TITLE)?;
        let message = checked_text(&a.message, "message", MAX_MESSAGE)?;
        let now = Time::now();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let key = format!("{}:{id}", kind.as_str());
        let incident = Incident {
            id,
            key: key.clone(),
            kind,
            severity: a.severity,
            title,
            chains: a.chains,
            upstreams: a.upstreams,
            factor: None,
            started: window.map_or(now, |w| w.starts.min(now)),
            resolved: None,
            updates: vec![Update {
                at: now,
                event: Event::Opened,
                message,
            }],
            evidence: None,
            window,
        };
        inner.incidents.insert(id, incident.clone());
        inner.open.insert(key, id);
        inner.touched.push(id);
        crate::metrics::incident_opened(kind.as_str(), a.severity.label());
        log(&incident, Event::Opened);
        self.notifier.send(Event::Opened, &incident);
        Ok(incident)
    }

    /// A person's update to any open incident; sent to webhooks at once.
    pub fn post_update(&self, id: u64, message: &str) -> Result<Incident, ManualError> {
        let message = checked_text(message, "message", MAX_MESSAGE)?;
        self.change(id, Event::Updated, message, false)
    }

    /// A person resolves an incident people opened (Outlast's own resolve themselves).
    pub fn resolve_manual(&self, id: u64, message: &str) -> Result<Incident, ManualError> {
        let message = checked_text(message, "message", MAX_MESSAGE)?;
        self.change(id, Event::Resolved, message, true)
    }

    fn change(
        &self,
        id: u64,
        event: Event,
        message: String,
        manual_only: bool,
    ) -> Result<Incident, ManualError> {
        let now = Time::now();
        let mut inner = self.lock();
        let incident = inner
            .incidents
            .get_mut(&id)
            .ok_or(ManualError::NotFound(id))?;
        if !incident.is_open() {
            return Err(ManualError::Resolved(id));
        }
        if manual_only && !incident.kind.is_manual() {
            return Err(ManualError::Automatic(id));
        }
        incident.updates.push(Update {
            at: now,
            event,
            message,
        });
        if incident.updates.len() > MAX_UPDATES {
            incident.updates.remove(1);
        }
        if event == Event::Resolved {
            incident.resolved = Some(now);
        }
        let incident = incident.clone();
        if event == Event::Resolved {
            inner.open.remove(&incident.key);
        }
        inner.touched.push(id);
        log(&incident, event);
        self.notifier.send(event, &incident);
        Ok(incident)
    }

    /// Whether `chain` (or its `upstream`) is under a maintenance window now.
    pub fn in_maintenance(&self, chain: &str, upstream: Option<&str>) -> bool {
        let now = Time::now();
        self.lock()
            .incidents
            .values()
            .any(|i| i.covers(chain, upstream, now))
    }
}

/// A person's text: trimmed, not empty, not longer than `max` characters.
fn checked_text(text: &str, what: &str, max: usize) -> Result<String, ManualError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ManualError::Invalid(format!("`{what}` is empty")));
    }
    if text.chars().count() > max {
        return Err(ManualError::Invalid(format!(
            "`{what}` is longer than {max} characters"
        )));
    }
    Ok(text.to_owned())
}

impl Inner {
    /// Maintenance windows that started or ended by `now`: "started" updates and
    /// resolutions, as events to tell.
    fn maintenance(&mut self, now: Time) -> Vec<(u64, Event)> {
        let mut events = Vec::new();
        for i in self.incidents.values_mut() {
            let (Some(w), true) = (i.window, i.is_open()) else {
                continue;
            };
            let started = i
                .updates
                .iter()
                .any(|u| u.event == Event::Updated && u.message.starts_with(STARTED));
            if now >= w.ends {
                i.resolved = Some(now);
                i.updates.push(Update {
                    at: now,
                    event: Event::Resolved,
                    message: "The maintenance window is over.".into(),
                });
                events.push((i.id, Event::Resolved));
            } else if now >= w.starts && !started {
                i.updates.push(Update {
                    at: now,
                    event: Event::Updated,
                    message: format!("{STARTED}; until {}.", w.ends.rfc3339()),
                });
                events.push((i.id, Event::Updated));
            }
        }
        for (id, event) in &events {
            if *event == Event::Resolved
                && let Some(i) = self.incidents.get(id)
            {
                let key = i.key.clone();
                self.open.remove(&key);
            }
        }
        events
    }

    /// An automatic incident whose chains and upstreams are all under maintenance now.
    fn quieted(&self, incident: &Incident, now: Time) -> bool {
        let covered = |chain: &str, up: Option<&str>| {
            self.incidents.values().any(|m| m.covers(chain, up, now))
        };
        if incident.upstreams.is_empty() {
            !incident.chains.is_empty() && incident.chains.iter().all(|c| covered(c, None))
        } else {
            incident
                .upstreams
                .iter()
                .all(|u| covered(&u.chain, Some(&u.name)))
        }
    }

    /// Applies one change of the detector; returns the incident it concerned and what
    /// happened to it, or `None` when nothing visible changed.
    fn apply(
        &mut self,
        change: Change,
        now: Time,
        settings: &config::Status,
    ) -> Option<(u64, Event)> {
        match change {
            Change::Open(f) => {
                // The same problem again soon after it ended: reopen, don't spam.
                let reopen = self
                    .incidents
                    .values()
                    .rev()
                    .find(|i| i.key == f.key)
                    .filter(|i| {
                        i.resolved.is_some_and(|r| {
                            now.0.saturating_sub(r.0) < settings.reopen_within_secs * 1000
                        })
                    })
                    .map(|i| i.id);
                if let Some(id) = reopen {
                    let incident = self.incidents.get_mut(&id)?;
                    incident.resolved = None;
                    merge(incident, &f);
                    incident.updates.push(Update {
                        at: now,
                        event: Event::Updated,
                        message: format!("Again: {}", f.message),
                    });
                    self.open.insert(f.key.clone(), id);
                    return Some((id, Event::Updated));
                }
                if let Some(&id) = self.open.get(&f.key) {
                    // Adopted after a restart and still there: it simply continues.
                    let incident = self.incidents.get_mut(&id)?;
                    return merge(incident, &f).then_some((id, Event::Updated));
                }
                let id = self.next_id;
                self.next_id += 1;
                self.incidents.insert(
                    id,
                    Incident {
                        id,
                        key: f.key.clone(),
                        kind: f.kind,
                        severity: f.severity,
                        title: f.title.clone(),
                        chains: f.chains.clone(),
                        upstreams: f.upstreams.clone(),
                        factor: f.factor.clone(),
                        started: now,
                        resolved: None,
                        updates: vec![Update {
                            at: now,
                            event: Event::Opened,
                            message: f.message.clone(),
                        }],
                        evidence: f.evidence.clone(),
                        window: None,
                    },
                );
                self.open.insert(f.key, id);
                crate::metrics::incident_opened(f.kind.as_str(), f.severity.label());
                Some((id, Event::Opened))
            }
            Change::Update(f) => {
                let id = *self.open.get(&f.key)?;
                let incident = self.incidents.get_mut(&id)?;
                merge(incident, &f);
                incident.updates.push(Update {
                    at: now,
                    event: Event::Updated,
                    message: f.message.clone(),
                });
                if incident.updates.len() > MAX_UPDATES {
                    incident.updates.remove(1);
                }
                Some((id, Event::Updated))
            }
            Change::Resolve { key, message } => {
                let id = self.open.remove(&key)?;
                let incident = self.incidents.get_mut(&id)?;
                incident.resolved = Some(now);
                incident.updates.push(Update {
                    at: now,
                    event: Event::Resolved,
                    message,
                });
                Some((id, Event::Resolved))
            }
        }
    }
}

/// Folds a newer finding into an incident: affected chains and upstreams accumulate; the
/// title, kind and severity are those of the worst state reached. True when it changed.
fn merge(incident: &mut Incident, f: &Finding) -> bool {
    let before = incident.clone();
    for chain in &f.chains {
        if !incident.chains.contains(chain) {
            incident.chains.push(chain.clone());
        }
    }
    for up in &f.upstreams {
        if !incident.upstreams.contains(up) {
            incident.upstreams.push(up.clone());
        }
    }
    // The detector keeps a correlated failure's title at its largest extent, so at equal
    // severity the newer title is never a smaller story.
    if f.severity >= incident.severity {
        incident.severity = f.severity;
        incident.kind = f.kind;
        incident.title = f.title.clone();
    }
    if f.evidence.is_some() {
        incident.evidence = f.evidence.clone();
    }
    *incident != before
}

fn log(incident: &Incident, event: Event) {
    let message = incident.updates.last().map_or("", |u| u.message.as_str());
    let (id, severity, title) = (incident.id, incident.severity, &incident.title);
    match event {
        Event::Opened => {
            tracing::warn!(id, %severity, kind = incident.kind.as_str(), "incident opened: {title}: {message}")
        }
        Event::Updated => tracing::warn!(id, %severity, "incident updated: {title}: {message}"),
        Event::Resolved => tracing::info!(id, "incident resolved: {title}: {message}"),
    }
}

/// What the detector needs to know, read from the chains without waiting.
fn sample(chains: &[Arc<Chain>], now: Time) -> detect::Sample {
    detect::Sample {
        at: now.0,
        chains: chains.iter().map(|c| chain_sample(c, now)).collect(),
    }
}

fn chain_sample(c: &Chain, now: Time) -> detect::ChainSample {
    let head = c.head.latest();
    let instant = std::time::Instant::now();
    detect::ChainSample {
        name: c.name.to_string(),
        quorum: c.quorum,
        head,
        upstreams: c
            .upstreams()
            .iter()
            .map(|u| {
                let who = UpstreamRef {
                    chain: c.name.to_string(),
                    name: u.name.to_string(),
                };
                let status = u.health.status();
                // A ban is over at its end, even before the probe takes it back in.
                let ban = match &status {
                    Status::Banned { until, evidence } if *until > instant => {
                        let left = until.saturating_duration_since(instant).as_millis();
                        Some(Ban {
                            until: Time(now.0 + u64::try_from(left).unwrap_or(0)),
                            evidence: evidence.clone(),
                        })
                    }
                    _ => None,
                };
                detect::UpstreamSample {
                    health: match status {
                        Status::Ready => detect::Health::Up,
                        Status::Unchecked => detect::Health::Unknown,
                        Status::CoolingDown { why, cause, .. } => detect::Health::Down(why, cause),
                        Status::Banned { evidence, .. } => detect::Health::Down(
                            format!("banned for lying: {}", evidence.summary),
                            Cause::Failing,
                        ),
                        Status::WrongChain { got, expected } => detect::Health::Down(
                            format!("it serves chain id {got}, not {expected}"),
                            Cause::Failing,
                        ),
                    },
                    lag: u
                        .head
                        .latest()
                        .and(head)
                        .map(|_| c.lag(u))
                        .filter(|_| u.health.is_ready()),
                    ban,
                    who,
                    operator: u.operator.clone(),
                    cloud: u.cloud.clone(),
                    region: u.region.clone(),
                }
            })
            .collect(),
    }
}

/// The data directory: `[status] data_dir`, else `$XDG_STATE_HOME/outlast`, else
/// `~/.local/state/outlast`, else `./outlast-state`.
pub fn data_dir(settings: &config::Status) -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = &settings.data_dir {
        return PathBuf::from(dir);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(state) = env("XDG_STATE_HOME") {
        return PathBuf::from(state).join("outlast");
    }
    if let Some(home) = env("HOME") {
        return PathBuf::from(home).join(".local/state/outlast");
    }
    PathBuf::from("outlast-state")
}

/// Opens the store and loads history, then spawns the evaluation loop and the webhook
/// senders on `tasks`. A store that cannot be opened (unwritable, or in use by another
/// Outlast) is logged and history is kept in memory only: serving matters more.
pub fn spawn(
    incidents: Arc<Incidents>,
    chains: Vec<Arc<Chain>>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    let dir = data_dir(&incidents.settings);
    let store = match store::Store::open(&dir, incidents.settings.history_days) {
        Ok((store, loaded)) => {
            tracing::info!(
                dir = %dir.display(),
                incidents = loaded.incidents.len(),
                "incident history loaded"
            );
            incidents.restore(loaded, Time::now());
            Some(store)
        }
        Err(e) => {
            tracing::error!("{e}; incident history is kept in memory only until restart");
            None
        }
    };
    incidents.notifier.spawn(tasks, stop.clone());
    tasks.spawn(watch(incidents, chains, store, stop));
}

/// How often uptime is written to disk (incidents are written as they change).
const UPTIME_SAVE_EVERY: Duration = Duration::from_secs(60);

/// Evaluates every `evaluate_ms` until `stop`; writes changes to the store off the
/// async threads, and uptime once a minute and on the way out.
async fn watch(
    incidents: Arc<Incidents>,
    chains: Vec<Arc<Chain>>,
    store: Option<store::Store>,
    stop: CancellationToken,
) {
    let store = store.map(|s| Arc::new(Mutex::new(s)));
    let every = Duration::from_millis(incidents.settings.evaluate_ms.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_save = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let changed = incidents.evaluate(&chains, Time::now());
        let Some(store) = &store else { continue };
        let save_uptime = last_save.elapsed() >= UPTIME_SAVE_EVERY;
        if changed.is_empty() && !save_uptime {
            continue;
        }
        let uptime = save_uptime.then(|| incidents.uptime_snapshot());
        if save_uptime {
            last_save = tokio::time::Instant::now();
        }
        persist(incidents.clone(), store.clone(), changed, uptime).await;
    }
    if let Some(store) = store {
        let uptime = Some(incidents.uptime_snapshot());
        persist(incidents, store, Vec::new(), uptime).await;
    }
}

async fn persist(
    incidents: Arc<Incidents>,
    store: Arc<Mutex<store::Store>>,
    changed: Vec<Incident>,
    uptime: Option<Uptime>,
) {
    let written = tokio::task::spawn_blocking(move || {
        // Only this task uses the store; the lock just makes it `Send` to the blocking pool.
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        if !changed.is_empty() {
            store.append(&changed)?;
        }
        if store.needs_compaction() {
            store.compact(&incidents.list())?;
        }
        if let Some(u) = uptime {
            store.save_uptime(&u)?;
        }
        Ok::<(), store::StoreError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("{e}"),
        Err(e) => tracing::error!("writing incident history failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[status]
open_after_ms = 1000
resolve_after_ms = 1000

[[chains]]
name = "local"
chain_id = 31337

[[chains.upstreams]]
name = "a"
url = "http://127.0.0.1:1"
operator = "x"

[[chains.upstreams]]
name = "b"
url = "http://127.0.0.1:2"
operator = "y"
"#;

    #[test]
    fn a_reported_lie_opens_at_once_with_its_evidence_and_ends_with_the_ban() {
        let config = config::load_str(CONFIG).expect("valid");
        let http = crate::upstream::http_client(&config.routing);
        let chains = vec![Arc::new(Chain::new(
            &config.chains[0],
            &config.routing,
            &http,
        ))];
        let incidents = Incidents::new(&config.status, &config.webhooks);
        let evidence = Evidence {
            summary: "its eth_getProof does not match the agreed state root".into(),
            check: Some("proof".into()),
            method: Some("eth_getBalance".into()),
            block: Some(7),
            answered: Some("0x0".into()),
            expected: Some("0x21e19e0c9bab2400000".into()),
        };
        let upstreams = chains[0].upstreams();
        let b = &upstreams[1];
        assert_eq!(&*b.name, "b");
        b.health.record_lie(
            evidence.clone(),
            Duration::from_secs(1),
            std::time::Instant::now(),
        );
        let now = Time::now();
        let changed = incidents.evaluate(&chains, now);
        let [lie] = &changed[..] else {
            panic!("{changed:#?}")
        };
        assert_eq!(lie.kind, Kind::UpstreamLying);
        assert_eq!(lie.severity, Severity::Major);
        assert_eq!(lie.title, "local: upstream b was caught lying");
        assert_eq!(lie.evidence.as_ref(), Some(&evidence));
        assert!(
            lie.updates[0].message.contains(
                "On eth_getBalance at block 7 it answered 0x0; the verified answer is 0x21e19e0c9bab2400000"
            ),
            "{}",
            lie.updates[0].message
        );
        // Still banned a moment later; the ban ends after 1 s, and a quiet second later
        // (from the last time it was seen) the incident is resolved.
        assert!(incidents.evaluate(&chains, Time(now.0 + 100)).is_empty());
        std::thread::sleep(Duration::from_millis(1_100));
        let changed = incidents.evaluate(&chains, Time(now.0 + 2_200));
        assert!(
            changed.first().is_some_and(|i| i.resolved.is_some()),
            "{changed:#?}"
        );
    }
}
