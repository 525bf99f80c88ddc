//! Fake providers that enforce the limits the real ones document, for tests about load: a
//! token bucket per provider bucket (a Slack channel, a Discord webhook, a PagerDuty key),
//! answering 429 past it the way the provider does, and counting those answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::receiver::{Recorded, Reply, Responder};

/// How one provider limits and answers.
#[derive(Clone)]
pub struct Limit {
    /// Requests a bucket takes at once.
    pub burst: f64,
    /// One more request is allowed every `every`.
    pub every: Duration,
    /// The bucket a request belongs to.
    pub bucket: Arc<dyn Fn(&Recorded) -> String + Send + Sync>,
    /// The answer within the limit.
    pub ok: Reply,
    /// The answer past it, given how long until the bucket has room.
    pub limited: Arc<dyn Fn(Duration) -> Reply + Send + Sync>,
}

impl Limit {
    /// Slack: about one message per second per channel, with a small burst (`burst` in any
    /// `burst` seconds); 429 with `Retry-After`.
    pub fn slack(burst: usize) -> Self {
        Self {
            burst: burst as f64,
            every: Duration::from_secs(1),
            bucket: Arc::new(|r| r.json()["channel"].as_str().unwrap_or("?").to_owned()),
            ok: Reply::json(200, serde_json::json!({"ok": true, "ts": "1.1"})),
            limited: Arc::new(|wait| {
                Reply::json(
                    429,
                    serde_json::json!({"ok": false, "error": "ratelimited"}),
                )
                .header("retry-after", &wait.as_secs().max(1).to_string())
            }),
        }
    }

    /// Discord: 5 requests per 2 s per webhook, with `X-RateLimit-*` headers; 429 with a JSON
    /// `retry_after`.
    pub fn discord() -> Self {
        Self {
            burst: 5.0,
            every: Duration::from_millis(400),
            bucket: Arc::new(|r| r.path.split('?').next().unwrap_or_default().to_owned()),
            ok: Reply::json(200, serde_json::json!({"id": "1"})),
            limited: Arc::new(|wait| {
                Reply::json(
                    429,
                    serde_json::json!({"message": "You are being rate limited.",
                        "retry_after": wait.as_secs_f64(), "global": false}),
                )
            }),
        }
    }

    /// PagerDuty: 120 events per minute per integration key (a full bucket refilling at 2 a
    /// second); 429 without a hint.
    pub fn pagerduty() -> Self {
        Self {
            burst: 120.0,
            every: Duration::from_millis(500),
            bucket: Arc::new(|r| r.json()["routing_key"].as_str().unwrap_or("?").to_owned()),
            ok: Reply::json(202, serde_json::json!({"status": "success"})),
            limited: Arc::new(|_| {
                Reply::json(429, serde_json::json!({"status": "throttle event"}))
            }),
        }
    }

    /// A webhook receiver taking `per_second` requests a second with as large a burst, one
    /// bucket per path; 429 with `Retry-After`, as a webhook channel's `rate` expects.
    pub fn webhook(per_second: u32) -> Self {
        Self {
            burst: f64::from(per_second),
            every: Duration::from_secs(1) / per_second.max(1),
            bucket: Arc::new(|r| r.path.split('?').next().unwrap_or_default().to_owned()),
            ok: Reply::status(200),
            limited: Arc::new(|wait| {
                Reply::status(429).header("retry-after", &wait.as_secs().max(1).to_string())
            }),
        }
    }
}

/// A limit in force, and what it answered.
#[derive(Clone)]
pub struct Enforced {
    limit: Limit,
    /// Per bucket: tokens left, and when they were counted.
    tokens: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
    limited: Arc<AtomicUsize>,
}

impl Enforced {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            tokens: Arc::default(),
            limited: Arc::default(),
        }
    }

    /// Rate-limit answers given so far.
    pub fn limited(&self) -> usize {
        self.limited.load(Ordering::Relaxed)
    }

    /// The receiver's responder: within the limit the provider's success, past it its 429.
    pub fn responder(&self) -> Responder {
        let this = self.clone();
        Arc::new(move |request| this.answer(request))
    }

    /// The answer to `request`: the provider's success within the limit, its 429 past it.
    pub fn answer(&self, request: &Recorded) -> Reply {
        let bucket = (self.limit.bucket)(request);
        let every = self.limit.every.as_secs_f64();
        let mut all = self.tokens.lock().expect("limits lock");
        let (tokens, counted) = all.entry(bucket).or_insert((self.limit.burst, request.at));
        let refill = request.at.saturating_duration_since(*counted).as_secs_f64() / every;
        *tokens = (*tokens + refill).min(self.limit.burst);
        *counted = (*counted).max(request.at);
        if *tokens < 1.0 {
            self.limited.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_secs_f64((1.0 - *tokens) * every);
            return (self.limit.limited)(wait);
        }
        *tokens -= 1.0;
        let reset = if *tokens < 1.0 {
            (1.0 - *tokens) * every
        } else {
            0.0
        };
        self.limit
            .ok
            .clone()
            .header(
                "x-ratelimit-remaining",
                &(tokens.floor() as u64).to_string(),
            )
            .header("x-ratelimit-reset-after", &format!("{reset:.3}"))
    }
}
