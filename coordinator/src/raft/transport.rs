//! Raft messages between coordinators: one sender task per peer batches what the node
//! hands it into `RaftService.Send` calls (each message as opaque rust-protobuf bytes);
//! the server side decodes them and steps the node. Messages are best effort, as Raft
//! expects: a full queue or a failed call drops them and reports the peer unreachable.
//!
//! Only current members are heard: with a cluster token every call must carry it (the
//! server's auth layer checks that) and name its sender in `autopipe-member-id`, which
//! must be a member of the applied configuration and match the `from` of the batch and
//! of every message in it (a forged `from` is refused with `PERMISSION_DENIED`).

use super::node::Input;
use super::Raft;
use autopipe_common::auth::{ClientAuth, MEMBER_ID_HEADER};
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
/// Largest `Send` call either side accepts. A snapshot is the whole state machine in
/// one message: a state whose snapshot is larger cannot be sent to a member that
/// needs it (the sender logs an error naming the size).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Messages of one `Send` call stop growing past this many bytes.
const BATCH_BYTES: usize = MAX_MESSAGE / 2;
/// Room for the batch's own framing.
const MAX_PAYLOAD: usize = MAX_MESSAGE - (64 << 10);

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
    let endpoint = match autopipe_common::tls::endpoint(&address) {
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
    // every call carries the cluster token and names this member
    let channel = tonic::service::interceptor::InterceptedService::new(
        endpoint.connect_lazy(),
        ClientAuth::member(from),
    );
    let mut client = pb::raft_service_client::RaftServiceClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE);
    // a message that did not fit the previous batch opens the next one
    let mut carry: Option<Vec<u8>> = None;
    loop {
        let first = match carry.take() {
            Some(b) => b,
            None => {
                let m = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = rx.recv() => m,
                };
                let Some(m) = m else { return };
                match m.write_to_bytes() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            }
        };
        let mut size = first.len();
        let mut messages = vec![first];
        while messages.len() < BATCH && size < BATCH_BYTES {
            let Ok(m) = rx.try_recv() else { break };
            let Ok(b) = m.write_to_bytes() else { continue };
            if size + b.len() > BATCH_BYTES {
                carry = Some(b);
                break;
            }
            size += b.len();
            messages.push(b);
        }
        if size > MAX_PAYLOAD {
            tracing::error!(
                to,
                %address,
                bytes = size,
                limit = MAX_MESSAGE,
                "raft message larger than the limit not sent (a snapshot of a state this large cannot reach a member that needs one)"
            );
            let _ = node.try_send(Input::Unreachable(to));
            continue;
        }
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
    /// ids allowed to send: the members of the applied configuration (before a
    /// joining member has received any, the configured peers)
    pub allowed: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    /// every call must name its sender in `autopipe-member-id` (on with a cluster token)
    pub require_member_id: bool,
}

impl RaftService {
    /// A service that accepts the members of the applied configuration, or of `peers`
    /// while no configuration has been applied yet (a member that is joining).
    pub fn new(
        raft: Raft,
        peers: BTreeMap<u64, String>,
        applied: Arc<Mutex<super::Applied>>,
    ) -> Self {
        let allowed = move |id: u64| {
            let a = applied.lock().expect("applied lock poisoned");
            if a.members.is_empty() {
                peers.contains_key(&id)
            } else {
                a.members.contains_key(&id)
            }
        };
        Self {
            raft,
            allowed: Arc::new(allowed),
            require_member_id: false,
        }
    }

    /// Requires every call to name its sender (`autopipe-member-id`): on when the
    /// cluster has a token, so the sender is the authenticated member, not whatever
    /// `from` the message carries.
    pub fn requiring_member_id(mut self, on: bool) -> Self {
        self.require_member_id = on;
        self
    }

    /// The member a batch is accepted from: the one its call names in
    /// `autopipe-member-id` (required with a token), which must be the batch's `from`
    /// and a current member; otherwise `PERMISSION_DENIED`.
    pub fn sender(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        batch_from: u64,
    ) -> Result<u64, tonic::Status> {
        authenticated_sender(
            metadata,
            batch_from,
            self.require_member_id,
            self.allowed.as_ref(),
        )
    }
}

/// The DNS name a coordinator's certificate carries for member `id` (a SAN).
pub fn member_name(id: u64) -> String {
    format!("autopipe-member-{id}")
}

/// With TLS, the sender's identity is its certificate: the client certificate (DER)
/// of the call must be valid for `member_name(member)`, else `PERMISSION_DENIED`.
fn certificate_names_member(der: Option<&[u8]>, member: u64) -> Result<(), tonic::Status> {
    use rustls_pki_types::{CertificateDer, ServerName};
    let name = member_name(member);
    let Some(der) = der else {
        return Err(tonic::Status::permission_denied(
            "raft messages need a client certificate",
        ));
    };
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| {
        tonic::Status::permission_denied(format!("unreadable client certificate: {e}"))
    })?;
    let expected = ServerName::try_from(name.as_str())
        .map_err(|e| tonic::Status::internal(format!("member name {name}: {e}")))?;
    cert.verify_is_valid_for_subject_name(&expected)
        .map_err(|_| {
            tonic::Status::permission_denied(format!(
                "the client certificate does not name coordinator {member} ({name})"
            ))
        })
}

/// See `RaftService::sender`.
fn authenticated_sender(
    metadata: &tonic::metadata::MetadataMap,
    batch_from: u64,
    require_member_id: bool,
    allowed: &dyn Fn(u64) -> bool,
) -> Result<u64, tonic::Status> {
    let named = match metadata.get(MEMBER_ID_HEADER) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    tonic::Status::permission_denied(format!(
                        "{MEMBER_ID_HEADER} is not a member id"
                    ))
                })?,
        ),
        None if require_member_id => {
            return Err(tonic::Status::permission_denied(format!(
                "raft messages must name their sender in {MEMBER_ID_HEADER}: only \
                     coordinators of this group may send them"
            )))
        }
        None => None,
    };
    let member = named.unwrap_or(batch_from);
    if member != batch_from {
        return Err(tonic::Status::permission_denied(format!(
            "raft batch says it is from coordinator {batch_from}, but its sender is \
                 coordinator {member}"
        )));
    }
    // rust-protobuf 2 parses recursively (RUSTSEC-2024-0437): only group members'
    // bytes are decoded
    if !allowed(member) {
        return Err(tonic::Status::permission_denied(format!(
            "coordinator {member} is not a member of this raft group"
        )));
    }
    Ok(member)
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftService {
    async fn send(
        &self,
        req: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::RaftAck>, tonic::Status> {
        let member = self.sender(req.metadata(), req.get_ref().from)?;
        // with TLS, the connection's certificate must name that member
        if autopipe_common::tls::current().is_some() {
            let certs = req.peer_certs();
            let first = certs.as_ref().and_then(|c| c.first());
            certificate_names_member(first.map(|c| c.as_ref()), member)?;
        }
        let batch = req.into_inner();
        for bytes in batch.messages {
            let m = Message::parse_from_bytes(&bytes).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            if m.from != member {
                return Err(tonic::Status::permission_denied(format!(
                    "raft message from {} sent by coordinator {member}",
                    m.from
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a certificate it signed for `names`, as DER.
    fn signed_for(names: &[&str]) -> Vec<u8> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        cert.der().to_vec()
    }

    #[test]
    fn with_tls_a_raft_sender_is_the_member_its_certificate_names() {
        let two = signed_for(&["127.0.0.1", &member_name(2)]);
        assert!(certificate_names_member(Some(&two), 2).is_ok());
        let posing = certificate_names_member(Some(&two), 1).unwrap_err();
        assert_eq!(posing.code(), tonic::Code::PermissionDenied);
        assert!(posing.message().contains("coordinator 1"), "{posing:?}");
        let worker = signed_for(&["127.0.0.1"]);
        assert!(certificate_names_member(Some(&worker), 2).is_err());
        assert!(certificate_names_member(None, 2).is_err());
        // autopipe-member-2 does not name member 21
        assert!(certificate_names_member(Some(&two), 21).is_err());
    }
    use tonic::metadata::MetadataMap;

    fn named(id: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(MEMBER_ID_HEADER, id.parse().unwrap());
        md
    }

    fn members(id: u64) -> bool {
        [1, 2, 3].contains(&id)
    }

    #[test]
    fn a_batch_is_accepted_from_the_member_its_call_names() {
        assert_eq!(
            authenticated_sender(&named("2"), 2, true, &members).unwrap(),
            2
        );
        // without a token, a call that names nobody is taken at its word (as before)
        assert_eq!(
            authenticated_sender(&MetadataMap::new(), 3, false, &members).unwrap(),
            3
        );
    }

    #[test]
    fn a_forged_from_is_refused() {
        // member 2 sends a batch claiming to come from the leader, member 1
        let s = authenticated_sender(&named("2"), 1, true, &members).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(
            s.message().contains("from coordinator 1"),
            "{}",
            s.message()
        );
        // also without a token, a named sender must match
        let s = authenticated_sender(&named("2"), 1, false, &members).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn with_a_token_a_call_must_name_a_current_member() {
        let s = authenticated_sender(&MetadataMap::new(), 1, true, &members).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        let s = authenticated_sender(&named("9"), 9, true, &members).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("not a member"), "{}", s.message());
        let s = authenticated_sender(&named("x"), 1, true, &members).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }
}
