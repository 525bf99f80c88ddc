//! A local HTTP endpoint that records every request and answers from scripts: a default
//! script, and scripts for requests whose path or body contains a given text.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};

use crate::tls;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    /// HTTP/1.1, or HTTP/2 when a TLS receiver's client chose it.
    pub version: hyper::Version,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Held this long before it is sent (on top of the receiver's own delay).
    pub after: std::time::Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: "{}".into(),
            after: std::time::Duration::ZERO,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            after: std::time::Duration::ZERO,
        }
    }

    /// The same answer, held `after` before it is sent.
    pub fn after(mut self, after: std::time::Duration) -> Self {
        self.after = after;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// Answers in order, then `then` for every later request.
#[derive(Debug, Clone)]
struct Script {
    first: VecDeque<Reply>,
    then: Reply,
}

impl Script {
    fn next(&mut self) -> Reply {
        self.first.pop_front().unwrap_or_else(|| self.then.clone())
    }
}

/// Decides the answer to a request from the request itself (chaos runs, randomness).
pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    requests: Vec<Recorded>,
    responder: Option<Responder>,
    script: Script,
    /// (needle, script): the first whose needle the path or body contains answers.
    rules: Vec<(String, Script)>,
    delay: std::time::Duration,
}

impl State {
    fn reply(&mut self, request: &Recorded) -> Reply {
        if let Some(responder) = &self.responder {
            return responder(request);
        }
        let body = String::from_utf8_lossy(&request.body);
        for (needle, script) in &mut self.rules {
            if request.path.contains(needle.as_str()) || body.contains(needle.as_str()) {
                return script.next();
            }
        }
        self.script.next()
    }
}

#[derive(Clone)]
pub struct Receiver {
    /// `{base}/hook`, for webhooks.
    pub url: String,
    /// `http://127.0.0.1:port`, for API base URLs.
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Starts on a free port, answering 200 until told otherwise.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`Receiver::start`], over TLS with the test CA's certificate (`https://`), offering
    /// HTTP/2 and HTTP/1.1.
    pub async fn start_tls() -> Self {
        Self::start_with(Some(tls::acceptor())).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let url = format!("{base}/hook");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            responder: None,
            script: Script {
                first: VecDeque::new(),
                then: Reply::status(200),
            },
            rules: Vec::new(),
            delay: std::time::Duration::ZERO,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let method = req.method().to_string();
                            let version = req.version();
                            // Over HTTP/2 the URI carries the scheme and authority too.
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or_else(|| "/".to_owned(), ToString::to_string);
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let (reply, delay) = {
                                let mut s = state.lock().unwrap();
                                let recorded = Recorded {
                                    at: Instant::now(),
                                    version,
                                    method,
                                    path,
                                    headers,
                                    body,
                                };
                                let reply = s.reply(&recorded);
                                s.requests.push(recorded);
                                (reply, s.delay)
                            };
                            tokio::time::sleep(delay + reply.after).await;
                            let mut response = Response::builder().status(reply.status);
                            for (name, value) in reply.headers {
                                response = response.header(name, value);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                            )
                        }
                    };
                    tls::serve(stream, tls.as_ref(), service).await;
                });
            }
        });
        Self { url, base, state }
    }

    /// Answers `first` in order, then `then` for every later request.
    pub fn respond(&self, first: &[u16], then: u16) {
        self.state.lock().unwrap().script = Script {
            first: first.iter().map(|s| Reply::status(*s)).collect(),
            then: Reply::status(then),
        };
    }

    /// Every request is answered by `responder` (scripts are then ignored).
    pub fn respond_by(&self, responder: Responder) {
        self.state.lock().unwrap().responder = Some(responder);
    }

    /// Requests whose path or body contains `needle` are answered `first` in order, then `then`.
    pub fn respond_when(&self, needle: &str, first: Vec<Reply>, then: Reply) {
        self.state.lock().unwrap().rules.push((
            needle.to_owned(),
            Script {
                first: first.into(),
                then,
            },
        ));
    }

    /// The requests whose path or body contains `needle`.
    pub fn requests_with(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.path.contains(needle) || String::from_utf8_lossy(&r.body).contains(needle)
            })
            .collect()
    }

    /// Holds every answer this long (a slow endpoint).
    pub fn delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}
