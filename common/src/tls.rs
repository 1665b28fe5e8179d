//! TLS on every gRPC connection (tonic with rustls): `--tls-cert`, `--tls-key` and
//! `--tls-ca` (PEM files). A server presents its certificate and, holding the CA,
//! requires every client to present one signed by it (mutual TLS between
//! coordinators, workers and the CLI); a client trusts only that CA and presents the
//! same certificate. The settings are process-wide, set once at start (one identity
//! per process, as with the auth token); without them every connection is plain
//! HTTP/2, as before.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::RwLock;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A process's TLS identity and the CA it trusts.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(<certificate, key and CA>)")
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Permanent(format!(
            "cannot read the TLS {what} {}: {e}",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(Error::Permanent(format!(
            "the TLS {what} {} is not a PEM file",
            path.display()
        )));
    }
    Ok(bytes)
}

impl Tls {
    /// Loads the certificate, its key and the CA (PEM), naming any file that is
    /// missing or not PEM.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        Ok(Self {
            identity: Identity::from_pem(read("certificate", cert)?, read("key", key)?),
            ca: Certificate::from_pem(read("CA certificate", ca)?),
        })
    }

    /// Server side: our certificate; clients must present one the CA signed.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// Client side: trust only the CA, present our certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

static PROCESS: RwLock<Option<Tls>> = RwLock::new(None);

/// Sets (or clears) the process's TLS settings, before any connection is made.
pub fn set(tls: Option<Tls>) {
    *PROCESS.write().expect("tls lock poisoned") = tls;
}

/// The process's TLS settings, if any.
pub fn current() -> Option<Tls> {
    PROCESS.read().expect("tls lock poisoned").clone()
}

/// `address` (`host:port`, or a URL) as the URL a client dials: `https://` when the
/// process uses TLS, `http://` otherwise.
pub fn url(address: &str) -> String {
    let host = address.split_once("://").map_or(address, |(_, rest)| rest);
    match current() {
        Some(_) => format!("https://{host}"),
        None => format!("http://{host}"),
    }
}

/// Makes ring rustls' process-wide crypto provider (once; a provider installed
/// before stays). Both ring and aws-lc-rs are compiled in (delta-rs' kernel turns
/// the latter on), and rustls then picks none by itself: every TLS client and
/// server (gRPC, Flight, S3 over HTTPS) needs this first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An endpoint for `address`, with the process's TLS settings.
pub fn endpoint(address: &str) -> Result<Endpoint> {
    install_crypto_provider();
    let url = url(address);
    let ep = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Permanent(format!("bad address '{address}': {e}")))?;
    match current() {
        Some(t) => ep
            .tls_config(t.client())
            .map_err(|e| Error::Permanent(format!("TLS settings for {url}: {e}"))),
        None => Ok(ep),
    }
}

/// A server builder with the process's TLS settings.
pub fn server() -> Result<tonic::transport::Server> {
    install_crypto_provider();
    let builder = tonic::transport::Server::builder();
    match current() {
        Some(t) => builder
            .tls_config(t.server())
            .map_err(|e| Error::Permanent(format!("TLS settings of the server: {e}"))),
        None => Ok(builder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_non_pem_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = d.path().join("missing.pem");
        let e = Tls::load(&missing, &junk, &junk).unwrap_err().to_string();
        assert!(
            e.contains("certificate") && e.contains("missing.pem"),
            "{e}"
        );
        let e = Tls::load(&junk, &junk, &junk).unwrap_err().to_string();
        assert!(
            e.contains("not a PEM file") && e.contains("junk.pem"),
            "{e}"
        );
    }
}
