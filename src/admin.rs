//! The operator's HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` waits for: the config topic read to its end, and both consumers in their groups.
#[derive(Debug, Default)]
pub struct Readiness {
    pub settings_loaded: Arc<AtomicBool>,
    pub router_joined: Arc<AtomicBool>,
    pub deliverer_joined: Arc<AtomicBool>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.settings_loaded.load(Ordering::Acquire)
            && self.router_joined.load(Ordering::Acquire)
            && self.deliverer_joined.load(Ordering::Acquire)
    }

    fn waiting_for(&self) -> String {
        let mut missing = Vec::new();
        if !self.settings_loaded.load(Ordering::Acquire) {
            missing.push("settings cache (config topic not read to its end)");
        }
        if !self.router_joined.load(Ordering::Acquire) {
            missing.push("event consumer group");
        }
        if !self.deliverer_joined.load(Ordering::Acquire) {
            missing.push("delivery consumer group");
        }
        format!("not ready; waiting for: {}\n", missing.join(", "))
    }
}

/// Binds `listen` now (so a taken port fails start-up) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let reply = respond(&req, &metrics, &readiness);
                    async move { Ok::<_, Infallible>(reply) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            readiness.waiting_for(),
        ),
        "/metrics" => {
            metrics.ready(readiness.is_ready());
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
