//! Bearer tokens on the HTTP API (`[auth] write_token_file`, `read_token_file`).
//!
//! Two scopes, checked before any route runs:
//! - write: every method but GET and HEAD (PUT, DELETE, `kv/batch`, `promote`, `fence`);
//! - read: every GET (and HEAD) except `/health` and `/ready`, which load balancers probe
//!   without credentials.
//!
//! A scope whose file is not configured is open. The scopes are separate: a write token does
//! not read (list a token in both files to let it do both), so a writer that leaks its token
//! does not leak the data too. No token, or one in neither file, is 401; a token of the other
//! scope is 403. Tokens never reach a log line or an error message.

use std::sync::Arc;

use warp::Filter;
use warp::http::{Method, StatusCode};

use crate::auth::{AuthError, TokenSet, bearer};
use crate::config::AuthConfig;

/// The tokens the HTTP API accepts, per scope; `None`: that scope is open.
#[derive(Debug)]
pub struct HttpAuth {
    read: Option<TokenSet>,
    write: Option<TokenSet>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Open,
    Read,
    Write,
}

impl Scope {
    /// The scope of a request, from its method and path alone.
    pub fn of(method: &Method, path: &str) -> Scope {
        let reads = method == Method::GET || method == Method::HEAD;
        match (reads, path) {
            (true, "/health" | "/ready") => Scope::Open,
            (true, _) => Scope::Read,
            (false, _) => Scope::Write,
        }
    }
}

/// A request refused for want of the right token (401 or 403).
#[derive(Debug)]
pub struct Denied {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for Denied {}

impl HttpAuth {
    /// Reads the token files of `[auth]`; `None` when HTTP needs no token at all.
    pub fn load(config: Option<&AuthConfig>) -> Result<Option<HttpAuth>, AuthError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let load = |p: &Option<std::path::PathBuf>| p.as_deref().map(TokenSet::load).transpose();
        let auth = HttpAuth {
            read: load(&config.read_token_file)?,
            write: load(&config.write_token_file)?,
        };
        Ok((auth.read.is_some() || auth.write.is_some()).then_some(auth))
    }

    /// The token files in use, to re-read when they change ([`TokenSet::watch`]).
    pub fn token_sets(&self) -> impl Iterator<Item = &TokenSet> {
        self.read.iter().chain(self.write.iter())
    }

    /// Whether any token is required (a scope is protected).
    pub fn protects(&self, scope: Scope) -> bool {
        match scope {
            Scope::Open => false,
            Scope::Read => self.read.is_some(),
            Scope::Write => self.write.is_some(),
        }
    }

    /// Lets the request through, or says why not. `authorization` is the header's value.
    pub fn check(&self, scope: Scope, authorization: Option<&str>) -> Result<(), Denied> {
        let (needed, other, what, key) = match scope {
            Scope::Open => return Ok(()),
            Scope::Read => (&self.read, &self.write, "read", "read_token_file"),
            Scope::Write => (&self.write, &self.read, "write", "write_token_file"),
        };
        let Some(needed) = needed else {
            return Ok(());
        };
        let denied = |status, message: String| Err(Denied { status, message });
        let Some(token) = authorization.and_then(|h| bearer(h.as_bytes())) else {
            return denied(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this request needs a {what} token: send `Authorization: Bearer <token>` with a token listed in [auth] {key}"
                ),
            );
        };
        if needed.accepts(token) {
            return Ok(());
        }
        if other.as_ref().is_some_and(|o| o.accepts(token)) {
            return denied(
                StatusCode::FORBIDDEN,
                format!(
                    "this token may not {what}: this request needs a token listed in [auth] {key}"
                ),
            );
        }
        denied(
            StatusCode::UNAUTHORIZED,
            format!(
                "the bearer token is not accepted: this request needs a token listed in [auth] {key}"
            ),
        )
    }
}

/// Passes requests that carry the token their scope needs, rejects the others with
/// [`Denied`]. With `auth` `None`, passes everything.
pub fn require(
    auth: Option<Arc<HttpAuth>>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
            move |method: Method, path: warp::path::FullPath, header: Option<String>| {
                let auth = auth.clone();
                async move {
                    match auth {
                        None => Ok(()),
                        Some(auth) => auth
                            .check(Scope::of(&method, path.as_str()), header.as_deref())
                            .map_err(warp::reject::custom),
                    }
                }
            },
        )
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn auth(read: Option<&str>, write: Option<&str>) -> HttpAuth {
        let set = |t: &str| TokenSet::parse(t, Path::new("t")).unwrap();
        HttpAuth {
            read: read.map(set),
            write: write.map(set),
        }
    }

    #[test]
    fn scopes_follow_method_and_path() {
        assert_eq!(Scope::of(&Method::GET, "/health"), Scope::Open);
        assert_eq!(Scope::of(&Method::GET, "/ready"), Scope::Open);
        assert_eq!(Scope::of(&Method::GET, "/metrics"), Scope::Read);
        assert_eq!(Scope::of(&Method::HEAD, "/api/v1/a/kv/k"), Scope::Read);
        assert_eq!(Scope::of(&Method::POST, "/health"), Scope::Write);
        assert_eq!(Scope::of(&Method::POST, "/api/v1/a/promote"), Scope::Write);
    }

    #[test]
    fn a_scope_without_a_file_is_open_and_scopes_are_separate() {
        let a = auth(None, Some("w1\nw2\n"));
        assert!(a.check(Scope::Read, None).is_ok());
        assert_eq!(a.check(Scope::Write, None).unwrap_err().status, 401);
        assert!(a.check(Scope::Write, Some("Bearer w2")).is_ok());
        let a = auth(Some("r\nboth\n"), Some("w\nboth\n"));
        assert_eq!(
            a.check(Scope::Read, Some("Bearer w")).unwrap_err().status,
            403
        );
        assert_eq!(
            a.check(Scope::Write, Some("Bearer x")).unwrap_err().status,
            401
        );
        assert!(a.check(Scope::Read, Some("Bearer both")).is_ok());
        assert!(a.check(Scope::Write, Some("Bearer both")).is_ok());
    }
}
