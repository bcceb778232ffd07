//! The libzmq that ferry links can encrypt: it is built with libsodium (vendor/zmq-sys), so
//! CURVE works. Real sockets over TCP loopback, no ferry code: this guards the build, which
//! ZeroMQ encryption for the notifier, `ferry watch` and the test clients rely on.

use std::time::{Duration, Instant};

use zmq::{CurveKeyPair, Mechanism, Socket, SocketEvent};

const DEADLINE: Duration = Duration::from_secs(30);

/// libzmq reports CURVE and makes key pairs. (Catches: libzmq built without libsodium, as
/// upstream zmq-sys does: `zmq_has("curve")` is false and `zmq_curve_keypair` fails ENOTSUP.)
#[test]
fn libzmq_is_built_with_curve() {
    assert_eq!(
        zmq::has("curve"),
        Some(true),
        "libzmq was built without libsodium"
    );
    let a = CurveKeyPair::new().expect("libzmq cannot make CURVE key pairs");
    let b = CurveKeyPair::new().unwrap();
    assert_ne!(a.public_key, b.public_key, "two key pairs are the same");
    assert_ne!(a.secret_key, b.secret_key, "two key pairs are the same");
    assert_ne!(a.public_key, a.secret_key);
    // Key files hold the Z85 text form: 40 characters for 32 bytes.
    let text = zmq::z85_encode(&a.public_key).unwrap();
    assert_eq!(text.len(), 40);
    assert_eq!(zmq::z85_decode(&text).unwrap(), a.public_key);
}

/// A CURVE PUB delivers to a SUB that holds the server's public key, and to nobody else: a SUB
/// with another server key fails the handshake on a cryptographic check, a SUB without CURVE on
/// the mechanism, and neither receives what the trusted SUB receives. (Catches: libzmq without
/// CURVE, where the socket options are refused; a server that does not check the client's
/// HELLO box, where the impostor would receive.)
#[test]
fn only_a_subscriber_holding_the_server_key_receives() {
    let ctx = zmq::Context::new();
    let server = CurveKeyPair::new().unwrap();

    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.set_curve_server(true).unwrap();
    publisher.set_curve_secretkey(&server.secret_key).unwrap();
    // Handshake outcomes, watched before any peer exists so none is missed.
    let handshakes = SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
        | SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
        | SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
        | SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw();
    publisher
        .monitor("inproc://publisher-events", i32::from(handshakes))
        .unwrap();
    let events = ctx.socket(zmq::PAIR).unwrap();
    events.connect("inproc://publisher-events").unwrap();
    publisher.bind("tcp://127.0.0.1:0").unwrap();
    let endpoint = publisher.get_last_endpoint().unwrap().unwrap();

    let trusted = curve_subscriber(&ctx, &endpoint, &server.public_key);
    let wrong_key = curve_subscriber(&ctx, &endpoint, &CurveKeyPair::new().unwrap().public_key);
    let plain = ctx.socket(zmq::SUB).unwrap();
    plain.set_linger(0).unwrap();
    plain.set_subscribe(b"").unwrap();
    plain.connect(&endpoint).unwrap();
    assert_eq!(trusted.get_mechanism().unwrap(), Mechanism::ZMQ_CURVE);

    // The publisher accepts one handshake and refuses the two others, each for its reason.
    let want = [
        (SocketEvent::HANDSHAKE_SUCCEEDED, 0),
        (
            SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
            zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC,
        ),
        (
            SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
            zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
        ),
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !want.iter().all(|w| seen.contains(w)) {
        let event = next_event(&events, deadline);
        assert!(
            event.0 != SocketEvent::HANDSHAKE_SUCCEEDED || !seen.contains(&event),
            "a second handshake succeeded: only the trusted subscriber holds the server key"
        );
        seen.push(event);
    }

    // The trusted subscriber's subscription reaches the publisher some time after its
    // handshake; until then PUB drops, so publish until one arrives, then a last message.
    loop {
        publisher.send("tick", 0).unwrap();
        if trusted.poll(zmq::POLLIN, 50).unwrap() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trusted subscriber received nothing"
        );
    }
    publisher.send("last", 0).unwrap();
    trusted.set_rcvtimeo(100).unwrap();
    loop {
        match trusted.recv_bytes(0) {
            Ok(m) if m == b"last" => break,
            Ok(m) => assert_eq!(m, b"tick"),
            Err(zmq::Error::EAGAIN) => {}
            Err(e) => panic!("trusted subscriber: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the trusted subscriber missed the last message"
        );
    }

    // Everything sent reached the trusted subscriber, which the others would have had too.
    for (name, sub) in [("wrong server key", &wrong_key), ("no CURVE", &plain)] {
        assert_eq!(
            sub.recv_bytes(zmq::DONTWAIT),
            Err(zmq::Error::EAGAIN),
            "the subscriber with {name} received a message"
        );
    }
}

/// A SUB with its own fresh key pair that trusts `server_key`.
fn curve_subscriber(ctx: &zmq::Context, endpoint: &str, server_key: &[u8]) -> Socket {
    let keys = CurveKeyPair::new().unwrap();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_curve_serverkey(server_key).unwrap();
    sub.set_curve_publickey(&keys.public_key).unwrap();
    sub.set_curve_secretkey(&keys.secret_key).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(endpoint).unwrap();
    sub
}

/// The next monitor event (kind and value) from `events`, failing at `deadline`.
fn next_event(events: &Socket, deadline: Instant) -> (SocketEvent, u32) {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(
        events.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() > 0,
        "timed out waiting for the publisher's handshakes"
    );
    // Frame 1: event (u16) and value (u32), little-endian; frame 2: the peer's address.
    let frames = events.recv_multipart(0).unwrap();
    let raw = &frames[0];
    let event = SocketEvent::from_raw(u16::from_le_bytes([raw[0], raw[1]]));
    let value = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
    (event, value)
}
