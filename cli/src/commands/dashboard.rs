//! `flwr dashboard`: a login link to the SuperLink's dashboard, opened in a browser or printed.

use crate::CliError;
use crate::app_config::AppConfig;
use crate::args::Target;
use crate::control_client::{ControlClient, DashboardLink};
use crate::output::Format;
use serde_json::json;
use std::io::IsTerminal as _;
use std::net::IpAddr;

/// The link's URL. A dashboard bound to every interface is reached at the host the Control API
/// was reached at.
pub fn url(link: &DashboardLink, control_host: &str) -> String {
    let scheme = if link.tls { "https" } else { "http" };
    let ip = link.address.ip();
    let host = if ip.is_unspecified() {
        control_host.to_string()
    } else {
        match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    };
    let path = match &link.token {
        Some(token) => format!("/login?token={token}"),
        None => "/".to_string(),
    };
    format!("{scheme}://{host}:{}{path}", link.address.port())
}

/// The host part of a `HOST:PORT` federation address (an IPv6 literal keeps its brackets).
fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

/// Starts the desktop's browser on `url`, where there is a desktop.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return false;
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// `flwr dashboard`.
pub async fn open(target: &Target, no_open: bool) -> Result<(), CliError> {
    let config = AppConfig::load(&target.app)?;
    let (_, federation) = config.federation(target.federation.as_deref())?;
    let mut client = ControlClient::connect(&federation).await?;
    let link = client.dashboard_link().await;
    client.close().await;
    let link = link?;
    let url = url(&link, host_of(&federation.address));
    if target.format == Format::Json {
        super::print_json(&json!({
            "success": true,
            "url": url,
            "one-time": link.token.is_some(),
            "expires-in-seconds": link.expires_in_seconds,
        }));
        return Ok(());
    }
    let remote_loopback = link.address.ip().is_loopback()
        && !host_of(&federation.address)
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        && host_of(&federation.address) != "localhost";
    let opened =
        !no_open && std::io::stdout().is_terminal() && !remote_loopback && open_browser(&url);
    if opened {
        println!("Opened the dashboard in your browser: {url}");
    } else {
        println!("Dashboard: {url}");
    }
    if link.token.is_some() {
        println!(
            "The link signs this browser in once, within {} s; it is yours: do not share it.",
            link.expires_in_seconds
        );
    }
    if remote_loopback {
        let port = link.address.port();
        println!(
            "The dashboard listens on the SuperLink's own loopback: open it there, or through a \
             tunnel: ssh -L {port}:127.0.0.1:{port} <superlink host>"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_names_the_control_host_for_a_dashboard_on_every_interface() {
        let link = DashboardLink {
            address: "0.0.0.0:9095".parse().unwrap(),
            tls: true,
            token: Some("ab12".into()),
            expires_in_seconds: 120,
        };
        assert_eq!(
            url(&link, host_of("superlink.example:9093")),
            "https://superlink.example:9095/login?token=ab12"
        );
        let link = DashboardLink {
            address: "[::1]:9095".parse().unwrap(),
            tls: false,
            token: None,
            expires_in_seconds: 0,
        };
        assert_eq!(url(&link, "ignored"), "http://[::1]:9095/");
    }
}
