//! How a follower or `ferry backup` reaches an upstream: plaintext or TLS (with a client
//! certificate for mTLS), and the replication token on every call.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::pb::replication_client::ReplicationClient;
use crate::auth::TokenSet;

/// A replication client with its token attached to every call.
pub type Client = ReplicationClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to each call (marked sensitive, so it is never
/// printed).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// How to reach an upstream securely (the keys of a `[relayer_config.NAME]`, or the flags of
/// `ferry backup`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// CA that signed the upstream's certificate; set: connect over TLS.
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key for an upstream that requires mTLS.
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// File whose first token is presented as the replication token.
    pub token_file: Option<PathBuf>,
}

impl Security {
    /// What a connection with these settings probably lacks when the upstream hangs up before
    /// answering: `no_tls` when it is plaintext (a TLS listener hangs up on it), `no_cert` when
    /// it has no client certificate (a listener with a CA asks for one).
    pub fn lacks<'a>(&self, no_tls: &'a str, no_cert: &'a str) -> Option<&'a str> {
        if self.ca_path.is_none() {
            Some(no_tls)
        } else if self.cert_path.is_none() {
            Some(no_cert)
        } else {
            None
        }
    }
}

/// An upstream's address with everything needed to connect to it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub address: String,
    /// Err: the address cannot be an endpoint. The node still starts (and serves reads); the
    /// follower stops with this reason.
    endpoint: Result<Endpoint, String>,
    token_file: Option<PathBuf>,
    /// What to add to a failure the upstream hung up on before answering ([`Security::lacks`]).
    lacks: Option<String>,
}

impl Upstream {
    /// Checks the certificates and the token file now, so a mistake stops the node at
    /// startup rather than in a retry loop. `what` names the config section in errors.
    pub fn new(address: &str, what: &str, security: &Security) -> Result<Upstream, String> {
        let scheme = if security.ca_path.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoint = match Endpoint::from_shared(format!("{scheme}://{address}")) {
            Ok(e) => Ok(e),
            Err(e) => Err(format!("invalid upstream_address {address:?}: {e}")),
        };
        let mut endpoint = endpoint.map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                // Keepalives notice an upstream that vanished without closing the connection.
                .tcp_keepalive(Some(Duration::from_secs(10)))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
        });
        if let Some(ca) = &security.ca_path {
            let identity = match (&security.cert_path, &security.key_path) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                _ => None,
            };
            let tls = crate::tls::client_config(address, what, ca, identity)?;
            if let Ok(e) = endpoint {
                let e = e
                    .tls_config(tls)
                    .map_err(|e| format!("{what}: {}", super::follower::error_chain(&e)))?;
                endpoint = Ok(e);
            }
        }
        if let Some(path) = &security.token_file {
            TokenSet::load(path).map_err(|e| format!("{what}.token_file: {e}"))?;
        }
        let (no_tls, no_cert) = (
            format!("an upstream serving gRPC over TLS needs {what}.ca_path"),
            format!(
                "an upstream that asks for client certificates needs {what}.cert_path and {what}.key_path"
            ),
        );
        Ok(Upstream {
            address: address.to_owned(),
            endpoint,
            token_file: security.token_file.clone(),
            lacks: security.lacks(&no_tls, &no_cert).map(str::to_owned),
        })
    }

    /// `reason` for a request that failed in the transport, before the upstream answered,
    /// with what this connection's settings probably lack (none when the upstream answered,
    /// even with an error).
    pub fn hung_up(&self, s: &tonic::Status, reason: String) -> String {
        use std::error::Error;
        match (&self.lacks, s.source()) {
            (Some(lacks), Some(_)) => format!("{reason}; {lacks}"),
            _ => reason,
        }
    }

    /// Why the address cannot be connected to at all, if it cannot.
    pub fn invalid(&self) -> Option<&str> {
        self.endpoint.as_ref().err().map(String::as_str)
    }

    /// Connects, presenting the token file's first token (read again each time, so a token
    /// replaced in the file is used from the next connection on).
    pub async fn connect(&self) -> Result<Client, String> {
        let token = match &self.token_file {
            Some(path) => {
                let tokens = TokenSet::load(path).map_err(|e| e.to_string())?;
                let mut value: MetadataValue<Ascii> = format!("Bearer {}", tokens.first())
                    .parse()
                    .expect("a token is visible ASCII");
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let endpoint = self.endpoint.as_ref().map_err(Clone::clone)?;
        let channel = endpoint.connect().await.map_err(|e| {
            let plaintext = if answered_in_plaintext(&e) {
                " (the upstream answered in plaintext: it does not serve gRPC over TLS)"
            } else {
                ""
            };
            format!(
                "cannot connect to upstream {}: {}{plaintext}",
                self.address,
                super::follower::cause(&e)
            )
        })?;
        Ok(ReplicationClient::with_interceptor(channel, Bearer(token))
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES))
    }
}

/// Whether a TLS connection failed because what answered does not speak TLS: rustls found
/// no TLS record type in its first bytes (a plaintext gRPC server's answer), which it words
/// as "received corrupt message of type InvalidContentType". rustls' error reaches us inside
/// the I/O error at the bottom of the chain.
fn answered_in_plaintext(e: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls::{Error, InvalidMessage};
    super::follower::io_cause(e)
        .and_then(std::io::Error::get_ref)
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|r| matches!(r, Error::InvalidMessage(InvalidMessage::InvalidContentType)))
}

#[cfg(test)]
mod tests {
    use super::{Security, Upstream};

    /// A failure the upstream answered (even with an error) is told as it is; one the
    /// transport reports before any answer gets what the settings probably lack: TLS first,
    /// then a client certificate, nothing when both are set. (Catches: the hint added to an
    /// answered error, such as "the upstream is shutting down", where it would mislead; the
    /// two hints swapped.)
    #[test]
    fn only_a_hang_up_before_any_answer_gets_the_settings_it_may_lack() {
        let plain =
            Upstream::new("127.0.0.1:1", "relayer_config.up", &Security::default()).unwrap();
        let answered = tonic::Status::unavailable("the upstream is shutting down");
        assert_eq!(plain.hung_up(&answered, "why".into()), "why");
        let mut hung_up = tonic::Status::unavailable("transport error");
        hung_up.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            plain.hung_up(&hung_up, "why".into()),
            "why; an upstream serving gRPC over TLS needs relayer_config.up.ca_path"
        );

        let path = || Some(std::path::PathBuf::from("x"));
        let ca_only = Security {
            ca_path: path(),
            ..Default::default()
        };
        let all = Security {
            ca_path: path(),
            cert_path: path(),
            key_path: path(),
            token_file: None,
        };
        assert_eq!(Security::default().lacks("tls", "cert"), Some("tls"));
        assert_eq!(ca_only.lacks("tls", "cert"), Some("cert"));
        assert_eq!(all.lacks("tls", "cert"), None);
    }
}
