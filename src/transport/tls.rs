//! The public listener's TLS configuration (`[tls]`): the certificate chain
//! and key from PEM files, swapped whole on reload. A handshake takes the
//! configuration current when it starts; established connections keep
//! theirs, so a reload never drops one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

/// A certificate and key read and checked by [`Tls::prepare`], not yet in use.
pub struct Prepared(Arc<ServerConfig>);

impl Tls {
    /// Reads and checks the chain and key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Tls, TlsError> {
        Ok(Tls {
            current: RwLock::new(build(cert_file, key_file)?),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        })
    }

    /// Reads and checks both files again without putting them in place,
    /// so that a reload of several things can be all or nothing.
    pub fn prepare(&self) -> Result<Prepared, TlsError> {
        build(&self.cert_file, &self.key_file).map(Prepared)
    }

    /// Puts a [`Self::prepare`]d configuration in place for the next
    /// handshakes; connections already up keep the one they started with.
    pub fn install(&self, next: Prepared) {
        *self.current.write() = next.0;
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }
}

/// ring with X25519 preferred. rustls's ring default puts P-384 first, and
/// ring's P-384 has no assembly: a full handshake then cost herald ~1.1 ms
/// of CPU against ~0.26 ms with X25519 (`loadtest/scenarios/tls_handshakes.sh`),
/// the group browsers send their key share for anyway.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{default_provider, kx_group};
    rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    }
}

fn build(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    fn pem(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Pem {
            path: path.to_owned(),
            source,
        }
    }
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(pem(cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem(key_file))?;
    // ring: the provider already in the tree (async-nats uses it), which
    // builds without cmake. Deprecated only for lacking post-quantum key
    // exchange, which browsers negotiate down from.
    #[allow(deprecated)]
    let provider = Arc::new(provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // WebSocket upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
