//! Chains of scripted upstreams (`upstream::fake`) for the unit tests of routing,
//! verification, broadcast and dispatch.

use crate::{config, upstream::fake::Fake};

use super::Chain;

/// A chain `test` (id 1) in verify mode `verify` with quorum `quorum`, served by
/// `fakes`, with the default `[routing]` (hedging on).
pub fn chain(verify: &str, quorum: usize, fakes: &[&Fake]) -> Chain {
    let config = config::load_str(&format!(
        "[[chains]]\nname = \"test\"\nchain_id = 1\nverify = \"{verify}\"\nquorum = {quorum}\n\n\
         [[chains.upstreams]]\nname = \"placeholder\"\nurl = \"http://127.0.0.1:9\"\noperator = \"x\"\n"
    ))
    .unwrap_or_else(|e| panic!("the test chain's config is valid: {e}"));
    let chain = Chain::new(
        &config.chains[0],
        &config.routing,
        &crate::upstream::http_client(&config.routing),
    );
    chain.swap_upstreams(fakes.iter().map(|f| f.upstream.clone()).collect());
    chain
}

/// A call as a client would send it.
pub fn call<'a>(method: &'a str, params: &'a serde_json::value::RawValue) -> crate::rpc::Call<'a> {
    crate::rpc::Call {
        id: None,
        method: method.into(),
        params: Some(params),
    }
}

/// Raw JSON params.
pub fn params(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned())
        .unwrap_or_else(|e| panic!("test params are JSON: {e}"))
}
