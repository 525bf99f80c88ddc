//! The email channel: lettre's pooled async SMTP transport (TLS as `smtp_url` says), one
//! `multipart/alternative` message per verified recipient.
//!
//! Each recipient is its own SMTP transaction, so one refused address cannot fail the
//! others, and the recipients an attempt reached are written into the delivery record: a
//! retry mails only those not reached yet. An attempt's outcome:
//! - every remaining recipient accepted → delivered;
//! - any recipient refused with a 4xx reply, or the server unreachable → retry (the next
//!   tier mails only the recipients still missing);
//! - otherwise, any recipient refused with a 5xx reply → dead-lettered, the reason naming
//!   each refused address, while the recipients that accepted keep their copy.

use std::collections::HashSet;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::outcome::{Outcome, Silence};
use super::Attempted;
use crate::config::EmailConfig;
use crate::model::settings::Recipient;
use crate::model::DeliveryRecord;
use crate::render::email::Email;

/// The SMTP connection pool and the sender address.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// Why a recipient did not get the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// 5xx: will not pass for this recipient.
    pub permanent: bool,
    /// The server could not be reached at all: every later recipient would fail the same way.
    pub unreachable: bool,
    /// ... because it did not answer in time (it may have taken the message).
    pub timed_out: bool,
    pub code: Option<u16>,
    pub reason: String,
}

impl Mailer {
    /// Builds the pool; connections are opened on first use. Must run inside a Tokio runtime.
    pub fn new(config: &EmailConfig, timeout: Duration) -> Self {
        let transport = config
            .smtp_url
            .transport()
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(16))
            .build();
        Self {
            transport,
            from: config.from.clone(),
        }
    }

    /// Sends `email` to one address in its own SMTP transaction.
    pub async fn send(
        &self,
        to: &str,
        email: &Email,
        delivery_id: Option<&str>,
    ) -> Result<(), Failure> {
        let refuse = |reason: String| Failure {
            permanent: true,
            unreachable: false,
            timed_out: false,
            code: None,
            reason,
        };
        let address: Address = to
            .parse()
            .map_err(|e| refuse(format!("`{to}` is not an email address: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, address))
            .subject(email.subject.clone())
            // RFC 3834: auto-responders must not answer an alert.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ));
        if let Some(id) = delivery_id {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Sysmos-Delivery-Id"),
                id.to_owned(),
            ));
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| refuse(format!("cannot build the message: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| classify(&e))
    }
}

/// SMTP 5xx will not pass; 4xx, timeouts, TLS and connection failures may.
pub fn classify(error: &lettre::transport::smtp::Error) -> Failure {
    let code = error.status().map(u16::from);
    Failure {
        permanent: error.is_permanent(),
        unreachable: !(error.is_permanent() || error.is_transient()),
        timed_out: error.is_timeout(),
        code,
        reason: error.to_string(),
    }
}

/// Sends `content` (an alert, or a digest's summary) to each verified recipient not reached
/// by an earlier attempt of `record`.
pub async fn send(
    mailer: &Mailer,
    record: &DeliveryRecord,
    content: &Email,
    recipients: &[Recipient],
) -> Attempted {
    let earlier: HashSet<&str> = record.reached_so_far().collect();
    let mut targets: Vec<&str> = Vec::new();
    for r in recipients.iter().filter(|r| r.verified) {
        if !earlier.contains(r.address.as_str()) && !targets.contains(&r.address.as_str()) {
            targets.push(&r.address);
        }
    }
    let mut reached = Vec::new();
    let mut failed = Vec::new();
    for (i, to) in targets.iter().enumerate() {
        match mailer.send(to, content, Some(&record.delivery_id)).await {
            Ok(()) => reached.push((*to).to_owned()),
            Err(failure) if failure.unreachable => {
                failed.extend(
                    targets[i..]
                        .iter()
                        .map(|t| ((*t).to_owned(), failure.clone())),
                );
                break;
            }
            Err(failure) => failed.push(((*to).to_owned(), failure)),
        }
    }
    Attempted {
        outcome: combine(&reached, &failed, earlier.len()),
        reached,
        opened: None,
        hold: None,
    }
}

/// The attempt's outcome from each recipient's (see the module documentation).
pub fn combine(reached: &[String], failed: &[(String, Failure)], reached_before: usize) -> Outcome {
    if failed.is_empty() {
        return Outcome::Delivered { status: None };
    }
    // 421 (service not available) and 454 (temporary failure): the server asks everyone to
    // slow down (CONTRACT §5a). The recipients that accepted keep their copy.
    if let Some((to, f)) = failed
        .iter()
        .find(|(_, f)| matches!(f.code, Some(421 | 454)))
    {
        return Outcome::RateLimited {
            status: f.code,
            error: format!("the mail server asked to slow down at {to}: {}", f.reason),
            wait: super::outcome::RATE_LIMIT_WAIT,
            provider_wide: true,
        };
    }
    let status = failed.iter().find_map(|(_, f)| f.code);
    let list = |permanent: bool| {
        failed
            .iter()
            .filter(|(_, f)| f.permanent == permanent)
            .map(|(to, f)| format!("{to}: {}", f.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let delivered = reached.len() + reached_before;
    let note = if delivered > 0 {
        format!(" ({delivered} other recipient(s) have it)")
    } else {
        String::new()
    };
    // The server never answered for anyone: what the circuits count.
    if reached.is_empty() && failed.iter().all(|(_, f)| f.unreachable) {
        let timed_out = failed.iter().any(|(_, f)| f.timed_out);
        return Outcome::Unanswered {
            error: format!("SMTP delivery failed for {}{note}", list(false)),
            silence: if timed_out {
                Silence::NoAnswer
            } else {
                Silence::Unreachable
            },
        };
    }
    if failed.iter().any(|(_, f)| !f.permanent) {
        return Outcome::Retry {
            status,
            error: format!("SMTP delivery failed for {}{note}", list(false)),
            retry_after: None,
        };
    }
    Outcome::Permanent {
        status,
        error: format!("the mail server refused {}{note}", list(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(permanent: bool, code: u16) -> Failure {
        Failure {
            permanent,
            unreachable: false,
            timed_out: false,
            code: Some(code),
            reason: format!("{code} no"),
        }
    }

    #[test]
    fn partial_refusals() {
        let a = vec!["a@x.test".to_owned()];
        assert!(matches!(combine(&a, &[], 0), Outcome::Delivered { .. }));
        let only_5xx = [("b@x.test".to_owned(), failure(true, 550))];
        let Outcome::Permanent { status, error } = combine(&a, &only_5xx, 0) else {
            panic!("a 5xx for a recipient is permanent")
        };
        assert_eq!(status, Some(550));
        assert!(
            error.contains("b@x.test") && error.contains("1 other recipient"),
            "{error}"
        );
        assert!(matches!(
            combine(&[], &only_5xx, 0),
            Outcome::Permanent { .. }
        ));
        let mixed = [
            ("b@x.test".to_owned(), failure(true, 550)),
            ("c@x.test".to_owned(), failure(false, 451)),
        ];
        assert!(
            matches!(combine(&a, &mixed, 0), Outcome::Retry { .. }),
            "4xx may pass"
        );
    }

    #[test]
    fn a_server_asking_to_slow_down_holds_every_recipient() {
        let reached = vec!["a@x.test".to_owned()];
        for code in [421, 454] {
            let failed = [
                ("b@x.test".to_owned(), failure(false, code)),
                ("c@x.test".to_owned(), failure(true, 550)),
            ];
            let Outcome::RateLimited {
                status,
                provider_wide,
                error,
                ..
            } = combine(&reached, &failed, 0)
            else {
                panic!("SMTP {code} is a rate-limit answer, not a failure")
            };
            assert_eq!((status, provider_wide), (Some(code), true));
            assert!(error.contains("b@x.test"), "{error}");
        }
    }
}
