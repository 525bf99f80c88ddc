//! The Discord channel: `POST {webhook_url}?wait=true` with one embed. The URL holds the
//! webhook's token, so it is user-supplied, guarded, and never logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;

use super::guard::check_url;
use super::http::{excerpt, read_limited};
use super::outcome::{classify_status, classify_transport, retry_after, Outcome, MAX_RETRY_AFTER};
use super::Dispatcher;
use crate::model::Secret;
use crate::render::{discord, Alert};

pub async fn send(dispatcher: &Dispatcher, alert: &Alert<'_>, webhook_url: &Secret) -> Outcome {
    let mut url = match check_url(webhook_url.expose(), dispatcher.policy) {
        Ok(url) => url,
        Err(refused) => return refused.into(),
    };
    // `wait=true`: Discord answers once the message exists, so a 2xx means it was posted.
    url.query_pairs_mut().append_pair("wait", "true");
    let body = discord::message(alert);
    let request = dispatcher
        .user_http
        .next()
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("JSON values serialize"));
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let answer = if response.status().is_success() {
                Vec::new()
            } else {
                read_limited(response).await
            };
            classify(status, &headers, &answer, Utc::now())
        }
        Err(error) => classify_transport(&error, dispatcher.timeout),
    }
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
        Outcome::Retry { status, error, .. } if status == Some(429) => {
            let json_wait = answer
                .as_ref()
                .and_then(|a| a.get("retry_after"))
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
            Outcome::Retry {
                status,
                error: format!("{error}: rate limited by Discord"),
                retry_after: json_wait.or_else(|| retry_after(headers, now)),
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
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn rate_limit_waits_as_discord_says() {
        let now = Utc::now();
        let body = br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#;
        let Outcome::Retry {
            retry_after: wait, ..
        } = classify(429, &HeaderMap::new(), body, now)
        else {
            panic!("429 retries")
        };
        assert_eq!(wait, Some(Duration::from_millis(1500)));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("4"));
        let Outcome::Retry {
            retry_after: wait, ..
        } = classify(429, &headers, b"", now)
        else {
            panic!("429 retries")
        };
        assert_eq!(wait, Some(Duration::from_secs(4)));
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
