//! What a local client's session carries from one upstream connection to the next: the
//! messages to replay, the messages still owed to the upstream, and how the last heal
//! began. The worker serving the session fills it; when its connection dies the session
//! travels back to the monitor, waits in a [`room`](crate::room) if no connection is
//! idle, and the next worker drains it before forwarding anything new.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::time::Instant;

use tungstenite::{Message, WebSocket};

use crate::event::{Cause, ConnId};

/// A session's state across connections.
#[derive(Debug, Default)]
pub struct Carry {
    /// Client messages that matched the pool's `replay` patterns, oldest first, each
    /// once.
    pub replay: Vec<Message>,
    replay_bytes: usize,
    /// Replay messages dropped because the list outgrew `heal_buffer`, not yet logged.
    pub replay_dropped: usize,
    /// Messages owed to the upstream, in order: those the dead connection did not
    /// confirm (at-least-once), then those the client sent while the session healed.
    pub backlog: VecDeque<Message>,
    backlog_bytes: usize,
    /// Set while the session is between connections.
    pub healing: Option<Healing>,
    /// Heals so far.
    pub heals: u32,
}

/// How a heal began.
#[derive(Debug, Clone)]
pub struct Healing {
    /// When the old connection was declared dead.
    pub since: Instant,
    pub cause: Cause,
    /// The connection that died.
    pub from: ConnId,
    /// Its endpoint, to tell a failover from a heal onto the same endpoint.
    pub from_endpoint: String,
    /// Messages the dead connection had written but the upstream never acknowledged.
    pub unconfirmed: usize,
    /// Whether those were put back in the backlog (at-least-once) or given up.
    pub resent: bool,
    /// Messages the client sent while the session healed.
    pub buffered: usize,
}

impl Carry {
    /// Remember a client message if it matches a replay pattern. Exact repeats are kept
    /// once; past `limit` bytes the oldest entries are dropped (and counted).
    pub fn remember(&mut self, patterns: &[String], message: &Message, limit: usize) {
        if patterns.is_empty() || !matches(patterns, message) {
            return;
        }
        if self.replay.iter().any(|m| m == message) {
            return;
        }
        self.replay_bytes += message.len();
        self.replay.push(message.clone());
        while self.replay_bytes > limit && self.replay.len() > 1 {
            let old = self.replay.remove(0);
            self.replay_bytes -= old.len();
            self.replay_dropped += 1;
        }
    }

    /// Queue a message for the upstream. False when that would take the backlog past
    /// `limit` bytes; the message is then not queued.
    pub fn buffer(&mut self, message: Message, limit: usize) -> bool {
        if self.backlog_bytes + message.len() > limit && !self.backlog.is_empty() {
            return false;
        }
        self.backlog_bytes += message.len();
        self.backlog.push_back(message);
        true
    }

    /// Put messages owed to the upstream ahead of the backlog, in their order.
    pub fn owe_first(&mut self, messages: impl DoubleEndedIterator<Item = Message>) {
        for message in messages.rev() {
            self.backlog_bytes += message.len();
            self.backlog.push_front(message);
        }
    }

    /// Everything to write on a new connection, in order: the replay list (which stays
    /// remembered), then the backlog (which is emptied). Backlog messages equal to a
    /// replayed one are not sent twice.
    pub fn take_resend(&mut self) -> Vec<Message> {
        let mut out = self.replay.clone();
        self.backlog_bytes = 0;
        for message in self.backlog.drain(..) {
            if !self.replay.contains(&message) {
                out.push(message);
            }
        }
        out
    }

    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }
}

/// One read from a local client's non-blocking socket.
pub enum ClientRead {
    /// A text or binary message for the upstream.
    Data(Message),
    /// A control frame, already handled (tungstenite queues the pong for a ping).
    Control,
    /// Nothing more to read now.
    Idle,
    /// The session is over: the close code to log and send (1005 and 1006 send
    /// none), and why.
    Ended(u16, String),
}

/// Read one frame from a client and say what it means for the session.
pub fn read_client(ws: &mut WebSocket<TcpStream>) -> ClientRead {
    match ws.read() {
        Ok(message @ (Message::Text(_) | Message::Binary(_))) => ClientRead::Data(message),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => ClientRead::Control,
        Ok(Message::Close(frame)) => {
            let code = frame.map_or(1005, |f| u16::from(f.code));
            ClientRead::Ended(code, "the client closed the session".into())
        }
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => ClientRead::Idle,
        Err(tungstenite::Error::Capacity(e)) => {
            ClientRead::Ended(1009, format!("message too big: {e}"))
        }
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            ClientRead::Ended(1006, "the client went away".into())
        }
        Err(e) => ClientRead::Ended(1002, format!("client error: {e}")),
    }
}

/// Whether a message contains any of the patterns as a byte string.
pub fn matches(patterns: &[String], message: &Message) -> bool {
    let data: &[u8] = match message {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(data) => data,
        _ => return false,
    };
    patterns.iter().any(|p| contains(data, p.as_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|&b| b == first) {
        let start = from + at;
        if haystack.len() - start < needle.len() {
            return false;
        }
        if &haystack[start + 1..start + needle.len()] == rest {
            return true;
        }
        from = start + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    #[test]
    fn patterns_match_anywhere_in_text_and_binary() {
        let p = vec![r#""op":"subscribe""#.to_string()];
        assert!(matches(&p, &text(r#"{"op":"subscribe","ch":"btc"}"#)));
        assert!(matches(
            &p,
            &Message::binary(br#"xx"op":"subscribe"yy"#.to_vec())
        ));
        assert!(!matches(&p, &text(r#"{"op":"unsubscribe"}"#)));
        assert!(!matches(&p, &text(r#"{"op":"sub"#)));
        assert!(!matches(&p, &Message::Ping(vec![].into())));
        assert!(contains(b"aab", b"ab"));
        assert!(!contains(b"a", b"ab"));
    }

    #[test]
    fn replay_keeps_each_message_once_and_drops_the_oldest_past_the_limit() {
        let p = vec!["sub".to_string()];
        let mut carry = Carry::default();
        carry.remember(&p, &text("sub a"), 12);
        carry.remember(&p, &text("sub a"), 12);
        carry.remember(&p, &text("other"), 12);
        assert_eq!(carry.replay, vec![text("sub a")]);
        carry.remember(&p, &text("sub b"), 12);
        carry.remember(&p, &text("sub c"), 12);
        assert_eq!(carry.replay, vec![text("sub b"), text("sub c")]);
        assert_eq!(carry.replay_dropped, 1);
    }

    #[test]
    fn resend_is_replay_then_owed_then_buffered_without_repeats() {
        let p = vec!["sub".to_string()];
        let mut carry = Carry::default();
        carry.remember(&p, &text("sub a"), 1 << 20);
        assert!(carry.buffer(text("3"), 1 << 20));
        carry.owe_first([text("1"), text("sub a"), text("2")].into_iter());
        assert_eq!(
            carry.take_resend(),
            vec![text("sub a"), text("1"), text("2"), text("3")]
        );
        assert_eq!(carry.backlog_bytes(), 0);
        assert_eq!(carry.take_resend(), vec![text("sub a")], "replay stays");
    }

    #[test]
    fn the_buffer_refuses_what_would_pass_its_limit() {
        let mut carry = Carry::default();
        assert!(carry.buffer(text("12345"), 8));
        assert!(!carry.buffer(text("12345"), 8));
        assert_eq!(carry.backlog.len(), 1);
        // A single message larger than the limit is still taken into an empty buffer,
        // so one big message cannot wedge a session.
        let mut empty = Carry::default();
        assert!(empty.buffer(text("123456789"), 8));
    }
}
