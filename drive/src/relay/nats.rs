//! NATS JetStream sink: each event published to `<subject>.<kind>` with `Nats-Msg-Id` set to
//! the event's stable id, delivered once the stream acknowledged it. It authenticates with the
//! sink's secret when it has one: a credentials file (decentralized JWT auth) or a token.

use std::time::Duration;

use async_nats::jetstream;

use super::{Outgoing, SinkError};

/// How long a connection attempt and a publish acknowledgement are waited for.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct NatsSink {
    url: String,
    subject: String,
    stream: Option<String>,
    auth: Option<Auth>,
    context: Option<jetstream::Context>,
}

/// How the sink proves itself to the server.
pub(super) enum Auth {
    /// A `.creds` file: the user JWT and its NKey seed.
    Credentials(String),
    /// A token (`authorization { token: ... }` on the server).
    Token(String),
}

impl Auth {
    /// The secret's kind by its content: a credentials file has its JWT block; anything else is
    /// a token (surrounding whitespace ignored).
    pub(super) fn parse(secret: &[u8]) -> Result<Auth, String> {
        let text = std::str::from_utf8(secret)
            .map_err(|_| "a NATS credential must be text (a .creds file or a token)".to_string())?;
        if text.contains("-----BEGIN NATS USER JWT-----") {
            // Checked now, so a bad file is reported as such and not as an unreachable server.
            async_nats::ConnectOptions::with_credentials(text)
                .map_err(|e| format!("the NATS credentials file does not parse: {e}"))?;
            return Ok(Auth::Credentials(text.to_string()));
        }
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err("a NATS token is one word without spaces".into());
        }
        Ok(Auth::Token(token.to_string()))
    }

    fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        match self {
            Auth::Credentials(creds) => async_nats::ConnectOptions::with_credentials(creds)
                .map_err(|e| format!("the NATS credentials file does not parse: {e}")),
            Auth::Token(token) => Ok(async_nats::ConnectOptions::with_token(token.clone())),
        }
    }
}

impl NatsSink {
    pub(super) fn new(url: &str, subject: &str, stream: Option<String>, auth: Option<Auth>) -> NatsSink {
        NatsSink {
            url: url.to_string(),
            subject: subject.to_string(),
            stream,
            auth,
            context: None,
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Unreachable {
            endpoint: super::redact_url(&self.url),
            message: e.to_string(),
        }
    }

    async fn context(&mut self) -> Result<&jetstream::Context, SinkError> {
        if self.context.is_none() {
            let options = match &self.auth {
                Some(auth) => auth.options().map_err(|e| self.unreachable(e))?,
                None => async_nats::ConnectOptions::new(),
            };
            let client = options
                .connection_timeout(TIMEOUT)
                .name("studiodrive-relay")
                .connect(self.url.as_str())
                .await
                .map_err(|e| self.unreachable(e))?;
            let mut context = jetstream::new(client);
            context.set_timeout(TIMEOUT);
            if let Some(stream) = &self.stream {
                context
                    .get_or_create_stream(jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![format!("{}.>", self.subject)],
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| self.unreachable(format!("stream {stream}: {e}")))?;
            }
            self.context = Some(context);
        }
        Ok(self.context.as_ref().expect("set above"))
    }

    pub(super) async fn deliver(&mut self, event: &Outgoing) -> Result<(), SinkError> {
        let subject = format!("{}.{}", self.subject, event.kind);
        let result = async {
            let context = self.context().await?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            let acked = match context
                .publish_with_headers(subject, headers, event.body.clone())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            acked.map_err(|message| SinkError::Refused {
                endpoint: super::redact_url(&self.url),
                id: event.id.clone(),
                message,
            })
        }
        .await;
        if result.is_err() {
            // A new connection (and stream check) on the next attempt.
            self.context = None;
        }
        result
    }
}
