//! How registries' certificates are checked when `--registry-ca` names extra roots.
//!
//! reqwest's own set-up (the platform's roots plus the extra ones, checked by rustls'
//! WebPKI verifier) refuses one certificate Docker accepts: a registry's self-signed
//! certificate made by `openssl req -x509`, the recipe of Docker's own guide to running a
//! registry with TLS. OpenSSL marks such a certificate as a CA, and WebPKI refuses a CA
//! certificate as a server's own (`CaUsedAsEndEntity`) even when it is trusted. Go, and
//! so Docker, accepts a server certificate that is itself one of the trusted roots.
//! [`TrustedRoots`] does the same: that certificate, byte for byte one of the extra roots,
//! is accepted when it is valid for the registry's name. Everything else is decided by
//! the platform verifier, as without `--registry-ca`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The platform verifier with `extra` roots, which also accepts a server certificate
/// that is one of `extra` itself (see the module doc).
#[derive(Debug)]
pub(crate) struct TrustedRoots {
    inner: rustls_platform_verifier::Verifier,
    extra: Vec<CertificateDer<'static>>,
}

impl TrustedRoots {
    pub(crate) fn new(
        extra: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<TrustedRoots, rustls::Error> {
        let inner =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra.clone(), provider)?;
        Ok(TrustedRoots { inner, extra })
    }
}

/// Whether `e` is WebPKI's refusal of a CA certificate as a server's own.
pub(crate) fn ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

impl ServerCertVerifier for TrustedRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // WebPKI checks a certificate's validity period before its CA flag, so a
            // certificate refused for the flag is within its period. Its name is
            // checked here, as the verifier would have after the chain.
            Err(e)
                if ca_used_as_end_entity(&e)
                    && self.extra.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS set-up for reqwest that checks registries' certificates with [`TrustedRoots`],
/// offering HTTP/2 and HTTP/1.1 as reqwest does.
pub(crate) fn client_config(
    extra: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = TrustedRoots::new(extra, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::{Client, ClientOptions, Reference, RegistryError};

    /// Runs `openssl` with `args`, which must succeed.
    fn openssl(args: &[&dyn AsRef<std::ffi::OsStr>]) {
        let ok = Command::new(kiln_test_support::require::tool_path("openssl"))
            .args(args.iter().map(|a| a.as_ref()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl failed");
    }

    /// A self-signed certificate and its key, made as Docker's guide to a registry with
    /// TLS makes them (`openssl req -x509`, which marks it as a CA), for `san`.
    fn self_signed(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let san = format!("subjectAltName={san}");
        openssl(&[
            &"req",
            &"-x509",
            &"-newkey",
            &"rsa:2048",
            &"-nodes",
            &"-days",
            &"2",
            &"-subj",
            &"/CN=kiln-test-registry",
            &"-addext",
            &san,
            &"-keyout",
            &key,
            &"-out",
            &cert,
        ]);
        (cert, key)
    }

    /// A certificate for `san` signed by `ca` (a [`self_signed`] one), and its key.
    fn signed_by(dir: &Path, ca: &(PathBuf, PathBuf), san: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("leaf.crt"), dir.join("leaf.key"));
        let (csr, ext) = (dir.join("leaf.csr"), dir.join("leaf.ext"));
        let extensions = format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n");
        std::fs::write(&ext, extensions).unwrap();
        openssl(&[
            &"req",
            &"-newkey",
            &"rsa:2048",
            &"-nodes",
            &"-subj",
            &"/CN=kiln-test-leaf",
            &"-keyout",
            &key,
            &"-out",
            &csr,
        ]);
        openssl(&[
            &"x509",
            &"-req",
            &"-days",
            &"2",
            &"-CAcreateserial",
            &"-in",
            &csr,
            &"-CA",
            &ca.0,
            &"-CAkey",
            &ca.1,
            &"-extfile",
            &ext,
            &"-out",
            &cert,
        ]);
        (cert, key)
    }

    /// A TLS server on 127.0.0.1 with `cert` that answers every request with a 404
    /// `MANIFEST_UNKNOWN` (at most 10 connections); returns its port.
    fn tls_registry(cert: &Path, key: &Path) -> u16 {
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().take(10) {
                let Ok(tcp) = tcp else { return };
                let config = config.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut head = [0u8; 4096];
                    if tls.read(&mut head).is_err() {
                        return;
                    }
                    let body =
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                    let _ = write!(
                        tls,
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        port
    }

    /// Asks `port` (as 0.0.0.0, which reaches this host and is spoken to over TLS) for a
    /// manifest, trusting `ca` if given.
    fn ask(port: u16, ca: Option<&Path>) -> RegistryError {
        let c = Client::new(ClientOptions {
            ca_file: ca.map(Path::to_path_buf),
            retries: 0,
            ..Default::default()
        })
        .unwrap();
        let r = Reference::parse(&format!("0.0.0.0:{port}/app:1")).unwrap();
        c.fetch_manifest(&r, "1")
            .err()
            .expect("the server has no manifest")
    }

    /// A registry's self-signed certificate given with `--registry-ca` is trusted, as
    /// Docker trusts it, as long as it is made for the registry's name; without it,
    /// or for another name, the handshake is refused.
    #[test]
    fn a_trusted_self_signed_registry_certificate_is_accepted_for_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "ip", "IP:0.0.0.0");
        let port = tls_registry(&cert, &key);
        // The handshake went through: the registry's own answer.
        let e = ask(port, Some(&cert));
        assert_eq!(e.status(), Some(404), "{e}");
        // Not trusted: said in words rather than rustls' `CaUsedAsEndEntity`.
        let e = ask(port, None);
        assert!(matches!(e, RegistryError::Tls { .. }), "{e}");
        assert!(
            e.to_string().contains(
                "failed: its certificate is marked as a CA (a self-signed certificate?) \
                 and is not one kiln trusts (trust its CA with --registry-ca"
            ),
            "{e}"
        );
        // Trusted, but made for another name.
        let (cert, key) = self_signed(dir.path(), "other", "DNS:registry.example");
        let port = tls_registry(&cert, &key);
        let e = ask(port, Some(&cert));
        assert!(matches!(e, RegistryError::Tls { .. }), "{e}");
        assert!(e.to_string().contains("not valid for name"), "{e}");
    }

    /// The usual case goes through the platform verifier with the extra roots: a
    /// registry certificate signed by a `--registry-ca` CA is trusted, and not without it.
    #[test]
    fn a_registry_certificate_signed_by_a_trusted_ca_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = self_signed(dir.path(), "ca", "DNS:kiln-test-ca");
        let (cert, key) = signed_by(dir.path(), &ca, "IP:0.0.0.0");
        let port = tls_registry(&cert, &key);
        let e = ask(port, Some(&ca.0));
        assert_eq!(e.status(), Some(404), "{e}");
        let e = ask(port, None);
        assert!(matches!(e, RegistryError::Tls { .. }), "{e}");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }
}
