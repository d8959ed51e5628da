//! Who may start a handshake, decided before a single TLS byte is processed.
//!
//! A QUIC Initial costs its sender one datagram and, without checks, costs the broker a
//! handshake slot for as long as the handshake may take. Three rules keep that from becoming a
//! denial of service:
//! - an Initial whose source address is not yet validated gets a stateless Retry: a spoofed
//!   address never sees the token, and a real one pays a round trip before it costs anything;
//! - each source (an IPv4 address, or an IPv6 /64) holds at most a few slots at once;
//! - in loopback-only mode, the Control API refuses any other source outright.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whether `address` is on this host (IPv4-mapped IPv6 included).
pub fn is_loopback(address: SocketAddr) -> bool {
    match address.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The unit one party controls: an IPv4 address, or an IPv6 /64 (one host's usual allocation).
/// IPv6 sources are also counted by their /48 (one site's usual allocation), under a larger cap,
/// so that a site cannot take every slot with its 65,536 /64s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
    V6Site(u64),
}

/// How many more slots a site (IPv6 /48) may hold than one of its sources.
const SITE_FACTOR: usize = 4;

impl Source {
    /// The counters a connection from `address` takes a slot in, each with its cap.
    fn of(address: SocketAddr, per_source: usize) -> Vec<(Source, usize)> {
        match address.ip() {
            IpAddr::V4(ip) => vec![(Source::V4(ip.into()), per_source)],
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => vec![(Source::V4(v4.into()), per_source)],
                None => {
                    let bits = u128::from(ip);
                    vec![
                        (Source::V6((bits >> 64) as u64), per_source),
                        (
                            Source::V6Site((bits >> 80) as u64),
                            per_source.saturating_mul(SITE_FACTOR),
                        ),
                    ]
                }
            },
        }
    }
}

/// Why an incoming connection was turned away before TLS (a label on the metrics endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// Sent a Retry: the source must prove it receives at its address.
    Retried,
    /// Not from loopback, on an API that serves loopback only.
    NotLoopback,
    /// Its source already holds as many handshakes as it may.
    SourceBusy,
    /// Every handshake slot is taken.
    Full,
}

impl Turned {
    /// The label on the metrics endpoint.
    pub fn label(self) -> &'static str {
        match self {
            Turned::Retried => "retry",
            Turned::NotLoopback => "not_loopback",
            Turned::SourceBusy => "source_busy",
            Turned::Full => "full",
        }
    }
}

/// The admission policy of one API.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
    max_per_source: usize,
    loopback_only: bool,
}

/// A handshake in progress: holds its slot and its sources' counts until dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    sources: Vec<Source>,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        for source in &self.sources {
            if let Some(count) = counts.get_mut(source) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(source);
                }
            }
        }
    }
}

impl Gate {
    /// At most `slots` handshakes at once, `max_per_source` of them from one source; only
    /// loopback sources when `loopback_only`.
    pub fn new(slots: usize, max_per_source: usize, loopback_only: bool) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(slots)),
            per_source: Arc::default(),
            max_per_source: max_per_source.max(1),
            loopback_only,
        }
    }

    /// Admits `incoming` with a slot, or answers it (Retry or refusal) and says why not.
    pub fn admit(&self, incoming: quinn::Incoming) -> Result<(quinn::Incoming, Slot), Turned> {
        let remote = incoming.remote_address();
        if self.loopback_only && !is_loopback(remote) {
            incoming.refuse();
            return Err(Turned::NotLoopback);
        }
        if !incoming.remote_address_validated() && incoming.may_retry() {
            // Stateless: the broker keeps nothing until the client echoes the token.
            if let Err(error) = incoming.retry() {
                error.into_incoming().refuse();
            }
            return Err(Turned::Retried);
        }
        let sources = Source::of(remote, self.max_per_source);
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if sources
            .iter()
            .any(|(source, cap)| counts.get(source).copied().unwrap_or(0) >= *cap)
        {
            drop(counts);
            incoming.refuse();
            return Err(Turned::SourceBusy);
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            drop(counts);
            incoming.refuse();
            return Err(Turned::Full);
        };
        for (source, _) in &sources {
            *counts.entry(*source).or_insert(0) += 1;
        }
        Ok((
            incoming,
            Slot {
                _permit: permit,
                sources: sources.into_iter().map(|(source, _)| source).collect(),
                per_source: self.per_source.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_prefix_within_its_48_and_mapped_ipv4_is_ipv4() {
        let of = |a: &str| Source::of(a.parse().unwrap(), 8);
        let a = of("[2001:db8:1:2:aaaa::1]:1");
        let b = of("[2001:db8:1:2:bbbb::9]:2");
        let c = of("[2001:db8:1:3::1]:1");
        let d = of("[2001:db8:2:3::1]:1");
        assert_eq!(a, b);
        assert_ne!(a[0], c[0]);
        assert_eq!(a[1], c[1], "one site");
        assert_eq!(c[1].1, 8 * SITE_FACTOR);
        assert_ne!(c[1], d[1], "another site");
        assert_eq!(of("[::ffff:10.0.0.1]:5"), of("10.0.0.1:6"));
    }

    #[test]
    fn loopback_includes_mapped_ipv4() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }
}
