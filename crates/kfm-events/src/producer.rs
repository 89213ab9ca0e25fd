//! Publishing ledger entries to the audit stream.
//!
//! Entries are wrapped in their versioned envelopes and published with
//! `Nats-Msg-Id` = the event's identity (an entry's leaf hash; a batch's
//! digest of its members' leaf hashes); an entry counts as durable when
//! JetStream acknowledges the event carrying it. Entries not yet
//! acknowledged are bounded ([`JetStreamPublisher::new`]'s
//! `max_in_flight`), past which callers wait: back-pressure, not unbounded
//! memory. An event whose acknowledgement does not come is sent again, with
//! the same id and bytes, for up to [`RETRY_FOR`] (shorter than the
//! stream's duplicate window, so that a retry of one that landed is dropped
//! by JetStream).
//!
//! Why batches: one event per entry cost a busy API a publish, a socket
//! write and an acknowledgement per request, and the server and the
//! sequencer as much again (the API on the event backbone answered about
//! a third of what it answers on the embedded ledger). So entries are
//! grouped the way the embedded ledger groups its commits: at most
//! [`EVENTS_IN_FLIGHT`] events await their acknowledgement, and whatever
//! queued meanwhile travels in the next event, one entry alone as its own
//! single-entry event, several as one `kfm.ledger.batch.v1` (at most
//! [`envelope::MAX_BATCH`] entries and [`envelope::MAX_EVENT`] bytes). An
//! idle producer therefore sends each entry at once, and a busy one sends
//! fewer, larger events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use kfm_core::config::Environment;
use kfm_ledger::{Event, Hash, LedgerError, PublishFuture, Publisher};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot};

use crate::envelope;
use crate::streams::{DUPLICATE_WINDOW, Names};

/// How long one publish is retried before the caller is told it failed.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

const _: () = assert!(RETRY_FOR.as_secs() * 2 < DUPLICATE_WINDOW.as_secs());

/// How long shutdown waits for acknowledgements still outstanding.
const DRAIN_FOR: Duration = Duration::from_secs(15);

/// Events awaiting their acknowledgement at once, at most (see the module
/// docs: what queues meanwhile is batched).
pub const EVENTS_IN_FLIGHT: usize = 2;

/// One entry on its way: answered once the event carrying it is
/// acknowledged (or finally refused). Its permit counts it in flight.
struct Job {
    entry: Vec<u8>,
    leaf: Hash,
    done: oneshot::Sender<Result<(), String>>,
    _permit: OwnedSemaphorePermit,
}

/// What the batcher's events share.
#[derive(Clone)]
struct Sender {
    js: jetstream::Context,
    names: Names,
    source: Arc<str>,
    failure: Arc<Mutex<Option<String>>>,
    published: Arc<AtomicU64>,
}

/// Publishes to the environment's audit stream (see the module docs).
pub struct JetStreamPublisher {
    client: async_nats::Client,
    names: Names,
    slots: Arc<Semaphore>,
    queue: mpsc::UnboundedSender<Job>,
    max_in_flight: usize,
    failure: Arc<Mutex<Option<String>>>,
    published: Arc<AtomicU64>,
}

impl JetStreamPublisher {
    /// `source` names the producer in every envelope (`urn:kfm:api`);
    /// `max_in_flight` bounds the entries handed over and not yet
    /// acknowledged. Must be called inside a Tokio runtime (it starts the
    /// task that batches and sends).
    pub fn new(
        client: async_nats::Client,
        names: Names,
        source: &str,
        max_in_flight: usize,
    ) -> Self {
        let js = jetstream::new(client.clone());
        let max_in_flight = max_in_flight.max(1);
        let failure = Arc::new(Mutex::new(None));
        let published = Arc::new(AtomicU64::new(0));
        let (queue, rx) = mpsc::unbounded_channel();
        let sender = Sender {
            js,
            names: names.clone(),
            source: source.into(),
            failure: failure.clone(),
            published: published.clone(),
        };
        tokio::spawn(batcher(rx, sender));
        Self {
            client,
            names,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            queue,
            max_in_flight,
            failure,
            published,
        }
    }

    pub fn env(&self) -> Environment {
        self.names.env
    }

    /// Entries acknowledged since this publisher started.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Takes the queued entries and sends them as events, at most
/// [`EVENTS_IN_FLIGHT`] awaiting acknowledgement; what queues while they
/// wait goes in the next event.
async fn batcher(mut rx: mpsc::UnboundedReceiver<Job>, sender: Sender) {
    let in_flight = Arc::new(Semaphore::new(EVENTS_IN_FLIGHT));
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut cost = envelope::BATCH_OVERHEAD + envelope::batch_cost(&first.entry);
        let mut jobs = vec![first];
        while jobs.len() < envelope::MAX_BATCH {
            let Ok(j) = rx.try_recv() else { break };
            let c = envelope::batch_cost(&j.entry);
            if cost + c > envelope::MAX_EVENT {
                carried = Some(j);
                break;
            }
            cost += c;
            jobs.push(j);
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(jobs).await;
            drop(permit);
        });
    }
}

impl Sender {
    /// Sends `jobs` as one event and answers each of them.
    async fn send(&self, jobs: Vec<Job>) {
        let built = if let [one] = jobs.as_slice() {
            envelope::envelope(&one.entry, &one.leaf, self.names.env, &self.source)
                .map(|(body, kind)| (body, kind, one.leaf))
        } else {
            let members: Vec<(&[u8], Hash)> =
                jobs.iter().map(|j| (j.entry.as_slice(), j.leaf)).collect();
            envelope::batch_envelope(&members, self.names.env, &self.source)
                .map(|(body, id)| (body, envelope::BATCH, id))
        };
        let outcome = match built {
            Err(e) => Err(format!("event envelope: {e}")),
            Ok((body, kind, id)) => {
                let subject = self.names.audit_subject(kind);
                match publish_once(
                    &self.js,
                    subject,
                    &hex::encode(id),
                    Bytes::from(body),
                    RETRY_FOR,
                )
                .await
                {
                    Ok(()) => {
                        self.published
                            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                        if let Ok(mut f) = self.failure.lock() {
                            *f = None;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let msg = format!(
                            "JetStream did not acknowledge the entry within {} s: {e}",
                            RETRY_FOR.as_secs()
                        );
                        if let Ok(mut f) = self.failure.lock() {
                            *f = Some(msg.clone());
                        }
                        Err(msg)
                    }
                }
            }
        };
        for j in jobs {
            let _ = j.done.send(outcome.clone());
        }
    }
}

/// Publishes one envelope until JetStream acknowledges it (or the retry
/// bound passes). A duplicate acknowledgement counts only when it names
/// the sequence the event is stored at.
pub async fn publish_once(
    js: &jetstream::Context,
    subject: String,
    id: &str,
    body: Bytes,
    retry_for: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + retry_for;
    let mut wait = Duration::from_millis(50);
    // Which re-send id is in use, and whether it already had an answer
    // that proves nothing (see `envelope::RESEND_MARK`).
    let mut resend = 0u32;
    let mut unproven_before = false;
    loop {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            envelope::resend_msg_id(id, resend).as_str(),
        );
        let sent = js
            .publish_with_headers(subject.clone(), headers, body.clone())
            .await;
        let outcome = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let err = match outcome {
            // Invariant: an entry counts as acknowledged only when JetStream
            // names where it is stored. A "duplicate" at sequence 0 (a
            // server before 2.10) or "duplicate message id is in process"
            // (later ones) means the id is staged, not that the event is
            // stored: its leader may have died with it.
            Ok(ack) if ack.duplicate && ack.sequence == 0 => UNPROVEN.to_owned(),
            Ok(_) => return Ok(()),
            Err(e) => {
                let text = e.to_string();
                let transient = match e.kind() {
                    K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::StreamNotFound => true,
                    K::Other => transient_api_error(&text),
                    _ => false,
                };
                if !transient {
                    return Err(text);
                }
                text
            }
        };
        if unproven(&err) {
            // Once more under the same id (a proposal still in flight
            // lands and is then answered with its sequence); after that,
            // under the next re-send id.
            if unproven_before {
                resend += 1;
                unproven_before = false;
            } else {
                unproven_before = true;
            }
        }
        if Instant::now() + wait > deadline {
            return Err(err);
        }
        tracing::warn!(error = %err, resend, "publish not acknowledged; sending it again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// What a duplicate answer without a sequence is reported as.
const UNPROVEN: &str =
    "JetStream answered duplicate without a stream sequence (id staged, not stored)";

/// Whether an answer says the id is staged and the event perhaps not
/// stored (see [`publish_once`]).
fn unproven(text: &str) -> bool {
    text == UNPROVEN
        || text.contains("duplicate message id is in process")
        || text.contains("error code 10158")
}

/// Whether a JetStream answer other than an acknowledgement is worth
/// sending again: anything that is not a JetStream API error (a transport
/// failure), and the API errors a cluster gives while it elects a leader or
/// loses a node (10008 "temporarily unavailable", no responders, no
/// suitable peers). A definitive refusal (too large, a wrong expected
/// sequence, …) is not retried.
fn transient_api_error(text: &str) -> bool {
    if !text.contains("error code") {
        return true;
    }
    [
        "error code 10008",
        "temporarily unavailable",
        "no responders",
        "no suitable peers",
    ]
    .iter()
    .any(|t| text.contains(t))
        || unproven(text)
}

impl Publisher for JetStreamPublisher {
    fn publish(&self, entry: Vec<u8>, leaf: Hash) -> PublishFuture<Result<(), LedgerError>> {
        let slots = self.slots.clone();
        let queue = self.queue.clone();
        Box::pin(async move {
            // Invariant: at most `max_in_flight` entries are handed over and
            // not yet acknowledged; the rest wait here.
            let permit = slots
                .acquire_owned()
                .await
                .map_err(|_| LedgerError::Failed("the publisher is closed".into()))?;
            let (done, answer) = oneshot::channel();
            queue
                .send(Job {
                    entry,
                    leaf,
                    done,
                    _permit: permit,
                })
                .map_err(|_| LedgerError::Failed("the publisher stopped".into()))?;
            match answer.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(msg)) => Err(LedgerError::Unreachable(msg)),
                Err(_) => Err(LedgerError::Failed("the publisher stopped".into())),
            }
        })
    }

    fn announce(&self, event: Vec<u8>) -> PublishFuture<Result<(), LedgerError>> {
        let client = self.client.clone();
        let subject = self.names.release_subject.clone();
        Box::pin(async move {
            client
                .publish(subject, Bytes::from(event))
                .await
                .map_err(|e| LedgerError::Unreachable(format!("NATS: {e}")))?;
            client
                .flush()
                .await
                .map_err(|e| LedgerError::Unreachable(format!("NATS: {e}")))
        })
    }

    fn subscribe(&self, to: broadcast::Sender<Event>) {
        let client = self.client.clone();
        let subject = self.names.release_subject.clone();
        tokio::spawn(async move {
            // Resubscribes if the subscription ends (the client itself
            // reconnects underneath).
            loop {
                match client.subscribe(subject.clone()).await {
                    Ok(mut sub) => {
                        while let Some(m) = sub.next().await {
                            // No receiver right now is fine: advisory.
                            let _ = to.send(Arc::new(m.payload.to_vec()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to release events"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn drain(&self) -> PublishFuture<()> {
        let slots = self.slots.clone();
        let n = self.max_in_flight as u32;
        Box::pin(async move {
            let _ = tokio::time::timeout(DRAIN_FOR, slots.acquire_many(n)).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::transient_api_error;

    #[test]
    fn only_transient_answers_are_sent_again() {
        assert!(transient_api_error("connection reset"));
        assert!(transient_api_error(
            "publish failed: JetStream system temporarily unavailable (code 503, error code 10008)"
        ));
        assert!(!transient_api_error(
            "publish failed: message size exceeds maximum allowed (code 400, error code 10054)"
        ));
        assert!(!transient_api_error(
            "publish failed: wrong last sequence: 4 (code 400, error code 10071)"
        ));
        // Staged, not stored: sent again (see publish_once).
        assert!(transient_api_error(
            "publish failed: duplicate message id is in process (code 503, error code 10158)"
        ));
        assert!(super::unproven(super::UNPROVEN));
    }
}
