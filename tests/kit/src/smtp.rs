//! A real SMTP server on a local port (no TLS, no auth): speaks the protocol lettre uses,
//! records every accepted message, and answers `RCPT TO` from a script per address.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One message as it crossed the wire.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA section, dot-unstuffed, CRLF line ends.
    pub data: String,
    /// When the message was accepted.
    pub at: std::time::Instant,
}

impl Mail {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .expect("a MIME message")
    }
}

#[derive(Default)]
struct State {
    mails: Vec<Mail>,
    /// Replies to `RCPT TO:<address>` in order; afterwards `250`.
    rcpt: HashMap<String, VecDeque<String>>,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, shared.clone()));
            }
        });
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Answers `RCPT TO` for `address` with `replies` in order (e.g. `550 5.1.1 no such user`).
    pub fn script(&self, address: &str, replies: &[&str]) {
        self.state.lock().unwrap().rcpt.insert(
            address.to_lowercase(),
            replies.iter().map(|r| (*r).to_owned()).collect(),
        );
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.state.lock().unwrap().mails.clone()
    }

    /// Messages whose envelope includes `address`.
    pub fn mails_to(&self, address: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }
}

async fn session(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut from = String::new();
    let mut to = Vec::new();
    if write
        .write_all(b"220 localhost ESMTP test\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8".to_owned()
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK".to_owned()
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            "250 OK".to_owned()
        } else if upper.starts_with("MAIL FROM:") {
            from = address_of(&command);
            to.clear();
            "250 OK".to_owned()
        } else if upper.starts_with("RCPT TO:") {
            let address = address_of(&command);
            let scripted = state
                .lock()
                .unwrap()
                .rcpt
                .get_mut(&address.to_lowercase())
                .and_then(VecDeque::pop_front);
            let reply = scripted.unwrap_or_else(|| "250 OK".to_owned());
            if reply.starts_with('2') {
                to.push(address);
            }
            reply
        } else if upper == "DATA" {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            state.lock().unwrap().mails.push(Mail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
                at: std::time::Instant::now(),
            });
            "250 OK queued".to_owned()
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 command not implemented".to_owned()
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `MAIL FROM:<a@b> SIZE=1` → `a@b`.
fn address_of(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command[start..]
        .find('>')
        .map_or(command.len(), |i| start + i);
    command[start..end].to_owned()
}
