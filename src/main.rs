//! The `sysmos-notify` binary: parse arguments, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sysmos_notify::config::Settings;

#[derive(Parser)]
#[command(
    name = "sysmos-notify",
    version,
    about = "Alert delivery for the Sysmos monitoring platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (built-in defaults without --config; SYSMOS_NOTIFY__SECTION__KEY overrides).
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file (and the environment) without starting anything.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Exit status for a configuration that was refused (CONTRACT §1).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (file, check_only) = match &cli.command {
        Command::Run { config } => (config.as_deref(), false),
        Command::CheckConfig { file } => (Some(file.as_path()), true),
    };
    let settings = match Settings::load(file) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("sysmos-notify: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if check_only {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    sysmos_notify::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sysmos-notify: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = sysmos_notify::shutdown::on_signal();
        sysmos_notify::run(settings, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sysmos-notify: {error:#}");
            ExitCode::FAILURE
        }
    }
}
