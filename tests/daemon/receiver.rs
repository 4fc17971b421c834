//! A real HTTP server on loopback that records webhook POSTs and answers as told:
//! 200, a status for the next N requests, or not at all (a receiver that hangs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as Channel, Sender};
use parking_lot::Mutex;
use serde_json::Value;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Post {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// This status for the next `n` requests, then 200.
    Status(u16, u32),
    /// Never answer (the request is held until the receiver is dropped).
    Hang,
}

pub struct Receiver {
    pub url: String,
    posts: Channel<Post>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every POST taken so far.
    pub seen: Vec<Post>,
}

impl Receiver {
    pub fn start(answer: Answer) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let (tx, posts) = crossbeam_channel::unbounded();
        let answer = Arc::new(Mutex::new(answer));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(server, tx, answer, stop))
        };
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            posts,
            stop,
            thread: Some(thread),
            seen: Vec::new(),
        }
    }

    /// The next POST, within `within`.
    pub fn next(&mut self, within: Duration) -> Post {
        let post = self
            .posts
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no POST within {within:?}; before: {:#?}", self.seen));
        self.seen.push(post.clone());
        post
    }

    /// POSTs until one whose body's `key` is `value`, within `within`.
    pub fn until(&mut self, within: Duration, key: &str, value: &str) -> Post {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let post = self.next(left);
            if post.body[key] == value {
                return post;
            }
        }
    }

    /// Everything that arrives within `window` (the window is the measurement).
    pub fn drain_for(&mut self, window: Duration) -> Vec<Post> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(post) = self
            .posts
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(post.clone());
            got.push(post);
        }
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    server: tiny_http::Server,
    tx: Sender<Post>,
    answer: Arc<Mutex<Answer>>,
    stop: Arc<AtomicBool>,
) {
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        let mut body = String::new();
        let _ = request.as_reader().read_to_string(&mut body);
        let post = Post {
            path: request.url().to_string(),
            headers: request
                .headers()
                .iter()
                .map(|h| (h.field.to_string(), h.value.to_string()))
                .collect(),
            body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        };
        let _ = tx.send(post);
        let mut answer = answer.lock();
        match *answer {
            Answer::Ok => {
                let _ = request.respond(tiny_http::Response::empty(200));
            }
            Answer::Status(code, n) => {
                *answer = if n <= 1 {
                    Answer::Ok
                } else {
                    Answer::Status(code, n - 1)
                };
                let _ = request
                    .respond(tiny_http::Response::from_string("boom").with_status_code(code));
            }
            Answer::Hang => held.push(request),
        }
    }
}
