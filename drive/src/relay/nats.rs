//! NATS JetStream sink: each event published to `<subject>.<kind>` with `Nats-Msg-Id` set to
//! the event's stable id, delivered once the stream acknowledged it.

use std::time::Duration;

use async_nats::jetstream;

use super::{Outgoing, SinkError};

/// How long a connection attempt and a publish acknowledgement are waited for.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct NatsSink {
    url: String,
    subject: String,
    stream: Option<String>,
    context: Option<jetstream::Context>,
}

impl NatsSink {
    pub(super) fn new(url: &str, subject: &str, stream: Option<String>) -> NatsSink {
        NatsSink {
            url: url.to_string(),
            subject: subject.to_string(),
            stream,
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
            let client = async_nats::ConnectOptions::new()
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
