//! Server-sent events that keep a page live: `main` carries the page's new `<main>` fragment
//! whenever it changes (checked every [`TICK`]), `log` a run's new log lines (a JSON array of
//! strings, with the next line's index as the event id, so a reconnecting browser goes on where
//! it stopped), and `end` says a finished run has nothing more to send.
//!
//! Bounds: [`MAX_STREAMS`] at once and [`MAX_STREAMS_PER_SOURCE`] from one address (a refused
//! stream gets 429), each at most [`MAX_AGE`] long (the browser reconnects), a comment every
//! [`KEEPALIVE`] so that a gone client is noticed, and a client that stops reading for
//! [`SEND_TIMEOUT`] is dropped; what is queued for one stream is a few events.

use super::Dashboard;
use super::server::{self, Body, View};
use crate::state::Shared;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a stream looks for changes.
pub const TICK: Duration = Duration::from_secs(1);

/// Most streams open at once.
pub const MAX_STREAMS: usize = 64;

/// Most streams from one address.
pub const MAX_STREAMS_PER_SOURCE: usize = 6;

/// How long one stream lasts before the browser is made to reconnect.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// How often a quiet stream sends a comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long an event may wait for a client that does not read.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most log bytes one `log` event carries.
const LOG_EVENT_BYTES: usize = 256 << 10;

/// The streams' allowances.
#[derive(Clone)]
pub struct Streams {
    total: Arc<tokio::sync::Semaphore>,
    sources: Arc<ops::http::Sources>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            total: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            sources: ops::http::Sources::new(MAX_STREAMS_PER_SOURCE),
        }
    }
}

/// What a stream reads from (and a request is answered with).
#[derive(Clone)]
pub struct Source {
    pub(super) shared: Arc<Shared>,
    pub(super) dashboard: Arc<Dashboard>,
    pub(super) streams: Streams,
    pub(super) peer: SocketAddr,
    pub(super) shutdown: CancellationToken,
}

/// One event in the wire format: each line of `data` on a `data:` line. A line ends at CR LF, LF
/// or a bare CR, as event-stream parsers end it: text holding a CR cannot start a field of its
/// own (`id:`, `retry:`, `event:`).
fn event(name: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Opens `view`'s stream; a run's log goes on from line `resume`.
pub fn open(source: Source, view: View, resume: Option<u64>) -> Response<Body> {
    let Some(slot) = source.streams.sources.claim(source.peer.ip()) else {
        return server::respond(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain; charset=utf-8",
            "too many event streams from this address\n",
        );
    };
    let Ok(permit) = source.streams.total.clone().try_acquire_owned() else {
        return server::respond(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain; charset=utf-8",
            "too many event streams\n",
        );
    };
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let _held = (slot, permit);
        feed(source, view, resume, sender).await;
    });
    let mut response = server::respond(StatusCode::OK, "text/event-stream", Bytes::new());
    *response.body_mut() = ops::http::ChannelBody(receiver).boxed();
    response
}

/// Sends `bytes`, or says the stream is over (the client left or stopped reading).
async fn send(sender: &mpsc::Sender<Bytes>, bytes: Bytes) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sender.send(bytes)).await,
        Ok(Ok(()))
    )
}

async fn feed(source: Source, view: View, resume: Option<u64>, sender: mpsc::Sender<Bytes>) {
    let opened = Instant::now();
    let mut last_main = String::new();
    let mut last_sent = Instant::now();
    let mut next_line = resume.unwrap_or(0);
    // The first tick sends the fragment at once: the page may have changed since it was
    // rendered.
    let mut tick = tokio::time::interval(TICK);
    while opened.elapsed() < MAX_AGE {
        tokio::select! {
            _ = source.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (shared, dashboard) = (source.shared.clone(), source.dashboard.clone());
        let read = tokio::task::spawn_blocking(move || {
            // Streams of one view share a fragment made within half a tick.
            let fragment = match dashboard.recent_fragment(view, TICK / 2) {
                Some(fragment) => fragment,
                None => {
                    let snapshot = server::snapshot(&shared, &dashboard, view)?;
                    let fragment = super::Fragment {
                        made: Instant::now(),
                        main: Arc::new(server::main_fragment(&dashboard, view, &snapshot)),
                        finished: snapshot
                            .run
                            .as_ref()
                            .is_some_and(|run| run.run.status.is_finished()),
                    };
                    dashboard.keep_fragment(view, fragment.clone());
                    fragment
                }
            };
            let log = match view {
                View::Run(id) => Some(shared.store.logs_page(id, next_line, LOG_EVENT_BYTES)?),
                _ => None,
            };
            Ok::<_, server::Failure>((fragment, log))
        })
        .await;
        let Ok(Ok((fragment, log))) = read else {
            return;
        };
        let finished = fragment.finished;
        if *fragment.main != last_main {
            if !send(&sender, event("main", None, &fragment.main)).await {
                return;
            }
            last_main = fragment.main.to_string();
            last_sent = Instant::now();
        }
        let mut more = false;
        if let Some((lines, more_follow)) = log {
            more = more_follow;
            if let Some(last) = lines.last() {
                next_line = last.index + 1;
                let texts: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
                let data = serde_json::to_string(&texts).unwrap_or_default();
                if !send(&sender, event("log", Some(next_line), &data)).await {
                    return;
                }
                last_sent = Instant::now();
            }
        }
        if finished && !more {
            let _ = send(&sender, event("end", None, "")).await;
            return;
        }
        if last_sent.elapsed() >= KEEPALIVE {
            if !send(&sender, Bytes::from_static(b": keep-alive\n\n")).await {
                return;
            }
            last_sent = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_an_event_is_a_data_line() {
        let bytes = event("main", Some(7), "<p>a</p>\n<p>b</p>\r\nc\rid: 9");
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "id: 7\nevent: main\ndata: <p>a</p>\ndata: <p>b</p>\ndata: c\ndata: id: 9\n\n"
        );
    }
}
