//! The dashboard's HTML, rendered on the server. Every text a node, an app or an operator wrote
//! (log lines, failure reasons, names, config values) goes through [`escape`]; the charts are
//! drawn from numbers by the same code as a run's `metrics.svg`. Each page is a shell around a
//! `<main>` fragment that the page's event stream replaces as the federation changes.

use super::history::SAMPLES;
use serde_json::Value;
use std::fmt::Write as _;
use wire::control::{LogLine, NodeInfo, NodeStatus, RunInfo, RunStatus};
use wire::control_json::{elapsed, run_elapsed, timestamp};

/// Most log lines a run's page starts with (the newest); the whole log is in its JSON.
pub const MAX_LOG_LINES: usize = 2000;

/// Most bytes of log text a run's page starts with.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// Most runs the overview lists (the newest).
const OVERVIEW_RUNS: usize = 10;

/// Most runs the runs page lists (the newest); its JSON has them all.
pub const MAX_RUNS_SHOWN: usize = 500;

/// `text` with HTML's special characters escaped, for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Which navigation entry a page is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/`.
    Overview,
    /// `/nodes`.
    Nodes,
    /// `/runs` and one run's page.
    Runs,
}

/// A whole page: the shell around `main`. `events` is the page's event stream; `after` is more
/// HTML after `<main>` (a run's log).
pub fn shell(
    title: &str,
    section: Section,
    json: &str,
    events: &str,
    main: &str,
    after: &str,
) -> String {
    let link = |href: &str, name: &str, this: Section| {
        let current = if section == this {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{name}</a>")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · flower-superlink</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\">\
         <script src=\"/static/dashboard.js\" defer></script></head>\
         <body data-events=\"{events}\"><header><strong>flower-superlink</strong><nav>{} {} {}</nav>\
         <a class=\"json\" href=\"{json}\">JSON</a></header>\
         <main id=\"live\">{main}</main>{after}</body></html>\n",
        link("/", "Overview", Section::Overview),
        link("/nodes", "Nodes", Section::Nodes),
        link("/runs", "Runs", Section::Runs),
        title = escape(title),
        events = escape(events),
        json = escape(json),
    )
}

fn node_status_class(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Online => "good",
        NodeStatus::Offline => "bad",
        NodeStatus::Registered => "idle",
        NodeStatus::Unregistered => "gone",
    }
}

fn run_status_class(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending | RunStatus::Starting => "idle",
        RunStatus::Running => "busy",
        RunStatus::Completed => "good",
        RunStatus::Failed => "bad",
        RunStatus::Stopped => "gone",
    }
}

/// The online history strip: one cell per sample, oldest on the left.
pub fn strip(samples: &[NodeStatus]) -> String {
    let samples = &samples[samples.len().saturating_sub(SAMPLES)..];
    let mut svg = format!(
        "<svg class=\"strip\" viewBox=\"0 0 {SAMPLES} 1\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"online in {} of the last {} samples\">",
        samples.iter().filter(|s| **s == NodeStatus::Online).count(),
        samples.len()
    );
    let start = SAMPLES.saturating_sub(samples.len());
    for (i, status) in samples.iter().enumerate() {
        let _ = write!(
            svg,
            "<rect class=\"{}\" x=\"{}\" y=\"0\" width=\"1\" height=\"1\"/>",
            node_status_class(*status),
            start + i
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A time, or `-` when it has not come.
fn time_or_dash(ms: Option<u64>) -> String {
    ms.map(timestamp).unwrap_or_else(|| "-".into())
}

/// When a node was last heard: now, when it went offline, or never.
fn last_seen(node: &NodeInfo) -> String {
    match (node.status, node.offline_at_ms) {
        (NodeStatus::Online, _) => "now".into(),
        (_, Some(at)) => timestamp(at),
        (_, None) => "never".into(),
    }
}

/// What a node's row shows beside its record.
pub struct NodeCells<'a> {
    /// The protocol it is online over (`-` when it is not online).
    pub protocol: &'a dyn Fn(&NodeInfo) -> &'static str,
    /// Its online history's strip.
    pub history: &'a dyn Fn(&NodeInfo) -> String,
}

fn nodes_table(nodes: &[NodeInfo], cells: &NodeCells<'_>, now: u64) -> String {
    if nodes.is_empty() {
        return "<p class=\"empty\">No SuperNode is registered yet: <code>flwr supernode register</code> adds one.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"nodes\"><thead><tr><th>Node ID</th><th>Status</th><th>Since</th>\
         <th>Owner</th><th>Protocol</th><th>Last seen</th><th>Online history (1 h)</th></tr></thead><tbody>",
    );
    for node in nodes {
        let _ = write!(
            html,
            "<tr data-node-id=\"{id}\"><td class=\"id\">{id}</td><td><span class=\"status {class}\">{status}</span></td>\
             <td title=\"{changed}\">{since}</td><td>{owner}</td><td>{protocol}</td><td>{seen}</td><td>{strip}</td></tr>",
            id = node.node_id,
            class = node_status_class(node.status),
            status = node.status.as_str(),
            changed = timestamp(node.status_changed_at_ms),
            since = elapsed(node.status_changed_at_ms, now),
            owner = escape(&node.owner),
            seen = last_seen(node),
            protocol = (cells.protocol)(node),
            strip = (cells.history)(node),
        );
    }
    html.push_str("</tbody></table>");
    html
}

fn runs_table(runs: &[RunInfo], now: u64) -> String {
    if runs.is_empty() {
        return "<p class=\"empty\">No run yet: <code>flwr run</code> starts one.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"runs\"><thead><tr><th>Run ID</th><th>App</th><th>Status</th>\
         <th>Started</th><th>Ended</th><th>Elapsed</th><th>Details</th></tr></thead><tbody>",
    );
    for run in runs {
        let _ = write!(
            html,
            "<tr data-run-id=\"{id}\"><td class=\"id\"><a href=\"/runs/{id}\">{id}</a></td><td>{app}</td>\
             <td><span class=\"status {class}\">{status}</span></td><td>{started}</td><td>{ended}</td>\
             <td>{elapsed}</td><td class=\"details\">{details}</td></tr>",
            id = run.run_id,
            app = app_cell(run),
            class = run_status_class(run.status),
            status = run.status.as_str(),
            started = time_or_dash(run.starting_at_ms),
            ended = time_or_dash(run.finished_at_ms),
            elapsed = run_elapsed(run, now),
            details = escape(&run.details),
        );
    }
    html.push_str("</tbody></table>");
    html
}

fn app_cell(run: &RunInfo) -> String {
    let hash = run
        .bundle
        .map(|hash| {
            format!(
                " <span class=\"hash\" title=\"{hash}\">{}</span>",
                hash.short()
            )
        })
        .unwrap_or_else(|| " <span class=\"hash\">built-in</span>".into());
    format!(
        "{} {}{hash}",
        escape(&run.app_name),
        escape(&run.app_version)
    )
}

/// Runs newest first.
pub fn newest_first(runs: &mut [RunInfo]) {
    runs.sort_by_key(|run| std::cmp::Reverse((run.pending_at_ms, run.run_id.0)));
}

/// The overview's `<main>`: counts, the nodes, the latest runs.
pub fn overview(nodes: &[NodeInfo], runs: &[RunInfo], cells: &NodeCells<'_>, now: u64) -> String {
    let online = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Online)
        .count();
    let active = runs.iter().filter(|r| !r.status.is_finished()).count();
    let failed = runs
        .iter()
        .filter(|r| r.status == RunStatus::Failed)
        .count();
    format!(
        "<section class=\"counts\"><div><b>{online}</b> of {} nodes online</div>\
         <div><b>{active}</b> runs going</div><div><b>{}</b> runs, {failed} failed</div></section>\
         <h2>Nodes</h2>{}<h2>Latest runs</h2>{}",
        nodes.len(),
        runs.len(),
        nodes_table(nodes, cells, now),
        runs_table(&runs[..runs.len().min(OVERVIEW_RUNS)], now),
    )
}

/// The nodes page's `<main>`.
pub fn nodes(nodes: &[NodeInfo], cells: &NodeCells<'_>, now: u64) -> String {
    format!("<h1>Nodes</h1>{}", nodes_table(nodes, cells, now))
}

/// The runs page's `<main>`.
pub fn runs(runs: &[RunInfo], now: u64) -> String {
    let shown = &runs[..runs.len().min(MAX_RUNS_SHOWN)];
    let more = if runs.len() > shown.len() {
        format!(
            "<p class=\"empty\">The newest {} of {} runs; <a href=\"/runs.json\">the JSON</a> has them all.</p>",
            shown.len(),
            runs.len()
        )
    } else {
        String::new()
    };
    format!("<h1>Runs</h1>{}{more}", runs_table(shown, now))
}

/// What one run's page shows besides its log.
pub struct RunView {
    /// The run.
    pub run: RunInfo,
    /// Its rounds' metrics (see [`super::rounds`]).
    pub rounds: Vec<Value>,
    /// Its artifacts' names and sizes.
    pub artifacts: Vec<(String, u64)>,
}

fn rounds_table(rounds: &[Value]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for entry in rounds {
        for name in entry.as_object().into_iter().flat_map(|o| o.keys()) {
            if name != "round" && !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let mut html = String::from("<table class=\"rounds\"><thead><tr><th>Round</th>");
    for name in &names {
        let _ = write!(html, "<th>{}</th>", escape(name));
    }
    html.push_str("</tr></thead><tbody>");
    for entry in rounds {
        let _ = write!(html, "<tr><td>{}</td>", entry["round"]);
        for name in &names {
            let cell = entry
                .get(*name)
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.4}"))
                .unwrap_or_default();
            let _ = write!(html, "<td>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A run's page `<main>`: its facts, why it failed, its chart and rounds, its artifacts.
pub fn run(view: &RunView, now: u64) -> String {
    let run = &view.run;
    let mut html = format!(
        "<h1>Run <span class=\"id\">{id}</span></h1><dl class=\"facts\">\
         <dt>Status</dt><dd><span class=\"status {class}\" id=\"run-status\">{status}</span></dd>\
         <dt>App</dt><dd>{app}</dd><dt>Owner</dt><dd>{owner}</dd>\
         <dt>Accepted</dt><dd>{pending}</dd><dt>Started</dt><dd>{started}</dd>\
         <dt>Ended</dt><dd>{ended}</dd><dt>Elapsed</dt><dd>{elapsed}</dd></dl>",
        id = run.run_id,
        class = run_status_class(run.status),
        status = run.status.as_str(),
        app = app_cell(run),
        owner = escape(&run.owner),
        pending = timestamp(run.pending_at_ms),
        started = time_or_dash(run.starting_at_ms),
        ended = time_or_dash(run.finished_at_ms),
        elapsed = run_elapsed(run, now),
    );
    if !run.details.is_empty() {
        let what = if run.status == RunStatus::Failed {
            "Why it failed"
        } else {
            "Details"
        };
        let _ = write!(
            html,
            "<section class=\"reason\"><h2>{what}</h2><p id=\"run-details\">{}</p></section>",
            escape(&run.details)
        );
    }
    html.push_str("<h2>Metrics per round</h2>");
    if view.rounds.is_empty() {
        html.push_str("<p class=\"empty\">No round has reported metrics yet.</p>");
    } else {
        let _ = write!(
            html,
            "<figure class=\"chart\">{}</figure>{}",
            model::plot::svg(&view.rounds),
            rounds_table(&view.rounds)
        );
    }
    html.push_str("<h2>Artifacts</h2>");
    if view.artifacts.is_empty() {
        html.push_str("<p class=\"empty\">None yet.</p>");
    } else {
        html.push_str("<ul class=\"artifacts\">");
        for (name, bytes) in &view.artifacts {
            let _ = write!(
                html,
                "<li><a href=\"/runs/{}/artifacts/{}\" download>{}</a> ({})</li>",
                run.run_id,
                encode_segment(name),
                escape(name),
                size(*bytes)
            );
        }
        html.push_str("</ul>");
    }
    if !config_is_empty(run) {
        let _ = write!(
            html,
            "<h2>Run config</h2><pre class=\"config\">{}</pre>",
            escape(
                &serde_json::to_string_pretty(&wire::control_json::config(&run.config))
                    .unwrap_or_default()
            )
        );
    }
    html
}

fn config_is_empty(run: &RunInfo) -> bool {
    run.config.iter().next().is_none()
}

/// The log section of a run's page; its lines are text, never markup.
pub fn log(lines: &[LogLine], skipped: bool, run: &RunInfo) -> String {
    let mut html = String::from("<section><h2>Log</h2>");
    if skipped {
        let _ = write!(
            html,
            "<p class=\"empty\">Earlier lines are in <a href=\"/runs/{}/log.json\">the whole log</a>.</p>",
            run.run_id
        );
    }
    html.push_str("<pre id=\"log\">");
    for line in lines {
        html.push_str(&escape(&line.text));
        html.push('\n');
    }
    html.push_str("</pre></section>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_from_nodes_and_apps_is_shown_as_text() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(encode_segment("a b/../<x>.svg"), "a%20b%2F..%2F%3Cx%3E.svg");
    }

    #[test]
    fn the_strip_has_one_cell_per_sample_right_aligned() {
        let svg = strip(&[NodeStatus::Offline, NodeStatus::Online]);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(&format!("x=\"{}\"", SAMPLES - 1)));
        assert!(svg.contains("online in 1 of the last 2"));
    }
}
