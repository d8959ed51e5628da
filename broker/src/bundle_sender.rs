//! Sending app bundles to nodes within bounds that hold at any federation size and against nodes
//! that stop reading.
//!
//! - Memory: a send takes its slot before it touches the bundle's bytes, and every send of one
//!   bundle shares one copy; a thousand nodes fetching a 10 MiB bundle at once hold 10 MiB, not
//!   10 GiB. Fetches waiting for a slot hold nothing.
//! - Slots: at most [`SLOTS`] sends at once, and a node has at most one send of a bundle going
//!   (a second fetch of the same bundle while one is going is refused, not queued).
//! - Progress: a send fails once a piece has waited [`STALL_TIMEOUT`] for room, or once it is
//!   slower overall than [`MIN_RATE`] allows ([`BundleSender::deadline_for`] its size, which the
//!   caller also applies to the node's acknowledgement of the last byte): a slot is freed within
//!   a bound set by the bundle's size, whatever the node does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use wire::{BundleHash, NodeId};

/// Most bundles being sent to nodes at once, over all nodes.
pub const SLOTS: usize = 16;

/// How long a node may take nothing of a bundle being sent to it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The slowest a node may take a bundle on the whole (128 KiB/s: a 10 MiB bundle within 80 s),
/// beyond [`BASE_TIME`].
pub const MIN_RATE: u64 = 128 << 10;

/// Time every send gets besides what its size needs at [`MIN_RATE`].
const BASE_TIME: Duration = Duration::from_secs(30);

/// The bytes are written in pieces of this size, each within the stall timeout.
const PIECE: usize = 64 << 10;

/// Why a bundle was not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The node took nothing for the stall timeout.
    #[error("the node took nothing for {0:?}")]
    Stalled(Duration),
    /// The node took too long on the whole.
    #[error("the node took longer than {0:?}")]
    TooSlow(Duration),
    /// The stream failed.
    #[error("the stream failed: {0}")]
    Stream(String),
}

/// The broker's bundle sends: their slots, the fetches going per node, and the shared copies.
pub struct BundleSender {
    slots: tokio::sync::Semaphore,
    stall_timeout: Duration,
    /// (node, bundle) pairs with a fetch going.
    fetching: Mutex<HashSet<(NodeId, BundleHash)>>,
    /// The copy of each bundle that sends in progress share; gone with the last of them.
    copies: Mutex<HashMap<BundleHash, Weak<Vec<u8>>>>,
}

impl Default for BundleSender {
    fn default() -> Self {
        BundleSender::new(SLOTS, STALL_TIMEOUT)
    }
}

/// A node's claim on its one fetch of a bundle; released when dropped.
pub struct FetchClaim<'a> {
    sender: &'a BundleSender,
    key: (NodeId, BundleHash),
}

impl Drop for FetchClaim<'_> {
    fn drop(&mut self) {
        lock(&self.sender.fetching).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes only: a poisoned map is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BundleSender {
    /// A sender with `slots` sends at once that gives up on a node taking nothing for
    /// `stall_timeout`.
    pub fn new(slots: usize, stall_timeout: Duration) -> Self {
        BundleSender {
            slots: tokio::sync::Semaphore::new(slots),
            stall_timeout,
            fetching: Mutex::default(),
            copies: Mutex::default(),
        }
    }

    /// `node`'s claim on a fetch of `hash`, or `None` while it has one going.
    pub fn claim(&self, node: NodeId, hash: BundleHash) -> Option<FetchClaim<'_>> {
        let key = (node, hash);
        let claimed = lock(&self.fetching).insert(key);
        // Made only when claimed: a claim dropped unclaimed would release the one going.
        claimed.then(|| FetchClaim { sender: self, key })
    }

    /// Waits for a free slot (`None`: the sender is closed).
    pub async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// The shared copy of bundle `hash`, read with `load` only when no send holds one.
    pub fn copy<E>(
        &self,
        hash: BundleHash,
        load: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Arc<Vec<u8>>>, E> {
        let mut copies = lock(&self.copies);
        if let Some(copy) = copies.get(&hash).and_then(Weak::upgrade) {
            return Ok(Some(copy));
        }
        // Loaded under the lock: concurrent sends of a bundle not yet shared wait for this one
        // copy rather than each reading their own.
        let Some(bytes) = load()? else {
            return Ok(None);
        };
        let copy = Arc::new(bytes);
        copies.retain(|_, weak| weak.strong_count() > 0);
        copies.insert(hash, Arc::downgrade(&copy));
        Ok(Some(copy))
    }

    /// How long a send of `size` bytes may take on the whole.
    pub fn deadline_for(size: u64) -> Duration {
        BASE_TIME + Duration::from_secs(size / MIN_RATE)
    }

    /// Writes `head` then `bytes` to `out`, each piece within the stall timeout and the whole
    /// within [`BundleSender::deadline_for`] its size.
    pub async fn send<W: AsyncWrite + Unpin>(
        &self,
        out: &mut W,
        head: &[u8],
        bytes: &[u8],
    ) -> Result<(), SendError> {
        let deadline = Self::deadline_for((head.len() + bytes.len()) as u64);
        let pieces = head.chunks(PIECE).chain(bytes.chunks(PIECE));
        let writes = async {
            for piece in pieces {
                tokio::time::timeout(self.stall_timeout, out.write_all(piece))
                    .await
                    .map_err(|_| SendError::Stalled(self.stall_timeout))?
                    .map_err(|e| SendError::Stream(e.to_string()))?;
            }
            Ok(())
        };
        tokio::time::timeout(deadline, writes)
            .await
            .map_err(|_| SendError::TooSlow(deadline))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    const HASH: BundleHash = BundleHash([7; 32]);

    #[tokio::test]
    async fn a_node_that_stops_reading_frees_its_slot_for_the_others() {
        let sender = Arc::new(BundleSender::new(2, Duration::from_millis(300)));
        let bundle = Arc::new(vec![1u8; 1 << 20]);
        // Two nodes take both slots and never read: their pipes hold 4 KiB.
        let mut never_read = Vec::new();
        for node in [1, 2] {
            let (mut ours, theirs) = tokio::io::duplex(4096);
            never_read.push(theirs);
            let (sender, bundle) = (sender.clone(), bundle.clone());
            tokio::spawn(async move {
                let _claim = sender.claim(NodeId(node), HASH).unwrap();
                let _slot = sender.slot().await.unwrap();
                sender.send(&mut ours, b"head", &bundle).await
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sender.slots.available_permits(), 0);
        // An honest node gets the whole bundle soon after, not when the stalled ones give up.
        let (mut ours, mut theirs) = tokio::io::duplex(64 << 10);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            theirs.read_to_end(&mut received).await.unwrap();
            received.len()
        });
        let honest = async {
            let _claim = sender.claim(NodeId(3), HASH).unwrap();
            let _slot = sender.slot().await.unwrap();
            sender.send(&mut ours, b"head", &bundle).await.unwrap();
            drop(ours);
            reader.await.unwrap()
        };
        let received = tokio::time::timeout(Duration::from_secs(3), honest)
            .await
            .expect("nodes that stopped reading held up an honest one");
        assert_eq!(received, 4 + bundle.len());
        drop(never_read);
    }

    #[tokio::test]
    async fn a_send_to_a_node_that_takes_nothing_fails_at_the_stall_timeout() {
        let sender = BundleSender::new(1, Duration::from_millis(200));
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let error = sender
            .send(&mut ours, b"head", &vec![0u8; 1 << 20])
            .await
            .unwrap_err();
        assert_eq!(error, SendError::Stalled(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn a_node_gets_one_fetch_of_a_bundle_at_a_time() {
        let sender = BundleSender::default();
        let claim = sender.claim(NodeId(1), HASH).unwrap();
        assert!(sender.claim(NodeId(1), HASH).is_none());
        // Another node, or another bundle, is not held up.
        assert!(sender.claim(NodeId(2), HASH).is_some());
        assert!(sender.claim(NodeId(1), BundleHash([8; 32])).is_some());
        drop(claim);
        assert!(sender.claim(NodeId(1), HASH).is_some());
    }

    #[tokio::test]
    async fn concurrent_sends_of_a_bundle_share_one_copy() {
        let sender = Arc::new(BundleSender::new(2, Duration::from_secs(5)));
        // Every copy ever made: at no time may two be alive.
        let made: Arc<Mutex<Vec<Weak<Vec<u8>>>>> = Arc::default();
        let size = 1 << 20;
        let mut fetches = Vec::new();
        for node in 0..50u64 {
            let (sender, made) = (sender.clone(), made.clone());
            fetches.push(tokio::spawn(async move {
                let _claim = sender.claim(NodeId(node), HASH).unwrap();
                let _slot = sender.slot().await.unwrap();
                let copy = sender
                    .copy(HASH, || Ok::<_, ()>(Some(vec![node as u8; size])))
                    .unwrap()
                    .unwrap();
                {
                    let mut made = lock(&made);
                    let alive: Vec<_> = made.iter().filter_map(Weak::upgrade).collect();
                    if !alive.iter().any(|other| Arc::ptr_eq(other, &copy)) {
                        assert!(alive.is_empty(), "two copies of one bundle in memory");
                        made.push(Arc::downgrade(&copy));
                    }
                }
                let (mut ours, mut theirs) = tokio::io::duplex(64 << 10);
                let reader = tokio::spawn(async move {
                    let mut received = Vec::new();
                    theirs.read_to_end(&mut received).await.unwrap();
                    received.len()
                });
                sender.send(&mut ours, b"", &copy).await.unwrap();
                drop(ours);
                reader.await.unwrap()
            }));
        }
        for fetch in fetches {
            assert_eq!(fetch.await.unwrap(), size);
        }
        let made = lock(&made).len();
        assert!(made < 50, "{made} copies made for 50 sends");
    }
}
