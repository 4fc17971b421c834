//! Local clients through the bridge: frames both ways, routing (404), client tokens
//! (401), the lease timeout (1013), oversized messages (1009), and a client that
//! leaves.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};
use wspoold::faults::Upstream;

use crate::util::{config, start, wait_until, watchdog};

const SOON: Duration = Duration::from_secs(5);

/// Open a WebSocket to the daemon's bridge at `path`, with an optional bearer token.
pub fn dial(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
        })
}

/// The next data message (pings and pongs skipped).
pub fn next_data(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        let message = ws.read().expect("a message");
        if matches!(
            message,
            Message::Text(_) | Message::Binary(_) | Message::Close(_)
        ) {
            return message;
        }
    }
}

pub fn close_code(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

fn http_status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[test]
fn frames_pass_both_ways_through_a_warm_connection() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], "min = 1\nspare = 1"));
        d.wait_healthy(1, SOON);
        // The daemon may finish its handshake before the fixture has counted its own.
        wait_until(
            SOON,
            || format!("{} handshakes counted", up.handshakes()),
            || up.handshakes() >= 1,
        );
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let warm = up.handshakes();
        let mut ws = dial(addr, "/p", None).unwrap();
        ws.send(Message::text("hello")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("hello"));
        let blob = vec![7u8; 100_000];
        ws.send(Message::binary(blob.clone())).unwrap();
        assert_eq!(next_data(&mut ws), Message::binary(blob));
        // The client rode a connection that was already up (the fixture numbers its
        // connections from 1 in accept order); the spare refill came after.
        let hello = up
            .received()
            .into_iter()
            .find(|r| r.data == b"hello")
            .expect("the upstream got hello");
        assert!(
            hello.conn <= warm,
            "hello arrived on connection {} of {warm}",
            hello.conn
        );
        d.wait_notice(SOON, "attached to connection");
    });
}

#[test]
fn unknown_path_is_refused_with_404_and_missing_or_wrong_token_with_401() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], "min = 1\nclient_token = \"s3cret\""));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        assert_eq!(http_status(dial(addr, "/nowhere", None).unwrap_err()), 404);
        assert_eq!(http_status(dial(addr, "/p", None).unwrap_err()), 401);
        assert_eq!(
            http_status(dial(addr, "/p", Some("guess")).unwrap_err()),
            401
        );
        let mut ws = dial(addr, "/p", Some("s3cret")).unwrap();
        ws.send(Message::text("in")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("in"));
    });
}

#[test]
fn client_beyond_max_waits_lease_timeout_then_gets_1013() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(
            &[up.url()],
            "min = 1\nmax = 1\nspare = 0\nlease_timeout = \"300ms\"",
        ));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut first = dial(addr, "/p", None).unwrap();
        first.send(Message::text("one")).unwrap();
        assert_eq!(next_data(&mut first), Message::text("one"));
        let mut second = dial(addr, "/p", None).unwrap();
        assert_eq!(close_code(&mut second), 1013);
        d.wait_notice(SOON, "refused with 1013");
        // The first session was not disturbed.
        first.send(Message::text("still here")).unwrap();
        assert_eq!(next_data(&mut first), Message::text("still here"));
    });
}

#[test]
fn the_pool_grows_for_clients_and_keeps_a_spare() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], "min = 1\nmax = 8\nspare = 1"));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut clients: Vec<_> = (0..3).map(|_| dial(addr, "/p", None).unwrap()).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("c{i}"))).unwrap();
            assert_eq!(next_data(ws), Message::text(format!("c{i}")));
        }
        // Three leased plus one spare.
        d.wait_healthy(4, SOON);
    });
}

#[test]
fn oversized_client_message_is_closed_with_1009() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], "min = 1\nmax_message_size = \"4KiB\""));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut ws = dial(addr, "/p", None).unwrap();
        ws.send(Message::binary(vec![0u8; 8 * 1024])).unwrap();
        assert_eq!(close_code(&mut ws), 1009);
        d.wait_notice(SOON, "ended (1009)");
    });
}

#[test]
fn a_client_that_leaves_takes_its_connection_and_the_pool_refills() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], "min = 2\nspare = 0"));
        d.wait_healthy(2, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut ws = dial(addr, "/p", None).unwrap();
        ws.send(Message::text("x")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("x"));
        let before = up.handshakes();
        ws.close(None).unwrap();
        d.wait_notice(SOON, "the client closed the session");
        wait_until(
            SOON,
            || format!("a replacement handshake, have {}", up.handshakes()),
            || up.handshakes() > before,
        );
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn with_reuse_the_next_client_rides_the_same_upstream_connection() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(
            &[up.url()],
            "min = 1\nmax = 1\nspare = 0\nreuse = true",
        ));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut first = dial(addr, "/p", None).unwrap();
        first.send(Message::text("first")).unwrap();
        assert_eq!(next_data(&mut first), Message::text("first"));
        first.close(None).unwrap();
        d.wait_notice(SOON, "kept for the next client");
        let mut second = dial(addr, "/p", None).unwrap();
        second.send(Message::text("second")).unwrap();
        assert_eq!(next_data(&mut second), Message::text("second"));
        let got = up.received();
        let conn_of = |data: &[u8]| got.iter().find(|r| r.data == data).unwrap().conn;
        assert_eq!(
            conn_of(b"first"),
            conn_of(b"second"),
            "one upstream connection"
        );
        assert_eq!(up.handshakes(), 1, "no new handshake");
    });
}

#[test]
fn the_pool_grows_with_clients_and_shrinks_back_after_idle_timeout() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(
            &[up.url()],
            "min = 1\nmax = 8\nspare = 1\nidle_timeout = \"500ms\"\nreuse = true",
        ));
        d.wait_healthy(1, SOON);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut clients: Vec<_> = (0..4).map(|_| dial(addr, "/p", None).unwrap()).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("c{i}"))).unwrap();
            assert_eq!(next_data(ws), Message::text(format!("c{i}")));
        }
        d.wait_healthy(5, SOON);
        for mut ws in clients {
            ws.close(None).unwrap();
        }
        d.wait_notice(SOON, "load fell from 5 to 1");
        wait_until(
            SOON,
            || format!("back to one idle connection, have {}", up.connections()),
            || up.connections() == 1,
        );
    });
}
