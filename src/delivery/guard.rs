//! The guard on user-supplied URLs (webhooks, Discord): a delivery must not become a way
//! into the network the service runs in.
//!
//! - Only `https://`, and `http://` when `delivery.allow_http` (or
//!   `delivery.allow_private_targets`) is set.
//! - An IP literal is checked before the request. A host name is resolved by
//!   [`GuardedResolver`], the resolver of the client that sends to user URLs: it drops every
//!   non-public address, so the connection goes only to an address that was checked, with
//!   no second lookup in between (no DNS rebinding window).
//! - Redirects are never followed (the client's policy); a 3xx is a failure.
//!
//! A refused target is a [`Refused`] error whose text says why; callers make it a permanent
//! failure.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// What user-supplied URLs may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub allow_private: bool,
    pub allow_http: bool,
}

/// Why a target is refused: returned by [`check_url`], and raised by [`GuardedResolver`]
/// inside the HTTP client, where [`refused`] finds it again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks a user-supplied URL before any request: scheme, host, and an IP literal's range.
pub fn check_url(raw: &str, policy: Policy) -> Result<Url, Refused> {
    let url =
        Url::parse(raw).map_err(|e| Refused(format!("invalid URL in channel settings: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http || policy.allow_private => {}
        "http" => {
            return Err(Refused(
                "refused: http:// is not allowed for channel URLs; use https:// \
                 (or set delivery.allow_http = true)"
                    .to_owned(),
            ))
        }
        other => {
            return Err(Refused(format!(
                "refused: channel URL scheme `{other}`; only https:// is allowed"
            )))
        }
    }
    // The URL parser normalises IP literals (`0x7f.1` is 127.0.0.1, IPv6 in brackets).
    let host = url
        .host_str()
        .ok_or_else(|| Refused("channel URL has no host".to_owned()))?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if let Some(ip) = literal.filter(|ip| !policy.allow_private && !is_public(*ip)) {
        return Err(Refused(refusal(ip)));
    }
    Ok(url)
}

fn refusal(ip: IpAddr) -> String {
    format!(
        "refused: the channel's host is the non-public address {ip} \
         (set delivery.allow_private_targets = true only for development)"
    )
}

/// Resolves host names for the user-URL client, keeping only public addresses.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let ip = resolved.first().map(|a| a.ip());
                let reason = match ip {
                    Some(ip) => refusal(ip),
                    None => "the channel's host has no address".to_owned(),
                };
                return Err(Box::new(Refused(reason)) as Box<dyn Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Whether an address is on the public internet. Everything else is refused: loopback,
/// private, shared (CGNAT), link-local (cloud metadata included), multicast, unspecified,
/// broadcast, reserved, documentation and benchmarking ranges, IPv6 unique-local,
/// link-local and site-local, and the IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4), judged by the address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                        // 0.0.0.0/8 "this network"
        || a == 10                                  // 10.0.0.0/8 private
        || (a == 100 && (64..128).contains(&b))     // 100.64.0.0/10 shared (CGNAT)
        || a == 127                                 // loopback
        || (a == 169 && b == 254)                   // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))      // 172.16.0.0/12 private
        || (a == 192 && b == 0 && c == 0)           // 192.0.0.0/24 IETF assignments
        || (a == 192 && b == 0 && c == 2)           // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)         // 6to4 relay anycast
        || (a == 192 && b == 168)                   // private
        || (a == 198 && (18..20).contains(&b))      // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100)        // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)         // TEST-NET-3
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0; 6] {
        return is_public_v4(embedded_v4(s[6], s[7])); // ::a.b.c.d, IPv4-compatible
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7])); // 64:ff9b::/96 NAT64
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2])); // 2002::/16 6to4
    }
    !((s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)   // 64:ff9b:1::/48 local NAT64
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])    // 100::/64 discard
        || (s[0] == 0x2001 && s[1] < 0x200)           // 2001::/23 IETF (Teredo included)
        || (s[0] == 0x2001 && s[1] == 0xdb8)          // 2001:db8::/32 documentation
        || (s[0] & 0xfe00) == 0xfc00                  // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80                  // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0                  // fec0::/10 site-local
        || (s[0] & 0xff00) == 0xff00) // ff00::/8 multicast
}

/// Whether a transport error came from [`GuardedResolver`] refusing the target.
pub fn refused(error: &(dyn Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.0.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn every_non_public_range_is_refused() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ];
        for ip in refused {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860::8888",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let strict = Policy {
            allow_private: false,
            allow_http: false,
        };
        let permanent = |r: Result<Url, Refused>| r.is_err();
        assert!(check_url("https://hooks.example.com/x", strict).is_ok());
        assert!(permanent(check_url("http://hooks.example.com/x", strict)));
        assert!(permanent(check_url("ftp://hooks.example.com/x", strict)));
        assert!(permanent(check_url("https://127.0.0.1/x", strict)));
        assert!(permanent(check_url(
            "https://[::ffff:169.254.169.254]/",
            strict
        )));
        assert!(
            permanent(check_url("https://0x7f.1/", strict)),
            "hex IPv4 literal"
        );
        assert!(permanent(check_url("not a url", strict)));
        let http = Policy {
            allow_http: true,
            ..strict
        };
        assert!(check_url("http://hooks.example.com/x", http).is_ok());
        assert!(permanent(check_url("http://10.0.0.1/x", http)));
        let dev = Policy {
            allow_private: true,
            allow_http: false,
        };
        assert!(check_url("http://127.0.0.1:9/x", dev).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_private_addresses() {
        let error = GuardedResolver
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("localhost is loopback");
        let text = refused(error.as_ref()).expect("a Refused error");
        assert!(text.contains("non-public address"), "{text}");
    }
}
