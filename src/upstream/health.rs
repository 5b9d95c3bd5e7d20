//! One upstream's health: whether it may be chosen now, and why not. Fed by every call's
//! outcome and by the background probe; read by `select` without waiting.
//!
//! States: `Unchecked` (chain id not yet confirmed: never chosen), `Ready`,
//! `CoolingDown` (after `failures_before_cooldown` failures in a row, or a 429; probed
//! back in by `upstream::probe`), `WrongChain` (disabled until its chain id matches).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::score::Stats;
use crate::config::Routing;

/// How soon an upstream that answered a wrong chain id is asked again.
const WRONG_CHAIN_RECHECK: Duration = Duration::from_secs(30);

/// A Ready upstream is taken out when more than this share of recent calls failed…
const ERROR_RATE_TRIP: f64 = 0.5;
/// …once it has answered at least this many calls.
const ERROR_RATE_MIN_SAMPLES: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unchecked,
    Ready,
    CoolingDown {
        until: Instant,
        why: String,
        cause: Cause,
    },
    /// Caught serving a false answer: out of rotation until `until`, with what it was
    /// caught at. The one record of a ban: incidents, `/status` and the bans shared
    /// through Redis all read it here.
    Banned {
        until: Instant,
        evidence: Evidence,
    },
    WrongChain {
        got: u64,
        expected: u64,
    },
}

impl Status {
    /// The state in one word, as `/status`, `/api/v1/status` and metrics show it.
    pub fn state(&self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::CoolingDown { cause, .. } => cause.state(),
            Status::Banned { .. } => "banned",
            Status::Unchecked => "unchecked",
            Status::WrongChain { .. } => "wrong-chain",
        }
    }

    /// Until when it is out of rotation (cooling down or banned), if it is.
    pub fn out_until(&self) -> Option<Instant> {
        match self {
            Status::CoolingDown { until, .. } | Status::Banned { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Why it is out of rotation (cooling down or banned), in words.
    pub fn why_out(&self) -> Option<String> {
        match self {
            Status::CoolingDown { why, .. } => Some(why.clone()),
            Status::Banned { evidence, .. } => {
                Some(format!("banned for lying: {}", evidence.summary))
            }
            _ => None,
        }
    }

    /// Every word `state` can say.
    pub const STATES: [&'static str; 6] = [
        "ready",
        "unresponsive",
        "cooling-down",
        "banned",
        "unchecked",
        "wrong-chain",
    ];
}

/// Why an upstream failed, as a kind: the status page says "not answering" for a hung
/// one and "unreachable" for a refused one; incidents group upstreams that fail alike;
/// a ban is its own state (`Status::Banned`), not a cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Could not connect: refused, no route, name not resolved.
    Unreachable,
    /// Connected, but no answer in time: hung (the usual shape of a cloud outage).
    Unresponsive,
    /// Answered, badly: HTTP errors, malformed replies, a wrong chain.
    Failing,
    /// HTTP 429.
    RateLimited,
}

impl Cause {
    /// How the state reads on `/status`, `/api/v1/status` and in metrics.
    pub fn state(self) -> &'static str {
        match self {
            Cause::Unresponsive => "unresponsive",
            Cause::Unreachable | Cause::Failing | Cause::RateLimited => "cooling-down",
        }
    }
}

/// Silences in a row (timeouts, or overtaken by a hedge) that take an upstream out at
/// once: a hung upstream should cost a call or two, not `failures_before_cooldown`
/// request timeouts.
const SILENCES_BEFORE_COOLDOWN: u32 = 2;
/// Answers to other calls in a row (mixed-up replies) that get an upstream banned.
pub const FOREIGN_REPLIES_BEFORE_BAN: u32 = 3;

/// What an upstream was caught at: enough for a person to check the claim. Kept in
/// its `Status::Banned`, shown on incidents, shared with other instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// What happened, in words.
    pub summary: String,
    /// The check it failed: `proof`, `header hash`, `quorum`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<u64>,
    /// What it answered, and what the verified answer is (each cut to 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

impl Evidence {
    /// Keeps what a provider wrote into the evidence to a size fit for a status page
    /// and a webhook: the answers to 200 characters, the summary to 2,000.
    fn bound(&mut self) {
        for text in [&mut self.answered, &mut self.expected]
            .into_iter()
            .flatten()
        {
            if text.chars().count() > 200 {
                *text = text.chars().take(199).chain(['…']).collect();
            }
        }
        if self.summary.chars().count() > 2000 {
            self.summary = self.summary.chars().take(1999).chain(['…']).collect();
        }
    }
}

/// What changed, so the caller can log transitions once instead of every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Became ready (first check passed, or back from cool-down / wrong chain).
    Ready,
    /// Taken out of rotation, with the error that did it and for how long.
    CooledDown {
        why: String,
        for_: Duration,
    },
    WrongChain {
        got: u64,
        expected: u64,
    },
    /// Caught serving a false answer: out of rotation for `for_`.
    Banned {
        why: String,
        for_: Duration,
    },
}

pub struct Health {
    state: Mutex<State>,
    /// `[routing] liar_ban_secs`: how long a repeat offender is banned.
    liar_ban: Duration,
    failures_before_cooldown: u32,
    first_cooldown: Duration,
    max_cooldown: Duration,
    /// Wakes the probe when live traffic puts the upstream in a cool-down, so it is
    /// probed back in on time rather than at its next regular check.
    pub changed: Notify,
}

#[derive(Debug)]
struct State {
    status: Status,
    consecutive_failures: u32,
    next_cooldown: Duration,
    last_error: Option<String>,
    /// When it last answered well (the status page shows it for an upstream out).
    last_success: Option<Instant>,
    /// Timeouts in a row, without an answer in between.
    silences: u32,
    stats: Stats,
    /// Times it was caught lying.
    bans: u32,
    /// Answers to other calls in a row, without a good answer in between.
    foreign_replies: u32,
}

impl Health {
    pub fn new(routing: &Routing) -> Self {
        Health::with(
            routing.failures_before_cooldown,
            Duration::from_millis(routing.cooldown_ms),
            Duration::from_millis(routing.max_cooldown_ms),
            Duration::from_secs(routing.liar_ban_secs),
        )
    }

    /// A breaker with these settings (storage gateways have their own, `[storage]`).
    pub fn with(
        failures_before_cooldown: u32,
        first: Duration,
        max_cooldown: Duration,
        liar_ban: Duration,
    ) -> Self {
        Health {
            state: Mutex::new(State {
                status: Status::Unchecked,
                consecutive_failures: 0,
                next_cooldown: first,
                last_error: None,
                last_success: None,
                silences: 0,
                stats: Stats::default(),
                bans: 0,
                foreign_replies: 0,
            }),
            liar_ban,
            failures_before_cooldown: failures_before_cooldown.max(1),
            first_cooldown: first,
            max_cooldown: max_cooldown.max(first),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data updated in one step; a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// Out of rotation at `now`: cooling down or banned, and not yet over. (When the
    /// time is up it is half-open: worth a try, as storage gateways are; upstreams are
    /// probed back in.)
    pub fn is_out(&self, now: Instant) -> bool {
        self.lock()
            .status
            .out_until()
            .is_some_and(|until| until > now)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.lock().status, Status::Ready)
    }

    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    pub fn last_success(&self) -> Option<Instant> {
        self.lock().last_success
    }

    /// A well-formed reply after `latency`: the upstream is alive.
    pub fn record_success(&self, latency: Duration) -> Transition {
        let mut s = self.lock();
        s.stats.record_success(latency);
        s.consecutive_failures = 0;
        s.silences = 0;
        s.foreign_replies = 0;
        s.last_success = Some(Instant::now());
        s.next_cooldown = self.first_cooldown;
        match s.status {
            // A ban ends by time only: an answer that was in flight when it began (or a
            // good one as a last resort) does not make a liar honest.
            Status::Banned { until, .. } if until > Instant::now() => Transition::None,
            // Answered while out (tried as a last resort): it is back.
            Status::CoolingDown { .. } | Status::Banned { .. } => {
                s.status = Status::Ready;
                Transition::Ready
            }
            _ => Transition::None,
        }
    }

    /// A call failed for the upstream's reasons (not the caller's).
    pub fn record_failure(&self, why: &str, cause: Cause, now: Instant) -> Transition {
        let mut s = self.lock();
        s.stats.record_failure();
        s.consecutive_failures += 1;
        s.last_error = Some(why.to_owned());
        if cause == Cause::Unresponsive {
            s.silences += 1;
        } else {
            s.silences = 0;
        }
        // The breaker opens on failures in a row, on silences in a row, or on a high
        // error rate that alternating successes would otherwise hide.
        let flapping =
            s.stats.samples >= ERROR_RATE_MIN_SAMPLES && s.stats.error_rate() > ERROR_RATE_TRIP;
        let silent = s.silences >= SILENCES_BEFORE_COOLDOWN;
        // Half-open (its time out is over, nothing has brought it back yet) and tried
        // again: one more failure opens the breaker again, for a doubled cool-down.
        let half_open = s.status.out_until().is_some_and(|until| until <= now);
        if (s.status == Status::Ready
            && (s.consecutive_failures >= self.failures_before_cooldown || flapping || silent))
            || half_open
        {
            self.changed.notify_one();
            let why = if flapping {
                format!(
                    "{:.0}% of recent calls failed, last: {why}",
                    s.stats.error_rate() * 100.0
                )
            } else {
                why.to_owned()
            };
            return self.cool_down(&mut s, &why, cause, None, now);
        }
        Transition::None
    }

    /// A reply to another call (`UpstreamError::ForeignReply`): a failure, and after
    /// `FOREIGN_REPLIES_BEFORE_BAN` in a row a lie (banned for `liar_ban_secs`): a
    /// provider that keeps mixing answers up cannot be trusted with the next one.
    pub fn record_foreign_reply(&self, why: &str, now: Instant) -> Transition {
        self.count_foreign_reply(why, now)
            .unwrap_or_else(|| self.record_failure(why, Cause::Failing, now))
    }

    /// Counts a reply to another call (probes' too: a cool-down must not reset the
    /// count); the ban when it is one too many in a row, else `None` (the caller
    /// records the failure its own way).
    pub fn count_foreign_reply(&self, why: &str, now: Instant) -> Option<Transition> {
        let repeat = {
            let mut s = self.lock();
            s.foreign_replies += 1;
            s.foreign_replies >= FOREIGN_REPLIES_BEFORE_BAN
        };
        repeat.then(|| {
            let why = format!(
                "{FOREIGN_REPLIES_BEFORE_BAN} answers to other calls in a row, last: {why}"
            );
            self.record_lie(
                Evidence {
                    summary: why,
                    check: Some("reply ids".to_owned()),
                    ..Evidence::default()
                },
                self.liar_ban,
                now,
            )
        })
    }

    /// Caught lying (a false proof or header, or an answer against a quorum): banned for
    /// `ban`, whatever its state (a ban already longer stays); the probe brings it back
    /// after that.
    pub fn record_lie(&self, mut evidence: Evidence, ban: Duration, now: Instant) -> Transition {
        evidence.bound();
        let mut s = self.lock();
        s.bans += 1;
        s.stats.record_failure();
        s.last_error = Some(format!("banned: {}", evidence.summary));
        let until = match &s.status {
            Status::Banned { until, .. } => (*until).max(now + ban),
            _ => now + ban,
        };
        let why = evidence.summary.clone();
        s.status = Status::Banned { until, evidence };
        self.changed.notify_one();
        Transition::Banned { why, for_: ban }
    }

    pub fn bans(&self) -> u32 {
        self.lock().bans
    }

    /// Score inputs, read by `select` without waiting on anything but this lock.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// After how long an unanswered call here is worth asking elsewhere too: its tail
    /// latency, within `[min, max]` (`min` until it has been measured).
    pub fn hedge_delay(&self, min: Duration, max: Duration) -> Duration {
        self.lock().stats.hedge_delay(min, max)
    }

    /// The circuit breaker's state in the usual words: `closed` (serving), `open`
    /// (cooling down), `half-open` (cool-down over, probe in progress).
    pub fn breaker(&self, now: Instant) -> &'static str {
        match &self.lock().status {
            Status::Ready => "closed",
            Status::CoolingDown { until, .. } | Status::Banned { until, .. } if *until > now => {
                "open"
            }
            Status::CoolingDown { .. } | Status::Banned { .. } => "half-open",
            Status::Unchecked | Status::WrongChain { .. } => "open",
        }
    }

    /// HTTP 429: back off at once, for as long as the upstream asked when it said.
    pub fn record_rate_limited(&self, retry_after: Option<Duration>, now: Instant) -> Transition {
        let mut s = self.lock();
        s.last_error = Some("rate limited (HTTP 429)".into());
        if s.status == Status::Ready {
            self.changed.notify_one();
            return self.cool_down(
                &mut s,
                "rate limited (HTTP 429)",
                Cause::RateLimited,
                retry_after,
                now,
            );
        }
        Transition::None
    }

    /// The background probe's verdict on `eth_chainId`.
    pub fn record_probe(
        &self,
        result: Result<u64, (String, Cause)>,
        expected: u64,
        now: Instant,
    ) -> Transition {
        let mut s = self.lock();
        match result {
            // A probe sent before the ban began answers after it: the ban stands.
            Ok(got)
                if got == expected
                    && matches!(s.status, Status::Banned { until, .. } if until > now) =>
            {
                Transition::None
            }
            Ok(got) if got == expected => {
                s.consecutive_failures = 0;
                s.foreign_replies = 0;
                s.next_cooldown = self.first_cooldown;
                if s.status == Status::Ready {
                    Transition::None
                } else {
                    // Back from a cool-down: its old error rate is history; let new
                    // answers rank it, or it would never be chosen to show it recovered.
                    if s.status.out_until().is_some() {
                        s.stats = Stats::default();
                    }
                    s.status = Status::Ready;
                    Transition::Ready
                }
            }
            Ok(got) => {
                s.last_error = Some(format!("wrong chain id {got} (expected {expected})"));
                let already = s.status == (Status::WrongChain { got, expected });
                s.status = Status::WrongChain { got, expected };
                if already {
                    Transition::None
                } else {
                    Transition::WrongChain { got, expected }
                }
            }
            Err((why, cause)) => {
                s.last_error = Some(why.clone());
                // A failed probe extends the cool-down (doubling); a wrong-chain upstream
                // stays disabled until a probe shows the right id.
                match s.status {
                    Status::WrongChain { .. } => Transition::None,
                    _ => self.cool_down(&mut s, &why, cause, None, now),
                }
            }
        }
    }

    fn cool_down(
        &self,
        s: &mut State,
        why: &str,
        cause: Cause,
        wanted: Option<Duration>,
        now: Instant,
    ) -> Transition {
        let for_ = wanted.unwrap_or(s.next_cooldown).min(self.max_cooldown);
        let was_cooling = s.status.out_until().is_some();
        s.next_cooldown = (s.next_cooldown * 2).min(self.max_cooldown);
        s.status = Status::CoolingDown {
            until: now + for_,
            why: why.to_owned(),
            cause,
        };
        if was_cooling {
            Transition::None
        } else {
            Transition::CooledDown {
                why: why.to_owned(),
                for_,
            }
        }
    }

    /// When the probe should next look at this upstream.
    pub fn next_probe(&self, now: Instant, regular: Duration) -> Duration {
        match &self.lock().status {
            Status::CoolingDown { until, .. } | Status::Banned { until, .. } => {
                until.saturating_duration_since(now)
            }
            Status::Unchecked => Duration::ZERO,
            Status::Ready => regular,
            // A wrong chain id may have been a garbled answer: look again soon.
            Status::WrongChain { .. } => regular.min(WRONG_CHAIN_RECHECK),
        }
    }
}

/// A hand-made hold on an upstream: while set, `route::select` does not choose it.
#[derive(Debug, Default)]
pub struct Cordon(Mutex<Option<String>>);

impl Cordon {
    /// Why it is cordoned, if it is.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let routing = Routing {
            failures_before_cooldown: 2,
            cooldown_ms: 1000,
            max_cooldown_ms: 3000,
            ..Routing::default()
        };
        let h = Health::new(&routing);
        h.record_probe(Ok(1), 1, Instant::now());
        h
    }

    #[test]
    fn answers_to_other_calls_in_a_row_get_an_upstream_banned() {
        let routing = Routing::default();
        let h = Health::new(&routing);
        let now = Instant::now();
        h.record_probe(Ok(1), 1, now);
        // Two, then a good answer: the count starts again.
        for _ in 0..2 {
            h.record_foreign_reply("reply id 7 is not the id sent (9)", now);
        }
        h.record_success(Duration::from_millis(1));
        assert!(h.is_ready());
        for i in 1..=FOREIGN_REPLIES_BEFORE_BAN {
            let t = h.record_foreign_reply("reply id 7 is not the id sent (9)", now);
            if i < FOREIGN_REPLIES_BEFORE_BAN {
                assert!(!matches!(t, Transition::Banned { .. }), "{t:?}");
            } else {
                assert!(
                    matches!(&t, Transition::Banned { for_, .. } if *for_ == Duration::from_secs(routing.liar_ban_secs)),
                    "{t:?}"
                );
            }
        }
        assert_eq!(h.bans(), 1);
        assert!(!h.is_ready());
    }

    #[test]
    fn unchecked_upstream_is_not_ready_until_its_chain_id_matches() {
        let h = Health::new(&Routing::default());
        assert!(!h.is_ready());
        assert_eq!(
            h.record_probe(Ok(5), 1, Instant::now()),
            Transition::WrongChain {
                got: 5,
                expected: 1
            }
        );
        assert!(!h.is_ready());
        assert_eq!(h.record_probe(Ok(1), 1, Instant::now()), Transition::Ready);
        assert!(h.is_ready());
    }

    #[test]
    fn repeated_failures_cool_down_and_probe_failures_double_the_wait() {
        let h = health();
        let now = Instant::now();
        assert_eq!(
            h.record_failure("refused", Cause::Unreachable, now),
            Transition::None
        );
        assert!(h.is_ready());
        assert_eq!(
            h.record_failure("refused", Cause::Unreachable, now),
            Transition::CooledDown {
                why: "refused".into(),
                for_: Duration::from_secs(1)
            }
        );
        assert!(!h.is_ready());
        assert_eq!(
            h.next_probe(now, Duration::from_secs(300)),
            Duration::from_secs(1)
        );
        h.record_probe(Err(("still refused".into(), Cause::Unreachable)), 1, now);
        assert_eq!(
            h.next_probe(now, Duration::from_secs(300)),
            Duration::from_secs(2)
        );
        h.record_probe(Err(("still refused".into(), Cause::Unreachable)), 1, now);
        assert_eq!(
            h.next_probe(now, Duration::from_secs(300)),
            Duration::from_secs(3),
            "capped"
        );
        assert_eq!(h.record_probe(Ok(1), 1, now), Transition::Ready);
    }

    #[test]
    fn a_ban_ends_by_time_only() {
        let h = health();
        let now = Instant::now();
        h.record_probe(Ok(1), 1, now);
        h.record_lie(Evidence::default(), Duration::from_secs(60), now);
        // A probe and a call that were in flight when the ban began answer well.
        assert_eq!(h.record_probe(Ok(1), 1, now), Transition::None);
        assert_eq!(h.record_success(Duration::from_millis(5)), Transition::None);
        assert!(matches!(h.status(), Status::Banned { .. }));
        // Once it is over, the probe takes it back.
        let later = now + Duration::from_secs(61);
        assert_eq!(h.record_probe(Ok(1), 1, later), Transition::Ready);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let h = health();
        let now = Instant::now();
        h.record_failure("HTTP 502", Cause::Failing, now);
        h.record_success(Duration::from_millis(5));
        h.record_failure("HTTP 502", Cause::Failing, now);
        assert!(h.is_ready());
    }

    #[test]
    fn two_silences_in_a_row_take_an_upstream_out_as_unresponsive() {
        let routing = Routing {
            failures_before_cooldown: 5,
            ..Routing::default()
        };
        let h = Health::new(&routing);
        h.record_probe(Ok(1), 1, Instant::now());
        let now = Instant::now();
        h.record_failure("no answer within 10000 ms", Cause::Unresponsive, now);
        h.record_success(Duration::from_millis(5));
        h.record_failure("no answer within 10000 ms", Cause::Unresponsive, now);
        assert!(h.is_ready(), "a success in between: not silent in a row");
        assert!(matches!(
            h.record_failure("no answer within 10000 ms", Cause::Unresponsive, now),
            Transition::CooledDown { .. }
        ));
        assert!(matches!(
            h.status(),
            Status::CoolingDown {
                cause: Cause::Unresponsive,
                ..
            }
        ));
        assert!(h.last_success().is_some());
    }

    #[test]
    fn rate_limit_backs_off_for_retry_after() {
        let h = health();
        let now = Instant::now();
        h.record_rate_limited(Some(Duration::from_secs(2)), now);
        assert!(!h.is_ready());
        assert_eq!(
            h.next_probe(now, Duration::from_secs(300)),
            Duration::from_secs(2)
        );
    }
}
