//! The shared HTTP client and the guard on user-supplied URLs.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use super::outcome::Outcome;

/// One pooled client for every provider: no redirects (a 3xx is a failure), a per-request timeout.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sysmos-notify/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("static HTTP client configuration is valid")
}

/// Provider answers are small; a larger body is cut here, never buffered whole.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads at most [`MAX_ANSWER_BYTES`] of a response body; a failure mid-body yields what came.
pub async fn read_limited(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    body
}

/// A short, single-line excerpt of a provider's answer for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    crate::render::text::cut(&crate::render::text::one_line(text.trim()), 300)
}

/// Parses a user-supplied URL and, unless private targets are allowed, refuses hosts that
/// resolve to loopback, private, link-local or other non-public addresses.
pub async fn check_target(raw: &str, allow_private: bool) -> Result<Url, Outcome> {
    let url = Url::parse(raw)
        .map_err(|e| Outcome::permanent(format!("invalid URL in channel settings: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Outcome::permanent(
            "channel URL must be http:// or https://",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Outcome::permanent("channel URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if allow_private {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Outcome::retry(format!("cannot resolve the channel's host: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = addresses.iter().find(|ip| !is_public(**ip)) {
        return Err(Outcome::permanent(format!(
            "refused: the channel's host resolves to the non-public address {ip} \
             (set delivery.allow_private_targets = true only for development)"
        )));
    }
    Ok(url)
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn loopback_target_refused_unless_allowed() {
        assert!(matches!(
            check_target("http://127.0.0.1:9/x", false).await,
            Err(Outcome::Permanent { .. })
        ));
        assert!(check_target("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(matches!(
            check_target("ftp://example.com", true).await,
            Err(Outcome::Permanent { .. })
        ));
    }
}
