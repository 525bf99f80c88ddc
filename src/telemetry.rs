//! Structured logs through `tracing`: JSON when `SYSMOS_NOTIFY_LOG_FORMAT=json`, human text
//! otherwise; the level comes from `RUST_LOG` (default `info`, `warn` for operator commands).
//! Logs go to stderr: stdout is for what operator commands print.

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_with("info");
}

/// As [`init`], with `default` as the level when `RUST_LOG` is unset.
pub fn init_with(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json =
        std::env::var("SYSMOS_NOTIFY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
