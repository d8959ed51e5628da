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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(address: SocketAddr) -> Self {
        match address.ip() {
            IpAddr::V4(ip) => Source::V4(ip.into()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(ip) >> 64) as u64),
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

/// A handshake in progress: holds its slot and its source's count until dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    source: Source,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
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
        let source = Source::of(remote);
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            drop(counts);
            incoming.refuse();
            return Err(Turned::SourceBusy);
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            if *count == 0 {
                counts.remove(&source);
            }
            drop(counts);
            incoming.refuse();
            return Err(Turned::Full);
        };
        *count += 1;
        Ok((
            incoming,
            Slot {
                _permit: permit,
                source,
                per_source: self.per_source.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_prefix_and_mapped_ipv4_is_ipv4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        let plain: SocketAddr = "10.0.0.1:6".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(plain));
    }

    #[test]
    fn loopback_includes_mapped_ipv4() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }
}
