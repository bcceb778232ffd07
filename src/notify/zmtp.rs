//! The part of ZMTP 3.0 (<https://rfc.zeromq.org/spec/23/>) a PUB socket speaks: the
//! greeting, frames, commands and their properties. Pure encoding and decoding; the
//! connections are in `socket.rs`.
//!
//! On the wire a ZMTP connection is a 64-byte greeting each way, a handshake of commands the
//! security mechanism defines (NULL: one `READY` each way), then frames: a flags byte (bit 0
//! more frames follow, bit 1 long size, bit 2 command), the size (1 byte, or 8 big-endian),
//! the body. A command's body is its name (1 length byte, then the name) and its data.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of the greeting each side sends first.
pub(crate) const GREETING_LEN: usize = 64;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// What a peer did wrong, or the connection failing under it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol or its security mechanism; the text says how.
    #[error("{0}")]
    Protocol(String),
    #[error("a frame of {size} bytes is over the limit of {max}")]
    TooBig { size: u64, max: usize },
}

/// Our greeting: ZMTP 3.0, `mechanism` (e.g. `NULL`, `CURVE`), and whether we are the
/// mechanism's server (CURVE's server is, NULL has none).
pub(crate) fn greeting(mechanism: &str, as_server: bool) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    // Padding: libzmq puts an identity length here for ZMTP 1.0 peers; the low bit of the
    // last byte must be set.
    g[8] = 1;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism.as_bytes());
    g[32] = u8::from(as_server);
    g
}

/// Checks the first 10 bytes of a peer's greeting (the signature) .
pub(crate) fn check_signature(sig: &[u8]) -> Result<(), PeerError> {
    if sig.len() < 10 || sig[0] != 0xFF || sig[9] & 0x01 == 0 {
        return Err(PeerError::Protocol(
            "not a ZMTP peer: no ZMTP greeting".into(),
        ));
    }
    Ok(())
}

/// Checks the rest of a peer's greeting: version 3 or later, and the same mechanism as ours.
pub(crate) fn check_greeting(g: &[u8; GREETING_LEN], mechanism: &str) -> Result<(), PeerError> {
    check_signature(&g[..10])?;
    if g[10] < 3 {
        return Err(PeerError::Protocol(format!(
            "ZMTP version {}.{}; this publisher speaks 3.0 and later (libzmq 4 and later)",
            g[10], g[11]
        )));
    }
    let theirs = &g[12..32];
    let end = theirs.iter().position(|&b| b == 0).unwrap_or(theirs.len());
    if &theirs[..end] != mechanism.as_bytes() {
        return Err(PeerError::Protocol(format!(
            "security mechanism {:?}; this publisher uses {mechanism}",
            String::from_utf8_lossy(&theirs[..end])
        )));
    }
    Ok(())
}

/// One frame read from a peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Message { more: bool, body: Vec<u8> },
    Command { name: Vec<u8>, data: Vec<u8> },
}

/// Reads one frame of at most `max` bytes; a bigger one is an error before it is read.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Frame, PeerError> {
    let flags = r.read_u8().await?;
    let size = if flags & FLAG_LONG != 0 {
        r.read_u64().await?
    } else {
        u64::from(r.read_u8().await?)
    };
    if size > max as u64 {
        return Err(PeerError::TooBig { size, max });
    }
    let mut body = vec![0; size as usize];
    r.read_exact(&mut body).await?;
    if flags & FLAG_COMMAND == 0 {
        return Ok(Frame::Message {
            more: flags & FLAG_MORE != 0,
            body,
        });
    }
    let (&len, rest) = body
        .split_first()
        .ok_or_else(|| PeerError::Protocol("an empty command".into()))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(PeerError::Protocol(
            "a command name longer than its frame".into(),
        ));
    }
    Ok(Frame::Command {
        name: rest[..len].to_vec(),
        data: rest[len..].to_vec(),
    })
}

/// Appends a frame holding `body` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, more: bool, command: bool, body: &[u8]) {
    let mut flags = 0;
    if more {
        flags |= FLAG_MORE;
    }
    if command {
        flags |= FLAG_COMMAND;
    }
    if let Ok(short) = u8::try_from(body.len()) {
        out.push(flags);
        out.push(short);
    } else {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(body);
}

/// A command's body: `name`, then `data`.
pub(crate) fn command_body(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + name.len() + data.len());
    body.push(name.len() as u8);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    body
}

/// A command frame: `name`, then `data`.
pub(crate) fn command(name: &str, data: &[u8]) -> Vec<u8> {
    let body = command_body(name, data);
    let mut out = Vec::with_capacity(body.len() + 9);
    put_frame(&mut out, false, true, &body);
    out
}

/// The frames `put_frame` wrote to `wire`: (more, body).
pub(crate) fn frames(mut wire: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    std::iter::from_fn(move || {
        let (&flags, rest) = wire.split_first()?;
        let (size, rest) = if flags & FLAG_LONG != 0 {
            let (size, rest) = rest.split_at(8);
            (u64::from_be_bytes(size.try_into().ok()?) as usize, rest)
        } else {
            let (&size, rest) = rest.split_first()?;
            (usize::from(size), rest)
        };
        let (body, rest) = rest.split_at(size);
        wire = rest;
        Some((flags & FLAG_MORE != 0, body))
    })
}

/// Metadata properties as commands carry them: name (1 length byte), value (4 length bytes).
pub(crate) fn properties(props: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in props {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The value of property `wanted` (names compare case-insensitively, as the spec says).
pub(crate) fn property<'a>(
    mut data: &'a [u8],
    wanted: &str,
) -> Result<Option<&'a [u8]>, PeerError> {
    let bad = || PeerError::Protocol("malformed metadata".into());
    let mut found = None;
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len);
        let name = rest.get(..len).ok_or_else(bad)?;
        let size = rest.get(len..len + 4).ok_or_else(bad)?;
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize;
        let value = rest.get(len + 4..len + 4 + size).ok_or_else(bad)?;
        if name.eq_ignore_ascii_case(wanted.as_bytes()) {
            found = Some(value);
        }
        data = &rest[len + 4 + size..];
    }
    Ok(found)
}

/// Checks that a peer's metadata names a socket type that may talk to a PUB.
pub(crate) fn check_socket_type(metadata: &[u8]) -> Result<(), PeerError> {
    match property(metadata, "Socket-Type")? {
        Some(b"SUB") | Some(b"XSUB") => Ok(()),
        Some(other) => Err(PeerError::Protocol(format!(
            "a {} socket; only SUB and XSUB may connect to a PUB",
            String::from_utf8_lossy(other)
        ))),
        None => Err(PeerError::Protocol("no Socket-Type in its metadata".into())),
    }
}

/// What a subscriber's frame asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    Subscribe(&'a [u8]),
    Cancel(&'a [u8]),
    /// A heartbeat: answer with a PONG carrying this context.
    Ping(&'a [u8]),
    Other,
}

/// Reads what a frame asks for. ZMTP 3.0 subscriptions are messages starting with 1
/// (subscribe) or 0 (cancel); ZMTP 3.1 also has SUBSCRIBE and CANCEL commands. Only the
/// first frame of a message can be one (`first`).
pub(crate) fn request(frame: &Frame, first: bool) -> Request<'_> {
    match frame {
        Frame::Message { body, .. } if first => match body.split_first() {
            Some((1, topic)) => Request::Subscribe(topic),
            Some((0, topic)) => Request::Cancel(topic),
            _ => Request::Other,
        },
        Frame::Command { name, data } => match name.as_slice() {
            b"SUBSCRIBE" => Request::Subscribe(data),
            b"CANCEL" => Request::Cancel(data),
            // PING: a 2-byte TTL, then a context the PONG echoes.
            b"PING" => Request::Ping(data.get(2..).unwrap_or_default()),
            _ => Request::Other,
        },
        _ => Request::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_read_back_short_and_long_and_over_the_limit_is_refused_unread() {
        let mut wire = Vec::new();
        put_frame(&mut wire, true, false, b"ns.kv");
        put_frame(&mut wire, false, false, &[7u8; 300]);
        wire.extend(command("PING", b"\x00\x0actx"));
        let mut r = wire.as_slice();
        assert_eq!(
            read_frame(&mut r, 1000).await.unwrap(),
            Frame::Message {
                more: true,
                body: b"ns.kv".to_vec()
            }
        );
        assert_eq!(
            read_frame(&mut r, 1000).await.unwrap(),
            Frame::Message {
                more: false,
                body: vec![7u8; 300]
            }
        );
        let ping = read_frame(&mut r, 1000).await.unwrap();
        let mut again = Vec::new();
        put_frame(&mut again, true, false, b"ns.kv");
        put_frame(&mut again, false, false, &[7u8; 300]);
        let parts: Vec<_> = frames(&again).collect();
        assert_eq!(parts, [(true, &b"ns.kv"[..]), (false, &[7u8; 300][..])]);
        assert_eq!(request(&ping, true), Request::Ping(b"ctx"));
        assert!(r.is_empty());
        // The long size is read, found too big, and the body is never allocated.
        let mut big = Vec::new();
        big.push(FLAG_LONG);
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            read_frame(&mut big.as_slice(), 1000).await,
            Err(PeerError::TooBig {
                size: u64::MAX,
                max: 1000
            })
        ));
    }

    /// The edges: a frame of exactly the limit is read; a command whose name fills its frame
    /// (ZMTP 3.1's SUBSCRIBE to everything: no topic) is a command with no data; a name
    /// longer than its frame is a protocol error, not a panic. (Catches: `>` as `>=` in the
    /// limit; `<` as `<=` or `==` in the name check.)
    #[tokio::test]
    async fn a_frame_of_the_limit_and_a_command_of_only_a_name_are_read() {
        let mut wire = Vec::new();
        put_frame(&mut wire, false, false, &[1u8; 100]);
        wire.extend(command("SUBSCRIBE", b""));
        let mut r = wire.as_slice();
        assert_eq!(
            read_frame(&mut r, 100).await.unwrap(),
            Frame::Message {
                more: false,
                body: vec![1u8; 100]
            }
        );
        assert_eq!(
            read_frame(&mut r, 100).await.unwrap(),
            Frame::Command {
                name: b"SUBSCRIBE".to_vec(),
                data: Vec::new()
            }
        );
        // A name length of 9 in a frame of 5 bytes after it.
        let mut short = Vec::new();
        put_frame(&mut short, false, true, b"\x09PING!");
        assert!(matches!(
            read_frame(&mut short.as_slice(), 100).await,
            Err(PeerError::Protocol(_))
        ));
    }

    #[test]
    fn subscriptions_in_both_spellings_and_only_at_the_start_of_a_message() {
        let sub = Frame::Message {
            more: false,
            body: b"\x01ns.".to_vec(),
        };
        assert_eq!(request(&sub, true), Request::Subscribe(b"ns."));
        assert_eq!(request(&sub, false), Request::Other);
        let cancel = Frame::Message {
            more: false,
            body: b"\x00".to_vec(),
        };
        assert_eq!(request(&cancel, true), Request::Cancel(b""));
        let cmd = Frame::Command {
            name: b"SUBSCRIBE".to_vec(),
            data: b"ns.kv".to_vec(),
        };
        assert_eq!(request(&cmd, true), Request::Subscribe(b"ns.kv"));
        let cancel_cmd = Frame::Command {
            name: b"CANCEL".to_vec(),
            data: b"ns.kv".to_vec(),
        };
        assert_eq!(request(&cancel_cmd, true), Request::Cancel(b"ns.kv"));
    }

    #[test]
    fn metadata_names_the_socket_type_case_insensitively() {
        let md = properties(&[("Identity", b""), ("socket-type", b"SUB")]);
        assert_eq!(property(&md, "Socket-Type").unwrap(), Some(&b"SUB"[..]));
        check_socket_type(&md).unwrap();
        let dealer = properties(&[("Socket-Type", b"DEALER")]);
        assert!(check_socket_type(&dealer).is_err());
        assert!(property(&md[..md.len() - 1], "Socket-Type").is_err());
    }

    #[test]
    fn greetings_check_version_and_mechanism() {
        let g = greeting("NULL", false);
        check_greeting(&g, "NULL").unwrap();
        assert!(check_greeting(&g, "CURVE").is_err());
        let mut old = g;
        old[10] = 2;
        assert!(check_greeting(&old, "NULL").is_err());
        let mut http = g;
        http[..10].copy_from_slice(b"GET / HTTP");
        assert!(check_greeting(&http, "NULL").is_err());
    }

    /// A ZMTP signature is 0xFF, 8 bytes of padding, then a byte whose low bit is set; each
    /// part is checked on its own, and a short one is refused rather than read past.
    /// (Catches: either `||` as `&&`, so one wrong part of two passes; the bit test as `|`
    /// or `^`; the length test turned, which reads past a short slice.)
    #[test]
    fn a_signature_needs_each_of_its_parts() {
        check_signature(&greeting("NULL", false)[..10]).unwrap();
        for (what, sig) in [
            (
                "the low bit of byte 9 clear",
                &[0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0][..],
            ),
            ("no 0xFF first (byte 9 odd)", &b"GET / HTTQ"[..]),
            ("5 bytes", &[0xFF; 5][..]),
        ] {
            assert!(check_signature(sig).is_err(), "{what} was taken for ZMTP");
        }
    }
}
