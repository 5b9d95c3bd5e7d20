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
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(config),
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path.as_ref())?;
    let runtime = match config.server.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    }
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listen = config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} ([server] listen)"))?;
        outlast::run(config, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
