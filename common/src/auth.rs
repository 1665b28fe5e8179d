//! Cluster authentication: one shared token (`--auth-token-file`). Every gRPC client in
//! the process sends it as `authorization: Bearer <token>` metadata (`ClientAuth`, an
//! interceptor on every channel `shuffle::channel_to` hands out, and on the CLI's and
//! the Raft transport's own channels); every gRPC server refuses a call without it
//! with `UNAUTHENTICATED` (`ServerAuth`, an interceptor on each of autopipe's services;
//! the standard health-checking and reflection services stay open, as probes expect).
//!
//! The client side's token is process-wide (`set_client_token`, set once at start by
//! the binary or by `coordinator::start` / `worker::start`): coordinator, workers and
//! the CLI each talk to the cluster with one identity. Without a token nothing is sent
//! and nothing is checked, as before.
//!
//! A shared token authenticates "a member of this cluster", not which one: a Raft
//! peer additionally names itself in `autopipe-member-id` (`MEMBER_ID_HEADER`), which
//! the Raft service checks against the messages it carries. TLS client certificates
//! would bind that name to the connection; until then any token holder can claim it.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::{Arc, RwLock};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// gRPC metadata key (and HTTP header) carrying `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// gRPC metadata key in which a coordinator's Raft transport names its member id.
pub const MEMBER_ID_HEADER: &str = "autopipe-member-id";
/// Environment variable the CLI reads the token from (without `--auth-token-file`).
pub const TOKEN_ENV: &str = "AUTOPIPE_AUTH_TOKEN";

/// Reads a token file: its contents with surrounding whitespace trimmed. An unreadable
/// or empty file is an error naming the path.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Permanent(format!(
            "cannot read the auth token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Permanent(format!(
            "the auth token file {} is empty (write the cluster's token into it)",
            path.display()
        )));
    }
    if token.chars().any(|c| c.is_control()) || token.contains(char::is_whitespace) {
        return Err(Error::Permanent(format!(
            "the auth token in {} contains whitespace or control characters \
             (use one line of printable characters)",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// The cluster token; its `Debug` form never shows it (configs are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Arc<str>);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::from(token.into()))
    }

    /// Reads it from a token file (see `read_token_file`).
    pub fn from_file(path: &Path) -> Result<Self> {
        read_token_file(path).map(Self::new)
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

fn client_slot() -> &'static RwLock<Option<Arc<str>>> {
    static TOKEN: RwLock<Option<Arc<str>>> = RwLock::new(None);
    &TOKEN
}

/// Sets the token every gRPC client of this process sends (`None`: send none).
pub fn set_client_token(token: Option<&AuthToken>) {
    *client_slot().write().expect("auth token lock poisoned") = token.map(|t| t.0.clone());
}

/// The token this process's clients send, if any.
pub fn client_token() -> Option<Arc<str>> {
    client_slot()
        .read()
        .expect("auth token lock poisoned")
        .clone()
}

/// Client interceptor: adds `authorization: Bearer <token>` (the process's client
/// token, read at each call) and, for a Raft peer, `autopipe-member-id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientAuth {
    member_id: Option<u64>,
}

impl ClientAuth {
    /// Sends the token only.
    pub fn new() -> Self {
        Self { member_id: None }
    }

    /// Sends the token and names coordinator `id` as the sender (Raft transport).
    pub fn member(id: u64) -> Self {
        Self {
            member_id: Some(id),
        }
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = client_token() {
            let v = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Status::internal("the auth token is not a valid header value"))?;
            req.metadata_mut().insert(AUTHORIZATION, v);
        }
        if let Some(id) = self.member_id {
            req.metadata_mut()
                .insert(MEMBER_ID_HEADER, MetadataValue::from(id));
        }
        Ok(req)
    }
}

/// A channel whose every call carries the process's credentials.
pub type AuthChannel = InterceptedService<Channel, ClientAuth>;

/// `ch` with the process's credentials added to every call.
pub fn authed(ch: Channel) -> AuthChannel {
    InterceptedService::new(ch, ClientAuth::new())
}

/// Server interceptor: with a token, refuses a call whose `authorization` metadata is
/// missing or wrong with `UNAUTHENTICATED`; without one, lets everything through.
#[derive(Clone, Default)]
pub struct ServerAuth {
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print the token
        f.debug_struct("ServerAuth")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl ServerAuth {
    /// Checks for `token` (`None`: no check).
    pub fn new(token: Option<&AuthToken>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {}", t.expose()).into_bytes())),
        }
    }

    /// Whether calls must carry a token.
    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }

    /// Whether an `authorization` header value is the right one (always true without a
    /// token).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        match (&self.expected, authorization) {
            (None, _) => true,
            (Some(want), Some(got)) => constant_time_eq(want, got),
            (Some(_), None) => false,
        }
    }

    /// `Ok` when `metadata` carries the right token (or none is required).
    pub fn check(&self, metadata: &MetadataMap) -> std::result::Result<(), Status> {
        if self.expected.is_none() {
            return Ok(());
        }
        // the refusal carries an ErrorInfo as every other does (reason UNAUTHENTICATED)
        let refuse = |message: &str| {
            use tonic_types::StatusExt;
            let d = crate::error::error_info("UNAUTHENTICATED", &[("class", "permanent".into())]);
            Status::with_error_details(tonic::Code::Unauthenticated, message, d)
        };
        match metadata.get(AUTHORIZATION) {
            None => Err(refuse(
                "missing auth token: this cluster requires `authorization: Bearer <token>` \
                 (give the CLI --auth-token-file or AUTOPIPE_AUTH_TOKEN)",
            )),
            Some(v) if self.accepts(Some(v.as_bytes())) => Ok(()),
            Some(_) => Err(refuse("wrong auth token")),
        }
    }
}

impl Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> std::result::Result<Request<()>, Status> {
        self.check(req.metadata())?;
        Ok(req)
    }
}

/// Byte equality whose time depends only on the lengths, not on where the first
/// difference is (the token's length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_trimmed_and_an_empty_or_missing_one_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  s3cret\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), "s3cret");
        std::fs::write(&p, " \n").unwrap();
        let e = read_token_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("is empty") && e.contains(&p.display().to_string()),
            "{e}"
        );
        let missing = dir.path().join("nope");
        let e = read_token_file(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn server_refuses_a_missing_or_wrong_token_without_echoing_it() {
        let auth = ServerAuth::new(Some(&AuthToken::new("right")));
        let mut md = MetadataMap::new();
        let s = auth.check(&md).unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("missing"), "{}", s.message());
        use tonic_types::StatusExt;
        let info = s.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("UNAUTHENTICATED", "autopipe")
        );
        md.insert(AUTHORIZATION, "Bearer wrongish".parse().unwrap());
        let s = auth.check(&md).unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(!s.message().contains("wrongish") && !s.message().contains("right "));
        md.insert(AUTHORIZATION, "Bearer right".parse().unwrap());
        assert!(auth.check(&md).is_ok());
        // no token configured: everything passes
        assert!(ServerAuth::new(None).check(&MetadataMap::new()).is_ok());
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let t = AuthToken::new("s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!format!("{:?}", ServerAuth::new(Some(&t))).contains("s3cret"));
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
