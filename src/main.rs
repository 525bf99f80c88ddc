//! The `sysmos-notify` binary: parse arguments, load the configuration, start logging, then run the
//! service or one operator command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sysmos_notify::config::Config;
use sysmos_notify::ops::{self, dlq, Ops};

/// mimalloc instead of the system allocator: an alert storm allocates and frees small
/// records at a high rate, and glibc malloc stood out in the storm profile (BENCHMARKS.md).
/// Its 2.x line (the crate's `v2` feature): 3.x, which the crate now builds by default, raised
/// a backlog's peak memory at the same speed (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sysmos-notify",
    version,
    about = "Alert delivery for the Sysmos monitoring platform"
)]
struct Cli {
    /// Configuration file (built-in defaults without it; SYSMOS_NOTIFY__SECTION__KEY overrides).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run,
    /// Check a configuration file (and the environment) without starting anything.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Inspect and replay the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Send a test notification through the durable pipeline and print the provider's answer.
    SendTest {
        #[arg(long)]
        account: String,
        #[arg(long)]
        channel: String,
        /// How long to wait for the final outcome (retries included).
        #[arg(long, default_value = "60s", value_parser = duration)]
        wait: Duration,
    },
    /// Show cached settings.
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters as a table.
    List(FilterArgs),
    /// Put dead letters back on the deliveries topic with a fresh attempt count.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print what would be replayed without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum SettingsAction {
    /// The settings of one account, secrets masked.
    Show {
        #[arg(value_name = "ACCOUNT")]
        account: String,
    },
}

#[derive(Args)]
struct FilterArgs {
    #[arg(long)]
    account: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// An RFC 3339 time, or a duration back from now (`2h`, `30m`).
    #[arg(long, value_name = "T", value_parser = ops::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<FilterArgs> for dlq::Filter {
    fn from(args: FilterArgs) -> Self {
        Self {
            account: args.account,
            channel: args.channel,
            since: args.since,
        }
    }
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    sysmos_notify::config::parse_duration(text)
}

/// Exit status for a configuration that was refused (CONTRACT §1).
const EXIT_BAD_CONFIG: u8 = 2;

/// How glibc malloc serves what librdkafka (C) allocates; Rust's own allocations go to
/// mimalloc. By default each busy thread gets an arena, and freed blocks raise the size below
/// which blocks come from arenas instead of their own mapping, so large fetch buffers stay in
/// fragmented arenas. Two arenas, and large blocks mapped on their own and returned when
/// freed, lowered the peak RSS of a backlog (BENCHMARKS.md, "Memory"). `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` in the environment still win.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 * 1024),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets a glibc tunable; called first, before any thread starts.
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    let file = match &cli.command {
        Command::CheckConfig { file } => Some(file.as_path()),
        _ => cli.config.as_deref(),
    };
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sysmos-notify: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if matches!(cli.command, Command::CheckConfig { .. }) {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let running = matches!(cli.command, Command::Run);
    sysmos_notify::telemetry::init_with(if running { "info" } else { "warn" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sysmos-notify: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(command(cli.command, config));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sysmos-notify: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok(false)` is a clean failure already explained on stdout.
async fn command(command: Command, config: Config) -> anyhow::Result<bool> {
    if let Command::Run = command {
        let shutdown = sysmos_notify::shutdown::on_signal();
        sysmos_notify::run(config, shutdown).await?;
        return Ok(true);
    }
    let ops = Ops::connect(config).await?;
    match command {
        Command::Run | Command::CheckConfig { .. } => unreachable!("handled above"),
        Command::Dlq {
            action: DlqAction::List(filter),
        } => dlq::list(&ops, &filter.into()).map(|()| true),
        Command::Dlq {
            action: DlqAction::Replay { filter, dry_run },
        } => dlq::replay(&ops, &filter.into(), dry_run)
            .await
            .map(|()| true),
        Command::SendTest {
            account,
            channel,
            wait,
        } => ops::send_test::send_test(&ops, &account, &channel, wait).await,
        Command::Settings {
            action: SettingsAction::Show { account },
        } => ops::show::settings(&ops, &account).map(|()| true),
    }
}
