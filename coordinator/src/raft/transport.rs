//! Raft messages between coordinators: one sender task per peer batches what the node
//! hands it into `RaftService.Send` calls (each message as opaque rust-protobuf bytes);
//! the server side decodes them and steps the node. Messages are best effort, as Raft
//! expects: a full queue or a failed call drops them and reports the peer unreachable.

use super::node::Input;
use super::Raft;
use autopipe_proto as pb;
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 1024;
/// Messages per `Send` call.
const BATCH: usize = 256;
/// Deadline of one `Send` call.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `Send` call (a snapshot is the whole state machine).
pub const MAX_MESSAGE: usize = 1 << 30;

struct Peer {
    address: String,
    tx: mpsc::Sender<Message>,
}

/// The sending side, owned by the node task.
pub struct Transport {
    id: u64,
    source_ip: Option<std::net::IpAddr>,
    node: mpsc::Sender<Input>,
    peers: HashMap<u64, Peer>,
    cancel: CancellationToken,
}

impl Transport {
    pub(crate) fn new(
        id: u64,
        source_ip: Option<std::net::IpAddr>,
        node: mpsc::Sender<Input>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            id,
            source_ip,
            node,
            peers: HashMap::new(),
            cancel,
        }
    }

    /// Queues `m` for its recipient, whose address comes from `members`.
    pub fn send(&mut self, m: Message, members: &BTreeMap<u64, String>) {
        let to = m.to;
        let Some(address) = members.get(&to) else {
            tracing::debug!(to, "raft message to a member with no known address dropped");
            return;
        };
        let stale = self.peers.get(&to).is_some_and(|p| &p.address != address);
        if stale || !self.peers.contains_key(&to) {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(peer_loop(
                self.id,
                self.source_ip,
                to,
                address.clone(),
                rx,
                self.node.clone(),
                self.cancel.clone(),
            ));
            self.peers.insert(
                to,
                Peer {
                    address: address.clone(),
                    tx,
                },
            );
        }
        if let Some(p) = self.peers.get(&to) {
            if p.tx.try_send(m).is_err() {
                let _ = self.node.try_send(Input::Unreachable(to));
            }
        }
    }
}

async fn peer_loop(
    from: u64,
    source_ip: Option<std::net::IpAddr>,
    to: u64,
    address: String,
    mut rx: mpsc::Receiver<Message>,
    node: mpsc::Sender<Input>,
    cancel: CancellationToken,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .timeout(SEND_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(source_ip),
        Err(e) => {
            tracing::warn!(to, %address, "bad raft peer address: {e}");
            return;
        }
    };
    let mut client = pb::raft_service_client::RaftServiceClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(MAX_MESSAGE);
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => m,
        };
        let Some(first) = first else { return };
        batch.clear();
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let req = pb::RaftBatch { from, messages };
        if let Err(e) = client.send(req).await {
            tracing::debug!(to, %address, "raft send failed: {e}");
            let _ = node.try_send(Input::Unreachable(to));
        }
    }
}

/// The receiving side: the `RaftService` of a coordinator.
#[derive(Clone)]
pub struct RaftService {
    /// the local node
    pub raft: Raft,
    /// ids allowed to send: the configured peers and the applied members
    pub allowed: Arc<dyn Fn(u64) -> bool + Send + Sync>,
}

impl RaftService {
    /// A service that accepts members of `peers` and of the applied member list.
    pub fn new(
        raft: Raft,
        peers: BTreeMap<u64, String>,
        applied: Arc<Mutex<super::Applied>>,
    ) -> Self {
        let allowed = move |id: u64| {
            peers.contains_key(&id)
                || applied
                    .lock()
                    .expect("applied lock poisoned")
                    .members
                    .contains_key(&id)
        };
        Self {
            raft,
            allowed: Arc::new(allowed),
        }
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftService {
    async fn send(
        &self,
        req: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::RaftAck>, tonic::Status> {
        let batch = req.into_inner();
        // rust-protobuf 2 parses recursively (RUSTSEC-2024-0437): only group members'
        // bytes are decoded
        if !(self.allowed)(batch.from) {
            return Err(tonic::Status::permission_denied(format!(
                "coordinator {} is not a member of this raft group",
                batch.from
            )));
        }
        for bytes in batch.messages {
            let m = Message::parse_from_bytes(&bytes).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            if m.from != batch.from {
                return Err(tonic::Status::invalid_argument(format!(
                    "raft message from {} inside a batch from {}",
                    m.from, batch.from
                )));
            }
            self.raft
                .step(m)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        }
        Ok(tonic::Response::new(pb::RaftAck {}))
    }
}
