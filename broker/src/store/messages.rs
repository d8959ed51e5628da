//! Instructions, their per-node delivery queues, and receipts of their replies.
//!
//! Only metadata is durable here. An instruction is its routing plus a reference to its content,
//! and a reply is kept as a receipt keyed by the instruction it answers, which makes a re-delivered
//! duplicate easy to recognise and ignore. The contents themselves (a whole model, both ways) stay
//! in memory for the life of their round: a broker that restarts drops an interrupted round and its
//! run resends that round from its last checkpoint, so a stored content would have no reader, and
//! writing it would put a durable write of the whole model on every round's path, twice.
//!
//! For the same reason, queuing instructions and marking them delivered are committed without an
//! fsync of their own: they become durable with the next durable commit (a reply's receipt, a
//! log line). A crash may lose them, and a restart drops the queued instructions of every
//! interrupted round anyway. A reply's receipt is durable before the node hears "accepted".

use super::{Store, StoreError, decode, encode, storage, tables};
use redb::{ReadableDatabase as _, ReadableTable as _};
use serde::{Deserialize, Serialize};
use wire::message::MessageError;
use wire::{Message, MessageBody, MessageId, Metadata, NodeId, RunId};

/// An instruction as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionRecord {
    /// Routing, TTL, type, round.
    pub metadata: Metadata,
    /// Key of its content in the contents table.
    pub content_id: u128,
}

/// What the broker keeps of a reply: who answered which instruction and when, and the error when
/// the reply was one. The reply itself goes to its run in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyReceipt {
    /// The reply's metadata.
    pub metadata: Metadata,
    /// The error it carried, if it was an error reply.
    pub error: Option<MessageError>,
}

impl ReplyReceipt {
    /// The receipt of `reply`.
    pub fn of(reply: &Message) -> Self {
        ReplyReceipt {
            metadata: reply.metadata.clone(),
            error: match &reply.body {
                MessageBody::Error(error) => Some(error.clone()),
                MessageBody::Content(_) => None,
            },
        }
    }
}

/// What storing a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStored {
    /// First reply to its instruction: stored.
    New,
    /// The instruction already had a reply: nothing changed.
    Duplicate,
}

impl Store {
    /// Stores one instruction per metadata, each referring to content `content_id` and queued for
    /// its destination.
    pub fn enqueue(&self, content_id: u128, instructions: &[Metadata]) -> Result<(), StoreError> {
        let txn = self.begin_write_lazily()?;
        {
            let mut records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
            let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
            for metadata in instructions {
                let record = InstructionRecord {
                    metadata: metadata.clone(),
                    content_id,
                };
                records
                    .insert(metadata.message_id.0, encode(&record)?.as_slice())
                    .map_err(storage)?;
                queue
                    .insert((metadata.dst_node_id.0, metadata.message_id.0), ())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Instructions waiting for delivery to `node`, oldest id order.
    pub fn queued_for(&self, node: NodeId) -> Result<Vec<MessageId>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let queue = txn.open_table(tables::QUEUE).map_err(storage)?;
        let mut ids = Vec::new();
        for entry in queue
            .range((node.0, 0)..=(node.0, u128::MAX))
            .map_err(storage)?
        {
            let (key, _) = entry.map_err(storage)?;
            ids.push(MessageId(key.value().1));
        }
        Ok(ids)
    }

    /// How many instructions wait for delivery, to all nodes (redb keeps a table's length: no
    /// scan).
    pub fn queued_total(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata as _;
        let txn = self.db.begin_read().map_err(storage)?;
        let queue = txn.open_table(tables::QUEUE).map_err(storage)?;
        queue.len().map_err(storage)
    }

    /// The instruction `id`.
    pub fn instruction(&self, id: MessageId) -> Result<Option<InstructionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
        let value = records.get(id.0).map_err(storage)?;
        value
            .map(|bytes| decode("instruction", bytes.value()))
            .transpose()
    }

    /// Removes a delivered instruction from `node`'s queue.
    pub fn mark_delivered(&self, node: NodeId, id: MessageId) -> Result<(), StoreError> {
        let txn = self.begin_write_lazily()?;
        {
            let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
            queue.remove((node.0, id.0)).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Records `reply` (its receipt) as the answer to its instruction, unless it already has one.
    /// The reply must answer an existing instruction and come from the node that instruction went
    /// to.
    pub fn store_reply(&self, reply: &Message) -> Result<ReplyStored, StoreError> {
        let invalid = |why: &str| StoreError::InvalidReply(why.to_string());
        let instruction_id = reply
            .metadata
            .reply_to
            .ok_or_else(|| invalid("not a reply (no reply-to)"))?;
        let txn = self.db.begin_write().map_err(storage)?;
        let stored = {
            let records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
            let record: InstructionRecord = match records.get(instruction_id.0).map_err(storage)? {
                Some(bytes) => decode("instruction", bytes.value())?,
                None => return Err(invalid("it answers no known instruction")),
            };
            if record.metadata.dst_node_id != reply.metadata.src_node_id {
                return Err(invalid("the instruction was sent to another node"));
            }
            if record.metadata.run_id != reply.metadata.run_id {
                return Err(invalid("the reply names another run"));
            }
            let mut replies = txn.open_table(tables::REPLIES).map_err(storage)?;
            if replies.get(instruction_id.0).map_err(storage)?.is_some() {
                // Nothing changed: no commit, so a flood of duplicates forces no fsync.
                drop(replies);
                drop(records);
                txn.abort().map_err(storage)?;
                return Ok(ReplyStored::Duplicate);
            } else {
                replies
                    .insert(
                        instruction_id.0,
                        encode(&ReplyReceipt::of(reply))?.as_slice(),
                    )
                    .map_err(storage)?;
                // A reply, even a broker-made one, ends any pending delivery.
                let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
                queue
                    .remove((record.metadata.dst_node_id.0, instruction_id.0))
                    .map_err(storage)?;
                ReplyStored::New
            }
        };
        txn.commit().map_err(storage)?;
        Ok(stored)
    }

    /// The receipt of the reply to instruction `id`.
    pub fn reply_receipt(&self, id: MessageId) -> Result<Option<ReplyReceipt>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let replies = txn.open_table(tables::REPLIES).map_err(storage)?;
        let value = replies.get(id.0).map_err(storage)?;
        value
            .map(|bytes| decode("reply receipt", bytes.value()))
            .transpose()
    }

    /// Drops every undelivered instruction of `run`; returns how many.
    pub fn drop_queued_for_run(&self, run: RunId) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let dropped = {
            let records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
            let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
            let mut doomed = Vec::new();
            for entry in queue.iter().map_err(storage)? {
                let (key, _) = entry.map_err(storage)?;
                let (node, id) = key.value();
                let belongs = match records.get(id).map_err(storage)? {
                    Some(bytes) => {
                        decode::<InstructionRecord>("instruction", bytes.value())?
                            .metadata
                            .run_id
                            == run
                    }
                    None => true,
                };
                if belongs {
                    doomed.push((node, id));
                }
            }
            for key in &doomed {
                queue.remove(*key).map_err(storage)?;
            }
            doomed.len()
        };
        txn.commit().map_err(storage)?;
        Ok(dropped)
    }

    /// Forgets every instruction of the finished run `run`, with its queue entries and reply
    /// receipts (no reply to a finished run is accepted, so none is needed to spot a duplicate);
    /// returns how many instructions.
    pub fn forget_messages_of_run(&self, run: RunId) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let forgotten = {
            let mut records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
            let mut doomed = Vec::new();
            for entry in records.iter().map_err(storage)? {
                let (key, bytes) = entry.map_err(storage)?;
                let record: InstructionRecord = decode("instruction", bytes.value())?;
                if record.metadata.run_id == run {
                    doomed.push((key.value(), record.metadata.dst_node_id.0));
                }
            }
            let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
            let mut replies = txn.open_table(tables::REPLIES).map_err(storage)?;
            for &(id, node) in &doomed {
                records.remove(id).map_err(storage)?;
                queue.remove((node, id)).map_err(storage)?;
                replies.remove(id).map_err(storage)?;
            }
            doomed.len()
        };
        txn.commit().map_err(storage)?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use wire::{MessageType, RecordDict};

    fn instruction(run: u64, dst: u64) -> Metadata {
        Metadata {
            run_id: RunId(run),
            message_id: MessageId::random(),
            src_node_id: NodeId::SERVER,
            dst_node_id: NodeId(dst),
            reply_to: None,
            group_id: "1".into(),
            ttl_ms: 60_000,
            message_type: MessageType::Train,
            created_at_ms: 1,
        }
    }

    fn answer(sent: &Metadata) -> Message {
        Message {
            metadata: sent.clone(),
            body: MessageBody::Content(RecordDict::new()),
        }
        .reply(MessageBody::Content(RecordDict::new()), 2)
    }

    #[test]
    fn a_reply_is_kept_as_a_receipt_that_spots_its_duplicate() {
        let store = Store::in_memory().unwrap();
        let sent = instruction(1, 7);
        store.enqueue(1, std::slice::from_ref(&sent)).unwrap();
        let reply = answer(&sent);
        assert_eq!(store.store_reply(&reply).unwrap(), ReplyStored::New);
        let receipt = store.reply_receipt(sent.message_id).unwrap().unwrap();
        assert_eq!(receipt.metadata, reply.metadata);
        assert_eq!(receipt.error, None);
        assert_eq!(store.store_reply(&reply).unwrap(), ReplyStored::Duplicate);
    }

    #[test]
    fn forgetting_a_finished_run_leaves_other_runs_alone() {
        let store = Store::in_memory().unwrap();
        let (answered, queued, other) = (instruction(1, 7), instruction(1, 8), instruction(2, 8));
        store
            .enqueue(1, &[answered.clone(), queued.clone()])
            .unwrap();
        store.enqueue(2, std::slice::from_ref(&other)).unwrap();
        store.store_reply(&answer(&answered)).unwrap();

        assert_eq!(store.forget_messages_of_run(RunId(1)).unwrap(), 2);
        assert_eq!(store.instruction(answered.message_id).unwrap(), None);
        assert_eq!(store.reply_receipt(answered.message_id).unwrap(), None);
        assert_eq!(store.queued_for(NodeId(8)).unwrap(), vec![other.message_id]);
        assert!(store.instruction(other.message_id).unwrap().is_some());
        assert!(matches!(
            store.store_reply(&answer(&queued)),
            Err(StoreError::InvalidReply(_))
        ));
    }

    #[test]
    fn contents_written_by_an_earlier_version_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Store::open(&path).unwrap());
        let old: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("contents_v1");
        {
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(old)
                .unwrap()
                .insert(1, [7u8; 64].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        drop(Store::open(&path).unwrap());
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(matches!(
            txn.open_table(old),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }
}
