//! Instructions, their per-node delivery queues, and replies.
//!
//! Content (the model, for FedAvg) is stored once per round however many nodes receive it; an
//! instruction is its metadata plus a reference to that content. A node's queue holds the
//! instructions not yet delivered to it. Replies are keyed by the instruction they answer, which
//! makes a re-delivered duplicate easy to recognise and ignore.

use super::{Store, StoreError, decode, encode, storage, tables};
use redb::{ReadableDatabase as _, ReadableTable as _};
use serde::{Deserialize, Serialize};
use wire::{Message, MessageId, Metadata, NodeId, RecordDict, RunId};

/// An instruction as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionRecord {
    /// Routing, TTL, type, round.
    pub metadata: Metadata,
    /// Key of its content in the contents table.
    pub content_id: u128,
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
    /// Stores `content` (once) and one instruction per metadata, each queued for its destination.
    pub fn enqueue(
        &self,
        content_id: u128,
        content: &RecordDict,
        instructions: &[Metadata],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut contents = txn.open_table(tables::CONTENTS).map_err(storage)?;
            if contents.get(content_id).map_err(storage)?.is_none() {
                contents
                    .insert(content_id, encode(content)?.as_slice())
                    .map_err(storage)?;
            }
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

    /// The instruction `id`.
    pub fn instruction(&self, id: MessageId) -> Result<Option<InstructionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let records = txn.open_table(tables::INSTRUCTIONS).map_err(storage)?;
        let value = records.get(id.0).map_err(storage)?;
        value
            .map(|bytes| decode("instruction", bytes.value()))
            .transpose()
    }

    /// The content `content_id`.
    pub fn content(&self, content_id: u128) -> Result<Option<RecordDict>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let contents = txn.open_table(tables::CONTENTS).map_err(storage)?;
        let value = contents.get(content_id).map_err(storage)?;
        value
            .map(|bytes| decode("content", bytes.value()))
            .transpose()
    }

    /// Removes a delivered instruction from `node`'s queue.
    pub fn mark_delivered(&self, node: NodeId, id: MessageId) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut queue = txn.open_table(tables::QUEUE).map_err(storage)?;
            queue.remove((node.0, id.0)).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Stores `reply` as the answer to its instruction, unless it already has one. The reply must
    /// answer an existing instruction and come from the node that instruction went to.
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
                ReplyStored::Duplicate
            } else {
                replies
                    .insert(instruction_id.0, encode(reply)?.as_slice())
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

    /// The reply to instruction `id`.
    pub fn reply(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let replies = txn.open_table(tables::REPLIES).map_err(storage)?;
        let value = replies.get(id.0).map_err(storage)?;
        value
            .map(|bytes| decode("reply", bytes.value()))
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
}
