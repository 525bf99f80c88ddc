//! The result of one attempt, and the one classifier of HTTP answers (CONTRACT §5a, §6):
//! 2xx delivered; 429 rate limited (no failed attempt); 408 and 5xx may pass, but 501 and 505
//! (the receiver does not do what we ask, and never will) do not; every other status will not.
//! A request that got no answer may pass too, and says how far it got ([`Silence`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

use crate::model::AttemptOutcome;

/// `Retry-After` values beyond this are clamped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long a bucket waits after a rate-limit answer that says nothing of how long
/// (PagerDuty's 429, CONTRACT §5a).
pub const RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);

/// What one attempt came to. The variants are the decision; callers match them exhaustively.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status: Option<u16>,
    },
    /// May pass: try again in the next tier, no earlier than `retry_after` when given.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// No answer came: may pass, like [`Outcome::Retry`]. What the circuits count.
    Unanswered {
        error: String,
        silence: Silence,
    },
    /// Will not pass: dead-letter now.
    Permanent {
        status: Option<u16>,
        error: String,
    },
    /// The provider asked to slow down: not a failed attempt. The bucket, or with
    /// `provider_wide` every bucket of the provider, waits `wait`; the delivery waits with it.
    RateLimited {
        status: Option<u16>,
        error: String,
        wait: Duration,
        provider_wide: bool,
    },
}

/// How far a request that got no answer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// The host could not be reached at all (connection refused, DNS failure, TLS handshake
    /// failure): nothing was sent, and no endpoint of that host is reachable.
    Unreachable,
    /// Sent, or connecting, and no answer within the timeout, or the connection broke: the
    /// receiver may have acted on it. This endpoint's trouble, not its host's.
    NoAnswer,
}

impl Outcome {
    pub fn permanent(error: impl Into<String>) -> Self {
        Outcome::Permanent {
            status: None,
            error: error.into(),
        }
    }

    #[cfg(test)]
    pub fn retry(error: impl Into<String>) -> Self {
        Outcome::Retry {
            status: None,
            error: error.into(),
            retry_after: None,
        }
    }

    /// What the delivery record keeps of an attempt (a rate-limit answer is kept as none).
    pub fn kind(&self) -> AttemptOutcome {
        match self {
            Outcome::Delivered { .. } => AttemptOutcome::Delivered,
            Outcome::Retry { .. } | Outcome::Unanswered { .. } | Outcome::RateLimited { .. } => {
                AttemptOutcome::Retryable
            }
            Outcome::Permanent { .. } => AttemptOutcome::Permanent,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status }
            | Outcome::Retry { status, .. }
            | Outcome::Permanent { status, .. }
            | Outcome::RateLimited { status, .. } => *status,
            Outcome::Unanswered { .. } => None,
        }
    }

    /// The failure's text, when the attempt failed or was asked to slow down.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Delivered { .. } => None,
            Outcome::Retry { error, .. }
            | Outcome::Unanswered { error, .. }
            | Outcome::Permanent { error, .. }
            | Outcome::RateLimited { error, .. } => Some(error),
        }
    }

    /// A rate-limit answer for one bucket, waiting `wait` or else [`RATE_LIMIT_WAIT`].
    pub fn rate_limited(status: Option<u16>, error: String, wait: Option<Duration>) -> Self {
        Outcome::RateLimited {
            status,
            error,
            wait: wait.unwrap_or(RATE_LIMIT_WAIT),
            provider_wide: false,
        }
    }
}

/// A target the guard refused will not pass.
impl From<super::guard::Refused> for Outcome {
    fn from(refused: super::guard::Refused) -> Self {
        Outcome::permanent(refused.0)
    }
}

/// Classifies an HTTP answer by status alone.
pub fn classify_status(status: u16, headers: &HeaderMap, now: DateTime<Utc>) -> Outcome {
    let status_text = format!(
        "HTTP {status}{}",
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    match status {
        200..=299 => Outcome::Delivered {
            status: Some(status),
        },
        429 => Outcome::rate_limited(Some(status), status_text, retry_after(headers, now)),
        // Not implemented, HTTP version not supported: the receiver will not do it later.
        501 | 505 => Outcome::Permanent {
            status: Some(status),
            error: status_text,
        },
        408 | 500..=599 => Outcome::Retry {
            status: Some(status),
            error: status_text,
            retry_after: retry_after(headers, now),
        },
        300..=399 => Outcome::Permanent {
            status: Some(status),
            error: format!("{status_text}: redirects are not followed; configure the final URL"),
        },
        // 1xx never ends a response; the rest of 4xx, and anything past 599, will not pass.
        100..=199 | 400..=428 | 430..=499 | 600.. | 0..=99 => Outcome::Permanent {
            status: Some(status),
            error: status_text,
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, clamped to [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Classifies a transport failure: timeouts and connection problems may pass.
pub fn classify_transport(error: &reqwest::Error, timeout: Duration) -> Outcome {
    // Never the URL: it may carry a token (Discord webhooks do).
    if let Some(reason) = super::guard::refused(error) {
        return Outcome::permanent(reason);
    }
    let detail = error_chain(error);
    let unanswered = |silence, error| Outcome::Unanswered { error, silence };
    if error.is_timeout() {
        unanswered(Silence::NoAnswer, format!("timed out after {timeout:?}"))
    } else if error.is_connect() {
        // Refused, DNS, TLS handshake: the connector never reached an HTTP exchange.
        unanswered(Silence::Unreachable, format!("connection failed: {detail}"))
    } else if error.is_builder() {
        Outcome::permanent(format!("invalid request: {detail}"))
    } else {
        unanswered(Silence::NoAnswer, format!("request failed: {detail}"))
    }
}

fn error_chain(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        "unknown error".to_owned()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttemptOutcome::{Delivered, Permanent, Retryable};
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn status_table() {
        let table = [
            (200, Delivered),
            (201, Delivered),
            (202, Delivered),
            (204, Delivered),
            (299, Delivered),
            (301, Permanent),
            (302, Permanent),
            (307, Permanent),
            (400, Permanent),
            (401, Permanent),
            (403, Permanent),
            (404, Permanent),
            (410, Permanent),
            (413, Permanent),
            (422, Permanent),
            (408, Retryable),
            (500, Retryable),
            (501, Permanent),
            (505, Permanent),
            (100, Permanent),
            (428, Permanent),
            (430, Permanent),
            (600, Permanent),
            (502, Retryable),
            (503, Retryable),
            (504, Retryable),
            (599, Retryable),
        ];
        let now = Utc::now();
        for (status, expected) in table {
            let outcome = classify_status(status, &HeaderMap::new(), now);
            assert_eq!(outcome.kind(), expected, "HTTP {status}");
            assert_eq!(outcome.status(), Some(status));
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(
            with("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            with("Wed, 21 Oct 2015 07:00:00 GMT"),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(with("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("soon"), None);
        assert_eq!(with("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let Outcome::RateLimited { wait, .. } = classify_status(429, &h, now) else {
            panic!("429 is a rate-limit answer, not a failure")
        };
        assert_eq!(wait, Duration::from_secs(7));
        let Outcome::RateLimited { wait, .. } = classify_status(429, &HeaderMap::new(), now) else {
            panic!()
        };
        assert_eq!(wait, RATE_LIMIT_WAIT, "no Retry-After: PagerDuty's 30 s");
    }
}
