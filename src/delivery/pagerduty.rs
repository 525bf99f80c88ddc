//! The PagerDuty channel: Events API v2. 202 accepted; 400 will not pass (the event or the
//! integration key is invalid); 429 and 5xx may pass.

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;

use super::http::{excerpt, read_limited};
use super::outcome::{classify_status, classify_transport, Outcome};
use super::Dispatcher;
use crate::model::Secret;
use crate::render::{pagerduty, Alert};

pub async fn send(dispatcher: &Dispatcher, alert: &Alert<'_>, integration_key: &Secret) -> Outcome {
    post(dispatcher, pagerduty::event(alert), integration_key).await
}

/// Resolves the incident `dedup_key` (a recovery overtook its alert: see `crate::ledger`).
pub async fn resolve(
    dispatcher: &Dispatcher,
    dedup_key: &str,
    integration_key: &Secret,
) -> Outcome {
    post(dispatcher, pagerduty::resolve(dedup_key), integration_key).await
}

/// A body with the integration key, which the renderer never sees, added last.
#[derive(Serialize)]
struct Keyed<'a, B> {
    #[serde(flatten)]
    body: B,
    routing_key: &'a str,
}

async fn post(dispatcher: &Dispatcher, body: impl Serialize, integration_key: &Secret) -> Outcome {
    let body = Keyed {
        body,
        routing_key: integration_key.expose(),
    };
    let request = dispatcher
        .http
        .next()
        .post(dispatcher.pagerduty_events.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("PagerDuty bodies serialize"));
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            match classify_status(status, &headers, Utc::now()) {
                Outcome::Permanent { status, error } => {
                    // PagerDuty says what is wrong (`errors`); it never echoes the key.
                    let answer = read_limited(response).await;
                    Outcome::Permanent {
                        status,
                        error: format!(
                            "{error}: PagerDuty refused the event: {}",
                            excerpt(&answer)
                        ),
                    }
                }
                outcome @ (Outcome::Delivered { .. }
                | Outcome::Retry { .. }
                | Outcome::Unanswered { .. }
                | Outcome::RateLimited { .. }) => outcome,
            }
        }
        Err(error) => classify_transport(&error, dispatcher.timeout),
    }
}
