//! The Prometheus surface of CONTRACT §7, typed: one method per thing that happens, so no
//! metric name or label string appears at a call site.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::model::Fate;

pub const CHANNELS: [&str; 5] = ["webhook", "slack", "discord", "email", "pagerduty"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Routed,
    NoRoute,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOutcome {
    Applied,
    Stale,
    Removed,
    Invalid,
}

/// What became of one verification email (`sent`, `refused` by the server, `failed` after retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationOutcome {
    Sent,
    Refused,
    Failed,
}

impl VerificationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationOutcome::Sent => "sent",
            VerificationOutcome::Refused => "refused",
            VerificationOutcome::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Every metric family's name, for checks of what dashboards and rules may query.
    names: Vec<String>,
    events: IntCounterVec,
    deliveries: IntCounterVec,
    duration: HistogramVec,
    lag: IntGaugeVec,
    lag_seconds: GaugeVec,
    retry_backlog: IntGaugeVec,
    accounts: IntGauge,
    ready: IntGauge,
    config_records: IntCounterVec,
    verifications: IntCounterVec,
    not_attempted: IntCounterVec,
    circuits_opened: IntCounterVec,
    rate_limited: IntCounterVec,
    digests: IntCounterVec,
    digest_alerts: prometheus::Histogram,
    waiting: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut names = Vec::new();
        let events = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_events_total",
                "Events read from the event topics, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_deliveries_total",
                "Delivery attempts' results, by channel type and outcome.",
            ),
            &["channel", "outcome"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sysmos_notify_delivery_duration_seconds",
                "Time of one request to a provider, by channel type.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["channel"],
        )
        .expect("valid metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "sysmos_notify_consumer_lag",
                "Messages not yet consumed, per assigned partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "sysmos_notify_consumer_lag_seconds",
                "Age of the oldest record not yet processed, per assigned partition (0 when idle).",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let retry_backlog = IntGaugeVec::new(
            Opts::new(
                "sysmos_notify_retry_backlog",
                "Deliveries waiting in each retry tier, over the partitions assigned here.",
            ),
            &["tier"],
        )
        .expect("valid metric");
        let accounts = IntGauge::new(
            "sysmos_notify_config_accounts",
            "Accounts in the settings cache.",
        )
        .expect("valid metric");
        let ready = IntGauge::new(
            "sysmos_notify_ready",
            "1 when /readyz answers 200 (settings loaded, consumers in their groups), else 0.",
        )
        .expect("valid metric");
        let config_records = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_config_records_total",
                "Settings records read from the config topic, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let verifications = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_verification_emails_total",
                "Verification emails to newly added recipients, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let not_attempted = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_not_attempted_total",
                "Deliveries moved to the next tier without a request: destination busy or circuit open.",
            ),
            &["channel", "reason"],
        )
        .expect("valid metric");
        let circuits_opened = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_circuit_opened_total",
                "Times a destination's circuit opened after consecutive failures, by channel type.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_rate_limited_total",
                "Rate-limit answers received from providers (HTTP 429, Slack ratelimited, SMTP 421/454), by channel type.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let digests = IntCounterVec::new(
            Opts::new(
                "sysmos_notify_digests_total",
                "Digests accepted by providers: one message for the alerts that waited for one channel's bucket, by channel type.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let digest_alerts = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sysmos_notify_digest_alerts",
                "Alerts covered by each digest accepted.",
            )
            .buckets(vec![2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0]),
        )
        .expect("valid metric");
        let waiting = IntGaugeVec::new(
            Opts::new(
                "sysmos_notify_waiting_deliveries",
                "Deliveries waiting here for their provider bucket's turn (paced, or held after a rate-limit answer), by channel type.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(deliveries.clone()),
            Box::new(duration.clone()),
            Box::new(lag.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(retry_backlog.clone()),
            Box::new(accounts.clone()),
            Box::new(ready.clone()),
            Box::new(config_records.clone()),
            Box::new(verifications.clone()),
            Box::new(not_attempted.clone()),
            Box::new(circuits_opened.clone()),
            Box::new(rate_limited.clone()),
            Box::new(digests.clone()),
            Box::new(digest_alerts.clone()),
            Box::new(waiting.clone()),
        ] {
            names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
            registry
                .register(collector)
                .expect("metric registered once");
        }
        // Every series exists from the start, so rates and alerts work before the first event.
        for outcome in ["routed", "no_route", "rejected"] {
            events.with_label_values(&[outcome]);
        }
        for channel in CHANNELS {
            for outcome in ["delivered", "retried", "dead_lettered", "dropped"] {
                deliveries.with_label_values(&[channel, outcome]);
            }
            rate_limited.with_label_values(&[channel]);
            digests.with_label_values(&[channel]);
            waiting.with_label_values(&[channel]);
        }
        for outcome in ["applied", "stale", "removed", "invalid"] {
            config_records.with_label_values(&[outcome]);
        }
        for outcome in ["sent", "refused", "failed"] {
            verifications.with_label_values(&[outcome]);
        }
        Self {
            registry,
            names,
            events,
            deliveries,
            duration,
            lag,
            lag_seconds,
            retry_backlog,
            accounts,
            ready,
            config_records,
            verifications,
            not_attempted,
            circuits_opened,
            rate_limited,
            digests,
            digest_alerts,
            waiting,
        }
    }

    /// A provider answered "too many" (CONTRACT §5a).
    pub fn rate_limited(&self, channel: &str) {
        self.rate_limited.with_label_values(&[channel]).inc();
    }

    /// A digest of `alerts` alerts was accepted.
    pub fn digest(&self, channel: &str, alerts: usize) {
        self.digests.with_label_values(&[channel]).inc();
        self.digest_alerts.observe(alerts as f64);
    }

    /// One more (`1`) or one fewer (`-1`) delivery waits for its bucket's turn.
    pub fn waiting(&self, channel: &str, change: i64) {
        self.waiting.with_label_values(&[channel]).add(change);
    }

    /// A delivery moved on without a request (`busy` or `circuit_open`).
    pub fn not_attempted(&self, channel: &str, reason: &str) {
        self.not_attempted
            .with_label_values(&[channel, reason])
            .inc();
    }

    pub fn circuit_opened(&self, channel: &str) {
        self.circuits_opened.with_label_values(&[channel]).inc();
    }

    pub fn verification(&self, outcome: VerificationOutcome) {
        self.verifications
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    pub fn event(&self, outcome: EventOutcome) {
        let label = match outcome {
            EventOutcome::Routed => "routed",
            EventOutcome::NoRoute => "no_route",
            EventOutcome::Rejected => "rejected",
        };
        self.events.with_label_values(&[label]).inc();
    }

    pub fn delivery(&self, channel: &str, fate: Fate) {
        let label = fate.label();
        self.deliveries.with_label_values(&[channel, label]).inc();
    }

    pub fn request_duration(&self, channel: &str, seconds: f64) {
        self.duration.with_label_values(&[channel]).observe(seconds);
    }

    /// Lag of an assigned partition: messages behind the end, and the oldest one's age.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64, age_seconds: f64) {
        let labels = [topic, &partition.to_string()];
        self.lag.with_label_values(&labels).set(lag);
        self.lag_seconds.with_label_values(&labels).set(age_seconds);
    }

    /// A partition is no longer assigned here: its lag is another instance's to report.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let labels = [topic, &partition.to_string()];
        let _ = self.lag.remove_label_values(&labels);
        let _ = self.lag_seconds.remove_label_values(&labels);
    }

    /// Deliveries waiting in retry tier `tier` (1-based) on the partitions assigned here.
    pub fn retry_backlog(&self, tier: usize, waiting: i64) {
        self.retry_backlog
            .with_label_values(&[&tier.to_string()])
            .set(waiting);
    }

    /// The name of every metric family this service exposes (histograms without suffixes).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn config_record(&self, outcome: ConfigOutcome) {
        let label = match outcome {
            ConfigOutcome::Applied => "applied",
            ConfigOutcome::Stale => "stale",
            ConfigOutcome::Removed => "removed",
            ConfigOutcome::Invalid => "invalid",
        };
        self.config_records.with_label_values(&[label]).inc();
    }

    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn accounts(&self, count: usize) {
        self.accounts.set(count as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_contract_names() {
        let m = Metrics::new();
        m.event(EventOutcome::Routed);
        m.delivery("webhook", Fate::Delivered);
        m.request_duration("webhook", 0.02);
        m.consumer_lag("monitor.alerts", 3, 12, 1.5);
        m.retry_backlog(2, 7);
        m.accounts(2);
        let text = m.render();
        for line in [
            "sysmos_notify_events_total{outcome=\"routed\"} 1",
            "sysmos_notify_events_total{outcome=\"rejected\"} 0",
            "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"} 1",
            "sysmos_notify_delivery_duration_seconds_count{channel=\"webhook\"} 1",
            "sysmos_notify_consumer_lag{partition=\"3\",topic=\"monitor.alerts\"} 12",
            "sysmos_notify_consumer_lag_seconds{partition=\"3\",topic=\"monitor.alerts\"} 1.5",
            "sysmos_notify_retry_backlog{tier=\"2\"} 7",
            "sysmos_notify_config_accounts 2",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        m.forget_lag("monitor.alerts", 3);
        assert!(!m.render().contains("monitor.alerts"));
    }
}
