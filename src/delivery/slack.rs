//! The Slack channel: `chat.postMessage` with the bot token. Slack answers HTTP 200 with
//! `"ok": false` for most failures, so the answer's `error` decides (CONTRACT §5, §6).

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde::Deserialize;

use super::http::{excerpt, read_limited};
use super::outcome::{classify_status, classify_transport, retry_after, Outcome};
use super::Dispatcher;
use crate::model::Secret;

/// Posts `body`, a `chat.postMessage` JSON body (`render::slack`).
pub async fn send(dispatcher: &Dispatcher, body: Vec<u8>, token: &Secret) -> Outcome {
    let request = dispatcher
        .http
        .next()
        .post(format!("{}/chat.postMessage", dispatcher.slack_api))
        .bearer_auth(token.expose())
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(body);
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let answer = read_limited(response).await;
            classify(status, &headers, &answer, Utc::now())
        }
        Err(error) => classify_transport(&error, dispatcher.timeout),
    }
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Slack's `error` strings that ask to slow down: not failed attempts (CONTRACT §5a).
const RATE_LIMITED: [&str; 2] = ["ratelimited", "rate_limited"];

/// Slack's `error` strings that may pass; every other error will not.
const TRANSIENT: [&str; 4] = [
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Classifies Slack's answer: a non-200 status by the status table (429 honours
/// `Retry-After`), then `ok` and `error` of the JSON body.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Outcome {
    if status != 200 {
        return match classify_status(status, headers, now) {
            Outcome::Delivered { .. } => Outcome::Retry {
                status: Some(status),
                error: format!(
                    "Slack answered HTTP {status} instead of 200: {}",
                    excerpt(body)
                ),
                retry_after: None,
            },
            outcome @ (Outcome::Retry { .. }
            | Outcome::Unanswered { .. }
            | Outcome::Permanent { .. }
            | Outcome::RateLimited { .. }) => outcome,
        };
    }
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        // A proxy or an outage page, not Slack's API: it may pass.
        Err(_) => {
            return Outcome::Retry {
                status: Some(status),
                error: format!("Slack's answer is not its API's JSON: {}", excerpt(body)),
                retry_after: None,
            }
        }
    };
    if answer.ok {
        return Outcome::Delivered {
            status: Some(status),
        };
    }
    let code = answer.error.unwrap_or_else(|| "unknown".into());
    if RATE_LIMITED.contains(&code.as_str()) {
        let error = format!("Slack error `{code}`");
        return Outcome::rate_limited(Some(status), error, retry_after(headers, now));
    }
    if TRANSIENT.contains(&code.as_str()) {
        return Outcome::Retry {
            status: Some(status),
            error: format!("Slack error `{code}`"),
            retry_after: retry_after(headers, now),
        };
    }
    Outcome::Permanent {
        status: Some(status),
        error: format!("Slack error `{code}`: {}", hint(&code)),
    }
}

/// What the account owner has to do about a permanent Slack error.
fn hint(code: &str) -> &'static str {
    match code {
        "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked" | "token_expired" => {
            "the bot token is no longer valid; reconnect Slack in Sysmos settings"
        }
        "channel_not_found" | "not_in_channel" => {
            "invite the Sysmos bot to the channel, or pick another channel"
        }
        "is_archived" => "the channel is archived; pick another channel",
        "missing_scope" => "the Slack app lacks the chat:write scope; reconnect Slack",
        "msg_too_long" | "invalid_blocks" | "invalid_arguments" => {
            "Slack refused the message itself; this is a sysmos-notify bug, please report it"
        }
        _ => "not an error Slack documents as temporary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttemptOutcome::{Delivered, Permanent, Retryable};
    use reqwest::header::{HeaderValue, RETRY_AFTER};
    use std::time::Duration;

    #[test]
    fn errors_table() {
        let now = Utc::now();
        let table = [
            ("invalid_auth", Permanent),
            ("account_inactive", Permanent),
            ("token_revoked", Permanent),
            ("channel_not_found", Permanent),
            ("not_in_channel", Permanent),
            ("is_archived", Permanent),
            ("missing_scope", Permanent),
            ("msg_too_long", Permanent),
            ("invalid_blocks", Permanent),
            ("something_new", Permanent),
            ("ratelimited", Retryable),
            ("rate_limited", Retryable),
            ("internal_error", Retryable),
            ("fatal_error", Retryable),
            ("service_unavailable", Retryable),
            ("request_timeout", Retryable),
        ];
        for (code, expected) in table {
            let body = format!(r#"{{"ok":false,"error":"{code}"}}"#);
            let outcome = classify(200, &HeaderMap::new(), body.as_bytes(), now);
            assert_eq!(outcome.kind(), expected, "{code}");
        }
        let ok = classify(200, &HeaderMap::new(), br#"{"ok":true,"ts":"1.2"}"#, now);
        assert_eq!(ok.kind(), Delivered);
        assert_eq!(
            classify(200, &HeaderMap::new(), b"<html>", now).kind(),
            Retryable
        );
        assert_eq!(
            classify(200, &HeaderMap::new(), br#"{"ok":false}"#, now).kind(),
            Permanent
        );
        assert_eq!(classify(404, &HeaderMap::new(), b"", now).kind(), Permanent);
        assert_eq!(classify(503, &HeaderMap::new(), b"", now).kind(), Retryable);
    }

    #[test]
    fn rate_limits_are_answers_not_failures() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let now = Utc::now();
        for (status, body) in [
            (429, &b""[..]),
            (200, br#"{"ok":false,"error":"ratelimited"}"#),
            (200, br#"{"ok":false,"error":"rate_limited"}"#),
        ] {
            let Outcome::RateLimited {
                wait,
                provider_wide,
                ..
            } = classify(status, &headers, body, now)
            else {
                panic!("{status} {body:?} is a rate-limit answer")
            };
            assert_eq!((wait, provider_wide), (Duration::from_secs(3), false));
        }
        let Outcome::RateLimited { wait, .. } = classify(429, &HeaderMap::new(), b"", now) else {
            panic!()
        };
        assert_eq!(
            wait,
            crate::delivery::outcome::RATE_LIMIT_WAIT,
            "no hint: 30 s"
        );
    }
}
