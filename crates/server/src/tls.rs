//! HTTPS: the certificate (from files, or generated for LAN use) and a TLS listener for axum.
//!
//! Browsers give camera and microphone only to secure pages: `https://`, or plain HTTP on
//! `localhost`. A phone on the same Wi-Fi reaches huddle by its LAN address, so without TLS it
//! can open the page but not the camera. `--tls self-signed` makes a certificate at start for
//! every address huddle is reachable at; browsers warn about it once (it is signed by nobody they
//! know), and the banner prints its fingerprint so the user can check it is ours. `--tls-cert` and
//! `--tls-key` take a real certificate (e.g. Let's Encrypt's `fullchain.pem` and `privkey.pem`).
//!
//! The handshake ([`accept`]) runs in each connection's own task on the accept path
//! ([`crate::accept`], which bounds it in time and the connections in number), so a slow or
//! silent client holds up nobody else; the connection is then served exactly as a plain TCP one.
//! When ICE over TCP shares the port, connections that start with an ICE-TCP frame go to the SFU
//! before any TLS ([`crate::ice_tcp`]).

use crate::config::Tls;
use aws_lc_rs::digest;
use base64::Engine as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How long a self-signed certificate is valid.
const SELF_SIGNED_DAYS: i64 = 365;
/// A kept self-signed certificate is replaced this long before it expires.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// The server side of TLS, ready to use.
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the certificate (the leaf), as browsers show it: `AB:CD:…`.
    pub fingerprint: String,
    /// For a certificate generated at start (`--tls self-signed`): base64 SHA-256 of its public
    /// key (SubjectPublicKeyInfo), what Chromium's `--ignore-certificate-errors-spki-list` takes
    /// to trust exactly this key. `None` for a certificate from files.
    pub spki_sha256: Option<String>,
    /// Where a self-signed certificate is kept across restarts, if it is.
    pub kept_in: Option<std::path::PathBuf>,
}

/// The TLS setup for `tls`, or `None` for plain HTTP. `names`: the host names and addresses
/// a self-signed certificate is made for. `store`: where a self-signed certificate is kept
/// (`tls/` under it), so that browsers that accepted it once are not asked again after a
/// restart; `None`: a new one each time.
pub fn setup(tls: &Tls, names: &[String], store: Option<&Path>) -> anyhow::Result<Option<TlsSetup>> {
    let mut kept_in = None;
    let (chain, key, spki) = match tls {
        Tls::Off => return Ok(None),
        Tls::SelfSigned => {
            let dir = store.map(|d| d.join("tls"));
            let (cert, key, spki) = match dir.as_deref().and_then(|d| load_self_signed(d, names)) {
                Some(kept) => {
                    kept_in = dir;
                    kept
                }
                None => {
                    let (cert, pair) = self_signed_certificate(names)?;
                    if let Some(dir) = dir {
                        match keep_self_signed(&dir, names, &cert, &pair) {
                            Ok(()) => {
                                info!(dir = %dir.display(), "made a self-signed certificate and kept it");
                                kept_in = Some(dir);
                            }
                            Err(e) => {
                                warn!(dir = %dir.display(), error = %e, "cannot keep the self-signed certificate; a new one comes at the next start")
                            }
                        }
                    }
                    self_signed_der(cert.der().clone(), &pair)
                }
            };
            (vec![cert], key, Some(spki))
        }
        Tls::Files { cert, key } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read the TLS certificate {}: {e}", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!("no certificate in {}", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("cannot read the TLS key {}: {e}", key.display()))?;
            (chain, key, None)
        }
    };
    let leaf = chain[0].clone();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not go together: {e}"))?;
    // HTTP/1.1 only: browsers then open the WebSocket on its own connection the usual way.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsSetup {
        config: Arc::new(config),
        fingerprint: fingerprint(leaf.as_ref()),
        spki_sha256: spki
            .map(|spki| base64::engine::general_purpose::STANDARD.encode(digest::digest(&digest::SHA256, &spki))),
        kept_in,
    }))
}

/// A certificate, its key and the key's SubjectPublicKeyInfo.
type SelfSigned = (CertificateDer<'static>, PrivateKeyDer<'static>, Vec<u8>);

/// A kept certificate still right for `names` and not about to expire (else `None`: make one).
/// The files: `cert.pem`, `key.pem` and `names` (the expiry in Unix seconds on the first line,
/// then one name per line).
fn load_self_signed(dir: &Path, names: &[String]) -> Option<SelfSigned> {
    let listed = std::fs::read_to_string(dir.join("names")).ok()?;
    let mut lines = listed.lines();
    let expires: i64 = lines.next()?.trim().parse().ok()?;
    let kept: Vec<&str> = lines.collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if expires < now + RENEW_BEFORE.whole_seconds() || !names.iter().all(|n| kept.contains(&n.as_str())) {
        return None;
    }
    let cert = CertificateDer::from_pem_file(dir.join("cert.pem")).ok()?;
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).ok()?;
    let pair = rcgen::KeyPair::from_pem(&key_pem).ok()?;
    let kept = self_signed_der(cert, &pair);
    // The key must be the certificate's (its public key is inside the certificate).
    let (cert, _, spki) = &kept;
    cert.as_ref().windows(spki.len()).any(|w| w == spki.as_slice()).then_some(kept)
}

/// The certificate, `pair`'s private key and its SubjectPublicKeyInfo, as rustls and the
/// fingerprints take them.
fn self_signed_der(cert: CertificateDer<'static>, pair: &rcgen::KeyPair) -> SelfSigned {
    use rcgen::PublicKeyData as _;
    let spki = pair.subject_public_key_info();
    (cert, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der())), spki)
}

/// Writes what [`load_self_signed`] reads, readable by its owner only (the directory too).
fn keep_self_signed(dir: &Path, names: &[String], cert: &rcgen::Certificate, pair: &rcgen::KeyPair) -> io::Result<()> {
    use std::io::Write as _;
    crate::persist::create_private_dir(dir)?;
    // `names` goes first and comes back last: a set half replaced is never taken for a whole one;
    // the key file is made anew, so that it is created readable by its owner only.
    for file in ["names", "key.pem"] {
        match std::fs::remove_file(dir.join(file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(dir.join("key.pem"))?.write_all(pair.serialize_pem().as_bytes())?;
    crate::persist::write_private(&dir.join("cert.pem"), cert.pem().as_bytes())?;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(SELF_SIGNED_DAYS)).unix_timestamp();
    crate::persist::write_private(&dir.join("names"), format!("{expires}\n{}\n", names.join("\n")).as_bytes())
}

/// A certificate for `names` (DNS names and IP addresses), signed by its own key.
fn self_signed_certificate(names: &[String]) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate().map_err(|e| anyhow::anyhow!("cannot make a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| anyhow::anyhow!("cannot make a certificate for {names:?}: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "huddle (self-signed)");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    let cert = params.self_signed(&key).map_err(|e| anyhow::anyhow!("cannot sign the certificate: {e}"))?;
    Ok((cert, key))
}

/// `AB:CD:…`: SHA-256 of `der`, as browsers show a certificate's fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, der);
    hash.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The server side of one connection's TLS handshake. A connection that does not start with a
/// TLS handshake record is someone typing the address without `https://`: it is answered with a
/// redirect there ([`redirect_to_https`]) and `None`. The caller bounds the time.
pub async fn accept(stream: TcpStream, acceptor: &TlsAcceptor) -> io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    // A TLS connection starts with a handshake record (22).
    if stream.peek(&mut first).await? == 1 && first[0] != 22 {
        redirect_to_https(stream).await?;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

/// The most of a plain-HTTP request head read before answering it.
const MAX_PLAIN_REQUEST: usize = 8192;

/// Answers a plain-HTTP request on the HTTPS port with a redirect to the same address and path
/// over HTTPS (308, so a method and body would be kept), or 400 when the request names no usable
/// host or path. Reads at most [`MAX_PLAIN_REQUEST`] bytes; the caller bounds the time.
async fn redirect_to_https(mut stream: TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_PLAIN_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let answer = match https_location(&head) {
        Some(location) => format!(
            "HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        None => {
            let body = "This address speaks HTTPS only.";
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// `https://<Host><path>` for a plain-HTTP request head, when its Host and path are plain
/// (host name or address characters, a path of visible ASCII starting with `/`).
fn https_location(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (_method, path) = (request.next()?, request.next()?);
    let path_ok = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
    let host = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("host").then(|| value.trim())
    })?;
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    (path_ok && host_ok).then(|| format!("https://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_names_every_address_and_has_both_fingerprints() {
        let names = vec!["localhost".to_string(), "192.168.1.23".to_string(), "::1".to_string()];
        let tls = setup(&Tls::SelfSigned, &names, None).expect("generated").expect("on");
        assert_eq!(tls.fingerprint.len(), 32 * 3 - 1, "{}", tls.fingerprint);
        assert!(tls.fingerprint.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()));
        let spki = tls.spki_sha256.as_deref().expect("a generated key's hash");
        let spki = base64::engine::general_purpose::STANDARD.decode(spki).expect("base64");
        assert_eq!(spki.len(), 32);
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Another start makes another key.
        let again = setup(&Tls::SelfSigned, &names, None).expect("generated").expect("on");
        assert_ne!(again.spki_sha256, tls.spki_sha256);
    }

    #[test]
    fn a_kept_self_signed_certificate_is_used_again_while_it_fits() {
        let dir = std::env::temp_dir().join(format!("huddle-tls-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = vec!["localhost".to_string(), "192.168.1.23".to_string()];
        let first = setup(&Tls::SelfSigned, &names, Some(&dir)).expect("made").expect("on");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for kept in ["", "tls", "tls/key.pem", "tls/cert.pem", "tls/names"] {
                let mode = std::fs::metadata(dir.join(kept)).expect("kept").permissions().mode();
                assert_eq!(mode & 0o077, 0, "{kept} is open to others: {mode:o}");
            }
        }
        assert_eq!(first.kept_in.as_deref(), Some(dir.join("tls").as_path()));
        let again = setup(&Tls::SelfSigned, &names, Some(&dir)).expect("loaded").expect("on");
        assert_eq!(again.fingerprint, first.fingerprint, "the same certificate after a restart");
        assert_eq!(again.spki_sha256, first.spki_sha256);
        // Fewer names: still covered.
        let fewer = setup(&Tls::SelfSigned, &names[..1], Some(&dir)).expect("loaded").expect("on");
        assert_eq!(fewer.fingerprint, first.fingerprint);
        // A new address (another network): a new certificate, kept in its place.
        let more = [names.clone(), vec!["10.0.0.5".to_string()]].concat();
        let moved = setup(&Tls::SelfSigned, &more, Some(&dir)).expect("made").expect("on");
        assert_ne!(moved.fingerprint, first.fingerprint);
        let kept = setup(&Tls::SelfSigned, &more, Some(&dir)).expect("loaded").expect("on");
        assert_eq!(kept.fingerprint, moved.fingerprint);
        // Broken files, or a key that is not the certificate's, are replaced, not fatal.
        std::fs::write(dir.join("tls/cert.pem"), "garbage").expect("write");
        let fresh = setup(&Tls::SelfSigned, &more, Some(&dir)).expect("made").expect("on");
        assert_ne!(fresh.fingerprint, moved.fingerprint);
        std::fs::write(dir.join("tls/key.pem"), rcgen::KeyPair::generate().expect("key").serialize_pem())
            .expect("write");
        let other = setup(&Tls::SelfSigned, &more, Some(&dir)).expect("made").expect("on");
        assert_ne!(other.fingerprint, fresh.fingerprint);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plain_http_is_sent_to_the_same_place_over_https() {
        let head = b"GET /r/team%20room?x=1 HTTP/1.1\r\nHost: 192.168.1.23:8443\r\nAccept: */*\r\n\r\n";
        assert_eq!(https_location(head).as_deref(), Some("https://192.168.1.23:8443/r/team%20room?x=1"));
        let v6 = b"GET / HTTP/1.1\r\nhost: [fe80::1]:8443\r\n\r\n";
        assert_eq!(https_location(v6).as_deref(), Some("https://[fe80::1]:8443/"));
        // Nothing that could inject a header or point elsewhere.
        assert_eq!(https_location(b"GET / HTTP/1.1\r\nHost: evil.example\rX: y\r\n\r\n"), None);
        assert_eq!(https_location(b"GET //evil.example/ HTTP/1.1\r\nHost: a@b\r\n\r\n"), None);
        assert_eq!(https_location(b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(https_location(b"GET / HTTP/1.1\r\n\r\n"), None, "no Host");
        assert_eq!(https_location(b"\xff\xfe"), None);
    }

    #[test]
    fn missing_or_broken_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("huddle-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = Tls::Files { cert: dir.join("none.pem"), key: dir.join("none-key.pem") };
        let e = setup(&missing, &[], None).err().expect("refused").to_string();
        assert!(e.contains("cannot read the TLS certificate") && e.contains("none.pem"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let e = setup(&Tls::Files { cert: junk.clone(), key: junk }, &[], None).err().expect("refused").to_string();
        assert!(e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_and_key_from_pem_files() {
        let dir = std::env::temp_dir().join(format!("huddle-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["meet.example.org".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert_path, key_path) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let tls = setup(&Tls::Files { cert: cert_path.clone(), key: key_path }, &[], None).expect("loads").expect("on");
        assert_eq!(tls.spki_sha256, None);
        assert_eq!(tls.fingerprint, fingerprint(cert.der()));
        // A key that is not the certificate's is refused.
        let other = dir.join("other-key.pem");
        std::fs::write(&other, rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("write");
        let e = setup(&Tls::Files { cert: cert_path, key: other }, &[], None).err().expect("refused").to_string();
        assert!(e.contains("do not go together"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
