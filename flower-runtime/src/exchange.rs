//! One instruction and its reply, as Flower moves them between two of its processes: the
//! instruction handed out once (its message without content, its object tree), its objects served
//! by id until the receiver confirms them, then one reply accepted (its metadata checked against
//! the instruction), whose objects arrive one by one, each checked against its id, within a byte
//! budget. Both sides that answer a Flower process with an instruction use it: a `flwr-clientapp`
//! task on a node ([`crate::clientapp`]) and a Flower SuperNode on the Fleet API
//! ([`crate::fleet`]).

use crate::objects::{Deflated, Inflated, ObjectError, inflate, is_object_id, object_id};
use crate::proto;
use crate::server::ApiError;
use crate::tasks::collect_ids;
use std::collections::{HashMap, HashSet};

/// A reply whose objects all arrived, with the metadata its sender pushed (checked then).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    metadata: proto::Metadata,
    objects: HashMap<String, Vec<u8>>,
}

impl Reply {
    /// The reply's message, its records no larger than `max_bytes` in all; its objects must hold
    /// the metadata that was checked when it was pushed.
    pub fn inflate(&self, max_bytes: u64) -> Result<Inflated, ObjectError> {
        let root = &self.metadata.message_id;
        let mut inflated = inflate(root, &self.objects, max_bytes)?;
        inflated.metadata.message_id.clone_from(root);
        if inflated.metadata != self.metadata {
            return Err(ObjectError::Malformed {
                id: root.clone(),
                why: "its metadata differs from that of the message pushed".into(),
            });
        }
        Ok(inflated)
    }
}

/// What the sender of an accepted reply is told: the objects to push, under which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The ids of the reply's objects, each to be pushed once.
    pub objects_to_push: Vec<String>,
    /// The session its objects are pushed under.
    pub session_id: String,
}

/// The reply being pushed.
struct PendingReply {
    metadata: proto::Metadata,
    accepted: Accepted,
    pending: HashSet<String>,
    objects: HashMap<String, Vec<u8>>,
    bytes: u64,
}

/// One instruction's way out and its reply's way back.
pub struct Exchange {
    instruction: proto::Message,
    tree: proto::ObjectTree,
    objects: HashMap<String, Vec<u8>>,
    handed_out: bool,
    reply: Option<PendingReply>,
    max_reply_bytes: u64,
}

impl Exchange {
    /// The instruction `deflated` (with `metadata`, whose message id becomes the root's),
    /// accepting a reply of at most `max_reply_bytes`.
    pub fn new(metadata: proto::Metadata, deflated: Deflated, max_reply_bytes: u64) -> Self {
        let mut metadata = metadata;
        metadata.message_id = deflated.tree.object_id.clone();
        let instruction = proto::Message {
            metadata: Some(metadata),
            content: Some(proto::RecordDict::default()),
            error: None,
        };
        Exchange {
            instruction,
            tree: deflated.tree,
            objects: deflated
                .objects
                .into_iter()
                .map(|object| (object.id, object.bytes))
                .collect(),
            handed_out: false,
            reply: None,
            max_reply_bytes,
        }
    }

    /// The instruction's message id (its tree's root).
    pub fn message_id(&self) -> &str {
        &self.tree.object_id
    }

    /// The instruction's run.
    pub fn run_id(&self) -> u64 {
        self.instruction.metadata.as_ref().map_or(0, |m| m.run_id)
    }

    /// The instruction's message (without content) and tree, the first time only.
    pub fn hand_out(&mut self) -> Option<(proto::Message, proto::ObjectTree)> {
        if self.handed_out {
            return None;
        }
        self.handed_out = true;
        Some((self.instruction.clone(), self.tree.clone()))
    }

    /// One of the instruction's objects, while they are kept.
    pub fn object(&self, id: &str) -> Option<&[u8]> {
        self.objects.get(id).map(Vec::as_slice)
    }

    /// Lets the instruction's objects go (the receiver has them all, or will never ask again).
    pub fn release_instruction(&mut self) {
        self.objects = HashMap::new();
    }

    /// Accepts `message` with `tree` as the reply, if it answers this instruction, in its run,
    /// and names its tree's root as its id. A retry of the same reply (its response lost) gets
    /// the same answer; another reply is refused.
    pub fn accept_reply(
        &mut self,
        message: &proto::Message,
        tree: &proto::ObjectTree,
    ) -> Result<Accepted, ApiError> {
        let metadata = message
            .metadata
            .as_ref()
            .ok_or_else(|| ApiError::bad_body("the message has no metadata"))?;
        if let Some(reply) = &self.reply {
            if reply.metadata == *metadata {
                return Ok(reply.accepted.clone());
            }
            return Err(ApiError::new(400, 3013, "The task has already replied."));
        }
        if metadata.run_id != self.run_id() {
            return Err(ApiError::new(
                403,
                3014,
                "The message belongs to another run.",
            ));
        }
        if metadata.reply_to_message_id != self.tree.object_id {
            return Err(ApiError::bad_body("the reply answers another message"));
        }
        if !is_object_id(&tree.object_id) || metadata.message_id != tree.object_id {
            return Err(ApiError::bad_body("the message id is not its tree's root"));
        }
        let mut pending = HashSet::new();
        collect_ids(tree, &mut pending)?;
        let session: [u8; 16] = rand::random();
        let accepted = Accepted {
            objects_to_push: pending.iter().cloned().collect(),
            session_id: session.iter().map(|b| format!("{b:02x}")).collect(),
        };
        self.reply = Some(PendingReply {
            metadata: metadata.clone(),
            accepted: accepted.clone(),
            pending,
            objects: HashMap::new(),
            bytes: 0,
        });
        Ok(accepted)
    }

    /// Stores one of the reply's objects; `false` for one not asked for, under another session,
    /// not matching its id, or beyond the reply's size limit.
    pub fn accept_object(&mut self, session_id: &str, id: String, content: Vec<u8>) -> bool {
        let hashed = object_id(&content);
        self.accept_hashed_object(session_id, id, content, &hashed)
    }

    /// [`Exchange::accept_object`] for `content` whose id, `hashed`, the caller computed.
    pub fn accept_hashed_object(
        &mut self,
        session_id: &str,
        id: String,
        content: Vec<u8>,
        hashed: &str,
    ) -> bool {
        let Some(reply) = self.reply.as_mut() else {
            return false;
        };
        if reply.accepted.session_id != session_id {
            return false;
        }
        if reply.objects.contains_key(&id) {
            // A retry after a lost response: the same bytes, already kept.
            return hashed == id;
        }
        if !reply.pending.contains(&id) || hashed != id {
            return false;
        }
        let bytes = reply.bytes.saturating_add(content.len() as u64);
        if bytes > self.max_reply_bytes {
            return false;
        }
        reply.bytes = bytes;
        reply.pending.remove(&id);
        reply.objects.insert(id, content);
        true
    }

    /// Whether the reply being pushed has session `session_id`.
    pub fn has_session(&self, session_id: &str) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|reply| reply.accepted.session_id == session_id)
    }

    /// The most record bytes the reply may carry.
    pub fn max_reply_bytes(&self) -> u64 {
        self.max_reply_bytes
    }

    /// Whether a reply was accepted and every one of its objects arrived.
    pub fn reply_is_whole(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|reply| reply.pending.is_empty())
    }

    /// The reply, if it arrived whole (a later call finds it taken).
    pub fn take_reply(&mut self) -> Option<Reply> {
        if !self.reply_is_whole() {
            return None;
        }
        self.reply.take().map(|reply| Reply {
            metadata: reply.metadata,
            objects: reply.objects,
        })
    }
}
