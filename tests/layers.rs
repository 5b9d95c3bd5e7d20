//! The crate's layers, enforced: every `crate::…` path in `src/` (`use` lines and paths
//! in code alike, tests included) may only name a top-level module its own module is
//! allowed to import. The table below is the one ARCHITECTURE.md explains; change both
//! together. A module missing from the table fails the test, so a new one gets a place.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Each top-level module and what it may import. Lower layers first: a module only
/// names modules listed above it, so there is no cycle (checked below too).
const LAYERS: &[(&str, &[&str])] = &[
    // Base: no imports of the crate. Every layer can reach these.
    ("config", &[]),
    // (Its tests check the default denied methods, which config owns.)
    ("rpc", &["config"]),
    ("verify", &[]),
    ("metrics", &[]),
    ("lockfile", &[]),
    ("telemetry", &["config"]),
    ("cores", &[]),
    // One provider: how to call it, its health and head.
    (
        "upstream",
        &["config", "rpc", "metrics", "telemetry", "cores"],
    ),
    // Which upstream answers: chains, consensus, failover, verification.
    (
        "route",
        &[
            "config",
            "rpc",
            "verify",
            "metrics",
            "telemetry",
            "upstream",
        ],
    ),
    // Features on top of routing: never the composition root or the server.
    (
        "auth",
        &["config", "rpc", "metrics", "telemetry", "upstream", "route"],
    ),
    (
        "cache",
        &["config", "rpc", "verify", "metrics", "upstream", "route"],
    ),
    (
        "incidents",
        &["config", "metrics", "lockfile", "upstream", "route"],
    ),
    ("storage", &["config", "metrics", "upstream"]),
    (
        "tx",
        &[
            "config",
            "rpc",
            "metrics",
            "lockfile",
            "telemetry",
            "upstream",
            "route",
        ],
    ),
    (
        "subscribe",
        &[
            "config",
            "rpc",
            "verify",
            "metrics",
            "telemetry",
            "upstream",
            "route",
            "auth",
            "cache",
        ],
    ),
    // Hot reload: what a changed config changes, and each upstream's background tasks.
    // Applied by the composition root (lib.rs); the gateway and admin API hold its trigger.
    ("reload", &["config", "upstream", "route", "subscribe"]),
    ("bans", &["config", "metrics", "upstream", "route", "cache"]),
    // The composition root: assembles every feature once.
    (
        "gateway",
        &[
            "config",
            "rpc",
            "verify",
            "metrics",
            "telemetry",
            "upstream",
            "route",
            "auth",
            "cache",
            "incidents",
            "storage",
            "tx",
            "subscribe",
            "reload",
        ],
    ),
    // What reads the assembled whole: one request's steps, the status snapshot and the
    // scrape, the admin API, `outlast probe`.
    (
        "dispatch",
        &[
            "config",
            "rpc",
            "verify",
            "metrics",
            "telemetry",
            "upstream",
            "route",
            "auth",
            "cache",
            "subscribe",
            "tx",
            "gateway",
        ],
    ),
    (
        "status",
        &[
            "config",
            "metrics",
            "upstream",
            "route",
            "incidents",
            "gateway",
        ],
    ),
    (
        "admin",
        &["config", "metrics", "incidents", "reload", "gateway"],
    ),
    ("probe", &["config", "rpc", "upstream", "route"]),
    // The HTTP surface: everything below it.
    (
        "server",
        &[
            "config",
            "rpc",
            "verify",
            "metrics",
            "telemetry",
            "upstream",
            "route",
            "auth",
            "cache",
            "incidents",
            "storage",
            "tx",
            "subscribe",
            "bans",
            "gateway",
            "dispatch",
            "status",
            "admin",
            "cores",
        ],
    ),
];

/// Top-level modules of `src/`: `foo.rs` or `foo/`, minus the crate roots.
fn modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .expect("src/ is readable")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let module = name.strip_suffix(".rs").unwrap_or(&name).to_owned();
            (e.path().is_dir() || name.ends_with(".rs")).then_some(module)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable").filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `//` comments (doc comments name modules in prose).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a `crate::` path names: `crate::a::x` -> a;
/// `crate::{a::x, b}` -> a, b.
fn named_after_crate(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> Option<String> {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        (end > 0).then(|| s[..end].to_owned())
    };
    let Some(group) = rest.strip_prefix('{') else {
        return ident(rest).into_iter().collect();
    };
    let mut names = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.extend(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.extend(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// Every (importing module, imported module) -> the files where it happens.
fn imports(src: &Path, known: &BTreeSet<String>) -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let from = rel
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        if from == "lib" || from == "main" {
            continue;
        }
        let text = code(&fs::read_to_string(&file).expect("readable"));
        for (at, _) in text.match_indices("crate::") {
            for to in named_after_crate(&text[at + "crate::".len()..]) {
                if to != from && known.contains(&to) {
                    let files = found.entry((from.clone(), to)).or_default();
                    if !files.contains(&rel) {
                        files.push(rel.clone());
                    }
                }
            }
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_has_a_layer_and_the_table_has_no_cycle() {
    let known = modules(&src());
    let table: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    let missing: Vec<_> = known.difference(&table).collect();
    let stale: Vec<_> = table.difference(&known).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "give each module of src/ a row in LAYERS (and ARCHITECTURE.md): missing {missing:?}, no longer in src/ {stale:?}"
    );
    for (i, (module, allowed)) in LAYERS.iter().enumerate() {
        let above: Vec<&str> = LAYERS[..i].iter().map(|(m, _)| *m).collect();
        for a in *allowed {
            assert!(
                above.contains(a),
                "{module} may import {a}, which is not in a row above it: that would allow a cycle"
            );
        }
    }
}

#[test]
fn no_module_imports_outside_its_layer() {
    let src = src();
    let known = modules(&src);
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let broken: Vec<String> = imports(&src, &known)
        .into_iter()
        .filter(|((from, to), _)| {
            allowed
                .get(from.as_str())
                .is_some_and(|ok| !ok.contains(&to.as_str()))
        })
        .map(|((from, to), files)| format!("{from} -> {to} (in {})", files.join(", ")))
        .collect();
    assert!(
        broken.is_empty(),
        "imports against the layers (tests/layers.rs, ARCHITECTURE.md):\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    assert_eq!(named_after_crate("route::Chain;"), ["route"]);
    assert_eq!(
        named_after_crate("{config::{self, X}, upstream::Upstream, rpc};"),
        ["config", "upstream", "rpc"]
    );
    assert_eq!(code("let a = 1; // crate::server"), "let a = 1; ");
}
