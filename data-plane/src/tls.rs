//! Trust roots for upstream TLS.
//!
//! Pingora's rustls connector trusts either the system roots or, when `ca_file` is set, only
//! that file. Airlock wants both (system roots for real APIs, plus an extra CA such as a private
//! PKI or a test CA), so when an extra CA file is configured we write one bundle with the system
//! roots followed by the extra certificates and hand that to Pingora. The bundle only has to
//! live until the connector is built (it is read once, at service construction).

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use pingora::tls::{load_ca_file_into_store, load_native_certs, RootCertStore};

/// A temporary PEM bundle: system roots plus the configured extra CA certificates.
pub(crate) struct CaBundle(tempfile::NamedTempFile);

impl CaBundle {
    pub(crate) fn path(&self) -> String {
        self.0.path().to_string_lossy().into_owned()
    }
}

/// Build the CA bundle for `extra_ca_file`, or `None` to use Pingora's default (system roots).
pub(crate) fn upstream_ca_bundle(extra_ca_file: Option<&Path>) -> anyhow::Result<Option<CaBundle>> {
    let Some(extra) = extra_ca_file else {
        return Ok(None);
    };
    // Validate up front: Pingora's connector panics on a CA file it cannot load.
    let mut store = RootCertStore::empty();
    load_ca_file_into_store(extra, &mut store).map_err(|e| {
        anyhow::anyhow!(
            "upstream CA file {} is not a PEM CA bundle: {e}",
            extra.display()
        )
    })?;
    if store.is_empty() {
        bail!("upstream CA file {} holds no certificate", extra.display());
    }
    let extra_pem = std::fs::read(extra)
        .with_context(|| format!("cannot read upstream CA file {}", extra.display()))?;

    let mut bundle = tempfile::Builder::new()
        .prefix("airlock-upstream-ca-")
        .suffix(".pem")
        .tempfile()
        .context("cannot create the upstream CA bundle")?;
    match load_native_certs() {
        Ok(certs) => {
            for cert in certs {
                bundle.write_all(pem_certificate(cert.as_ref()).as_bytes())?;
            }
        }
        // The extra CA alone still lets the data plane reach the upstreams it signs.
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the system CA roots; trusting only the extra upstream CA")
        }
    }
    bundle.write_all(b"\n")?;
    bundle.write_all(&extra_pem)?;
    bundle.flush()?;
    Ok(Some(CaBundle(bundle)))
}

fn pem_certificate(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_lines_are_64_characters() {
        let pem = pem_certificate(&[7u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
    }

    #[test]
    fn missing_or_empty_ca_file_is_an_error() {
        assert!(upstream_ca_bundle(Some(Path::new("/nonexistent/ca.pem"))).is_err());
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(upstream_ca_bundle(Some(empty.path())).is_err());
        assert!(upstream_ca_bundle(None).unwrap().is_none());
    }
}
