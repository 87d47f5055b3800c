//! TLS for the syslog stream (RFC 5425): the collector's certificate is always
//! checked against the configured authorities; the agent shows its own
//! certificate when one is configured (mutual TLS).

use std::{path::Path, sync::Arc};

use anyhow::{anyhow, Context as _, Result};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName},
    },
    TlsConnector,
};

use super::config::Syslog;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading a private key from {}", path.display()))
}

pub fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).with_context(|| format!("{}: not a usable certificate authority", path.display()))?;
    }
    Ok(roots)
}

/// The connector for one syslog destination.
pub fn client(config: &Syslog) -> Result<TlsConnector> {
    let ca = config.ca.as_deref().ok_or_else(|| anyhow!("TLS needs `ca`"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let tls = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(tls)))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| anyhow!("`{host}` is not a TLS server name: {e}"))
}
