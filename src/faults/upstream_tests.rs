//! The scriptable upstream's modes and cuts, driven by a real client on loopback.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{ClientRequestBuilder, Message};

use super::{Cut, Mode, Upstream};
use crate::faults::testing::{
    Shake, client, handshake, recv, recv_data, send, wait_until, watchdog,
};

#[test]
fn echo_records_messages_headers_and_pings() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let request =
            ClientRequestBuilder::new(up.url().parse().unwrap()).with_header("X-Fixture", "yes");
        let mut ws = client(up.addr(), request);
        send(&mut ws, Message::text("hello"));
        assert_eq!(recv_data(&mut ws), Message::text("hello"));
        send(&mut ws, Message::binary(vec![1, 2, 3]));
        assert_eq!(recv_data(&mut ws), Message::binary(vec![1, 2, 3]));
        send(&mut ws, Message::Ping(b"p".to_vec().into()));
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], b"p"),
            other => panic!("expected a pong, got {other:?}"),
        }
        assert_eq!(up.pings(), 1);
        assert_eq!(up.handshakes(), 1);
        assert_eq!(up.connections(), 1);
        let got = up.received();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].data.as_slice(), got[0].text), (&b"hello"[..], true));
        assert_eq!(
            (got[1].data.as_slice(), got[1].text),
            (&[1u8, 2, 3][..], false)
        );
        assert_eq!(got[0].conn, got[1].conn);
        let headers = up.last_request_headers();
        assert!(headers.contains(&("x-fixture".to_string(), "yes".to_string())));
        drop(ws);
        wait_until("the connection to end", || up.connections() == 0);
    });
}

#[test]
fn reject_503_gives_http_503() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Reject(503));
        match handshake(up.addr(), up.url(), Duration::from_secs(5)) {
            Shake::Failed(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 503);
            }
            other => panic!("expected http 503, got {other:?}"),
        }
        assert_eq!(up.handshakes(), 0);
        assert!(!up.last_request_headers().is_empty());
    });
}

#[test]
fn silent_times_out_the_handshake() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Silent);
        match handshake(up.addr(), up.url(), Duration::from_millis(300)) {
            Shake::NoAnswer => {}
            other => panic!("expected no answer, got {other:?}"),
        }
        assert_eq!(up.handshakes(), 0);
        assert_eq!(up.connections(), 0);
    });
}

#[test]
fn garbage_fails_the_handshake() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Garbage);
        match handshake(up.addr(), up.url(), Duration::from_secs(5)) {
            Shake::Failed(e) => {
                assert!(!matches!(e, tungstenite::Error::Http(_)), "got {e}")
            }
            other => panic!("expected a failed handshake, got {other:?}"),
        }
    });
}

#[test]
fn freeze_stops_pongs_until_thawed() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let mut ws = client(up.addr(), up.url());
        send(&mut ws, Message::text("warm"));
        recv_data(&mut ws);
        up.set_mode(Mode::Freeze);
        send(&mut ws, Message::Ping(b"1".to_vec().into()));
        send(&mut ws, Message::text("lost?"));
        assert!(recv(&mut ws, Duration::from_millis(300)).is_none());
        assert_eq!(up.pings(), 0);
        // A new connection gets no handshake answer either.
        let fresh = handshake(up.addr(), up.url(), Duration::from_millis(200));
        assert!(matches!(fresh, Shake::NoAnswer), "got {fresh:?}");
        up.set_mode(Mode::Echo);
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Ok(Message::Pong(_))) => {}
            other => panic!("expected a pong after thawing, got {other:?}"),
        }
        assert_eq!(recv_data(&mut ws), Message::text("lost?"));
        assert_eq!(up.pings(), 1);
    });
}

#[test]
fn freeze_stalls_a_writer() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let mut ws = client(up.addr(), up.url());
        ws.get_mut()
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        up.set_mode(Mode::Freeze);
        let chunk = vec![0u8; 64 * 1024];
        let mut stalled = false;
        for _ in 0..1000 {
            match ws.send(Message::binary(chunk.clone())) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if crate::faults::timed_out(&e) => {
                    stalled = true;
                    break;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(stalled, "64 MiB went into a frozen upstream");
    });
}

#[test]
fn cut_close_1001_sends_the_code() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let mut ws = client(up.addr(), up.url());
        wait_until("the connection to open", || up.connections() == 1);
        up.cut(Cut::Close(1001));
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Err(tungstenite::Error::ConnectionClosed)) => {}
            other => panic!("expected the closing handshake to finish, got {other:?}"),
        }
        wait_until("the connection to end", || up.connections() == 0);
    });
}

#[test]
fn cut_reset_resets_the_client() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let mut ws = client(up.addr(), up.url());
        wait_until("the connection to open", || up.connections() == 1);
        up.cut(Cut::Reset);
        assert_eq!(up.connections(), 0);
        assert_reset(recv(&mut ws, Duration::from_secs(5)));
    });
}

#[test]
fn kill_refuses_and_restart_serves_on_the_same_port() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let addr = up.addr();
        let mut ws = client(addr, up.url());
        wait_until("the connection to open", || up.connections() == 1);
        up.kill();
        assert_reset(recv(&mut ws, Duration::from_secs(5)));
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The port stays reserved: another socket cannot bind it (one with
        // SO_REUSEADDR could, as it could share any bound, unlistened port).
        assert!(crate::faults::testing::port_taken(addr));
        up.restart().unwrap();
        assert_eq!(up.addr(), addr);
        let mut ws = client(addr, up.url());
        send(&mut ws, Message::text("again"));
        assert_eq!(recv_data(&mut ws), Message::text("again"));
        assert_eq!(up.handshakes(), 2);
    });
}

#[test]
fn oversize_sends_one_big_message_then_echoes() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Oversize(3 << 20));
        let mut ws = client(up.addr(), up.url());
        match recv_data(&mut ws) {
            Message::Binary(data) => assert_eq!(data.len(), 3 << 20),
            other => panic!("expected a binary message, got {other:?}"),
        }
        send(&mut ws, Message::text("small"));
        assert_eq!(recv_data(&mut ws), Message::text("small"));
    });
}

#[test]
fn drop_ends_connections_promptly() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let addr = up.addr();
        let mut frozen = client(addr, up.url());
        let _silent = crate::faults::testing::tcp(addr);
        wait_until("the connection to open", || up.connections() == 1);
        up.set_mode(Mode::Freeze);
        let started = Instant::now();
        drop(up);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            recv(&mut frozen, Duration::from_secs(5)),
            Some(Err(_))
        ));
        assert!(TcpStream::connect(addr).is_err());
    });
}

fn assert_reset(got: Option<tungstenite::Result<Message>>) {
    match got {
        Some(Err(tungstenite::Error::Io(e))) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset)
        }
        other => panic!("expected a connection reset, got {other:?}"),
    }
}
