//! The relay's faults, each against a real echo server on loopback.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::Message;

use super::{Fault, Relay};
use crate::faults::Upstream;
use crate::faults::testing::{Client, client, recv, recv_data, send, wait_until, watchdog};

fn pair() -> (Upstream, Relay) {
    let up = Upstream::start().unwrap();
    let relay = Relay::start(up.addr()).unwrap();
    (up, relay)
}

fn echoes(ws: &mut Client, text: &str) {
    send(ws, Message::text(text));
    assert_eq!(recv_data(ws), Message::text(text));
}

#[test]
fn pass_relays_echo() {
    watchdog(|| {
        let (up, relay) = pair();
        assert_eq!(relay.url("/x"), format!("ws://{}/x", relay.addr()));
        let mut ws = client(relay.addr(), relay.url("/"));
        echoes(&mut ws, "through");
        assert_eq!(relay.connections(), 1);
        assert_eq!(up.connections(), 1);
        ws.close(None).unwrap();
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Ok(Message::Close(_))) => {}
            other => panic!("expected the close reply, got {other:?}"),
        }
        drop(ws);
        wait_until("the relayed connection to end", || {
            relay.connections() == 0 && up.connections() == 0
        });
    });
}

#[test]
fn blackhole_swallows_both_ways() {
    watchdog(|| {
        let (up, relay) = pair();
        let mut ws = client(relay.addr(), relay.url("/"));
        echoes(&mut ws, "before");
        relay.set(Fault::Blackhole);
        send(&mut ws, Message::text("into the hole"));
        send(&mut ws, Message::Ping(b"hb".to_vec().into()));
        assert!(recv(&mut ws, Duration::from_millis(300)).is_none());
        assert_eq!(up.received().len(), 1);
        assert_eq!(up.pings(), 0);
        drop(ws);
        wait_until("a closed link to end", || relay.connections() == 0);
    });
}

#[test]
fn stall_stops_replies_and_pass_resumes() {
    watchdog(|| {
        let (up, relay) = pair();
        let mut ws = client(relay.addr(), relay.url("/"));
        echoes(&mut ws, "before");
        relay.set(Fault::Stall);
        send(&mut ws, Message::text("held"));
        assert!(recv(&mut ws, Duration::from_millis(300)).is_none());
        assert_eq!(up.received().len(), 1);
        relay.set(Fault::Pass);
        assert_eq!(recv_data(&mut ws), Message::text("held"));
    });
}

#[test]
fn stall_blocks_a_writer() {
    watchdog(|| {
        let (_up, relay) = pair();
        let mut ws = client(relay.addr(), relay.url("/"));
        ws.get_mut()
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        relay.set(Fault::Stall);
        let mut stalled = false;
        for _ in 0..1000 {
            match ws.send(Message::binary(vec![0u8; 64 * 1024])) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if crate::faults::timed_out(&e) => {
                    stalled = true;
                    break;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(stalled, "64 MiB went through a stalled relay");
    });
}

#[test]
fn delay_holds_each_chunk() {
    watchdog(|| {
        let (_up, relay) = pair();
        let mut ws = client(relay.addr(), relay.url("/"));
        relay.set(Fault::Delay(Duration::from_millis(150)));
        let started = Instant::now();
        echoes(&mut ws, "slow");
        // One delay each way.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "took {took:?}");
        relay.set(Fault::Pass);
        echoes(&mut ws, "fast again");
    });
}

#[test]
fn reset_resets_open_connections_and_passes_new_ones() {
    watchdog(|| {
        let (up, relay) = pair();
        let mut ws = client(relay.addr(), relay.url("/"));
        echoes(&mut ws, "before");
        relay.set(Fault::Reset);
        assert_eq!(relay.connections(), 0);
        match recv(&mut ws, Duration::from_secs(5)) {
            Some(Err(tungstenite::Error::Io(e))) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionReset)
            }
            other => panic!("expected a connection reset, got {other:?}"),
        }
        wait_until("the upstream to see the reset", || up.connections() == 0);
        assert_eq!(relay.fault(), Fault::Pass);
        let mut ws = client(relay.addr(), relay.url("/"));
        echoes(&mut ws, "after");
    });
}

#[test]
fn refuse_refuses_and_pass_relistens() {
    watchdog(|| {
        let (_up, relay) = pair();
        let addr = relay.addr();
        let mut open = client(addr, relay.url("/"));
        relay.set(Fault::Refuse);
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        // The port stays reserved: another socket cannot bind it (one with
        // SO_REUSEADDR could, as it could share any bound, unlistened port).
        assert!(crate::faults::testing::port_taken(addr));
        echoes(&mut open, "still open");
        relay.set(Fault::Pass);
        let mut ws = client(addr, relay.url("/"));
        echoes(&mut ws, "back");
    });
}

#[test]
fn dead_target_resets_the_client() {
    watchdog(|| {
        let relay = Relay::start(([127, 0, 0, 1], crate::faults::unused_port()).into()).unwrap();
        let mut stream = crate::faults::testing::tcp(relay.addr());
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match std::io::Read::read(&mut stream, &mut buf) {
                Err(e) if crate::faults::timed_out(&e) && Instant::now() < deadline => {}
                other => break other,
            }
        };
        assert_eq!(err.unwrap_err().kind(), ErrorKind::ConnectionReset);
        wait_until("the link to end", || relay.connections() == 0);
    });
}
