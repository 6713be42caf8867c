//! TLS to the broker: a rustls client config (ring provider) from a CA file and an
//! optional client certificate and key. Errors name files, never their contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Files that set up TLS to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require one.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// Why TLS could not be set up. Key files are named but their parse errors are not
/// quoted: they could echo key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the MQTT {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the MQTT CA file {} holds no usable PEM certificate", path.display())]
    NoCa { path: PathBuf },
    #[error("the MQTT client certificate file {} holds no PEM certificate", path.display())]
    NoClientCert { path: PathBuf },
    #[error(
        "the MQTT client key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoClientKey { path: PathBuf },
    #[error("mqtt client_cert and client_key go together; only one is set")]
    HalfClientAuth,
    #[error("the MQTT client certificate and key cannot be used: {0}")]
    ClientAuth(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// Builds the client config. Only the ring provider is used, never the process default.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsSetupError> {
    let ca_pem = read(&files.ca_file, "CA file")?;
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
        .filter_map(Result::ok)
        .collect();
    let (added, _ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(TlsSetupError::NoCa {
            path: files.ca_file.clone(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Setup)?
        .with_root_certificates(roots);
    match (&files.client_cert, &files.client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert, "client certificate file")?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .filter_map(Result::ok)
                .collect();
            if chain.is_empty() {
                return Err(TlsSetupError::NoClientCert { path: cert.clone() });
            }
            let key_pem = read(key, "client key file")?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| TlsSetupError::NoClientKey { path: key.clone() })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(TlsSetupError::ClientAuth)
        }
        _ => Err(TlsSetupError::HalfClientAuth),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_names_the_file() {
        let e = client_config(&TlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            client_cert: None,
            client_key: None,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let e = client_config(&TlsFiles {
            ca_file: ca,
            client_cert: None,
            client_key: None,
        });
        assert!(matches!(e, Err(TlsSetupError::NoCa { .. })));
    }
}
