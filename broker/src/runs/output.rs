//! What a server app process says: its output is logged as the SuperLink's own, and its last
//! lines explain a failure in the run's log.

use ops::app_process::Output;

/// Lines kept to explain a failure.
const KEPT_LINES: usize = 10;

/// Longest line quoted in the run's log, in characters.
const QUOTED_LINE: usize = 512;

/// A server app process's output: stderr logged, its last lines kept; stdout goes nowhere
/// (Flower's SuperLink sends a ServerApp's output to the run's log through the runtime API).
pub const SERVER_APP_OUTPUT: Output = Output {
    on_line: server_app_line,
    kept_lines: KEPT_LINES,
    stdout: false,
};

fn server_app_line(line: String) -> Option<String> {
    let line = wire::text::sanitize(&line, QUOTED_LINE);
    tracing::info!(target: "serverapp", "{line}");
    Some(line)
}

/// `; its last words: a | b`, or nothing if it said nothing.
pub fn quoted(last_words: &[String]) -> String {
    if last_words.is_empty() {
        String::new()
    } else {
        format!("; its last words: {}", last_words.join(" | "))
    }
}

/// The run-log line for a node's error reply, if `reply` is one: every kind of app's run log
/// says it, whatever the app does with the reply.
pub(crate) fn node_error_line(reply: &wire::Message) -> Option<String> {
    match &reply.body {
        wire::MessageBody::Error(error) => Some(format!(
            "node {} answered with an error ({}): {}",
            reply.metadata.src_node_id,
            error.code,
            wire::text::sanitize(&error.reason, 4096)
        )),
        wire::MessageBody::Content(_) => None,
    }
}
