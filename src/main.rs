//! The `outlast` command: argument parsing, logging setup and exit codes. Everything
//! else is in the library.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use outlast::{Config, config};

/// glibc's allocator took a tenth of the CPU under load in `bench/run.sh` (arena locks
/// between the runtime's threads); mimalloc's thread-local heaps avoid that.
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// mimalloc, asked the way Rust's own system allocator asks: `mimalloc::MiMalloc` sends
/// every request to `mi_malloc_aligned`, whose fast path only takes a block of at most
/// 1 KiB that happens to be aligned already; every larger one (a batch's bodies, a
/// request's future) went to its over-allocating slow path, ~250 instructions each, 24
/// times per batch of ten calls. Every mimalloc block of 16 bytes or more is 16-aligned
/// (and a smaller one word-aligned), so a layout aligned to at most that, and not to
/// more than its size, needs no aligned call; anything else goes to `MiMalloc` as before.
struct Allocator;

/// `MI_MAX_ALIGN_SIZE`: the alignment mimalloc gives every block of at least this size.
const MI_MIN_ALIGN: usize = 16;

impl Allocator {
    fn plain(align: usize, size: usize) -> bool {
        align <= MI_MIN_ALIGN && align <= size
    }
}

// SAFETY: every path hands the layout to mimalloc, whose blocks satisfy it: through
// `MiMalloc` (aligned calls), or plain calls only for the alignments above.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Allocator::plain(layout.align(), layout.size()) {
            // SAFETY: a plain allocation of a non-zero size (align <= size).
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Allocator::plain(layout.align(), layout.size()) {
            // SAFETY: as `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from mimalloc, whichever call made it; `mi_free` takes both.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if Allocator::plain(layout.align(), new_size) {
            // SAFETY: `ptr` came from mimalloc; the new block is aligned as the old one
            // must be, by the rule above.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

/// Outlast keeps wallets and dApps answering correctly when RPC providers fail: it
/// routes every JSON-RPC call to a healthy upstream and fails over without the client
/// noticing.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines. Verbosity: RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OUTLAST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config it serves Ethereum mainnet and Base from public
    /// endpoints of many operators (see `outlast default-config`).
    Serve {
        /// TOML config file; `${VAR}` in any string is taken from the environment.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: prints a summary (secrets redacted) and exits 0, or lists
    /// every problem with its line, column and key and exits 1.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Measure every configured upstream from this machine, in a few seconds: chain id,
    /// head, lag, latency, archive, eth_getProof and WebSocket, one table per chain.
    /// Exits 0 when every chain has a usable upstream, 1 otherwise.
    Probe {
        /// TOML config file; without it, the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default config, a starting point for your own.
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging once its config is read: `[tracing]` adds an exporter.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(cli.log_format, None);
    }
    let result = match cli.command {
        Command::Serve { config } => serve(cli.log_format, config),
        Command::Check { config } => return check(&config),
        Command::Probe { config } => return probe(config.as_ref()),
        Command::DefaultConfig => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG; with `export`, request spans also go to the
/// OTLP exporter, which has its own filter (its spans only), so RUST_LOG never hides
/// them from the collector and they never crowd the logs.
fn init_logging(format: LogFormat, export: Option<outlast::telemetry::ExportLayer>) {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(export);
    match format {
        LogFormat::Text => registry.with(logs.with_filter(filter)).init(),
        LogFormat::Json => registry.with(logs.json().with_filter(filter)).init(),
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(config::load_file(p)?),
        None => {
            Config::embedded_default().context("the embedded default config is invalid (a bug)")
        }
    }
}

fn serve(log_format: LogFormat, path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match load(path.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            init_logging(log_format, None);
            return Err(e);
        }
    };
    // One single-threaded runtime per worker thread (`outlast::cores`): this one, which
    // also runs the background work, and the others on threads of their own.
    let threads = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let runtime = single_threaded()?;
    let mut others = Vec::new();
    for index in 1..threads {
        others.push(Core::start(index)?);
    }
    let mut handles = vec![runtime.handle().clone()];
    handles.extend(others.iter().map(|c| c.handle.clone()));
    outlast::cores::install(handles);
    let (export, exporter) =
        match outlast::telemetry::install(&config.tracing, runtime.handle().clone()) {
            Ok(Some((layer, exporter))) => (Some(layer), Some(exporter)),
            Ok(None) => (None, None),
            Err(e) => {
                init_logging(log_format, None);
                return Err(e.into());
            }
        };
    init_logging(log_format, export);
    if let Some(endpoint) = &config.tracing.otlp_endpoint {
        tracing::info!(%endpoint, service = %config.tracing.service_name, sample_ratio = config.tracing.sample_ratio, "exporting request traces over OTLP/HTTP");
    }
    runtime.block_on(async {
        let listen = config.server.listen;
        let reloading = reload_on_hangup(path);
        let served = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => outlast::run_reloading(config, reloading, listener, shutdown_signal())
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)
                .context(format!("cannot listen on {listen} ([server] listen)"))),
        };
        // The last requests' spans, before the runtime that sends them stops.
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
        served?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn single_threaded() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A serving runtime on a thread of its own; it stops when this is dropped (the process
/// is exiting: the first runtime has drained the connections).
struct Core {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Core {
    fn start(index: usize) -> anyhow::Result<Core> {
        let runtime = single_threaded()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("outlast-core-{index}"))
            .spawn(move || {
                outlast::cores::enter(index);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .context("cannot start a worker thread")?;
        Ok(Core {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Prints the probe's table; exit 1 when some chain has no usable upstream (the
/// table's last line names it) or the probe cannot run.
fn probe(path: Option<&PathBuf>) -> ExitCode {
    let measured = load(path).and_then(|config| {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        Ok(runtime.block_on(outlast::probe::probe(&config))?)
    });
    match measured {
        Ok(report) => {
            print!("{report}");
            if report.usable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP re-reads the config file (`outlast::reload`). Installed at once, before
/// listening: SIGHUP's default action ends the process, and a supervisor may send it
/// as soon as the process exists. Without a file, SIGHUP is logged and ignored.
fn reload_on_hangup(path: Option<PathBuf>) -> Option<outlast::Reloading> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP ({e}); reload through the admin API");
            return path.map(|path| {
                let (trigger, inbox) = outlast::reload::channel();
                outlast::Reloading {
                    path,
                    trigger,
                    inbox,
                }
            });
        }
    };
    let Some(path) = path else {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP ignored: started without --config, there is no file to re-read"
                );
            }
        });
        return None;
    };
    let (trigger, inbox) = outlast::reload::channel();
    let on_signal = trigger.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: re-reading the config");
            on_signal.hangup();
        }
    });
    Some(outlast::Reloading {
        path,
        trigger,
        inbox,
    })
}

/// SIGINT or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight calls");
}

fn check(path: &Path) -> ExitCode {
    match config::load_file(path) {
        Ok(config) => {
            println!("{}: OK", path.display());
            println!("listen: {}", config.server.listen);
            for chain in &config.chains {
                let operators: std::collections::BTreeSet<&str> = chain
                    .upstreams
                    .iter()
                    .map(|u| u.operator.as_str())
                    .collect();
                println!(
                    "chain {} (id {}): {} upstreams, {} operators, verify = {:?}, quorum = {}",
                    chain.name,
                    chain.chain_id,
                    chain.upstreams.len(),
                    operators.len(),
                    chain.verify,
                    chain.quorum
                );
                // URLs as written in the file: `${VAR}` by name, literal keys as `***`.
                for up in &chain.upstreams {
                    println!(
                        "  {:<20} tier {} {:<12} {}",
                        up.name, up.tier, up.operator, up.url
                    );
                    if let Some(ws) = &up.ws_url {
                        println!("  {:<20} {:<19} {ws}", "", "websocket");
                    }
                }
                if chain.verify != config::Verify::Off && operators.len() < chain.quorum {
                    println!(
                        "  warning: {} independent operator(s) but quorum = {}: answers are cross-checked by only {}; add upstreams of other operators",
                        operators.len(),
                        chain.quorum,
                        operators.len()
                    );
                }
            }
            if let Some(url) = &config.redis.url {
                let secret = config
                    .redis
                    .secret
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), ToString::to_string);
                println!(
                    "redis: {url} (keys {}…, entries authenticated with secret {secret})",
                    config.redis.key_prefix
                );
            }
            for (i, hook) in config.webhooks.iter().enumerate() {
                let name = hook.name.clone().unwrap_or_else(|| format!("webhook-{i}"));
                println!("{name} ({:?}): {}", hook.format, hook.url);
            }
            if let Some(endpoint) = &config.tracing.otlp_endpoint {
                let t = &config.tracing;
                println!(
                    "tracing: OTLP/HTTP to {endpoint} as {}, sample ratio {}",
                    t.service_name, t.sample_ratio
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
