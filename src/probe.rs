//! `outlast probe`: measures every configured upstream once, from this machine, all at
//! once, and renders one table per chain that says which upstreams are usable and why:
//! chain id, head, lag, latency, and capabilities (archive, `eth_getProof`, WebSocket).
//!
//! `probe` does the I/O, within one deadline for everything (the `[routing]` connect
//! plus request timeout, at most `MAX_BUDGET`); ranking (`ChainReport::ranked`) and
//! rendering (`Display for Report`) are pure and tested with hand-made reports.
//!
//! Never starts the gateway's background tasks, never changes an upstream's health,
//! never retries, and never prints a URL: upstreams are shown by name.

use std::{
    collections::BTreeMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::time::timeout_at;

use crate::{
    Config, RunError,
    config::UpstreamUrl,
    rpc::Call,
    upstream::{Answer, Capability, Upstream, UpstreamError},
};

/// `eth_blockNumber` calls per upstream for its latency.
pub const SAMPLES: usize = 5;
/// The whole probe takes at most this long, however long `[routing]` lets calls take.
pub const MAX_BUDGET: Duration = Duration::from_secs(5);
/// Share of the probe's time the latency samples may take; capabilities get the rest.
const SAMPLING_SHARE: f64 = 0.4;
/// A median latency at or above this is called slow.
pub const SLOW: Duration = Duration::from_millis(500);

/// Everything `outlast probe` found, chain by chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub chains: Vec<ChainReport>,
}

/// One chain's upstreams, best first (see `ChainReport::ranked`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    pub name: String,
    pub chain_id: u64,
    pub quorum: usize,
    pub rows: Vec<Row>,
}

/// One upstream as measured. `head`, `latency` and the capabilities are `None` when
/// they were not measured (the upstream is unreachable or on another chain); `websocket`
/// also when no `ws_url` is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub operator: String,
    pub tier: u8,
    pub state: State,
    /// What its `eth_chainId` answered, if it did.
    pub chain_id: Option<u64>,
    pub head: Option<u64>,
    /// Blocks behind the chain's reference head; set by `ChainReport::ranked`.
    pub lag: Option<u64>,
    pub latency: Option<Latency>,
    pub archive: Option<Capability>,
    pub get_proof: Option<Capability>,
    pub websocket: Option<Capability>,
}

/// Whether an upstream can serve its chain, from worst to best as `rank` orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Right chain, and it told its head.
    Serving,
    /// Its `eth_chainId` answered this id instead of the chain's.
    WrongChain(u64),
    /// It answered, but not usefully (HTTP error, garbage, a failed `eth_blockNumber`).
    Failing(String),
    /// No answer at all (refused, DNS, timeout).
    Unreachable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub median: Duration,
    pub max: Duration,
}

/// The head lag is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub number: u64,
    /// Distinct operators at or above it.
    pub operators: usize,
    /// Distinct operators that told their head.
    pub answered: usize,
    /// Whether `operators` reaches the chain's quorum; if not, `number` is the highest
    /// head any upstream reported.
    pub quorum_met: bool,
}

impl Row {
    pub fn usable(&self) -> bool {
        self.state == State::Serving
    }

    /// Why this row is where it is, in words.
    pub fn why(&self) -> String {
        match &self.state {
            State::Unreachable(reason) => format!("unreachable: {reason}"),
            State::Failing(reason) => format!("failing: {reason}"),
            State::WrongChain(id) => format!("wrong chain {id}"),
            State::Serving => {
                let mut why = Vec::new();
                match self.lag {
                    Some(1) => why.push("lagging 1 block".to_owned()),
                    Some(n) if n > 1 => why.push(format!("lagging {n} blocks")),
                    _ => {}
                }
                if let Some(l) = self.latency
                    && l.median >= SLOW
                {
                    why.push(format!("slow: {} ms", l.median.as_millis()));
                }
                if why.is_empty() {
                    "ok".to_owned()
                } else {
                    why.join(", ")
                }
            }
        }
    }

    fn rank(&self) -> (u8, u8, u64, Duration, &str) {
        let state = match self.state {
            State::Serving => 0,
            State::Failing(_) => 1,
            State::WrongChain(_) => 2,
            State::Unreachable(_) => 3,
        };
        (
            state,
            self.tier,
            self.lag.unwrap_or(u64::MAX),
            self.latency.map_or(Duration::MAX, |l| l.median),
            &self.name,
        )
    }
}

impl ChainReport {
    /// Sets each serving row's lag behind the reference head and orders the rows best
    /// first: serving ones, then by tier, lag, median latency and name.
    pub fn ranked(name: String, chain_id: u64, quorum: usize, rows: Vec<Row>) -> ChainReport {
        let mut chain = ChainReport {
            name,
            chain_id,
            quorum,
            rows,
        };
        let reference = chain.reference();
        for row in &mut chain.rows {
            row.lag = match (row.usable(), row.head, reference) {
                (true, Some(head), Some(r)) => Some(r.number.saturating_sub(head)),
                _ => None,
            };
        }
        chain.rows.sort_by(|a, b| a.rank().cmp(&b.rank()));
        chain
    }

    /// The newest head that `quorum` distinct operators have reached, or, when fewer
    /// operators answered, the highest head of all.
    pub fn reference(&self) -> Option<Reference> {
        let mut by_operator: BTreeMap<&str, u64> = BTreeMap::new();
        for row in self.rows.iter().filter(|r| r.usable()) {
            if let Some(head) = row.head {
                let best = by_operator.entry(&row.operator).or_default();
                *best = (*best).max(head);
            }
        }
        let mut heads: Vec<u64> = by_operator.into_values().collect();
        heads.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = self.quorum.max(1);
        let (number, quorum_met) = match heads.get(quorum - 1) {
            Some(&n) => (n, true),
            None => (*heads.first()?, false),
        };
        Some(Reference {
            number,
            operators: heads.iter().filter(|&&h| h >= number).count(),
            answered: heads.len(),
            quorum_met,
        })
    }

    pub fn usable(&self) -> bool {
        self.rows.iter().any(Row::usable)
    }
}

impl Report {
    /// Every chain has at least one usable upstream: `outlast probe` exits 0.
    pub fn usable(&self) -> bool {
        self.chains.iter().all(ChainReport::usable)
    }
}

/// Measures every upstream of every chain in `config` at once and ranks them. Takes at
/// most the `[routing]` connect plus request timeout, and never more than `MAX_BUDGET`.
pub async fn probe(config: &Config) -> Result<Report, RunError> {
    let http = crate::upstream::http_client(&config.routing);
    let total = Duration::from_millis(
        config.routing.connect_timeout_ms + config.routing.request_timeout_ms,
    )
    .min(MAX_BUDGET);
    let clock = Clock {
        deadline: tokio::time::Instant::now() + total,
        total,
    };
    let mut pending = Vec::new();
    for chain in &config.chains {
        let name: Arc<str> = Arc::from(chain.name.as_str());
        let handles: Vec<_> = chain
            .upstreams
            .iter()
            .map(|cfg| {
                let up = Arc::new(Upstream::new(&name, cfg, &config.routing, http.clone()));
                let task = measure(up.clone(), chain.chain_id, cfg.ws_url.clone(), clock);
                (up, tokio::spawn(task))
            })
            .collect();
        pending.push((chain, handles));
    }
    let mut chains = Vec::new();
    for (chain, handles) in pending {
        let mut rows = Vec::new();
        for (up, handle) in handles {
            let row = handle.await.unwrap_or_else(|e| {
                row_of(&up, State::Failing(format!("the probe itself failed: {e}")))
            });
            rows.push(row);
        }
        chains.push(ChainReport::ranked(
            chain.name.to_string(),
            chain.chain_id,
            chain.quorum,
            rows,
        ));
    }
    Ok(Report { chains })
}

/// The probe's one deadline, and how long it was, for messages.
#[derive(Clone, Copy)]
struct Clock {
    deadline: tokio::time::Instant,
    total: Duration,
}

impl Clock {
    fn out_of_time(&self) -> String {
        format!("no answer within {} ms", self.total.as_millis())
    }

    async fn capability(&self, check: impl Future<Output = Capability>) -> Capability {
        timeout_at(self.deadline, check)
            .await
            .unwrap_or_else(|_| Capability::Unknown(self.out_of_time()))
    }
}

fn row_of(up: &Upstream, state: State) -> Row {
    Row {
        name: up.name.to_string(),
        operator: up.operator.clone(),
        tier: up.tier,
        state,
        chain_id: None,
        head: None,
        lag: None,
        latency: None,
        archive: None,
        get_proof: None,
        websocket: None,
    }
}

/// One upstream: its chain id; if right, its head and latency; then its capabilities,
/// all at once.
async fn measure(
    up: Arc<Upstream>,
    expected: u64,
    ws_url: Option<UpstreamUrl>,
    clock: Clock,
) -> Row {
    let chain_id = match timeout_at(clock.deadline, up.chain_id()).await {
        Err(_) => return row_of(&up, State::Unreachable(clock.out_of_time())),
        Ok(Err(e)) => return row_of(&up, state_of(&e)),
        Ok(Ok(id)) => id,
    };
    let answered = |state| Row {
        chain_id: Some(chain_id),
        ..row_of(&up, state)
    };
    if chain_id != expected {
        return answered(State::WrongChain(chain_id));
    }
    // Latency first and alone, so no check of ours competes with it for connections.
    let (head, latency) = match sample(&up, clock).await {
        Ok(s) => s,
        Err(reason) => return answered(State::Failing(format!("eth_blockNumber: {reason}"))),
    };
    let websocket = async {
        match &ws_url {
            Some(url) => Some(clock.capability(up.supports_websocket(url)).await),
            None => None,
        }
    };
    let (archive, get_proof, websocket) = tokio::join!(
        clock.capability(up.supports_archive()),
        clock.capability(up.supports_get_proof()),
        websocket,
    );
    Row {
        head: Some(head),
        latency: Some(latency),
        archive: Some(archive),
        get_proof: Some(get_proof),
        websocket,
        ..answered(State::Serving)
    }
}

/// Up to `SAMPLES` `eth_blockNumber` calls one after the other, for at most
/// `SAMPLING_SHARE` of the probe's time (at least one call), so that the capability
/// checks after them have time left: the highest head seen and the latency of the calls
/// that answered.
async fn sample(up: &Upstream, clock: Clock) -> Result<(u64, Latency), String> {
    let stop_at = Instant::now() + clock.total.mul_f64(SAMPLING_SHARE);
    let mut took = Vec::with_capacity(SAMPLES);
    let mut head = 0;
    let mut last_error = None;
    for i in 0..SAMPLES {
        let start = Instant::now();
        if i > 0 && start >= stop_at {
            break;
        }
        match timeout_at(clock.deadline, block_number(up)).await {
            Err(_) => {
                last_error = Some(clock.out_of_time());
                break;
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Ok(Ok(n)) => {
                took.push(start.elapsed());
                head = head.max(n);
            }
        }
    }
    took.sort_unstable();
    match (took.get(took.len() / 2), took.last()) {
        (Some(&median), Some(&max)) => Ok((head, Latency { median, max })),
        _ => Err(last_error.unwrap_or_else(|| "no answer".to_owned())),
    }
}

async fn block_number(up: &Upstream) -> Result<u64, UpstreamError> {
    let call = Call {
        id: None,
        method: "eth_blockNumber".into(),
        params: None,
    };
    let malformed = UpstreamError::Malformed;
    match up.send(&[&call]).await?.pop().flatten() {
        Some(Answer::Result(raw)) => {
            let hex: String = serde_json::from_slice(&raw).map_err(|e| malformed(e.to_string()))?;
            crate::rpc::quantity::parse(&hex)
                .ok_or_else(|| malformed(format!("{hex:?} is not a quantity")))
        }
        Some(Answer::Error { message, .. }) => Err(malformed(message)),
        None => Err(malformed("no answer".into())),
    }
}

/// Nothing reached it (refused, DNS, timeout) or it answered badly.
fn state_of(e: &UpstreamError) -> State {
    match e {
        UpstreamError::Connect(detail) => State::Unreachable(plain(detail)),
        UpstreamError::Timeout(_) => State::Unreachable(e.to_string()),
        _ => State::Failing(e.to_string()),
    }
}

/// "Connection refused (os error 111)" -> "connection refused"; DNS failures say so.
fn plain(detail: &str) -> String {
    let detail = detail
        .find(" (os error ")
        .map_or(detail, |end| &detail[..end]);
    if let Some(why) = detail.strip_prefix("failed to lookup address information: ") {
        return format!("DNS lookup failed ({})", why.to_lowercase());
    }
    let mut chars = detail.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "connection failed".to_owned(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chain in &self.chains {
            write!(f, "{chain}")?;
            writeln!(f)?;
        }
        let unusable: Vec<&str> = self
            .chains
            .iter()
            .filter(|c| !c.usable())
            .map(|c| c.name.as_str())
            .collect();
        if unusable.is_empty() {
            writeln!(f, "ok: every chain has at least one usable upstream")
        } else {
            writeln!(
                f,
                "FAIL: no usable upstream for {}; calls there get -32002 until one answers",
                unusable.join(", ")
            )
        }
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (chain id {}): ", self.name, self.chain_id)?;
        match self.reference() {
            None => writeln!(f, "no upstream told its head")?,
            Some(r) if r.quorum_met => writeln!(
                f,
                "head {}, reached by {} operators (quorum {})",
                r.number, r.operators, self.quorum
            )?,
            Some(r) => writeln!(
                f,
                "head {}, the highest; only {} operator(s) answered, quorum is {}",
                r.number, r.answered, self.quorum
            )?,
        }
        let mut table = vec![
            [
                "upstream", "operator", "tier", "chain", "head", "lag", "latency", "max",
                "archive", "getProof", "ws", "why",
            ]
            .map(String::from),
        ];
        for row in &self.rows {
            let dash = || "-".to_owned();
            table.push([
                row.name.clone(),
                row.operator.clone(),
                row.tier.to_string(),
                match row.chain_id {
                    Some(id) if id == self.chain_id => "✓".to_owned(),
                    Some(id) => id.to_string(),
                    None => dash(),
                },
                row.head.map_or_else(dash, |h| h.to_string()),
                row.lag.map_or_else(dash, |l| l.to_string()),
                row.latency.map_or_else(dash, |l| millis(l.median)),
                row.latency.map_or_else(dash, |l| millis(l.max)),
                cell(row.archive.as_ref()),
                cell(row.get_proof.as_ref()),
                cell(row.websocket.as_ref()),
                row.why(),
            ]);
        }
        let mut widths = [0; 12];
        for line in &table {
            for (w, text) in widths.iter_mut().zip(line) {
                *w = (*w).max(text.chars().count());
            }
        }
        for line in &table {
            let mut out = String::from(" ");
            for (i, (text, w)) in line.iter().zip(widths).enumerate() {
                out.push(' ');
                if i + 1 == line.len() {
                    out.push_str(text);
                } else {
                    out.push_str(&format!("{text:<w$} "));
                }
            }
            writeln!(f, "{}", out.trim_end())?;
        }
        for row in &self.rows {
            for (what, cap) in [
                ("archive", &row.archive),
                ("getProof", &row.get_proof),
                ("ws", &row.websocket),
            ] {
                if let Some(Capability::Unknown(reason)) = cap {
                    writeln!(f, "  ? {} {what}: {reason}", row.name)?;
                }
            }
        }
        Ok(())
    }
}

fn cell(cap: Option<&Capability>) -> String {
    match cap {
        None => "-",
        Some(Capability::Yes) => "yes",
        Some(Capability::No) => "no",
        Some(Capability::Unknown(_)) => "?",
    }
    .to_owned()
}

/// Tenths below 10 ms (local nodes), whole milliseconds above.
fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(name: &str, operator: &str, head: u64, median_ms: u64) -> Row {
        Row {
            name: name.to_owned(),
            operator: operator.to_owned(),
            tier: 1,
            state: State::Serving,
            chain_id: Some(31337),
            head: Some(head),
            lag: None,
            latency: Some(Latency {
                median: Duration::from_millis(median_ms),
                max: Duration::from_millis(median_ms * 2),
            }),
            archive: Some(Capability::Yes),
            get_proof: Some(Capability::Yes),
            websocket: None,
        }
    }

    fn down(name: &str, state: State) -> Row {
        Row {
            name: name.to_owned(),
            operator: name.to_owned(),
            tier: 1,
            chain_id: match state {
                State::WrongChain(id) => Some(id),
                _ => None,
            },
            state,
            head: None,
            lag: None,
            latency: None,
            archive: None,
            get_proof: None,
            websocket: None,
        }
    }

    fn names(chain: &ChainReport) -> Vec<&str> {
        chain.rows.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn lag_is_measured_from_the_head_a_quorum_of_operators_reached() {
        // One operator runs ahead at 105 alone; two (distinct) operators reach 100.
        let chain = ChainReport::ranked(
            "local".into(),
            31337,
            2,
            vec![
                serving("ahead", "a", 105, 20),
                serving("b1", "b", 100, 20),
                serving("b2", "b", 101, 20),
                serving("c", "c", 100, 20),
                serving("behind", "d", 93, 20),
            ],
        );
        let r = chain.reference().expect("a reference head");
        assert_eq!((r.number, r.operators, r.quorum_met), (101, 2, true));
        let lags: Vec<(&str, Option<u64>)> = chain
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.lag))
            .collect();
        assert_eq!(
            lags,
            [
                ("ahead", Some(0)),
                ("b2", Some(0)),
                ("b1", Some(1)),
                ("c", Some(1)),
                ("behind", Some(8)),
            ]
        );
    }

    #[test]
    fn with_fewer_operators_than_quorum_lag_is_from_the_highest_head() {
        let chain = ChainReport::ranked(
            "local".into(),
            31337,
            3,
            vec![serving("a", "a", 10, 5), serving("b", "b", 7, 5)],
        );
        let r = chain.reference().expect("a reference head");
        assert_eq!((r.number, r.quorum_met), (10, false));
        assert_eq!(chain.rows[1].lag, Some(3));
        assert_eq!(chain.rows[1].why(), "lagging 3 blocks");
    }

    #[test]
    fn rows_rank_serving_first_then_tier_lag_latency() {
        let mut tier2 = serving("tier2", "t", 100, 1);
        tier2.tier = 2;
        let chain = ChainReport::ranked(
            "local".into(),
            31337,
            1,
            vec![
                down("refused", State::Unreachable("connection refused".into())),
                tier2,
                down("goerli", State::WrongChain(5)),
                serving("slow", "s", 100, 900),
                down("garbage", State::Failing("HTTP status 502".into())),
                serving("fast", "f", 100, 30),
                serving("lagging", "l", 97, 1),
            ],
        );
        assert_eq!(
            names(&chain),
            [
                "fast", "slow", "lagging", "tier2", "garbage", "goerli", "refused"
            ]
        );
        let why: Vec<String> = chain.rows.iter().map(Row::why).collect();
        assert_eq!(
            why,
            [
                "ok",
                "slow: 900 ms",
                "lagging 3 blocks",
                "ok",
                "failing: HTTP status 502",
                "wrong chain 5",
                "unreachable: connection refused",
            ]
        );
    }

    #[test]
    fn table_shows_every_upstream_with_its_reason() {
        let mut ws = serving("anvil", "self", 12, 1);
        ws.websocket = Some(Capability::Yes);
        let mut pruned = serving("pruned", "p", 10, 40);
        pruned.archive = Some(Capability::No);
        pruned.get_proof = Some(Capability::Unknown("rate limited (HTTP 429)".into()));
        let mut far = serving("far-away", "f", 12, 812);
        far.tier = 2;
        let report = Report {
            chains: vec![
                ChainReport::ranked(
                    "local".into(),
                    31337,
                    2,
                    vec![
                        down("dead", State::Unreachable("connection refused".into())),
                        pruned,
                        down("other", State::WrongChain(5)),
                        far,
                        ws,
                    ],
                ),
                ChainReport::ranked(
                    "base".into(),
                    8453,
                    2,
                    vec![down(
                        "gone",
                        State::Unreachable("no answer within 1500 ms".into()),
                    )],
                ),
            ],
        };
        let expected = "\
local (chain id 31337): head 12, reached by 2 operators (quorum 2)
  upstream  operator  tier  chain  head  lag  latency  max      archive  getProof  ws   why
  anvil     self      1     ✓      12    0    1.0 ms   2.0 ms   yes      yes       yes  ok
  pruned    p         1     ✓      10    2    40 ms    80 ms    no       ?         -    lagging 2 blocks
  far-away  f         2     ✓      12    0    812 ms   1624 ms  yes      yes       -    slow: 812 ms
  other     other     1     5      -     -    -        -        -        -         -    wrong chain 5
  dead      dead      1     -      -     -    -        -        -        -         -    unreachable: connection refused
  ? pruned getProof: rate limited (HTTP 429)

base (chain id 8453): no upstream told its head
  upstream  operator  tier  chain  head  lag  latency  max  archive  getProof  ws  why
  gone      gone      1     -      -     -    -        -    -        -         -   unreachable: no answer within 1500 ms

FAIL: no usable upstream for base; calls there get -32002 until one answers
";
        assert_eq!(report.to_string(), expected);
        assert!(!report.usable());
    }

    #[test]
    fn last_line_says_ok_when_every_chain_has_a_usable_upstream() {
        let report = Report {
            chains: vec![ChainReport::ranked(
                "local".into(),
                31337,
                1,
                vec![serving("a", "a", 1, 1)],
            )],
        };
        assert!(report.usable());
        assert!(
            report
                .to_string()
                .ends_with("\nok: every chain has at least one usable upstream\n")
        );
    }

    #[test]
    fn os_error_numbers_are_dropped_from_connect_errors() {
        assert_eq!(
            plain("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(
            plain("failed to lookup address information: Name or service not known"),
            "DNS lookup failed (name or service not known)"
        );
    }
}
