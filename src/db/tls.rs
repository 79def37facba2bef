//! TLS to PostgreSQL through rustls, with libpq's `sslmode` and `sslrootcert` URL parameters.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` (and verifies nothing itself), so
//! both parameters are taken out of the URL here and turned into a rustls configuration:
//!
//! | sslmode | TLS | the server's certificate |
//! |---|---|---|
//! | absent, `disable` | no | — |
//! | `allow`, `prefer` | if the server offers it | not checked |
//! | `require` | yes | not checked (checked as `verify-ca` when `sslrootcert` is given, as libpq does) |
//! | `verify-ca` | yes | signed by `sslrootcert` (or a public CA) |
//! | `verify-full` | yes | that, and issued for the URL's host name |
//!
//! Without `sslmode` the connection stays plain, as before TLS support: a local trust setup does
//! not start paying for encryption because its server happens to offer it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "disable" => Mode::Disable,
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
            }
        })
    }

    pub fn ssl_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// The URL's TLS parameters, and the URL without them (what tokio-postgres parses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub url: String,
    pub mode: Mode,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query. A key=value connection
/// string is left as tokio-postgres reads it (`sslmode=disable|prefer|require` only).
pub fn split(url: &str) -> Result<Split, String> {
    let plain = Split {
        url: url.to_string(),
        mode: Mode::Disable,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok(plain);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(plain);
    }
    let mut mode = Mode::Disable;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        match k {
            "sslmode" => mode = Mode::parse(&value())?,
            "sslrootcert" => root_cert = Some(value()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Split {
        url,
        mode,
        root_cert,
    })
}

/// The connector for `mode`; the root certificates are read now, so a missing or bad file is
/// an error at start naming it.
pub fn connector(mode: Mode, root_cert: Option<&str>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    // libpq: `require` with a root certificate checks the chain, as `verify-ca`.
    let mode = match (mode, root_cert) {
        (Mode::Require, Some(_)) => Mode::VerifyCa,
        (m, _) => m,
    };
    let config = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                provider,
                chain: None,
            }))
            .with_no_client_auth(),
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = Arc::new(roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            if mode == Mode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        provider,
                        chain: Some(webpki),
                    }))
                    .with_no_client_auth()
            }
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `sslrootcert`'s certificates, or the public CAs (webpki-roots) without it.
fn roots(path: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let Some(path) = path else {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert={path:?}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert={path:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("sslrootcert={path:?}: no PEM certificate in it"));
    }
    for c in certs {
        store
            .add(c)
            .map_err(|e| format!("sslrootcert={path:?}: {e}"))?;
    }
    Ok(store)
}

/// Checks less than webpki does: nothing (`prefer`, `require`: encrypted, the certificate not
/// checked, libpq's meaning), or the chain without the host name (`verify-ca`; webpki checks the
/// chain before the name, so a name error means the chain passed). Handshake signatures are
/// always verified.
#[derive(Debug)]
struct Lenient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_the_rest_kept() {
        let s = split("postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        assert_eq!(s.url, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        let plain = split("postgres://u@h/db").unwrap();
        assert_eq!(
            (plain.mode, plain.url.as_str()),
            (Mode::Disable, "postgres://u@h/db")
        );
        let err = split("postgres://u@h/db?sslmode=maybe").unwrap_err();
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn a_missing_root_certificate_is_named() {
        let Err(err) = connector(Mode::VerifyFull, Some("/nonexistent/ca.pem")) else {
            panic!("a missing file is an error");
        };
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
