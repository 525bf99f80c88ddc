//! The HTTP clients and reading providers' answers within a limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::guard::GuardedResolver;

/// A pooled client: no redirects (a 3xx is a failure), a per-request timeout, HTTP/2 with
/// any `https://` endpoint that offers it (ALPN; plain `http://` stays HTTP/1.1), and the
/// public roots plus `roots` trusted. With `guarded`, host names resolve only to public
/// addresses (the client for user-supplied URLs). Fails only on a root it cannot use.
pub fn client(
    timeout: Duration,
    guarded: bool,
    roots: &[reqwest::Certificate],
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder();
    let builder = if guarded {
        builder.dns_resolver(Arc::new(GuardedResolver))
    } else {
        builder
    };
    let builder = roots
        .iter()
        .fold(builder, |b, root| b.add_root_certificate(root.clone()));
    builder
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sysmos-notify/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// Requests one HTTP/2 connection carries at once, as this service counts on: RFC 9113
/// recommends that a server allow at least 100 (its `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// Clients that take requests in turn. hyper keeps one HTTP/2 connection per host, and a
/// server lets a connection carry only so many requests at once: with one client, a host that
/// offers HTTP/2 would be held to that many requests in flight, whatever
/// `delivery.max_in_flight_per_destination` allows. With one client per
/// [`STREAMS_PER_CONNECTION`] of that cap, it is not. Over HTTP/1.1 each request in flight
/// has a connection of its own either way.
pub struct Clients {
    clients: Vec<reqwest::Client>,
    turn: AtomicUsize,
}

impl Clients {
    /// Enough clients for `per_destination` requests in flight to one host, each made by `make`.
    pub fn new(
        per_destination: usize,
        make: impl Fn() -> reqwest::Result<reqwest::Client>,
    ) -> reqwest::Result<Self> {
        let count = per_destination.div_ceil(STREAMS_PER_CONNECTION).max(1);
        Ok(Self {
            clients: (0..count).map(|_| make()).collect::<Result<_, _>>()?,
            turn: AtomicUsize::new(0),
        })
    }

    /// The client whose turn it is.
    pub fn next(&self) -> &reqwest::Client {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.clients[turn % self.clients.len()]
    }

    /// How many clients take turns.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.clients.len()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn clients_cover_the_destination_cap_and_take_turns() {
        let make = || client(Duration::from_secs(1), false, &[]);
        assert_eq!(Clients::new(1, make).unwrap().count(), 1);
        assert_eq!(Clients::new(100, make).unwrap().count(), 1);
        assert_eq!(Clients::new(256, make).unwrap().count(), 3);
        let clients = Clients::new(2048, make).unwrap();
        assert_eq!(clients.count(), 21);
        let first: *const reqwest::Client = clients.next();
        let turns: Vec<*const reqwest::Client> =
            (0..21).map(|_| clients.next() as *const _).collect();
        assert_eq!(
            turns[20], first,
            "the 22nd request has the first client again"
        );
        assert!(
            turns[..20].iter().all(|c| *c != first),
            "each other client once first"
        );
    }

    #[tokio::test]
    async fn an_endless_answer_is_read_only_up_to_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
            // An answer that never ends: the service must stop reading, not buffer it.
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let response = client(Duration::from_secs(30), false, &[])
            .unwrap()
            .get(format!("http://{address}/"))
            .send()
            .await
            .unwrap();
        let body = tokio::time::timeout(Duration::from_secs(10), read_limited(response))
            .await
            .expect("reading stops at the limit");
        assert_eq!(body.len(), MAX_ANSWER_BYTES);
    }
}
