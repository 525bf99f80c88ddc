//! The HTTP clients and reading providers' answers within a limit.

use std::sync::Arc;
use std::time::Duration;

use super::guard::GuardedResolver;

/// A pooled client: no redirects (a 3xx is a failure), a per-request timeout. With `guarded`,
/// host names resolve only to public addresses (the client for user-supplied URLs).
pub fn client(timeout: Duration, guarded: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    let builder = if guarded {
        builder.dns_resolver(Arc::new(GuardedResolver))
    } else {
        builder
    };
    builder
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
        let response = client(Duration::from_secs(30), false)
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
