//! Reading the audit stream in order, every sequence once, none skipped.
//!
//! The sequencer reads with an ordered consumer, which JetStream serves
//! from one replica of the stream. Under a leader's death that replica
//! can be behind or be rebuilt, and the consumer has been seen (a 3-node
//! nats-server 2.9 cluster, the stream leader SIGKILLed under load) to
//! hand over sequence N+17 after N: sixteen acknowledged entries would
//! never have reached the log. The audit stream never has a hole (no
//! deletes, no purges, no limits), so a jump in sequence is the consumer's,
//! not the stream's: [`Reader`] fetches every sequence it jumped over by
//! number from the stream leader before it goes on. The same replica can
//! also leave the consumer silent at the stream's tail (heartbeats coming,
//! no messages): when the consumer gives nothing, the reader asks the
//! stream for its last sequence, and fetches what the consumer owes.

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use std::time::Duration;

use crate::streams::Names;
use crate::{EventsError, js_err};

/// One event as the stream holds it.
pub(crate) struct Incoming {
    pub seq: u64,
    pub subject: String,
    /// Its `Nats-Msg-Id` header.
    pub msg_id: Option<String>,
    pub payload: Bytes,
}

/// The audit stream from one sequence on, contiguous (see the module
/// docs).
pub(crate) struct Reader {
    stream: stream::Stream,
    msgs: consumer::pull::Ordered,
    /// The sequence the next event must have.
    next: u64,
    /// Events the consumer skipped and the leader gave by number.
    pub refetched: u64,
}

impl Reader {
    /// Reads from `after + 1` (`after` = 0: from the stream's start).
    pub async fn open(
        js: &jetstream::Context,
        names: &Names,
        after: u64,
    ) -> Result<Self, EventsError> {
        let mut stream = js
            .get_stream(&names.audit_stream)
            .await
            .map_err(|e| js_err(&format!("stream {}", names.audit_stream), e))?;
        let next = if after == 0 {
            let first = stream
                .info()
                .await
                .map_err(|e| js_err("stream info", e))?
                .state
                .first_sequence;
            first.max(1)
        } else {
            after + 1
        };
        let msgs = consume(&stream, after).await?;
        Ok(Self {
            stream,
            msgs,
            next,
            refetched: 0,
        })
    }

    /// Up to about `max` events, in sequence with nothing missing: waits
    /// up to `first` for one, then takes what arrives within a couple of
    /// milliseconds. Empty when nothing came and the stream holds nothing
    /// more.
    pub async fn next_batch(
        &mut self,
        max: usize,
        first: Duration,
    ) -> Result<Vec<Incoming>, EventsError> {
        let mut got = Vec::new();
        match tokio::time::timeout(first, self.msgs.next()).await {
            Err(_) => return self.catch_up(max).await,
            Ok(m) => got.push(delivered(m)?),
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(2);
        while got.len() < max {
            match tokio::time::timeout_at(until, self.msgs.next()).await {
                Ok(m) => got.push(delivered(m)?),
                Err(_) => break,
            }
        }
        let mut out = Vec::with_capacity(got.len());
        for m in got {
            // Already read (a consumer recreated from an earlier point).
            if m.seq < self.next {
                continue;
            }
            // Invariant: no sequence of the audit stream is passed over.
            // What the consumer jumped over is fetched from the leader, in
            // order; if the leader has no message there either, nothing
            // after the hole is integrated (the term fails and the next one
            // reads again from the position the log holds).
            while self.next < m.seq {
                out.push(fetch(&self.stream, self.next).await?);
                self.refetched += 1;
                self.next += 1;
            }
            self.next = m.seq + 1;
            out.push(m);
        }
        Ok(out)
    }

    /// The consumer handed over nothing for a while: if the stream holds
    /// more than it gave, the consumer is stuck (its replica behind, and
    /// heartbeats still coming, so it never starts over by itself). Up to
    /// `max` events are fetched by number from the leader, and a new
    /// consumer takes over after them.
    async fn catch_up(&mut self, max: usize) -> Result<Vec<Incoming>, EventsError> {
        let last = self
            .stream
            .info()
            .await
            .map_err(|e| js_err("stream info", e))?
            .state
            .last_sequence;
        if last < self.next {
            return Ok(Vec::new());
        }
        let upto = last.min(self.next + max.max(1) as u64 - 1);
        tracing::warn!(
            next = self.next,
            last,
            "the consumer gave nothing while the stream holds more; fetching from the stream leader"
        );
        let mut out = Vec::new();
        while self.next <= upto {
            out.push(fetch(&self.stream, self.next).await?);
            self.refetched += 1;
            self.next += 1;
        }
        self.msgs = consume(&self.stream, self.next - 1).await?;
        Ok(out)
    }
}

/// An ordered consumer of the stream from `after + 1`.
async fn consume(
    stream: &stream::Stream,
    after: u64,
) -> Result<consumer::pull::Ordered, EventsError> {
    let deliver_policy = if after == 0 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        }
    };
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("creating the sequencer's consumer", e))?
        .messages()
        .await
        .map_err(|e| js_err("reading the audit stream", e))
}

/// Event `seq`, from the stream leader. (Not a method: the future must
/// not borrow the consumer, which is not `Sync`.)
async fn fetch(stream: &stream::Stream, seq: u64) -> Result<Incoming, EventsError> {
    tracing::warn!(
        seq,
        "the consumer skipped a sequence; fetching it from the stream leader"
    );
    let m = stream.get_raw_message(seq).await.map_err(|e| {
        js_err(
            "the audit stream",
            format!(
                "the consumer skipped sequence {seq} and the stream leader cannot give it ({e}); \
                     nothing after it is integrated until it can"
            ),
        )
    })?;
    Ok(Incoming {
        seq: m.sequence,
        subject: m.subject.to_string(),
        msg_id: m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned()),
        payload: m.payload,
    })
}

/// One message the consumer handed over, or why it could not.
fn delivered(
    m: Option<Result<jetstream::Message, consumer::pull::OrderedError>>,
) -> Result<Incoming, EventsError> {
    let m = match m {
        None => return Err(js_err("audit stream", "the consumer ended")),
        Some(Err(e)) => return Err(js_err("reading the audit stream", e)),
        Some(Ok(m)) => m,
    };
    let seq = m
        .info()
        .map_err(|e| js_err("message metadata", e))?
        .stream_sequence;
    let msg_id = m
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    Ok(Incoming {
        seq,
        subject: m.subject.to_string(),
        msg_id,
        payload: m.payload.clone(),
    })
}
