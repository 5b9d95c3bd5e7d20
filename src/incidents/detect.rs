//! Turns samples of health into incident changes. Pure: no clock, no I/O, no gateway —
//! a [`Sample`] in, [`Change`]s out — so it is tested with tables of samples.
//!
//! Hysteresis: a problem must be seen for `open_after` before it opens (a pending one
//! unseen for `open_after` is forgotten), and be gone for `resolve_after` before it is
//! resolved; a flapping upstream makes one incident, not one per flap. A lie opens at once.
//!
//! Correlation: upstreams that are down together and share a place (cloud/region), an
//! operator or a cloud are one incident naming what they share, when at least two are
//! down and at least half of the upstreams sharing it are. Once open, a correlated
//! incident holds every down upstream that shares its factor until all are back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Ban, Evidence, Incident, Kind, Severity, Time, UpstreamRef};
use crate::{config, upstream::health::Cause};

/// Thresholds, in milliseconds and blocks.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub open_after: u64,
    pub resolve_after: u64,
    pub lag_blocks: u64,
    pub stall_block_times: u64,
    pub stall_min: u64,
}

impl From<&config::Status> for Params {
    fn from(s: &config::Status) -> Self {
        Params {
            open_after: s.open_after_ms,
            resolve_after: s.resolve_after_ms,
            lag_blocks: s.lag_blocks.max(1),
            stall_block_times: u64::from(s.head_stall_block_times.max(1)),
            stall_min: s.head_stall_min_secs * 1000,
        }
    }
}

/// Everything known at one moment (`at`, ms since the epoch).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: u64,
    pub chains: Vec<ChainSample>,
}

#[derive(Debug, Clone)]
pub struct ChainSample {
    pub name: String,
    pub quorum: usize,
    /// The consensus head.
    pub head: Option<u64>,
    pub upstreams: Vec<UpstreamSample>,
}

#[derive(Debug, Clone)]
pub struct UpstreamSample {
    pub who: UpstreamRef,
    pub operator: String,
    pub cloud: Option<String>,
    pub region: Option<String>,
    pub health: Health,
    /// Blocks behind the consensus head, while it serves and both heads are known.
    pub lag: Option<u64>,
    /// Banned for lying, until when and why.
    pub ban: Option<Ban>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet: neither up nor down.
    Unknown,
    Up,
    /// Out of rotation, why in words, and what kind of failure it is.
    Down(String, Cause),
}

/// A problem as seen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub kind: Kind,
    pub severity: Severity,
    pub title: String,
    /// The state in words, for the timeline.
    pub message: String,
    pub chains: Vec<String>,
    pub upstreams: Vec<UpstreamRef>,
    pub factor: Option<String>,
    pub evidence: Option<Evidence>,
    /// What must change for an update to be worth telling (members, severity, counts).
    signature: String,
    /// Opens without waiting `open_after`.
    immediate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Open(Finding),
    Update(Finding),
    Resolve { key: String, message: String },
}

#[derive(Debug)]
struct Cond {
    since: u64,
    last_seen: u64,
    open: bool,
    /// The finding as last seen (what a resolution message describes)…
    last: Finding,
    /// …and as last told (opened or updated), and when: changes are told at most once
    /// per `resolve_after`, so a flapping member does not flood the timeline; an
    /// escalation is told at once.
    told: Finding,
    told_at: u64,
    /// Most upstreams it held at once (a correlated failure's title keeps its extent).
    peak: usize,
}

#[derive(Debug)]
struct HeadTrack {
    number: u64,
    moved_at: u64,
    /// Milliseconds per block, smoothed.
    block_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Detector {
    params: Params,
    conds: BTreeMap<String, Cond>,
    heads: HashMap<String, HeadTrack>,
}

/// What a correlated failure's upstreams share.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Factor {
    /// Cloud and region: the most specific.
    Place(String),
    Operator(String),
    Cloud(String),
}

impl Factor {
    fn of(u: &UpstreamSample) -> Vec<Factor> {
        let mut out = Vec::new();
        if let (Some(c), Some(r)) = (&u.cloud, &u.region) {
            out.push(Factor::Place(format!("{c}/{r}")));
        }
        out.push(Factor::Operator(u.operator.clone()));
        if let Some(c) = &u.cloud {
            out.push(Factor::Cloud(c.clone()));
        }
        out
    }

    fn specificity(&self) -> u8 {
        match self {
            Factor::Place(_) => 3,
            Factor::Operator(_) => 2,
            Factor::Cloud(_) => 1,
        }
    }

    fn key(&self) -> String {
        match self {
            Factor::Place(v) => format!("correlated:place:{v}"),
            Factor::Operator(v) => format!("correlated:operator:{v}"),
            Factor::Cloud(v) => format!("correlated:cloud:{v}"),
        }
    }

    fn from_key(key: &str) -> Option<Factor> {
        let rest = key.strip_prefix("correlated:")?;
        let (kind, value) = rest.split_once(':')?;
        let value = value.to_owned();
        match kind {
            "place" => Some(Factor::Place(value)),
            "operator" => Some(Factor::Operator(value)),
            "cloud" => Some(Factor::Cloud(value)),
            _ => None,
        }
    }

    fn value(&self) -> &str {
        match self {
            Factor::Place(v) | Factor::Operator(v) | Factor::Cloud(v) => v,
        }
    }

    /// "all on aws/us-east-1", "all run by infura".
    fn phrase(&self) -> String {
        match self {
            Factor::Place(v) | Factor::Cloud(v) => format!("all on {v}"),
            Factor::Operator(v) => format!("all run by {v}"),
        }
    }
}

impl Detector {
    pub fn new(params: Params) -> Self {
        Detector {
            params,
            conds: BTreeMap::new(),
            heads: HashMap::new(),
        }
    }

    /// Takes over an incident that was open when Outlast stopped: it continues if the
    /// problem is seen again, and resolves `resolve_after` from now if not.
    pub fn adopt(&mut self, incident: &Incident, now: Time) {
        let last = Finding {
            key: incident.key.clone(),
            kind: incident.kind,
            severity: incident.severity,
            title: incident.title.clone(),
            message: String::new(),
            chains: incident.chains.clone(),
            upstreams: incident.upstreams.clone(),
            factor: incident.factor.clone(),
            evidence: incident.evidence.clone(),
            signature: String::new(),
            immediate: false,
        };
        self.conds.insert(
            incident.key.clone(),
            Cond {
                since: incident.started.0,
                last_seen: now.0,
                open: true,
                peak: incident.upstreams.len(),
                told: last.clone(),
                told_at: now.0,
                last,
            },
        );
    }

    pub fn evaluate(&mut self, s: &Sample) -> Vec<Change> {
        let now = s.at;
        let mut found: Vec<Finding> = Vec::new();
        // Individual `down:` keys kept alive because their upstream is part of a group.
        let mut held: HashSet<String> = HashSet::new();

        let all: Vec<&UpstreamSample> = s.chains.iter().flat_map(|c| &c.upstreams).collect();
        // One cause, one incident: every upstream of every chain failing to connect is
        // this host's network (or DNS, or firewall), not many providers at once.
        if let Some(f) = unreachable_everywhere(s, &all) {
            let mut found = vec![f];
            found.extend(
                all.iter()
                    .filter_map(|u| u.ban.as_ref().map(|b| lying(u, b))),
            );
            return self.hysteresis(found, &held, s);
        }
        let mut down: Vec<&UpstreamSample> = all
            .iter()
            .copied()
            .filter(|u| matches!(u.health, Health::Down(..)) && u.ban.is_none())
            .collect();

        // Correlated failures: open ones keep their factor's down upstreams, then new groups.
        let open_groups: Vec<Factor> = self
            .conds
            .iter()
            .filter(|(_, c)| c.open)
            .filter_map(|(k, _)| Factor::from_key(k))
            .collect();
        for factor in open_groups {
            let (members, rest): (Vec<_>, Vec<_>) = down
                .into_iter()
                .partition(|u| Factor::of(u).contains(&factor));
            down = rest;
            if !members.is_empty() {
                found.push(self.group(&factor, &members, s, &mut held));
            }
        }
        while let Some((factor, members)) = best_group(&down, &all) {
            down.retain(|u| !members.iter().any(|m| m.who == u.who));
            found.push(self.group(&factor, &members, s, &mut held));
        }
        for u in &down {
            found.push(upstream_down(u));
        }

        for chain in &s.chains {
            for u in &chain.upstreams {
                if let Some(ban) = &u.ban {
                    found.push(lying(u, ban));
                } else if u.health == Health::Up
                    && let Some(lag) = u.lag.filter(|l| *l >= self.params.lag_blocks)
                {
                    found.push(lagging(u, lag, self.params.lag_blocks));
                }
            }
            let serving = serving_operators(chain);
            if let Some(f) = availability(chain, &serving) {
                found.push(f);
            }
            if let Some(f) = self.stalled(chain, serving.len(), now) {
                found.push(f);
            }
        }
        self.hysteresis(found, &held, s)
    }

    /// A correlated failure finding; its members' own `down:` incidents are held open
    /// until the group opens (then they are resolved into it).
    fn group(
        &self,
        factor: &Factor,
        members: &[&UpstreamSample],
        s: &Sample,
        held: &mut HashSet<String>,
    ) -> Finding {
        let key = factor.key();
        let mut chains: Vec<String> = members.iter().map(|u| u.who.chain.clone()).collect();
        chains.dedup();
        let total: usize = s
            .chains
            .iter()
            .filter(|c| chains.contains(&c.name))
            .map(|c| c.upstreams.len())
            .sum();
        let peak = self
            .conds
            .get(&key)
            .map_or(0, |c| c.peak)
            .max(members.len());
        let mut upstreams: Vec<UpstreamRef> = members.iter().map(|u| u.who.clone()).collect();
        upstreams.sort();
        for u in &upstreams {
            held.insert(format!("down:{u}"));
        }
        let list: Vec<String> = members
            .iter()
            .map(|u| {
                let why = match &u.health {
                    Health::Down(why, _) => why.as_str(),
                    _ => "",
                };
                format!("{} ({}): {why}", u.who, u.operator)
            })
            .collect();
        // Hung (connections open, nothing answers: the usual shape of a cloud outage)
        // reads differently from refused, though both are out of rotation.
        let state = if members
            .iter()
            .all(|u| matches!(u.health, Health::Down(_, Cause::Unresponsive)))
        {
            "not answering"
        } else {
            "down"
        };
        Finding {
            title: format!("{peak} of {total} upstreams {state}, {}", factor.phrase()),
            message: format!(
                "{} {state} together, {}. {}",
                plural(members.len(), "upstream"),
                factor.phrase(),
                list.join("; ")
            ),
            kind: Kind::CorrelatedFailure,
            severity: Severity::Major,
            chains,
            signature: upstreams
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(","),
            upstreams,
            factor: Some(factor.value().to_owned()),
            evidence: None,
            immediate: false,
            key,
        }
    }

    fn stalled(&mut self, chain: &ChainSample, serving: usize, now: u64) -> Option<Finding> {
        let head = chain.head?;
        let track = self.heads.entry(chain.name.clone()).or_insert(HeadTrack {
            number: head,
            moved_at: now,
            block_ms: None,
        });
        if head > track.number {
            let sample = now.saturating_sub(track.moved_at) / (head - track.number);
            track.block_ms = Some(track.block_ms.map_or(sample, |b| (b * 3 + sample) / 4));
            track.number = head;
            track.moved_at = now;
            return None;
        }
        let block_ms = track.block_ms?;
        let limit = (block_ms * self.params.stall_block_times).max(self.params.stall_min);
        let still = now.saturating_sub(track.moved_at);
        if serving == 0 || still <= limit {
            return None;
        }
        Some(Finding {
            key: format!("stall:{}", chain.name),
            kind: Kind::HeadStalled,
            severity: Severity::Major,
            title: format!("{}: no new block after #{}", chain.name, track.number),
            message: format!(
                "The consensus head has stayed at block {} for {} s; blocks usually come every {:.1} s. Upstreams answer, but the chain does not move.",
                track.number,
                still / 1000,
                block_ms as f64 / 1000.0
            ),
            chains: vec![chain.name.clone()],
            upstreams: Vec::new(),
            factor: None,
            evidence: None,
            signature: String::new(),
            immediate: false,
        })
    }

    fn hysteresis(
        &mut self,
        found: Vec<Finding>,
        held: &HashSet<String>,
        s: &Sample,
    ) -> Vec<Change> {
        let now = s.at;
        let p = self.params;
        let mut changes = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for f in found {
            seen.insert(f.key.clone());
            let cond = self.conds.entry(f.key.clone()).or_insert_with(|| Cond {
                since: now,
                last_seen: now,
                open: false,
                last: f.clone(),
                told: f.clone(),
                told_at: now,
                peak: 0,
            });
            cond.last_seen = now;
            cond.peak = cond.peak.max(f.upstreams.len());
            if !cond.open {
                cond.last = f.clone();
                if f.immediate || now.saturating_sub(cond.since) >= p.open_after {
                    cond.open = true;
                    cond.told = f.clone();
                    cond.told_at = now;
                    let members = f.upstreams.clone();
                    let grouped = f.kind == Kind::CorrelatedFailure;
                    let title = f.title.clone();
                    changes.push(Change::Open(f));
                    if grouped {
                        for m in members {
                            let key = format!("down:{m}");
                            if self.conds.remove(&key).is_some_and(|c| c.open) {
                                changes.push(Change::Resolve {
                                    key,
                                    message: format!("Now part of a correlated failure: {title}."),
                                });
                            }
                        }
                    }
                }
            } else {
                let told = &cond.told;
                let changed = f.signature != told.signature
                    || f.severity != told.severity
                    || f.kind != told.kind;
                let escalated = f.severity > told.severity;
                if changed && (escalated || now.saturating_sub(cond.told_at) >= p.resolve_after) {
                    let mut update = f.clone();
                    if f.kind == Kind::CorrelatedFailure {
                        update.message = membership_change(told, &f);
                    }
                    cond.told = f.clone();
                    cond.told_at = now;
                    changes.push(Change::Update(update));
                }
                cond.last = f;
            }
        }
        let gone: Vec<String> = self
            .conds
            .iter()
            .filter(|(k, _)| !seen.contains(*k) && !held.contains(*k))
            .filter(|(_, c)| {
                let unseen = now.saturating_sub(c.last_seen);
                if c.open {
                    unseen >= p.resolve_after
                } else {
                    unseen >= p.open_after
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(c) = self.conds.remove(&key)
                && c.open
            {
                changes.push(Change::Resolve {
                    message: resolved_message(&c.last, s),
                    key,
                });
            }
        }
        changes
    }
}

/// The largest group of down upstreams sharing one factor, when at least two share it
/// and at least half of all upstreams with that factor are down. Ties go to more
/// members, then the more specific factor, then the larger share.
fn best_group<'a>(
    down: &[&'a UpstreamSample],
    all: &[&UpstreamSample],
) -> Option<(Factor, Vec<&'a UpstreamSample>)> {
    let mut by_factor: BTreeMap<Factor, Vec<&'a UpstreamSample>> = BTreeMap::new();
    for u in down {
        for f in Factor::of(u) {
            by_factor.entry(f).or_default().push(u);
        }
    }
    by_factor
        .into_iter()
        .filter_map(|(f, members)| {
            let total = all.iter().filter(|u| Factor::of(u).contains(&f)).count();
            (members.len() >= 2 && members.len() * 2 >= total).then(|| {
                let rank = (
                    members.len(),
                    f.specificity(),
                    members.len() * 1000 / total.max(1),
                );
                (rank, f, members)
            })
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, f, members)| (f, members))
}

fn labels(u: &UpstreamSample) -> String {
    match (&u.cloud, &u.region) {
        (Some(c), Some(r)) => format!("{}, {c}/{r}", u.operator),
        (Some(c), None) => format!("{}, {c}", u.operator),
        _ => u.operator.clone(),
    }
}

fn upstream_down(u: &UpstreamSample) -> Finding {
    let (why, state) = match &u.health {
        Health::Down(why, Cause::Unresponsive) => (why.as_str(), "is not answering"),
        Health::Down(why, _) => (why.as_str(), "is down"),
        _ => ("", "is down"),
    };
    Finding {
        key: format!("down:{}", u.who),
        kind: Kind::UpstreamDown,
        severity: Severity::Minor,
        title: format!("{}: upstream {} {state}", u.who.chain, u.who.name),
        message: format!(
            "{} ({}) is out of rotation: {why}. Calls go to the other upstreams.",
            u.who.name,
            labels(u)
        ),
        chains: vec![u.who.chain.clone()],
        upstreams: vec![u.who.clone()],
        factor: None,
        evidence: None,
        signature: String::new(),
        immediate: false,
    }
}

fn lagging(u: &UpstreamSample, lag: u64, limit: u64) -> Finding {
    Finding {
        key: format!("lag:{}", u.who),
        kind: Kind::UpstreamLagging,
        severity: Severity::Minor,
        title: format!("{}: upstream {} is lagging", u.who.chain, u.who.name),
        message: format!(
            "{} ({}) is {lag} blocks behind the consensus head (the limit is {limit}); calls about newer blocks go elsewhere.",
            u.who.name,
            labels(u)
        ),
        chains: vec![u.who.chain.clone()],
        upstreams: vec![u.who.clone()],
        factor: None,
        evidence: None,
        signature: String::new(),
        immediate: false,
    }
}

fn lying(u: &UpstreamSample, ban: &Ban) -> Finding {
    let e = &ban.evidence;
    // The summary may quote whole proof nodes: the timeline gets its start, the
    // evidence keeps all of it.
    let mut message = format!(
        "{} ({}) was caught lying: {}",
        u.who.name,
        labels(u),
        cut(&e.summary, 240)
    );
    if let (Some(answered), Some(expected)) = (&e.answered, &e.expected) {
        let at = e
            .block
            .map(|b| format!(" at block {b}"))
            .unwrap_or_default();
        let method = e.method.as_deref().unwrap_or("a call");
        message.push_str(&format!(
            ". On {method}{at} it answered {answered}; the verified answer is {expected}"
        ));
    }
    message.push_str(&format!(
        ". Banned until {}; the false answer was not served.",
        ban.until.rfc3339()
    ));
    Finding {
        key: format!("lie:{}", u.who),
        kind: Kind::UpstreamLying,
        severity: Severity::Major,
        title: format!("{}: upstream {} was caught lying", u.who.chain, u.who.name),
        message,
        chains: vec![u.who.chain.clone()],
        upstreams: vec![u.who.clone()],
        factor: None,
        evidence: Some(e.clone()),
        signature: String::new(),
        immediate: true,
    }
}

/// Every upstream of every chain (at least two) out because it cannot be connected to.
fn unreachable_everywhere(s: &Sample, all: &[&UpstreamSample]) -> Option<Finding> {
    let unreachable = |u: &&UpstreamSample| {
        matches!(u.health, Health::Down(_, Cause::Unreachable)) && u.ban.is_none()
    };
    if all.len() < 2 || !all.iter().all(unreachable) {
        return None;
    }
    let example = all
        .iter()
        .find_map(|u| match &u.health {
            Health::Down(why, _) => Some(format!("{}: {why}", u.who)),
            _ => None,
        })
        .unwrap_or_default();
    let chains: Vec<String> = s.chains.iter().map(|c| c.name.clone()).collect();
    let mut upstreams: Vec<UpstreamRef> = all.iter().map(|u| u.who.clone()).collect();
    upstreams.sort();
    Some(Finding {
        key: "unreachable:all".into(),
        kind: Kind::ProvidersUnreachable,
        severity: Severity::Critical,
        title: "Outlast cannot reach any of its providers".into(),
        message: format!(
            "All {} upstreams of {} fail to connect (e.g. {example}). Every chain is down: calls get -32002. One cause is likely, on this host: check its network, DNS and firewall.",
            all.len(),
            chains.join(", ")
        ),
        chains,
        upstreams,
        factor: None,
        evidence: None,
        signature: String::new(),
        immediate: false,
    })
}

/// Operators with at least one upstream serving (up and not banned).
fn serving_operators(chain: &ChainSample) -> BTreeSet<&str> {
    chain
        .upstreams
        .iter()
        .filter(|u| u.health == Health::Up && u.ban.is_none())
        .map(|u| u.operator.as_str())
        .collect()
}

/// Chain degraded (fewer serving operators than the quorum needs) or down (none).
/// Unknown while any upstream is unchecked and the chain looks short.
fn availability(chain: &ChainSample, serving: &BTreeSet<&str>) -> Option<Finding> {
    let operators: BTreeSet<&str> = chain
        .upstreams
        .iter()
        .map(|u| u.operator.as_str())
        .collect();
    let needed = chain.quorum.min(operators.len()).max(1);
    let unchecked = chain.upstreams.iter().any(|u| u.health == Health::Unknown);
    if serving.len() >= needed || unchecked {
        return None;
    }
    let not_serving: Vec<UpstreamRef> = chain
        .upstreams
        .iter()
        .filter(|u| !(u.health == Health::Up && u.ban.is_none()))
        .map(|u| u.who.clone())
        .collect();
    let (kind, severity, title, message) = if serving.is_empty() {
        (
            Kind::ChainDown,
            Severity::Critical,
            format!("{} is down: no upstream is serving", chain.name),
            format!(
                "None of the {} upstreams of {} is serving; calls get error -32002 until one is back.",
                chain.upstreams.len(),
                chain.name
            ),
        )
    } else {
        (
            Kind::ChainDegraded,
            Severity::Major,
            format!(
                "{} is degraded: fewer independent operators than its quorum",
                chain.name
            ),
            format!(
                "{} serving ({}), the quorum is {}: answers are still served, but fewer independent operators stand behind them.",
                plural(serving.len(), "operator"),
                serving.iter().copied().collect::<Vec<_>>().join(", "),
                chain.quorum
            ),
        )
    };
    Some(Finding {
        key: format!("chain:{}", chain.name),
        kind,
        severity,
        title,
        message,
        chains: vec![chain.name.clone()],
        upstreams: not_serving,
        factor: None,
        evidence: None,
        signature: format!("{}", serving.len()),
        immediate: false,
    })
}

fn membership_change(before: &Finding, now: &Finding) -> String {
    let back: Vec<String> = before
        .upstreams
        .iter()
        .filter(|u| !now.upstreams.contains(u))
        .map(|u| u.to_string())
        .collect();
    let new: Vec<String> = now
        .upstreams
        .iter()
        .filter(|u| !before.upstreams.contains(u))
        .map(|u| u.to_string())
        .collect();
    let mut parts = Vec::new();
    if !new.is_empty() {
        parts.push(format!("{} down too", new.join(", ")));
    }
    if !back.is_empty() {
        parts.push(format!("{} serving again", back.join(", ")));
    }
    parts.push(format!("{} still down", now.upstreams.len()));
    format!("{}.", parts.join("; "))
}

/// Why it ended, in words, from what the sample shows now.
fn resolved_message(last: &Finding, s: &Sample) -> String {
    let state = |who: &UpstreamRef| {
        s.chains
            .iter()
            .flat_map(|c| &c.upstreams)
            .find(|u| u.who == *who)
    };
    let first = last.upstreams.first();
    match last.kind {
        Kind::UpstreamDown => match first.and_then(state).map(|u| &u.health) {
            Some(Health::Down(..)) => "No longer tracked on its own.".into(),
            _ => format!(
                "{} is serving again.",
                first.map_or("The upstream", |u| u.name.as_str())
            ),
        },
        Kind::UpstreamLagging => match first.and_then(state) {
            Some(u) if u.health == Health::Up => format!(
                "Caught up: {} blocks behind the head.",
                u.lag.unwrap_or_default()
            ),
            _ => "No longer lagging (it is out of rotation now).".into(),
        },
        Kind::UpstreamLying => {
            "The ban is over; it is back in rotation and checked like every upstream.".into()
        }
        Kind::CorrelatedFailure => format!(
            "All {} upstreams {} are serving again.",
            last.upstreams.len(),
            last.factor
                .as_deref()
                .map(|f| format!("on {f}"))
                .unwrap_or_default()
        ),
        Kind::ProvidersUnreachable => "Providers can be reached again.".into(),
        // People's incidents never come from the detector.
        Kind::Manual | Kind::Maintenance => "Resolved.".into(),
        Kind::ChainDegraded | Kind::ChainDown => {
            let chain = last
                .chains
                .first()
                .and_then(|n| s.chains.iter().find(|c| &c.name == n));
            match chain {
                Some(c) => format!(
                    "{} serving again.",
                    plural(serving_operators(c).len(), "independent operator")
                ),
                None => "Serving again.".into(),
            }
        }
        Kind::HeadStalled => {
            let head = last
                .chains
                .first()
                .and_then(|n| s.chains.iter().find(|c| &c.name == n))
                .and_then(|c| c.head);
            match head {
                Some(h) => format!("New blocks again: the head is at {h}."),
                None => "New blocks again.".into(),
            }
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

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Up (`Some(true)`), down (`Some(false)`) or unknown (`None`) per uptime series: each
/// upstream (`chain/name`: serving, caught up and not banned) and each chain (`chain`:
/// at least one upstream serving).
pub fn uptime_states(s: &Sample, lag_blocks: u64) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    for chain in &s.chains {
        let mut any_known = false;
        let mut any_up = false;
        for u in &chain.upstreams {
            let state = match &u.health {
                Health::Unknown => None,
                Health::Down(..) => Some(false),
                Health::Up => Some(u.ban.is_none() && u.lag.is_none_or(|l| l < lag_blocks.max(1))),
            };
            any_known |= state.is_some();
            any_up |= u.health == Health::Up && u.ban.is_none();
            out.push((u.who.to_string(), state));
        }
        out.push((chain.name.clone(), any_known.then_some(any_up)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        open_after: 1_000,
        resolve_after: 2_000,
        lag_blocks: 5,
        stall_block_times: 3,
        stall_min: 5_000,
    };

    /// One chain `c` of upstreams given as (name, operator, cloud/region, health).
    fn sample(at: u64, head: u64, ups: &[(&str, &str, &str, Health)]) -> Sample {
        Sample {
            at,
            chains: vec![ChainSample {
                name: "c".into(),
                quorum: 2,
                head: Some(head),
                upstreams: ups
                    .iter()
                    .map(|(name, op, place, health)| {
                        let (cloud, region) = match place.split_once('/') {
                            Some((c, r)) => (Some(c.to_owned()), Some(r.to_owned())),
                            None => (None, None),
                        };
                        UpstreamSample {
                            who: UpstreamRef {
                                chain: "c".into(),
                                name: (*name).into(),
                            },
                            operator: (*op).into(),
                            cloud,
                            region,
                            health: health.clone(),
                            lag: Some(0),
                            ban: None,
                        }
                    })
                    .collect(),
            }],
        }
    }

    fn down() -> Health {
        Health::Down("connect failed".into(), Cause::Failing)
    }

    /// Runs samples through one detector; returns (kind of change, key) per change.
    fn run(samples: &[Sample]) -> Vec<(u64, &'static str, String)> {
        let mut d = Detector::new(P);
        let mut out = Vec::new();
        for s in samples {
            for c in d.evaluate(s) {
                out.push(match c {
                    Change::Open(f) => (s.at, "open", f.key),
                    Change::Update(f) => (s.at, "update", f.key),
                    Change::Resolve { key, .. } => (s.at, "resolve", key),
                });
            }
        }
        out
    }

    fn five(at: u64, dead: &[&str]) -> Sample {
        let ups = [
            ("a", "infura", "aws/us-east-1"),
            ("b", "alchemy", "aws/us-east-1"),
            ("c", "publicnode", "gcp/europe-west1"),
            ("d", "drpc", "hetzner/fsn1"),
            ("e", "self", "self/home"),
        ];
        let ups: Vec<_> = ups
            .iter()
            .map(|(n, o, p)| {
                let h = if dead.contains(n) { down() } else { Health::Up };
                (*n, *o, *p, h)
            })
            .collect();
        sample(at, 10, &ups)
    }

    #[test]
    fn a_down_upstream_opens_after_open_after_and_resolves_after_resolve_after() {
        let got = run(&[
            five(0, &["c"]),
            five(500, &["c"]),
            five(1_000, &["c"]),
            five(1_500, &[]),
            five(3_000, &[]),
            five(3_500, &[]),
        ]);
        assert_eq!(
            got,
            [
                (1_000, "open", "down:c/c".to_owned()),
                (3_000, "resolve", "down:c/c".to_owned())
            ]
        );
    }

    #[test]
    fn flapping_makes_one_incident_and_a_blip_makes_none() {
        let mut samples = vec![five(0, &["d"]), five(300, &[])];
        assert!(run(&samples).is_empty(), "a blip shorter than open_after");
        samples.clear();
        for i in 0..20 {
            let dead: &[&str] = if i % 2 == 0 { &["d"] } else { &[] };
            samples.push(five(i * 400, dead));
        }
        let got = run(&samples);
        assert_eq!(got, [(1_600, "open", "down:c/d".to_owned())], "{got:?}");
    }

    #[test]
    fn upstreams_down_together_on_one_place_are_one_correlated_incident() {
        let mut d = Detector::new(P);
        d.evaluate(&five(0, &["a", "b"]));
        let changes = d.evaluate(&five(1_000, &["a", "b"]));
        let [Change::Open(f)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!(f.key, "correlated:place:aws/us-east-1");
        assert_eq!(f.title, "2 of 5 upstreams down, all on aws/us-east-1");
        assert_eq!(f.upstreams.len(), 2);
        // One comes back: told once the update interval (resolve_after) has passed,
        // with flaps in between folded into it; both back: resolved after resolve_after.
        assert!(d.evaluate(&five(1_500, &["b"])).is_empty());
        assert!(d.evaluate(&five(2_000, &["a", "b"])).is_empty());
        let changes = d.evaluate(&five(3_000, &["b"]));
        assert!(
            matches!(&changes[..], [Change::Update(f)] if f.message == "c/a serving again; 1 still down."),
            "{changes:?}"
        );
        assert!(d.evaluate(&five(3_500, &[])).is_empty());
        let changes = d.evaluate(&five(5_500, &[]));
        assert!(
            matches!(&changes[..], [Change::Resolve { key, .. }] if key == "correlated:place:aws/us-east-1"),
            "{changes:?}"
        );
    }

    #[test]
    fn open_single_incidents_are_folded_into_a_later_group() {
        let got = run(&[
            five(0, &["a"]),
            five(1_000, &["a"]),
            five(1_200, &["a", "b"]),
            five(2_200, &["a", "b"]),
        ]);
        assert_eq!(
            got,
            [
                (1_000, "open", "down:c/a".to_owned()),
                (2_200, "open", "correlated:place:aws/us-east-1".to_owned()),
                (2_200, "resolve", "down:c/a".to_owned()),
            ]
        );
    }

    #[test]
    fn unrelated_failures_are_not_grouped() {
        // c and d share nothing; the chain keeps 3 operators, above its quorum of 2.
        let got = run(&[five(0, &["c", "d"]), five(1_000, &["c", "d"])]);
        assert_eq!(
            got,
            [
                (1_000, "open", "down:c/c".to_owned()),
                (1_000, "open", "down:c/d".to_owned())
            ]
        );
    }

    #[test]
    fn losing_quorum_degrades_the_chain_and_losing_all_escalates_it() {
        let two =
            |at, a: Health, b: Health| sample(at, 10, &[("a", "x", "", a), ("b", "y", "", b)]);
        let mut d = Detector::new(P);
        d.evaluate(&two(0, down(), Health::Up));
        let changes = d.evaluate(&two(1_000, down(), Health::Up));
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Open(f) if f.kind == Kind::ChainDegraded)),
            "{changes:?}"
        );
        let changes = d.evaluate(&two(1_500, down(), down()));
        assert!(
            changes.iter().any(|c| matches!(c, Change::Update(f) if f.kind == Kind::ChainDown && f.severity == Severity::Critical)),
            "{changes:?}"
        );
    }

    #[test]
    fn a_chain_with_fewer_operators_than_its_quorum_is_not_degraded_by_that_alone() {
        let got = run(&[
            sample(0, 1, &[("a", "x", "", Health::Up)]),
            sample(2_000, 1, &[("a", "x", "", Health::Up)]),
        ]);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_head_that_stops_moving_is_stalled_and_resolves_when_it_moves() {
        let ups = [("a", "x", "", Health::Up), ("b", "y", "", Health::Up)];
        let mut samples: Vec<Sample> = (0..5).map(|i| sample(i * 1_000, 10 + i, &ups)).collect();
        // Blocks every second; the limit is max(3 blocks, 5 s) = 5 s of no new block.
        samples.extend((5..12).map(|i| sample(i * 1_000, 14, &ups)));
        samples.push(sample(12_000, 15, &ups));
        samples.push(sample(14_000, 16, &ups));
        let got = run(&samples);
        assert_eq!(
            got,
            [
                (11_000, "open", "stall:c".to_owned()),
                (14_000, "resolve", "stall:c".to_owned())
            ]
        );
    }

    #[test]
    fn lagging_opens_only_past_the_limit() {
        let mut s = five(0, &[]);
        s.chains[0].upstreams[2].lag = Some(4);
        let mut later = s.clone();
        later.at = 1_000;
        assert!(run(&[s.clone(), later.clone()]).is_empty());
        s.chains[0].upstreams[2].lag = Some(5);
        later.chains[0].upstreams[2].lag = Some(9);
        assert_eq!(run(&[s, later]), [(1_000, "open", "lag:c/c".to_owned())]);
    }

    #[test]
    fn a_lie_opens_at_once() {
        let mut s = five(0, &[]);
        s.chains[0].upstreams[3].ban = Some(Ban {
            until: Time(60_000),
            evidence: Evidence {
                summary: "its balance proof does not match the state root".into(),
                check: Some("proof".into()),
                method: Some("eth_getBalance".into()),
                block: Some(10),
                answered: Some("0x0".into()),
                expected: Some("0x21e19e0c9bab2400000".into()),
            },
        });
        let mut d = Detector::new(P);
        let changes = d.evaluate(&s);
        let [Change::Open(f)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!(f.kind, Kind::UpstreamLying);
        assert!(f.message.contains("answered 0x0"), "{}", f.message);
    }

    #[test]
    fn uptime_counts_lagging_and_banned_as_not_up() {
        let mut s = five(0, &["a"]);
        s.chains[0].upstreams[1].lag = Some(7);
        let states: HashMap<String, Option<bool>> = uptime_states(&s, 5).into_iter().collect();
        assert_eq!(states["c/a"], Some(false));
        assert_eq!(states["c/b"], Some(false));
        assert_eq!(states["c/c"], Some(true));
        assert_eq!(states["c"], Some(true));
    }
}
