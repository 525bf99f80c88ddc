//! The webhook channel (CONTRACT §5): the product page's body, the user's headers, and the
//! Standard Webhooks `webhook-id` / `webhook-timestamp` / `webhook-signature` headers.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

use super::guard::check_url;
use super::outcome::{classify_status, classify_transport, Outcome};
use super::Dispatcher;
use crate::model::{DeliveryRecord, Secret};

/// Headers the service sets; a user header of the same name would break signatures or parsing.
const RESERVED: [&str; 5] = [
    "content-type",
    "content-length",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// A channel's `secret` that cannot sign: the delivery will not pass until it is corrected.
#[derive(Debug, thiserror::Error)]
#[error("the channel's signing secret is not a Standard Webhooks secret (whsec_ + base64)")]
pub struct InvalidSecret;

/// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed by the base64 secret after `whsec_`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, InvalidSecret> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64.decode(encoded).map_err(|_| InvalidSecret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

pub async fn send(
    dispatcher: &Dispatcher,
    record: &DeliveryRecord,
    url: &Secret,
    headers: &[(String, Secret)],
    secret: Option<&Secret>,
) -> Outcome {
    let url = match check_url(url.expose(), dispatcher.policy) {
        Ok(url) => url,
        Err(refused) => return refused.into(),
    };
    let body = serde_json::to_vec(&record.event.webhook_body()).expect("webhook bodies serialize");
    let timestamp = chrono::Utc::now().timestamp();
    let mut request = dispatcher
        .user_http
        .next()
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &record.delivery_id)
        .header("webhook-timestamp", timestamp.to_string());
    for (name, value) in headers {
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value.expose()),
        ) else {
            return Outcome::permanent(format!(
                "custom header `{name}` is not a valid HTTP header"
            ));
        };
        request = request.header(name, value);
    }
    if let Some(secret) = secret {
        match sign(secret.expose(), &record.delivery_id, timestamp, &body) {
            Ok(signature) => request = request.header("webhook-signature", signature),
            Err(invalid) => return Outcome::permanent(invalid.to_string()),
        }
    }
    match request.body(body).send().await {
        Ok(response) => classify_status(
            response.status().as_u16(),
            response.headers(),
            chrono::Utc::now(),
        ),
        Err(error) => classify_transport(&error, dispatcher.timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(
            signature.unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(sign("whsec_%%%", "id", 1, b"").is_err());
    }
}
