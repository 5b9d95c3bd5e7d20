//! The gateway's long-lived state, built once from the config: each chain with its
//! upstreams, and the request limits. Shared by the server and the background tasks.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use crate::{
    config::{Config, Limits},
    route::health::Status,
    rpc::{MethodPolicy, ParseLimits},
    upstream::{self, Upstream},
};

pub struct Gateway {
    pub chains: Vec<Arc<Chain>>,
    /// By name and by decimal chain id: both are valid URL paths.
    by_path: HashMap<String, Arc<Chain>>,
    pub limits: Limits,
    pub policy: MethodPolicy,
    pub chain_id_check: Duration,
}

pub struct Chain {
    pub name: Arc<str>,
    pub chain_id: u64,
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_attempts: usize,
    /// Spreads calls over equally good upstreams.
    pub rotation: AtomicUsize,
}

/// How many of a chain's upstreams may be chosen now, for `/readyz`.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub chain: Arc<str>,
    pub upstreams: usize,
    pub ready_upstreams: usize,
    /// Not yet past their first `eth_chainId` check.
    pub unchecked_upstreams: usize,
}

impl Chain {
    pub fn readiness(&self) -> Readiness {
        let count = |f: fn(&Status) -> bool| {
            self.upstreams
                .iter()
                .filter(|u| f(&u.health.status()))
                .count()
        };
        Readiness {
            chain: self.name.clone(),
            upstreams: self.upstreams.len(),
            ready_upstreams: count(|s| *s == Status::Ready),
            unchecked_upstreams: count(|s| *s == Status::Unchecked),
        }
    }
}

impl Gateway {
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let http = upstream::http_client(&config.routing)?;
        let chains: Vec<Arc<Chain>> = config
            .chains
            .iter()
            .map(|c| {
                let name: Arc<str> = Arc::from(c.name.as_str());
                Arc::new(Chain {
                    upstreams: c
                        .upstreams
                        .iter()
                        .map(|u| Arc::new(Upstream::new(&name, u, &config.routing, http.clone())))
                        .collect(),
                    name,
                    chain_id: c.chain_id,
                    max_attempts: config.routing.max_attempts,
                    rotation: AtomicUsize::new(0),
                })
            })
            .collect();
        let mut by_path = HashMap::new();
        for chain in &chains {
            by_path.insert(chain.name.to_string(), chain.clone());
            by_path.insert(chain.chain_id.to_string(), chain.clone());
        }
        Ok(Gateway {
            chains,
            by_path,
            limits: config.limits.clone(),
            policy: MethodPolicy::new(&config.limits.denied_methods),
            chain_id_check: Duration::from_secs(config.routing.chain_id_check_secs),
        })
    }

    /// `path` is a chain name or decimal chain id; `None` means `POST /`, which is only
    /// unambiguous with exactly one chain.
    pub fn chain(&self, path: Option<&str>) -> Option<&Arc<Chain>> {
        match path {
            Some(p) => self.by_path.get(p),
            None if self.chains.len() == 1 => self.chains.first(),
            None => None,
        }
    }

    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_batch: self.limits.max_batch,
            max_depth: self.limits.max_depth,
        }
    }
}
