//! TLS for replication: the PEM files named in `[grpc_config]` (server) and
//! `[relayer_config.NAME]` (follower), read into tonic's (rustls) configurations.
//!
//! The server verifies client certificates whenever `ca_path` is set (mTLS): a client without
//! a certificate signed by that CA does not get past the handshake. Errors name the config key
//! and the file.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::GrpcConfig;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a PEM file named by config key `key`.
fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{key} {} is not a PEM file (no \"-----BEGIN\" line)",
            path.display()
        ));
    }
    Ok(pem)
}

/// The server's TLS configuration, or `None` to serve plaintext (no `cert_path`).
pub fn server_config(g: &GrpcConfig) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&g.cert_path, &g.key_path) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(
        read_pem("grpc_config.cert_path", cert)?,
        read_pem("grpc_config.key_path", key)?,
    );
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &g.ca_path {
        // Client certificates become required (tonic's client_auth_optional is false).
        tls = tls.client_ca_root(Certificate::from_pem(read_pem("grpc_config.ca_path", ca)?));
    }
    Ok(Some(tls))
}

/// A follower's TLS configuration for `upstream` (`host:port`): the server certificate must be
/// signed by `ca` and name the host (a DNS name, or an IP address in its IP SANs); `identity`
/// is the client certificate and key presented to a server that requires mTLS.
pub fn client_config(
    upstream: &str,
    what: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem(
            &format!("{what}.ca_path"),
            ca,
        )?))
        .domain_name(host_of(upstream))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            read_pem(&format!("{what}.cert_path"), cert)?,
            read_pem(&format!("{what}.key_path"), key)?,
        ));
    }
    Ok(tls)
}

/// The host of `host:port`, without the brackets of an IPv6 address.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_is_the_address_without_its_port() {
        assert_eq!(host_of("db1.example.com:4001"), "db1.example.com");
        assert_eq!(host_of("127.0.0.1:4001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4001"), "::1");
    }
}
