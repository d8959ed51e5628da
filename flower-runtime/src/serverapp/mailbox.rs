//! The reply mailbox of a `flwr-serverapp` task: replies delivered by the federation (or
//! answered in a node's place) wait, made into Flower's objects, until the app pulls them, then
//! until it confirms them; either wait is bounded in time, and what expires is let go of.

use super::*;

impl ServerAppTask {
    /// Hands the app the reply to its instruction `flower_id`: a node's, or the error the
    /// federation answered in its place.
    pub fn deliver(&self, flower_id: &str, reply: &Message) {
        let Some(outstanding) = self.state().outstanding.remove(flower_id) else {
            return;
        };
        let metadata = proto::Metadata {
            run_id: self.input.run.run_id,
            src_node_id: reply.metadata.src_node_id.0,
            dst_node_id: SERVER_NODE,
            reply_to_message_id: flower_id.to_string(),
            group_id: reply.metadata.group_id.clone(),
            ttl: reply.metadata.ttl_ms as f64 / 1000.0,
            message_type: outstanding.message_type,
            created_at: reply.metadata.created_at_ms as f64 / 1000.0,
            ..proto::Metadata::default()
        };
        // Made into objects (a model's bytes hashed and copied) before the lock is taken.
        let prepared = Self::prepare(metadata, &body_to_objects(&reply.body));
        let mut state = self.state();
        if !state.finished {
            Self::make_ready(&mut state, flower_id, prepared, outstanding.reply_wait);
        }
    }

    /// Answers instruction `flower_id` in place of a node, as Flower's SuperLink answers one it
    /// cannot deliver: from node 1 to node 1, type `system`.
    pub(super) fn answer_in_place(
        state: &mut State,
        run_id: u64,
        flower_id: &str,
        error: proto::Error,
        reply_wait: Duration,
    ) {
        let metadata = proto::Metadata {
            run_id,
            src_node_id: SERVER_NODE,
            dst_node_id: SERVER_NODE,
            reply_to_message_id: flower_id.to_string(),
            message_type: "system".into(),
            created_at: wire::message::now_ms() as f64 / 1000.0,
            ..proto::Metadata::default()
        };
        let prepared = Self::prepare(metadata, &Body::Error(error));
        Self::make_ready(state, flower_id, prepared, reply_wait);
    }

    /// Makes the reply `metadata` + `body` to `flower_id` ready to pull, its objects kept until
    /// it is confirmed.
    /// The reply `metadata` + `body` as Flower's objects, with its message; a body that cannot
    /// be one becomes an error saying so.
    pub(super) fn prepare(
        metadata: proto::Metadata,
        body: &Body,
    ) -> Option<(proto::Metadata, Deflated)> {
        let deflated = deflate(&metadata, body).or_else(|error| {
            let reason = format!("the reply cannot be given to a Flower app: {error}");
            let error = proto::Error {
                code: code::UNKNOWN,
                reason,
            };
            deflate(&metadata, &Body::Error(error))
        });
        let deflated = deflated.ok()?;
        let mut metadata = metadata;
        metadata.message_id = deflated.tree.object_id.clone();
        Some((metadata, deflated))
    }

    /// Makes a prepared reply to `flower_id` ready to pull, its objects kept until it is
    /// confirmed or it expires.
    pub(super) fn make_ready(
        state: &mut State,
        flower_id: &str,
        prepared: Option<(proto::Metadata, Deflated)>,
        reply_wait: Duration,
    ) {
        let Some((metadata, deflated)) = prepared else {
            return;
        };
        let mut objects = Vec::with_capacity(deflated.objects.len());
        for object in deflated.objects {
            objects.push(object.id.clone());
            state
                .reply_objects
                .entry(object.id)
                .or_insert_with(|| (object.bytes, 0))
                .1 += 1;
        }
        let message = proto::Message {
            metadata: Some(metadata),
            content: Some(proto::RecordDict::default()),
            error: None,
        };
        let ready = Ready {
            message,
            tree: deflated.tree,
            objects,
            expires: Instant::now() + reply_wait,
        };
        if let Some(replaced) = state.ready.insert(flower_id.to_string(), ready) {
            Self::release(state, replaced.objects);
        }
    }

    /// Lets go of one reply's hold on each of `objects`.
    pub(super) fn release(state: &mut State, objects: Vec<String>) {
        for object in objects {
            if let Some((_, holders)) = state.reply_objects.get_mut(&object) {
                *holders -= 1;
                if *holders == 0 {
                    state.reply_objects.remove(&object);
                }
            }
        }
    }

    /// How long the reply to an instruction living `ttl` seconds may wait to be pulled.
    pub(super) fn reply_wait(ttl: f64) -> Duration {
        Duration::try_from_secs_f64(ttl)
            .unwrap_or(MAX_REPLY_WAIT)
            .clamp(MIN_REPLY_WAIT, MAX_REPLY_WAIT)
    }

    pub(super) fn pull_messages(
        &self,
        state: &mut State,
        request: &proto::PullAppMessagesRequest,
    ) -> proto::PullAppMessagesResponse {
        let now = Instant::now();
        // Replies never pulled, and replies pulled but never confirmed, are let go of alike.
        let expired: Vec<Vec<String>> = state
            .ready
            .extract_if(|_, ready| ready.expires <= now)
            .map(|(_, ready)| ready.objects)
            .chain(
                state
                    .handed_out
                    .extract_if(|_, handed_out| handed_out.expires <= now)
                    .map(|(_, handed_out)| handed_out.objects),
            )
            .collect();
        for objects in expired {
            Self::release(state, objects);
        }
        let mut response = proto::PullAppMessagesResponse::default();
        for id in &request.message_ids {
            let Some(ready) = state.ready.remove(id) else {
                continue;
            };
            let handed_out = HandedOut {
                objects: ready.objects,
                // Time to pull its objects, however late it was pulled.
                expires: ready.expires.max(now + MIN_REPLY_WAIT),
            };
            if let Some(replaced) = state
                .handed_out
                .insert(ready.tree.object_id.clone(), handed_out)
            {
                Self::release(state, replaced.objects);
            }
            response.messages_list.push(ready.message);
            response.message_object_trees.push(ready.tree);
        }
        response
    }

    pub(super) fn confirm(&self, state: &mut State, reply_id: &str) {
        if let Some(handed_out) = state.handed_out.remove(reply_id) {
            Self::release(state, handed_out.objects);
        }
    }
}
