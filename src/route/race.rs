//! The race for something provable (a state proof, an `eth_call`'s proofs, a block's
//! body and receipts): upstreams that have the block are asked, fastest first, until one
//! answer checks against what is trusted; an upstream whose answer was false is banned
//! only once it has said it twice.
//!
//! Why twice: an honest node can answer from the wrong state for a moment. Anvil, asked
//! for `eth_getProof` by the hash of its newest block while it mines the next one,
//! answers now and then from the next block's state or from genesis (75 of 8,783 proofs
//! with a block mined every 20 ms; 407 of 8,490 at 10 ms). Such a proof is valid, for
//! another root, and false for the one asked about: banned at once, an honest upstream
//! was banned as a liar in the chaos tests (`one dead`, `recovery of all`). Asked again a
//! moment later it answers right; a liar repeats its lie and is banned then, in the same
//! request. Nothing false is ever served either way: only checked answers are.

use std::{sync::Arc, time::Duration};

use super::{
    Chain,
    ask::{Shape, ask},
    forward::note_failure,
    offload,
    resolve::Need,
    select,
    verified::ban,
};
use crate::{
    rpc::Call,
    upstream::{Answer, Upstream, UpstreamError},
};

/// How long a suspect's second answer is waited for. The proven answer waits for it
/// (the verdict is given in the same request), so a liar that hangs when it is asked
/// again holds the request back this long at most; it is then counted slow, not banned.
const AGAIN_WITHIN: Duration = Duration::from_millis(500);

/// When every answer that came back was false and none checked, they are asked for once
/// more after this pause before the read is refused (a node busy with its next block,
/// above; a liar gains nothing: its second answer is checked the same way).
const SECOND_LOOK: Duration = Duration::from_millis(50);

/// Why one upstream's answers to the race's calls prove nothing.
pub(super) enum NotProven {
    /// They are false against what is trusted: a liar's, or a node's busy with its next
    /// block (see the module's doc).
    False(String),
    /// It could not answer: an error, no such method, state it no longer keeps.
    Missing(String),
}

/// How a race ended without a proof.
pub(super) enum Unproven {
    /// Nothing false came back: nobody could prove it (or nobody answered).
    Missing,
    /// Only false answers came back, twice. Nobody is banned for them: with no valid
    /// answer beside them, the fault may be ours (a header field not known yet).
    /// `problems`: each upstream's, to say why.
    False { problems: Vec<String> },
}

/// What is raced for, said in problems and bans.
pub(super) struct Claim<'a> {
    /// The ban's check (`proof`, `block`): what the evidence says was checked.
    pub check: &'a str,
    /// What a false answer is said to be: "served a false {about}: …".
    pub about: &'a str,
}

/// Answers at least this large are checked off the serving threads (`offload`): their
/// check takes as long as what a provider sent (a block's body and receipts, proofs of
/// many slots), where a state proof of one account (a few KB, ~20 µs to check) is
/// quicker checked in place than handed over.
const OFFLOAD_BYTES: usize = 32 * 1024;

/// Asks upstreams that have block `number`, best first and at most `attempts`, for
/// `calls` until one's answers prove (`check`): that upstream and what they proved.
/// Upstreams that answered falsely meanwhile are asked again, alone; those false again
/// are banned (`claim`).
pub(super) async fn race<T: Send + 'static>(
    chain: &Chain,
    number: u64,
    calls: &[&Call<'_>],
    attempts: usize,
    claim: Claim<'_>,
    check: impl Fn(&[Option<Answer>]) -> Result<T, NotProven> + Send + Sync + 'static,
) -> Result<(Arc<Upstream>, T), Unproven> {
    let check = Arc::new(check);
    let mut problems = Vec::new();
    let mut suspects: Vec<(Arc<Upstream>, String)> = Vec::new();
    let mut second_look = false;
    let found = loop {
        problems.clear();
        suspects.clear();
        let mut order = select::plan(chain, Need::Block(number), std::time::Instant::now()).order;
        let mut left = attempts;
        // The first answer from any of `order`, judged; then the next, from the rest.
        let found = loop {
            if left == 0 || order.is_empty() {
                break None;
            }
            let shape = Shape {
                width: 1,
                max: left,
                wait_for_late: true,
            };
            let answered = ask(chain, order.clone(), shape, calls, |up, reply| {
                Some((up.clone(), reply.ok()?))
            })
            .await;
            let Ok((up, answers)) = answered else {
                break None;
            };
            order.retain(|o| !Arc::ptr_eq(o, &up));
            left -= 1;
            match judge(&check, answers).await {
                Ok(value) => break Some((up, value)),
                Err(NotProven::False(why)) => {
                    problems.push(format!("{}: false {} ({why})", up.name, claim.check));
                    suspects.push((up, why));
                }
                Err(NotProven::Missing(why)) => {
                    problems.push(format!("{}: no {} ({why})", up.name, claim.check));
                }
            }
        };
        if found.is_some() || suspects.is_empty() || second_look {
            break found;
        }
        second_look = true;
        tokio::time::sleep(SECOND_LOOK).await;
    };
    match found {
        Some(found) => {
            let asked = suspects
                .iter()
                .map(|(suspect, why)| again(chain, suspect, calls, &claim, &check, why));
            futures_util::future::join_all(asked).await;
            Ok(found)
        }
        None if suspects.is_empty() => Err(Unproven::Missing),
        None => Err(Unproven::False { problems }),
    }
}

/// `check` on `answers`: in place when they are small, else off the serving threads.
async fn judge<T: Send + 'static, C>(
    check: &Arc<C>,
    answers: Vec<Option<Answer>>,
) -> Result<T, NotProven>
where
    C: Fn(&[Option<Answer>]) -> Result<T, NotProven> + Send + Sync + 'static,
{
    let size: usize = answers.iter().flatten().map(Answer::size).sum();
    if size < OFFLOAD_BYTES {
        return check(&answers);
    }
    let check = check.clone();
    offload::run(move || check(&answers))
        .await
        .unwrap_or_else(|| Err(NotProven::Missing("its check failed here".into())))
}

/// Asks `suspect`, whose answer was false while another's proved (or went against an
/// agreed quorum), once more: banned if false again; else it was a node's moment (the
/// module's doc), logged and let be.
pub(super) async fn again<T: Send + 'static, C>(
    chain: &Chain,
    suspect: &Arc<Upstream>,
    calls: &[&Call<'_>],
    claim: &Claim<'_>,
    check: &Arc<C>,
    first: &str,
) where
    C: Fn(&[Option<Answer>]) -> Result<T, NotProven> + Send + Sync + 'static,
{
    let shape = Shape {
        width: 1,
        max: 1,
        wait_for_late: true,
    };
    let second = ask(chain, vec![suspect.clone()], shape, calls, |_, reply| {
        Some(reply)
    });
    let Ok(second) = tokio::time::timeout(AGAIN_WITHIN, second).await else {
        let why = format!(
            "served a false {}, then no answer within {} ms when asked again",
            claim.about,
            AGAIN_WITHIN.as_millis()
        );
        tracing::warn!(upstream = %suspect.name, "{why} (not banned): {first}");
        note_failure(suspect, &UpstreamError::Slow(why));
        return;
    };
    let second = match second {
        Ok(Ok(answers)) => Ok(judge(check, answers).await),
        Ok(Err(e)) => Ok(Err(NotProven::Missing(e.to_string()))),
        Err(exhausted) => Err(exhausted),
    };
    match second {
        Ok(Err(NotProven::False(why))) => ban(
            chain,
            suspect,
            claim.check,
            &format!("served a false {}, twice: {why}", claim.about),
        ),
        Ok(Ok(_)) => tracing::warn!(
            upstream = %suspect.name,
            "served a false {} once, then a valid one (not banned): {first}",
            claim.about
        ),
        Ok(Err(NotProven::Missing(why))) => tracing::warn!(
            upstream = %suspect.name,
            "served a false {}, then could not answer (not banned): {first}; then: {why}",
            claim.about
        ),
        Err(_) => tracing::warn!(
            upstream = %suspect.name,
            "served a false {}, then could not be asked again (not banned): {first}",
            claim.about
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::{
        route::testing::{call, chain, params},
        upstream::{
            fake::{self, Act},
            health::Status,
        },
    };

    const CLAIM: Claim<'static> = Claim {
        check: "proof",
        about: "proof",
    };

    /// "0x5" is what is trusted; "0x6" is false; anything else proves nothing.
    fn check(answers: &[Option<Answer>]) -> Result<(), NotProven> {
        match answers.first() {
            Some(Some(Answer::Result(r))) if &r[..] == b"\"0x5\"" => Ok(()),
            Some(Some(Answer::Result(r))) if &r[..] == b"\"0x6\"" => {
                Err(NotProven::False("said 0x6".into()))
            }
            _ => Err(NotProven::Missing("no answer".into())),
        }
    }

    fn banned(f: &fake::Fake) -> bool {
        matches!(f.upstream.health.status(), Status::Banned { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn a_false_answer_beside_a_valid_one_bans_only_when_said_again() {
        // Both false ones are in the preferred tier, so both are asked before the
        // honest one proves.
        let liar = fake::in_tier("test", "liar", "op-a", 1, |_, _| Act::result(json!("0x6")));
        let asked = AtomicUsize::new(0);
        let moment = fake::in_tier("test", "moment", "op-b", 1, move |_, _| {
            match asked.fetch_add(1, Ordering::SeqCst) {
                0 => Act::result(json!("0x6")),
                _ => Act::result(json!("0x5")),
            }
        });
        let honest = fake::in_tier("test", "honest", "op-c", 2, |_, _| {
            Act::result(json!("0x5"))
        });
        let chain = chain("proofs", 2, &[&liar, &moment, &honest]);
        let p = params("[]");
        let c = call("eth_getProof", &p);
        let found = race(&chain, 1, &[&c], 3, CLAIM, check).await;
        let Ok((up, ())) = found else {
            panic!("nothing proved")
        };
        assert_eq!(&*up.name, "honest");
        assert_eq!((liar.requests(), moment.requests()), (2, 2));
        assert!(banned(&liar), "{:?}", liar.upstream.health.status());
        let Status::Banned { evidence, .. } = liar.upstream.health.status() else {
            unreachable!()
        };
        assert_eq!(evidence.check.as_deref(), Some("proof"));
        assert!(evidence.summary.contains("twice"), "{}", evidence.summary);
        assert!(!banned(&moment), "{:?}", moment.upstream.health.status());
        assert!(!banned(&honest));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspect_that_hangs_when_asked_again_holds_the_answer_back_briefly() {
        let asked = AtomicUsize::new(0);
        let hangs = fake::in_tier("test", "hangs", "op-a", 1, move |_, _| {
            match asked.fetch_add(1, Ordering::SeqCst) {
                0 => Act::result(json!("0x6")),
                _ => Act::Hang,
            }
        });
        let honest = fake::in_tier("test", "honest", "op-b", 2, |_, _| {
            Act::result(json!("0x5"))
        });
        let chain = chain("proofs", 2, &[&hangs, &honest]);
        let p = params("[]");
        let c = call("eth_getProof", &p);
        let started = tokio::time::Instant::now();
        let found = race(&chain, 1, &[&c], 2, CLAIM, check).await;
        assert!(matches!(found, Ok((ref up, ())) if &*up.name == "honest"));
        assert_eq!(
            started.elapsed(),
            AGAIN_WITHIN,
            "held back exactly the wait"
        );
        assert_eq!(hangs.requests(), 2);
        assert!(!banned(&hangs), "{:?}", hangs.upstream.health.status());
    }

    #[tokio::test(start_paused = true)]
    async fn only_false_answers_ban_nobody_after_a_second_look() {
        let a = fake::upstream("test", "a", "op-a", |_, _| Act::result(json!("0x6")));
        let b = fake::upstream("test", "b", "op-b", |_, _| Act::result(json!("0x6")));
        let chain = chain("proofs", 2, &[&a, &b]);
        let p = params("[]");
        let c = call("eth_getProof", &p);
        match race(&chain, 1, &[&c], 2, CLAIM, check).await {
            Err(Unproven::False { problems }) => {
                assert_eq!(problems.len(), 2, "{problems:?}");
                assert!(
                    problems.iter().all(|p| p.contains("false proof")),
                    "{problems:?}"
                );
            }
            Ok(_) => panic!("a false answer proved"),
            Err(Unproven::Missing) => panic!("false answers counted as missing"),
        }
        // Asked once, then once more after the second look.
        assert_eq!((a.requests(), b.requests()), (2, 2));
        assert!(!banned(&a) && !banned(&b));
    }

    #[tokio::test]
    async fn a_large_answer_is_checked_off_the_serving_thread_a_small_one_in_place() {
        let large = serde_json::Value::String(format!("0x{}", "00".repeat(OFFLOAD_BYTES)));
        for (answer, offloaded) in [(json!("0x5"), false), (large, true)] {
            let up = fake::upstream("test", "a", "op-a", move |_, _| Act::result(answer.clone()));
            let chain = chain("proofs", 1, &[&up]);
            let p = params("[]");
            let c = call("eth_getProof", &p);
            let checked_on = Arc::new(std::sync::Mutex::new(None));
            let on = checked_on.clone();
            let found = race(&chain, 1, &[&c], 1, CLAIM, move |_| {
                *on.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::thread::current().id());
                Ok(())
            })
            .await;
            assert!(found.is_ok(), "proved");
            let on = checked_on.lock().ok().and_then(|t| *t);
            assert_eq!(
                on.is_some_and(|t| t != std::thread::current().id()),
                offloaded,
                "checked on {on:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_false_and_nothing_proven_is_missing() {
        let a = fake::upstream("test", "a", "op-a", |_, _| Act::Error(-32601, "no".into()));
        let chain = chain("proofs", 2, &[&a]);
        let p = params("[]");
        let c = call("eth_getProof", &p);
        assert!(matches!(
            race(&chain, 1, &[&c], 2, CLAIM, check).await,
            Err(Unproven::Missing)
        ));
        assert_eq!(a.requests(), 1, "no second look without a false answer");
    }
}
