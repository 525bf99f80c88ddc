//! The Discord channel: `POST {webhook_url}?wait=true` with one embed. The URL holds the
//! webhook's token, so it is user-supplied, guarded, and never logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;

use super::guard::check_url;
use super::http::{excerpt, read_limited};
use super::outcome::{classify_status, classify_transport, retry_after, Outcome, MAX_RETRY_AFTER};
use super::{Attempted, Dispatcher};
use crate::model::Secret;

pub async fn send(dispatcher: &Dispatcher, body: &Value, webhook_url: &Secret) -> Attempted {
    let mut url = match check_url(webhook_url.expose(), dispatcher.policy) {
        Ok(url) => url,
        Err(refused) => return Outcome::from(refused).into(),
    };
    // `wait=true`: Discord answers once the message exists, so a 2xx means it was posted.
    url.query_pairs_mut().append_pair("wait", "true");
    let request = dispatcher
        .user_http
        .next()
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body).expect("JSON values serialize"));
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let answer = if response.status().is_success() {
                Vec::new()
            } else {
                read_limited(response).await
            };
            Attempted {
                hold: exhausted(&headers),
                ..classify(status, &headers, &answer, Utc::now()).into()
            }
        }
        Err(error) => classify_transport(&error, dispatcher.timeout).into(),
    }
}

/// How long the webhook's bucket is empty for, when Discord says so: `X-RateLimit-Remaining:
/// 0` with `X-RateLimit-Reset-After` (seconds, may be fractional).
pub fn exhausted(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    let remaining = number("x-ratelimit-remaining")?;
    let reset_after = number("x-ratelimit-reset-after")?;
    (remaining < 1.0)
        .then(|| Duration::from_secs_f64(reset_after.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// The status table, with Discord's details: 429 waits for the JSON `retry_after` (seconds,
/// may be fractional) or else `Retry-After`; 404 means the webhook was deleted.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Outcome {
    let outcome = classify_status(status, headers, now);
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    let message = answer
        .as_ref()
        .and_then(|a| a.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| excerpt(body), str::to_owned);
    match outcome {
        Outcome::RateLimited { status, error, .. } => {
            let json_wait = answer
                .as_ref()
                .and_then(|a| a.get("retry_after"))
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
            let global = answer
                .as_ref()
                .and_then(|a| a.get("global"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Outcome::RateLimited {
                status,
                error: format!("{error}: rate limited by Discord"),
                wait: json_wait
                    .or_else(|| retry_after(headers, now))
                    .unwrap_or(super::outcome::RATE_LIMIT_WAIT),
                provider_wide: global,
            }
        }
        Outcome::Permanent { status, error } if status == Some(404) => Outcome::Permanent {
            status,
            error: format!(
                "{error}: the Discord webhook no longer exists ({message}); paste a new webhook URL"
            ),
        },
        Outcome::Permanent { status, error } => Outcome::Permanent {
            status,
            error: format!("{error}: {message}"),
        },
        outcome @ (Outcome::Delivered { .. }
        | Outcome::Retry { .. }
        | Outcome::Unanswered { .. }) => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn rate_limit_waits_as_discord_says() {
        let now = Utc::now();
        let waits = |headers: &HeaderMap, body: &[u8]| match classify(429, headers, body, now) {
            Outcome::RateLimited {
                wait,
                provider_wide,
                ..
            } => (wait, provider_wide),
            other => panic!("429 is a rate-limit answer: {other:?}"),
        };
        let body = br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#;
        assert_eq!(
            waits(&HeaderMap::new(), body),
            (Duration::from_millis(1500), false)
        );
        let global = br#"{"message":"You are being rate limited.","retry_after":2,"global":true}"#;
        assert_eq!(
            waits(&HeaderMap::new(), global),
            (Duration::from_secs(2), true),
            "a global limit holds every Discord bucket"
        );
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("4"));
        assert_eq!(waits(&headers, b""), (Duration::from_secs(4), false));
    }

    #[test]
    fn an_exhausted_bucket_is_held_until_its_reset() {
        let headers = |remaining: &'static str, reset: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-remaining", HeaderValue::from_static(remaining));
            h.insert("x-ratelimit-reset-after", HeaderValue::from_static(reset));
            h
        };
        assert_eq!(
            exhausted(&headers("0", "1.25")),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(exhausted(&headers("3", "1.25")), None);
        assert_eq!(exhausted(&HeaderMap::new()), None);
    }

    #[test]
    fn deleted_webhook_is_permanent() {
        let body = br#"{"message":"Unknown Webhook","code":10015}"#;
        let outcome = classify(404, &HeaderMap::new(), body, Utc::now());
        let Outcome::Permanent { error, .. } = outcome else {
            panic!("404 is permanent")
        };
        assert!(error.contains("Unknown Webhook"), "{error}");
        assert!(matches!(
            classify(204, &HeaderMap::new(), b"", Utc::now()),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            classify(502, &HeaderMap::new(), b"", Utc::now()),
            Outcome::Retry { .. }
        ));
    }
}
