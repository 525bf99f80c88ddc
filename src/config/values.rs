//! The typed values of the configuration, parsed once when it is loaded: durations, URLs, the
//! sender mailbox, the SMTP URL, the CA file and librdkafka's pass-through properties.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use reqwest::Url;
use serde::{Deserialize, Deserializer};

/// `channels.email.smtp_url`, checked to be a URL lettre can use. Never shown whole: it may
/// hold the SMTP password.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct SmtpUrl(String);

impl SmtpUrl {
    /// The pooled transport's builder for this URL.
    pub fn transport(&self) -> AsyncSmtpTransportBuilder {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.0)
            .expect("checked when the configuration was loaded")
    }

    /// The URL with its password, if any, masked.
    pub fn masked(&self) -> String {
        let mut url = Url::parse(&self.0).expect("checked when the configuration was loaded");
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        url.to_string()
    }
}

/// Why `channels.email.smtp_url` is refused; never the URL itself, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum InvalidSmtpUrl {
    #[error("{0}")]
    NotAUrl(#[from] url::ParseError),
    #[error("scheme must be smtp:// or smtps://")]
    Scheme,
    #[error("{0}")]
    Unusable(#[from] lettre::transport::smtp::Error),
}

impl TryFrom<String> for SmtpUrl {
    type Error = InvalidSmtpUrl;

    fn try_from(raw: String) -> Result<Self, InvalidSmtpUrl> {
        if !matches!(Url::parse(&raw)?.scheme(), "smtp" | "smtps") {
            return Err(InvalidSmtpUrl::Scheme);
        }
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&raw)?;
        Ok(Self(raw))
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// `delivery.ca_file`: its path and the certificates read from it when loading.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub certificates: Vec<reqwest::Certificate>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} certificates)",
            self.path.display(),
            self.certificates.len()
        )
    }
}

impl<'de> Deserialize<'de> for CaFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        let shown = path.display();
        let pem = std::fs::read(&path)
            .map_err(|e| serde::de::Error::custom(format!("cannot read {shown}: {e}")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            serde::de::Error::custom(format!("{shown} is not a PEM file of certificates: {e}"))
        })?;
        if certificates.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "{shown} holds no PEM certificate (BEGIN CERTIFICATE)"
            )));
        }
        Ok(Self { path, certificates })
    }
}

pub(super) fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let url = Url::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(serde::de::Error::custom(
            "must be an http:// or https:// URL",
        ));
    }
    Ok(url)
}

pub(super) fn mailbox<'de, D: Deserializer<'de>>(d: D) -> Result<Mailbox, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("not a mailbox: {e}")))
}

/// Parses `"500ms"`, `"15s"`, `"1m"`, `"2h"` (and humantime's other forms, `"1h 30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text.trim())
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(super) fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| parse_duration(t).map_err(serde::de::Error::custom))
        .collect()
}

/// A librdkafka property value as TOML or the environment may spell it.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Table(BTreeMap<String, ClientValue>),
}

/// Flattens `kafka.client` to dotted librdkafka names. Unquoted dotted TOML keys arrive as
/// nested tables, and environment variables cannot hold dots, so `_` also maps to `.`
/// (no librdkafka property contains an underscore).
pub(super) fn client_properties<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    fn flatten(
        prefix: &str,
        table: BTreeMap<String, ClientValue>,
        out: &mut BTreeMap<String, String>,
    ) {
        for (key, value) in table {
            let key = key.replace('_', ".");
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                ClientValue::Text(s) => {
                    out.insert(name, s);
                }
                ClientValue::Int(i) => {
                    out.insert(name, i.to_string());
                }
                ClientValue::Float(f) => {
                    out.insert(name, f.to_string());
                }
                ClientValue::Bool(b) => {
                    out.insert(name, b.to_string());
                }
                ClientValue::Table(t) => flatten(&name, t, out),
            }
        }
    }
    let table = BTreeMap::<String, ClientValue>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten("", table, &mut out);
    Ok(out)
}
