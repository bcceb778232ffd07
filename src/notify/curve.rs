//! The server side of CurveZMQ (<https://rfc.zeromq.org/spec/26/>), ZeroMQ's CURVE security
//! mechanism: an X25519 key exchange with short-term keys, then every frame in a
//! `crypto_box` (XSalsa20-Poly1305) under them. Any ZeroMQ SUB built with CURVE connects to
//! it by setting the server's public key and a key pair of its own.
//!
//! The handshake, after greetings naming `CURVE` (the server's `as-server` set):
//! - client HELLO: its short-term public key C', and a box of 64 zeros to the server's
//!   long-term key S, which proves it knows S;
//! - server WELCOME: a box to C' holding the server's short-term key S' and a cookie;
//! - client INITIATE: the cookie back, and a box to S' holding the client's long-term key C, a
//!   "vouch" (a box from C to S' holding C' and S: C' belongs to C) and its metadata;
//! - server READY: a box to C' holding our metadata.
//!
//! Then every frame is a MESSAGE: an 8-byte nonce that must grow, and a box of a flags byte
//! and the frame's body. Nonces are the 8 bytes prefixed by a 16-byte string naming the
//! command and the direction, as libzmq 4.3's `curve_server.cpp` does.
//!
//! The cookie exists so that a server need keep no state between WELCOME and INITIATE; ours
//! keeps the connection's state anyway, so the cookie is random bytes it checks come back.

use std::collections::HashSet;
use std::path::Path;

use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::{Aead, OsRng};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::zmtp::{self, Frame, PeerError};

/// The server's long-term key pair, and the clients it lets in.
pub(crate) struct ServerKeys {
    secret: SecretKey,
    public: PublicKey,
    /// Long-term public keys of the clients allowed; `None`: any client that knows our public
    /// key (encryption without client authentication).
    clients: Option<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("public", &z85(self.public.as_bytes()))
            .field("clients", &self.clients.as_ref().map(HashSet::len))
            .finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// Reads the secret key (Z85, 40 characters, the one line that is not blank or a `#`
    /// comment) and, if given, the allowed clients' public keys (Z85, one per line).
    pub(crate) fn load(secret: &Path, clients: Option<&Path>) -> Result<ServerKeys, String> {
        let secret = read_secret(secret)?;
        let clients = match clients {
            None => None,
            Some(path) => Some(read_keys(path)?.into_iter().collect()),
        };
        Ok(ServerKeys {
            public: secret.public_key(),
            secret,
            clients,
        })
    }

    /// Our public key, in Z85: what clients set as their server key.
    pub(crate) fn public_z85(&self) -> String {
        z85(self.public.as_bytes())
    }
}

/// The one secret key in `path` (as `ferry curve-keypair` writes it).
fn read_secret(path: &Path) -> Result<SecretKey, String> {
    let keys = read_keys(path)?;
    let [key] = keys.as_slice() else {
        return Err(format!(
            "{}: expected one CURVE secret key (40 Z85 characters), found {}",
            path.display(),
            keys.len()
        ));
    };
    Ok(SecretKey::from_bytes(*key))
}

/// A subscriber's CURVE keys: the notifier's public key, and a key pair of its own.
#[derive(Clone)]
pub struct ClientKeys {
    pub(crate) server: [u8; 32],
    pub(crate) public: [u8; 32],
    pub(crate) secret: [u8; 32],
}

impl ClientKeys {
    /// Makes `socket` (a SUB, before it connects) a CURVE client with these keys.
    pub fn set_on(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(&self.server)?;
        socket.set_curve_publickey(&self.public)?;
        socket.set_curve_secretkey(&self.secret)
    }

    /// `server`: the notifier's public key in Z85 (the comment line of its key file);
    /// `secret`: a file holding this client's secret key, or `None` for a new key pair.
    pub fn new(server: &str, secret: Option<&Path>) -> Result<ClientKeys, String> {
        let server = decode_key(server.trim()).ok_or_else(|| {
            format!("the server key {server:?} is not a CURVE public key (40 Z85 characters)")
        })?;
        let secret = match secret {
            Some(path) => read_secret(path)?,
            None => SecretKey::generate(&mut OsRng),
        };
        Ok(ClientKeys {
            server,
            public: *secret.public_key().as_bytes(),
            secret: secret.to_bytes(),
        })
    }

    /// This client's public key in Z85: what a notifier's `curve_client_keys_file` lists.
    pub fn public_z85(&self) -> String {
        z85(&self.public)
    }
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("server", &z85(&self.server))
            .field("public", &self.public_z85())
            .finish_non_exhaustive()
    }
}

/// A 32-byte key from its Z85 text (40 characters), or `None`.
fn decode_key(z85: &str) -> Option<[u8; 32]> {
    zmq::z85_decode(z85).ok()?.try_into().ok()
}

/// Z85 of a 32-byte key.
pub(crate) fn z85(key: &[u8; 32]) -> String {
    zmq::z85_encode(key).expect("32 bytes is a multiple of 4")
}

/// A new key pair, in Z85: (public, secret).
pub fn keypair() -> (String, String) {
    let secret = SecretKey::generate(&mut OsRng);
    (z85(secret.public_key().as_bytes()), z85(&secret.to_bytes()))
}

/// The keys in `path`: Z85, one per line; blank lines and `#` comments skipped.
fn read_keys(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        // Z85 has '#', but never first: the first of 5 characters encodes at most
        // 2^32 / 85^4 < 83, and '#' is the 85th.
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = decode_key(line).ok_or_else(|| {
            format!(
                "{}:{}: not a CURVE key (40 Z85 characters)",
                path.display(),
                i + 1
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// The command flag in a MESSAGE's flags byte. Not ZMTP's frame bit (4): libzmq seals its own
/// message flags there (`msg_t::more` 1, `msg_t::command` 2), so a PING arrives as 2.
const SEALED_COMMAND: u8 = 0x02;

/// Seals what we send after the handshake: the box of the two short-term keys, and our
/// nonce.
pub(crate) struct Sealer {
    boxed: SalsaBox,
    /// Our next nonce (READY took 1).
    next: u64,
}

/// Opens what the client sends after the handshake.
pub(crate) struct Opener {
    boxed: SalsaBox,
    /// The last nonce the client used; each must be greater.
    peer: u64,
}

/// Nonce of 16 prefix bytes and an 8-byte counter.
fn short_nonce(prefix: &[u8; 16], n: &[u8]) -> crypto_box::Nonce {
    let mut nonce = [0u8; 24];
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(n);
    nonce.into()
}

/// Nonce of 8 prefix bytes and 16 bytes.
fn long_nonce(prefix: &[u8; 8], n: &[u8]) -> crypto_box::Nonce {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(n);
    nonce.into()
}

fn bad(what: &str) -> PeerError {
    PeerError::Protocol(format!("CURVE handshake failed: {what}"))
}

/// Reads one handshake command, which must be `name`; returns its data.
async fn expect(r: &mut TcpStream, name: &str, max: usize) -> Result<Vec<u8>, PeerError> {
    match zmtp::read_frame(r, max).await? {
        Frame::Command { name: got, data } if got == name.as_bytes() => Ok(data),
        _ => Err(bad(&format!("expected {name}"))),
    }
}

/// Runs the server's side of the handshake after the greetings; the client's metadata must
/// name a SUB or XSUB socket.
pub(crate) async fn handshake(
    r: &mut TcpStream,
    keys: &ServerKeys,
    max: usize,
) -> Result<(Sealer, Opener), PeerError> {
    // HELLO: version (2), padding (72), C' (32), short nonce (8), Box[64 zeros](C'->S) (80).
    let hello = expect(r, "HELLO", max).await?;
    if hello.len() != 194 || hello[..2] != [1, 0] {
        return Err(bad("a HELLO of another size or version than CurveZMQ 1.0"));
    }
    let client_short = PublicKey::from_slice(&hello[74..106]).expect("32 bytes");
    let opened = SalsaBox::new(&client_short, &keys.secret)
        .decrypt(
            &short_nonce(b"CurveZMQHELLO---", &hello[106..114]),
            &hello[114..194],
        )
        .map_err(|_| bad("cannot open HELLO: the client has another server key"))?;
    if opened != [0u8; 64] {
        return Err(bad("HELLO does not hold 64 zeros"));
    }

    // WELCOME: nonce (16), Box[S' + cookie nonce (16) + cookie (80)](S->C').
    let server_short = SecretKey::generate(&mut OsRng);
    let mut cookie = [0u8; 96];
    OsRng.fill_bytes(&mut cookie);
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let mut plain = server_short.public_key().as_bytes().to_vec();
    plain.extend_from_slice(&cookie);
    let sealed = SalsaBox::new(&client_short, &keys.secret)
        .encrypt(&long_nonce(b"WELCOME-", &nonce), plain.as_slice())
        .map_err(|_| bad("cannot seal WELCOME"))?;
    let mut welcome = nonce.to_vec();
    welcome.extend_from_slice(&sealed);
    r.write_all(&zmtp::command("WELCOME", &welcome)).await?;

    // INITIATE: cookie nonce (16), cookie (80), short nonce (8),
    // Box[C (32) + vouch nonce (16) + vouch (80) + metadata](C'->S').
    let initiate = expect(r, "INITIATE", max).await?;
    if initiate.len() < 104 + 16 + 128 {
        return Err(bad("INITIATE too short"));
    }
    if initiate[..96] != cookie {
        return Err(bad("INITIATE does not return our cookie"));
    }
    let boxed = SalsaBox::new(&client_short, &server_short);
    let peer = u64::from_be_bytes(initiate[96..104].try_into().expect("8 bytes"));
    let inner = boxed
        .decrypt(
            &short_nonce(b"CurveZMQINITIATE", &initiate[96..104]),
            &initiate[104..],
        )
        .map_err(|_| bad("cannot open INITIATE"))?;
    let client_long = PublicKey::from_slice(&inner[..32]).expect("32 bytes");
    let vouch = SalsaBox::new(&client_long, &server_short)
        .decrypt(&long_nonce(b"VOUCH---", &inner[32..48]), &inner[48..128])
        .map_err(|_| bad("cannot open the vouch: the client's keys do not match"))?;
    if vouch.len() != 64
        || vouch[..32] != client_short.as_bytes()[..]
        || vouch[32..] != keys.public.as_bytes()[..]
    {
        return Err(bad("the vouch is for other keys"));
    }
    if let Some(allowed) = &keys.clients
        && !allowed.contains(client_long.as_bytes())
    {
        let _ = r.write_all(&zmtp::command("ERROR", b"\x03400")).await;
        return Err(PeerError::Protocol(format!(
            "CURVE client key {} is not in curve_client_keys_file",
            z85(client_long.as_bytes())
        )));
    }
    zmtp::check_socket_type(&inner[128..])?;

    // READY: short nonce (8), Box[metadata](S'->C').
    let mut sealer = Sealer {
        boxed: SalsaBox::new(&client_short, &server_short),
        next: 1,
    };
    let n = sealer.take_nonce();
    let metadata = zmtp::properties(&[("Socket-Type", b"PUB")]);
    let sealed = sealer
        .boxed
        .encrypt(&short_nonce(b"CurveZMQREADY---", &n), metadata.as_slice())
        .map_err(|_| bad("cannot seal READY"))?;
    let mut ready = n.to_vec();
    ready.extend_from_slice(&sealed);
    r.write_all(&zmtp::command("READY", &ready)).await?;
    Ok((sealer, Opener { boxed, peer }))
}

impl Sealer {
    fn take_nonce(&mut self) -> [u8; 8] {
        let n = self.next;
        self.next += 1;
        n.to_be_bytes()
    }

    /// Appends one frame (`more`: more frames of this message follow; `command`: a command's
    /// body), sealed in a MESSAGE.
    pub(crate) fn seal(&mut self, out: &mut Vec<u8>, more: bool, command: bool, body: &[u8]) {
        let mut plain = Vec::with_capacity(1 + body.len());
        plain.push(u8::from(more) | if command { SEALED_COMMAND } else { 0 });
        plain.extend_from_slice(body);
        let n = self.take_nonce();
        let sealed = self
            .boxed
            .encrypt(&short_nonce(b"CurveZMQMESSAGES", &n), plain.as_slice())
            .expect("sealing cannot fail");
        let mut message = Vec::with_capacity(8 + 8 + sealed.len());
        message.extend_from_slice(b"\x07MESSAGE");
        message.extend_from_slice(&n);
        message.extend_from_slice(&sealed);
        // libzmq sends MESSAGE as a plain frame (no command flag) and reads either.
        zmtp::put_frame(out, false, false, &message);
    }
}

impl Opener {
    /// Opens a frame the client sent: a MESSAGE with a nonce greater than the last.
    pub(crate) fn open(&mut self, frame: Frame) -> Result<Frame, PeerError> {
        let data = match frame {
            Frame::Command { name, data } if name == b"MESSAGE" => data,
            Frame::Message { body, .. } if body.starts_with(b"\x07MESSAGE") => body[8..].to_vec(),
            _ => return Err(bad("a frame that is not a MESSAGE")),
        };
        if data.len() < 8 + 16 + 1 {
            return Err(bad("a MESSAGE too short"));
        }
        let n = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        if n <= self.peer {
            return Err(bad("a MESSAGE nonce that does not grow"));
        }
        self.peer = n;
        let plain = self
            .boxed
            .decrypt(&short_nonce(b"CurveZMQMESSAGEC", &data[..8]), &data[8..])
            .map_err(|_| bad("cannot open a MESSAGE"))?;
        let (&flags, body) = plain.split_first().ok_or_else(|| bad("an empty MESSAGE"))?;
        if flags & SEALED_COMMAND != 0 {
            let (&len, rest) = body.split_first().ok_or_else(|| bad("an empty command"))?;
            let len = usize::from(len);
            if rest.len() < len {
                return Err(bad("a command name longer than its frame"));
            }
            return Ok(Frame::Command {
                name: rest[..len].to_vec(),
                data: rest[len..].to_vec(),
            });
        }
        Ok(Frame::Message {
            more: flags & 0x01 != 0,
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file holds one Z85 key per line after `#` comments and blank lines; a wrong
    /// file is an error naming the file, the line and what is wrong. (Catches: comments read
    /// as keys, a second key silently ignored, a short key accepted.)
    #[test]
    fn key_files_skip_comments_and_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretKey::generate(&mut OsRng);
        let text = z85(&secret.to_bytes());
        let path = dir.path().join("notify.key");
        std::fs::write(&path, format!("# public key: x\n\n{text}\n")).unwrap();
        let keys = ServerKeys::load(&path, None).unwrap();
        assert_eq!(keys.public_z85(), z85(secret.public_key().as_bytes()));

        // Two keys where one is expected, a key of the wrong length, no file.
        std::fs::write(&path, format!("{text}\n{text}\n")).unwrap();
        let e = ServerKeys::load(&path, None).unwrap_err();
        assert!(
            e.contains("expected one CURVE secret key") && e.contains("found 2"),
            "{e}"
        );
        std::fs::write(&path, "tooshort\n").unwrap();
        let e = ServerKeys::load(&path, None).unwrap_err();
        assert!(e.contains("notify.key:1: not a CURVE key"), "{e}");
        let e = ServerKeys::load(&dir.path().join("missing"), None).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
    }

    /// A CurveZMQ nonce, prefix then counter, built here rather than with the server's own
    /// helpers, so that a mistake in those shows.
    fn nonce(prefix: &[u8], n: &[u8]) -> crypto_box::Nonce {
        let bytes = [prefix, n].concat();
        <[u8; 24]>::try_from(bytes.as_slice())
            .expect("24 bytes")
            .into()
    }

    /// What a hand-built client gets wrong in [`attempt`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Wrong {
        Nothing,
        /// A HELLO one byte short.
        HelloSize,
        /// A HELLO's content under another command's name.
        NotHello,
        /// A vouch naming another short-term key (C'), with the right server key.
        VouchShortKey,
        /// A vouch naming another server key (S), with the right short-term key.
        VouchServerKey,
        /// An INITIATE whose box opens but holds less than a long-term key and a vouch (128
        /// bytes): 100, so a length check off by less than 28 bytes (`104 - 16 + 128`) lets it
        /// through to the slicing of the vouch.
        ShortInitiate,
        /// A client whose long-term key is not in the allow-list.
        NotAllowed,
    }

    /// Runs our server's handshake on a loopback connection against a client built here from
    /// the CurveZMQ spec, which gets `wrong` wrong; returns the server's outcome. A panic in
    /// the server's handshake fails the caller.
    async fn attempt(wrong: Wrong) -> Result<(), String> {
        let limit = std::time::Duration::from_secs(30);
        tokio::time::timeout(limit, attempt_once(wrong))
            .await
            .unwrap_or_else(|_| panic!("{wrong:?}: no outcome within 30 s"))
    }

    async fn attempt_once(wrong: Wrong) -> Result<(), String> {
        let server_long = SecretKey::generate(&mut OsRng);
        let server_public = server_long.public_key();
        let (long, short) = (
            SecretKey::generate(&mut OsRng),
            SecretKey::generate(&mut OsRng),
        );
        // The allow-list holds this client, or only another one.
        let allowed = match wrong {
            Wrong::NotAllowed => SecretKey::generate(&mut OsRng).public_key(),
            _ => long.public_key(),
        };
        let keys = ServerKeys {
            public: server_public.clone(),
            secret: server_long,
            clients: Some(HashSet::from([*allowed.as_bytes()])),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut sealer, mut opener) = handshake(&mut s, &keys, 1 << 16)
                .await
                .map_err(|e| e.to_string())?;
            // After it: one sealed frame to the client, then what the client sends opened in
            // turn (the client's side below says what each frame is).
            let mut out = Vec::new();
            sealer.seal(&mut out, true, false, b"ns.kv");
            s.write_all(&out).await.unwrap();
            let message = |body: &[u8]| {
                Ok(Frame::Message {
                    more: false,
                    body: body.to_vec(),
                })
            };
            let want: [Result<Frame, &str>; 8] = [
                message(b"\x01ns"),
                message(b""),
                Ok(Frame::Command {
                    name: b"SUBSCRIBE".to_vec(),
                    data: Vec::new(),
                }),
                Err("a command name longer than its frame"),
                Err("a MESSAGE too short"),
                Err("a frame that is not a MESSAGE"),
                Err("a frame that is not a MESSAGE"),
                Err("a MESSAGE nonce that does not grow"),
            ];
            for (i, want) in want.into_iter().enumerate() {
                let frame = zmtp::read_frame(&mut s, 1 << 16).await.unwrap();
                match (opener.open(frame), want) {
                    (Ok(got), Ok(want)) => assert_eq!(got, want, "frame {i}"),
                    (Err(e), Err(says)) => assert!(e.to_string().contains(says), "frame {i}: {e}"),
                    (got, want) => panic!("frame {i}: {got:?}, expected {want:?}"),
                }
            }
            Ok(())
        });
        let mut c = TcpStream::connect(addr).await.unwrap();

        let mut hello = vec![1, 0];
        hello.extend_from_slice(&[0; 72]);
        hello.extend_from_slice(short.public_key().as_bytes());
        let n = 1u64.to_be_bytes();
        hello.extend_from_slice(&n);
        let zeros = SalsaBox::new(&server_public, &short)
            .encrypt(&nonce(b"CurveZMQHELLO---", &n), &[0u8; 64][..])
            .unwrap();
        hello.extend_from_slice(&zeros);
        if wrong == Wrong::HelloSize {
            hello.pop();
        }
        let name = if wrong == Wrong::NotHello {
            "INITIATE"
        } else {
            "HELLO"
        };
        c.write_all(&zmtp::command(name, &hello)).await.unwrap();

        if let Ok(Frame::Command { name, data }) = zmtp::read_frame(&mut c, 1 << 16).await
            && name == b"WELCOME"
        {
            let plain = SalsaBox::new(&server_public, &short)
                .decrypt(&nonce(b"WELCOME-", &data[..16]), &data[16..])
                .unwrap();
            let server_short = PublicKey::from_slice(&plain[..32]).unwrap();
            let mut vouch = short.public_key().as_bytes().to_vec();
            vouch.extend_from_slice(server_public.as_bytes());
            match wrong {
                Wrong::VouchShortKey => vouch[0] ^= 1,
                Wrong::VouchServerKey => vouch[63] ^= 1,
                _ => {}
            }
            let vouch_nonce = [7u8; 16];
            let mut inner = long.public_key().as_bytes().to_vec();
            inner.extend_from_slice(&vouch_nonce);
            let vouch = SalsaBox::new(&server_short, &long)
                .encrypt(&nonce(b"VOUCH---", &vouch_nonce), vouch.as_slice())
                .unwrap();
            inner.extend_from_slice(&vouch);
            inner.extend_from_slice(&zmtp::properties(&[("Socket-Type", b"SUB")]));
            if wrong == Wrong::ShortInitiate {
                inner.truncate(100);
            }
            let mut initiate = plain[32..].to_vec(); // the cookie, as it came
            initiate.extend_from_slice(&n);
            let boxed = SalsaBox::new(&server_short, &short);
            let sealed = boxed
                .encrypt(&nonce(b"CurveZMQINITIATE", &n), inner.as_slice())
                .unwrap();
            initiate.extend_from_slice(&sealed);
            c.write_all(&zmtp::command("INITIATE", &initiate))
                .await
                .unwrap();
            if wrong == Wrong::Nothing {
                // READY opens with the short-term keys and names a PUB socket.
                let Frame::Command { name, data } =
                    zmtp::read_frame(&mut c, 1 << 16).await.unwrap()
                else {
                    panic!("READY is a command");
                };
                assert_eq!(name, b"READY");
                let metadata = boxed
                    .decrypt(&nonce(b"CurveZMQREADY---", &data[..8]), &data[8..])
                    .unwrap();
                assert_eq!(
                    zmtp::property(&metadata, "Socket-Type").unwrap(),
                    Some(&b"PUB"[..])
                );
                // The server's first MESSAGE: nonce 2 (READY took 1), the MORE flag, the body.
                let Frame::Message { body, .. } = zmtp::read_frame(&mut c, 1 << 16).await.unwrap()
                else {
                    panic!("MESSAGE is sent as a plain frame");
                };
                assert_eq!(
                    (&body[..8], &body[8..16]),
                    (&b"\x07MESSAGE"[..], &2u64.to_be_bytes()[..])
                );
                let plain = boxed
                    .decrypt(&nonce(b"CurveZMQMESSAGES", &body[8..16]), &body[16..])
                    .unwrap();
                assert_eq!(plain, b"\x01ns.kv");
                // Ours, each with the next nonce but the last: nonce and box of `plain`.
                let sealed = |n: u64, plain: &[u8]| {
                    let mut data = n.to_be_bytes().to_vec();
                    let at = nonce(b"CurveZMQMESSAGEC", &n.to_be_bytes());
                    data.extend_from_slice(&boxed.encrypt(&at, plain).unwrap());
                    data
                };
                let plain_frame = |body: &[u8]| {
                    let mut out = Vec::new();
                    zmtp::put_frame(&mut out, false, false, body);
                    out
                };
                let as_frame = |data: Vec<u8>| plain_frame(&[&b"\x07MESSAGE"[..], &data].concat());
                let frames = [
                    // a subscription to "ns", as libzmq sends it: a plain frame
                    as_frame(sealed(2, b"\x00\x01ns")),
                    // an empty frame (the smallest MESSAGE), as a MESSAGE command
                    zmtp::command("MESSAGE", &sealed(3, b"\x00")),
                    // a sealed command of only a name: ZMTP 3.1's SUBSCRIBE to everything
                    as_frame(sealed(4, b"\x02\x09SUBSCRIBE")),
                    // a sealed command whose name is longer than the frame
                    as_frame(sealed(5, b"\x02\xc8abc")),
                    // a box of nothing, not even the flags byte (one byte short)
                    as_frame(sealed(6, b"")),
                    // a plain frame, and a plain command, where a MESSAGE is due
                    plain_frame(b"hello"),
                    zmtp::command("PING", b"\x00\x01"),
                    // a nonce used before
                    as_frame(sealed(4, b"\x00\x01ns")),
                ];
                for frame in frames {
                    c.write_all(&frame).await.unwrap();
                }
            }
        }
        server.await.unwrap()
    }

    /// The server lets in a client whose vouch binds its short-term key to this server, then
    /// seals a MESSAGE and opens the client's in either frame form, sealed commands too. It
    /// refuses, with a reason and without panicking: a vouch for another short-term key or
    /// another server; a HELLO of another size or under another name; an INITIATE too short
    /// to hold a key and a vouch; a client not in the allow-list; a MESSAGE too short, one
    /// that is not a MESSAGE, a nonce used twice. The client builds its own nonces, so the
    /// server's nonce helpers are checked too. (Catches: the vouch check's `||` as `&&`,
    /// which lets a client present someone else's vouch; a size check removed, which reaches
    /// the slicing after it and panics; `expect` taking any command; the allow-list check
    /// inverted; `Opener`'s checks, each bound moved or removed.)
    #[tokio::test]
    async fn the_handshake_checks_the_vouch_and_the_size_of_each_command() {
        assert_eq!(attempt(Wrong::Nothing).await, Ok(()));
        for (wrong, says) in [
            (Wrong::VouchShortKey, "the vouch is for other keys"),
            (Wrong::VouchServerKey, "the vouch is for other keys"),
            (Wrong::HelloSize, "a HELLO of another size"),
            (Wrong::NotHello, "expected HELLO"),
            (Wrong::ShortInitiate, "INITIATE too short"),
            (Wrong::NotAllowed, "is not in curve_client_keys_file"),
        ] {
            let e = attempt(wrong).await.unwrap_err();
            assert!(e.contains(says), "{wrong:?}: {e}");
        }
    }

    /// `ferry curve-keypair`'s output is a secret key file as it stands, and its comment names
    /// the public key of that secret. (Catches: printing a public key of another pair.)
    #[test]
    fn a_generated_keypair_file_loads_and_names_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = keypair();
        let path = dir.path().join("notify.key");
        std::fs::write(&path, format!("# public key: {public}\n{secret}\n")).unwrap();
        assert_eq!(ServerKeys::load(&path, None).unwrap().public_z85(), public);
    }
}
