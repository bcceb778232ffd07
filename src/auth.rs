//! Bearer tokens read from files (`[auth]`, and `token_file` of a relayer).
//!
//! A token file holds one token per line; blank lines and lines starting with `#` are skipped.
//! Several tokens side by side let clients rotate from an old token to a new one without a
//! moment where neither works. A node re-reads its token files when they change
//! ([`TokenSet::watch`]), so rotating needs no restart. Tokens are compared in constant time and
//! never logged: errors name the file, never its content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a node looks whether a token file changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} holds no token (one token per line)")]
    Empty { path: PathBuf },
    #[error(
        "token file {path}, line {line}: a token is visible ASCII without spaces (it travels in an HTTP header)"
    )]
    Invalid { path: PathBuf, line: usize },
}

/// The tokens accepted for one scope. Clones share the tokens, so a reload is seen by all.
#[derive(Clone)]
pub struct TokenSet {
    path: PathBuf,
    tokens: Arc<RwLock<Vec<Vec<u8>>>>,
}

impl fmt::Debug for TokenSet {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("path", &self.path)
            .field("tokens", &self.tokens.read().unwrap().len())
            .finish()
    }
}

impl TokenSet {
    /// Reads the tokens of `path`.
    pub fn load(path: &Path) -> Result<TokenSet, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TokenSet::parse(&text, path)
    }

    /// Parses the content of a token file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<TokenSet, AuthError> {
        Ok(TokenSet {
            path: path.to_path_buf(),
            tokens: Arc::new(RwLock::new(parse_tokens(text, path)?)),
        })
    }

    /// The file the tokens came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first token: the one a client (a follower) presents.
    pub fn first(&self) -> String {
        // parse_tokens() guarantees at least one token, all ASCII.
        String::from_utf8(self.tokens.read().unwrap()[0].clone()).expect("tokens are ASCII")
    }

    /// Re-reads the file whenever it changes (looked at every [`RELOAD_CHECK`]) until `stop`:
    /// add a new token next to the old one, move clients over, remove the old line, with no
    /// restart. A file that becomes unreadable or invalid is logged and the tokens read before
    /// stay in force, so a half-written file never locks everyone out.
    pub fn watch(&self, tasks: &TaskTracker, stop: CancellationToken) {
        let set = self.clone();
        tasks.spawn(async move {
            let mut seen = stamp(&set.path).await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_CHECK) => {}
                }
                let now = stamp(&set.path).await;
                if now == seen {
                    continue;
                }
                seen = now;
                let path = set.path.display().to_string();
                let read = tokio::fs::read_to_string(&set.path)
                    .await
                    .map_err(|source| AuthError::Read {
                        path: set.path.clone(),
                        source,
                    })
                    .and_then(|text| parse_tokens(&text, &set.path));
                match read {
                    Ok(tokens) => {
                        let count = tokens.len();
                        *set.tokens.write().unwrap() = tokens;
                        tracing::info!(%path, tokens = count, "token file changed: its tokens are now the ones accepted");
                    }
                    Err(e) => {
                        tracing::warn!(%path, "{e}; the tokens read before stay in force");
                    }
                }
            }
        });
    }

    /// Whether `presented` is one of the tokens. Every token is compared, each in time that
    /// depends only on the lengths, so timing tells an attacker nothing about the content.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut found = false;
        for token in self.tokens.read().unwrap().iter() {
            found |= constant_time_eq(token, presented);
        }
        found
    }
}

/// What tells a changed file: inode (a file renamed over it), size and modification time.
async fn stamp(path: &Path) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await.ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// The tokens of a token file's text: one per line, blank lines and `#` comments skipped.
fn parse_tokens(text: &str, path: &Path) -> Result<Vec<Vec<u8>>, AuthError> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Invalid {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        tokens.push(token.as_bytes().to_vec());
    }
    if tokens.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> Result<TokenSet, AuthError> {
        TokenSet::parse(text, Path::new("t.tokens"))
    }

    #[test]
    fn each_line_is_a_token_and_comments_are_skipped() {
        let s = set("# rotated 2026-11\nold-token\n\n  new-token  \n").unwrap();
        assert!(s.accepts(b"old-token"));
        assert!(s.accepts(b"new-token"));
        assert!(!s.accepts(b"new-toke"));
        assert!(!s.accepts(b"new-tokenx"));
        assert!(!s.accepts(b""));
        assert!(!s.accepts(b"# rotated 2026-11"));
        assert_eq!(s.first(), "old-token");
    }

    #[test]
    fn a_file_without_tokens_or_with_spaces_in_one_is_refused() {
        assert!(matches!(set("\n# nothing\n"), Err(AuthError::Empty { .. })));
        assert!(matches!(
            set("ok\ntwo words\n"),
            Err(AuthError::Invalid { line: 2, .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let s = set("s3cret\n").unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_takes_the_token_of_the_header() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
