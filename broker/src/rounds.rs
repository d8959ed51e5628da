//! Rounds in flight, in memory: the instructions a run's server app sent and is waiting on, each
//! node's queue of them, their contents, and where their replies go.
//!
//! A [`Round`] owns its instructions: opening it queues them, dropping it (when the round is over,
//! stopped, or its app panicked) takes every trace of them out again. Nothing here is durable, and
//! nothing needs to be: a broker that restarts resends an interrupted round from the run's last
//! checkpoint (see [`crate::runs::runner::resume_interrupted_runs`]), so a stored instruction, queue
//! entry or reply receipt would have no reader after a restart. What a restart does read (the
//! registry, runs, logs, artifacts, checkpoints) is in [`crate::store`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use wire::fleet::InstructionHeader;
use wire::message::MessageError;
use wire::{Message, MessageBody, MessageId, Metadata, NodeId, RecordDict, RunId};

/// An instruction of an open round.
struct InFlight {
    /// Routing, deadline, type, round.
    metadata: Metadata,
    /// What it carries (shared by every node of the round that gets the same content).
    content: Arc<RecordDict>,
    /// The run's app and config, sent ahead of it (one per round).
    header: Arc<InstructionHeader>,
    /// Where its reply goes: the round waiting for it.
    route: mpsc::UnboundedSender<Message>,
    /// How it was answered, once it was.
    answered: Option<Answered>,
}

/// How an instruction was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    /// Its node replied with content.
    Content,
    /// Its node replied with an error (its reason already bounded and escaped).
    Error(MessageError),
    /// The broker answered in the node's place (it left, or the deadline passed).
    StandIn,
}

/// What [`Rounds`] guards.
#[derive(Default)]
struct Inner {
    /// Every instruction of an open round, by id.
    instructions: HashMap<MessageId, InFlight>,
    /// Per node, its instructions not yet delivered, oldest first.
    queues: HashMap<NodeId, VecDeque<MessageId>>,
    /// Runs an operator stopped: nothing of theirs is queued, delivered or accepted any more,
    /// even while their app has not let go yet. One id per stop, for the broker's lifetime.
    stopped: HashSet<RunId>,
    /// Per node, its instructions in `instructions`: what a node may ask about is found without
    /// looking at everyone else's.
    by_node: HashMap<NodeId, HashSet<MessageId>>,
}

/// The rounds in flight in this broker.
#[derive(Default)]
pub struct Rounds {
    /// Instructions and queues; a std mutex because no lock is held across an await.
    inner: Mutex<Inner>,
    /// Instructions whose reply is being read right now (see [`Rounds::claim`]).
    arriving: Mutex<HashSet<MessageId>>,
}

/// An instruction as delivery and reply checks see it.
#[derive(Clone)]
pub struct Pending {
    /// Its metadata.
    pub metadata: Metadata,
    /// Its content.
    pub content: Arc<RecordDict>,
    /// The header sent ahead of it.
    pub header: Arc<InstructionHeader>,
    /// How it was answered, if it was.
    pub answered: Option<Answered>,
}

/// What became of a reply handed to [`Rounds::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The first reply to an instruction of an open round: on its way to the round.
    New,
    /// The instruction already had a reply: nothing changed.
    Duplicate,
    /// No open round sent that instruction to that node (its round is over, or it never existed).
    Unknown,
}

/// Locks `mutex`; its maps only ever see whole inserts and removes, so a poisoned one is still
/// consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Rounds {
    /// Opens a round: queues each instruction for its destination, with its content, behind
    /// `header`. The returned round receives the replies and takes everything out when dropped.
    pub fn open(
        self: &Arc<Self>,
        header: Arc<InstructionHeader>,
        instructions: Vec<(Metadata, Arc<RecordDict>)>,
    ) -> Round {
        let (route, replies) = mpsc::unbounded_channel();
        let mut ids = Vec::with_capacity(instructions.len());
        let mut inner = lock(&self.inner);
        // A stopped run's app may still be on its way here: its round sends nothing, and the
        // app learns of the stop as it waits.
        for (metadata, content) in instructions {
            if inner.stopped.contains(&metadata.run_id) {
                continue;
            }
            let id = metadata.message_id;
            inner
                .queues
                .entry(metadata.dst_node_id)
                .or_default()
                .push_back(id);
            inner
                .by_node
                .entry(metadata.dst_node_id)
                .or_default()
                .insert(id);
            inner.instructions.insert(
                id,
                InFlight {
                    metadata,
                    content,
                    header: header.clone(),
                    route: route.clone(),
                    answered: None,
                },
            );
            ids.push(id);
        }
        Round {
            rounds: self.clone(),
            ids,
            replies,
        }
    }

    /// The instructions waiting for delivery to `node`, oldest first.
    pub fn queued_for(&self, node: NodeId) -> Vec<MessageId> {
        lock(&self.inner)
            .queues
            .get(&node)
            .map(|queue| queue.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many instructions wait for delivery, to all nodes.
    pub fn queued_total(&self) -> usize {
        lock(&self.inner).queues.values().map(VecDeque::len).sum()
    }

    /// The instruction `id`, while its round is open and its run not stopped.
    pub fn instruction(&self, id: MessageId) -> Option<Pending> {
        let inner = lock(&self.inner);
        inner
            .instructions
            .get(&id)
            .filter(|instruction| !inner.stopped.contains(&instruction.metadata.run_id))
            .map(|instruction| Pending {
                metadata: instruction.metadata.clone(),
                content: instruction.content.clone(),
                header: instruction.header.clone(),
                answered: instruction.answered.clone(),
            })
    }

    /// Whether `node` has an unanswered instruction of a run (not stopped) whose app is the
    /// bundle `bundle`: only such a node may fetch it.
    pub fn awaits_bundle(&self, node: NodeId, bundle: wire::BundleHash) -> bool {
        let inner = lock(&self.inner);
        let Some(ids) = inner.by_node.get(&node) else {
            return false;
        };
        ids.iter()
            .filter_map(|id| inner.instructions.get(id))
            .any(|instruction| {
                instruction.metadata.dst_node_id == node
                    && instruction.answered.is_none()
                    && instruction.header.bundle == Some(bundle)
                    && !inner.stopped.contains(&instruction.metadata.run_id)
            })
    }

    /// How many instructions of `run` are in flight.
    pub fn in_flight_for_run(&self, run: RunId) -> usize {
        lock(&self.inner)
            .instructions
            .values()
            .filter(|instruction| instruction.metadata.run_id == run)
            .count()
    }

    /// Takes a delivered (or undeliverable) instruction out of `node`'s queue.
    pub fn mark_delivered(&self, node: NodeId, id: MessageId) {
        let mut inner = lock(&self.inner);
        remove_queued(&mut inner.queues, node, id);
    }

    /// Stops everything of `run` at once: its queues are emptied, and none of its instructions is
    /// delivered, opened or answered from now on. Its rounds end when its app lets go.
    pub fn stop_run(&self, run: RunId) {
        let mut inner = lock(&self.inner);
        let Inner {
            instructions,
            queues,
            stopped,
            ..
        } = &mut *inner;
        stopped.insert(run);
        for queue in queues.values_mut() {
            queue.retain(|id| {
                instructions
                    .get(id)
                    .is_none_or(|instruction| instruction.metadata.run_id != run)
            });
        }
        queues.retain(|_, queue| !queue.is_empty());
    }

    /// Hands `reply` to the round waiting for it, if it is the first reply to an instruction that
    /// an open round sent to the reply's sender.
    pub fn answer(&self, reply: Message) -> Answer {
        let Some(id) = reply.metadata.reply_to else {
            return Answer::Unknown;
        };
        let mut inner = lock(&self.inner);
        let Inner {
            instructions,
            stopped,
            ..
        } = &mut *inner;
        match instructions.get_mut(&id) {
            Some(instruction) if instruction.metadata.dst_node_id != reply.metadata.src_node_id => {
                Answer::Unknown
            }
            Some(instruction) if stopped.contains(&instruction.metadata.run_id) => Answer::Unknown,
            Some(instruction) if instruction.answered.is_some() => Answer::Duplicate,
            Some(instruction) => {
                instruction.answered = Some(match &reply.body {
                    MessageBody::Content(_) => Answered::Content,
                    MessageBody::Error(error) => Answered::Error(error.clone()),
                });
                // The round may have stopped listening; its drop removes the instruction next.
                let _ = instruction.route.send(reply);
                Answer::New
            }
            None => Answer::Unknown,
        }
    }

    /// Claims the reply to `id` while a stream reads it; `None` if another stream holds it, so
    /// that one node cannot hold several allowances for one instruction.
    pub fn claim(self: &Arc<Self>, id: MessageId) -> Option<Claim> {
        lock(&self.arriving).insert(id).then(|| Claim {
            rounds: self.clone(),
            id,
        })
    }

    /// Whether a reply to `id` is being read.
    pub fn is_arriving(&self, id: MessageId) -> bool {
        lock(&self.arriving).contains(&id)
    }
}

/// Removes `id` from `node`'s queue, and the queue when it is empty.
fn remove_queued(queues: &mut HashMap<NodeId, VecDeque<MessageId>>, node: NodeId, id: MessageId) {
    if let Some(queue) = queues.get_mut(&node) {
        queue.retain(|queued| *queued != id);
        if queue.is_empty() {
            queues.remove(&node);
        }
    }
}

/// An instruction's reply being read; released when dropped.
pub struct Claim {
    /// Where the claim is held.
    rounds: Arc<Rounds>,
    /// The instruction.
    id: MessageId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.rounds.arriving).remove(&self.id);
    }
}

/// One round's instructions, from sending until it is over: replies arrive on
/// [`Round::replies`], and dropping it takes the instructions, their queue entries and their
/// contents out of the broker, however the round ended.
pub struct Round {
    /// Where the instructions are.
    rounds: Arc<Rounds>,
    /// The round's instruction ids.
    ids: Vec<MessageId>,
    /// Replies to them, as they are accepted.
    pub replies: mpsc::UnboundedReceiver<Message>,
}

impl Round {
    /// Marks instruction `id` answered by the broker itself (a stand-in for a reply that will not
    /// come); `false` if a real reply was accepted first (it is on its way in [`Round::replies`]).
    pub fn answer_in_place_of(&self, id: MessageId) -> bool {
        let mut inner = lock(&self.rounds.inner);
        let Some(instruction) = inner.instructions.get_mut(&id) else {
            return false;
        };
        if instruction.answered.is_some() {
            return false;
        }
        instruction.answered = Some(Answered::StandIn);
        let node = instruction.metadata.dst_node_id;
        remove_queued(&mut inner.queues, node, id);
        true
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        let mut inner = lock(&self.rounds.inner);
        for id in &self.ids {
            if let Some(instruction) = inner.instructions.remove(id) {
                let node = instruction.metadata.dst_node_id;
                remove_queued(&mut inner.queues, node, *id);
                if let Some(ids) = inner.by_node.get_mut(&node) {
                    ids.remove(id);
                    if ids.is_empty() {
                        inner.by_node.remove(&node);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::message::MessageType;

    fn header() -> Arc<InstructionHeader> {
        Arc::new(InstructionHeader {
            bundle: None,
            app_name: "app".into(),
            app_version: "1".into(),
            run_config: wire::ConfigRecord::new(),
        })
    }

    fn instruction(run: u64, node: u64) -> Metadata {
        Metadata {
            run_id: RunId(run),
            message_id: MessageId::random(),
            src_node_id: NodeId::SERVER,
            dst_node_id: NodeId(node),
            reply_to: None,
            group_id: "1".into(),
            ttl_ms: 60_000,
            message_type: MessageType::TRAIN,
            created_at_ms: 0,
        }
    }

    fn reply_to(metadata: &Metadata, from: u64) -> Message {
        let instruction = Message {
            metadata: metadata.clone(),
            body: MessageBody::Content(RecordDict::new()),
        };
        let mut reply = instruction.reply(MessageBody::Content(RecordDict::new()), 1);
        reply.metadata.src_node_id = NodeId(from);
        reply
    }

    fn open(rounds: &Arc<Rounds>, sent: &[Metadata]) -> Round {
        let content = Arc::new(RecordDict::new());
        rounds.open(
            header(),
            sent.iter().map(|m| (m.clone(), content.clone())).collect(),
        )
    }

    #[test]
    fn a_reply_reaches_its_round_once_and_only_from_its_node() {
        let rounds = Arc::new(Rounds::default());
        let sent = instruction(1, 7);
        let mut round = open(&rounds, std::slice::from_ref(&sent));
        assert_eq!(rounds.answer(reply_to(&sent, 8)), Answer::Unknown);
        assert_eq!(rounds.answer(reply_to(&sent, 7)), Answer::New);
        assert_eq!(rounds.answer(reply_to(&sent, 7)), Answer::Duplicate);
        assert!(round.replies.try_recv().is_ok());
        assert!(round.replies.try_recv().is_err(), "one reply routed");
    }

    #[test]
    fn dropping_a_round_leaves_nothing_behind() {
        let rounds = Arc::new(Rounds::default());
        let sent = [instruction(1, 1), instruction(1, 2), instruction(1, 2)];
        let round = open(&rounds, &sent);
        assert_eq!(rounds.queued_total(), 3);
        assert_eq!(rounds.queued_for(NodeId(2)).len(), 2);
        drop(round);
        assert_eq!(rounds.queued_total(), 0);
        assert!(rounds.instruction(sent[0].message_id).is_none());
        assert_eq!(rounds.answer(reply_to(&sent[0], 1)), Answer::Unknown);
        assert!(lock(&rounds.inner).queues.is_empty());
    }

    #[test]
    fn a_round_is_cleaned_up_when_its_app_panics() {
        let rounds = Arc::new(Rounds::default());
        let sent = instruction(1, 1);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _round = open(&rounds, std::slice::from_ref(&sent));
            panic!("the app's reply callback panicked");
        }));
        assert!(outcome.is_err());
        assert_eq!(rounds.queued_total(), 0);
        assert!(rounds.instruction(sent.message_id).is_none());
    }

    #[test]
    fn a_stand_in_answers_only_what_has_no_reply_yet() {
        let rounds = Arc::new(Rounds::default());
        let (answered, silent) = (instruction(1, 1), instruction(1, 2));
        let round = open(&rounds, &[answered.clone(), silent.clone()]);
        assert_eq!(rounds.answer(reply_to(&answered, 1)), Answer::New);
        assert!(!round.answer_in_place_of(answered.message_id));
        assert!(round.answer_in_place_of(silent.message_id));
        assert!(rounds.queued_for(NodeId(2)).is_empty());
        // A real reply after the stand-in is a duplicate: acknowledged, never aggregated.
        assert_eq!(rounds.answer(reply_to(&silent, 2)), Answer::Duplicate);
    }

    #[test]
    fn a_stopped_run_sends_and_accepts_nothing_more_and_other_runs_go_on() {
        let rounds = Arc::new(Rounds::default());
        let (stopped, other) = (instruction(1, 1), instruction(2, 1));
        let mut first = open(&rounds, std::slice::from_ref(&stopped));
        let _second = open(&rounds, std::slice::from_ref(&other));
        rounds.stop_run(RunId(1));
        assert_eq!(rounds.queued_for(NodeId(1)), vec![other.message_id]);
        assert!(rounds.instruction(stopped.message_id).is_none());
        assert!(rounds.instruction(other.message_id).is_some());
        // A reply that was on its way is refused and never reaches the app.
        assert_eq!(rounds.answer(reply_to(&stopped, 1)), Answer::Unknown);
        assert!(first.replies.try_recv().is_err());
        // An app that has not seen the stop yet opens a round that sends nothing.
        let late = instruction(1, 2);
        let _late = open(&rounds, std::slice::from_ref(&late));
        assert!(rounds.queued_for(NodeId(2)).is_empty());
        assert!(rounds.instruction(late.message_id).is_none());
    }

    #[test]
    fn one_reply_stream_per_instruction() {
        let rounds = Arc::new(Rounds::default());
        let id = MessageId::random();
        let claim = rounds.claim(id).expect("first claim");
        assert!(rounds.claim(id).is_none());
        assert!(rounds.is_arriving(id));
        drop(claim);
        assert!(rounds.claim(id).is_some());
    }
}
