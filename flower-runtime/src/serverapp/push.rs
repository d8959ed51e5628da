//! The push side of a `flwr-serverapp` task: a push of instructions opens a session whose
//! objects the app then pushes one by one; each instruction is read back from its objects,
//! checked against what its message said, and handed to the federation once whole.

use super::*;

impl ServerAppTask {
    pub(super) fn push_messages(
        &self,
        state: &mut State,
        request: proto::PushAppMessagesRequest,
    ) -> Result<(Vec<u8>, Vec<Outgoing>), ApiError> {
        if request.messages_list.len() != request.message_object_trees.len() {
            return Err(ApiError::new(
                400,
                3013,
                "Messages and object trees do not pair up.",
            ));
        }
        Self::forget_expired_pushes(state);
        if state.outstanding.len() + state.pushing.len() + request.messages_list.len()
            > MAX_OUTSTANDING
            || state.pushing.len() + request.messages_list.len() > MAX_PUSHING
        {
            return Err(ApiError::new(503, 3013, "Too many instructions in flight."));
        }
        if state.sessions.len() >= MAX_SESSIONS {
            return Err(ApiError::new(503, 3013, "Too many pushes under way."));
        }
        // Every tree is read before anything changes: a request refused halfway leaves nothing
        // behind.
        let mut checked = Vec::with_capacity(request.messages_list.len());
        for (message, tree) in request
            .messages_list
            .iter()
            .zip(&request.message_object_trees)
        {
            let instruction = match self.valid_instruction(message, tree) {
                Some(metadata) => {
                    let mut ids = HashSet::new();
                    collect_ids(tree, &mut ids)?;
                    let content_id = tree.children.first().map(|child| child.object_id.clone());
                    Some((tree.object_id.clone(), metadata, ids, content_id))
                }
                None => None,
            };
            checked.push(instruction);
        }
        let session: [u8; 16] = rand::random();
        let session: String = session.iter().map(|b| format!("{b:02x}")).collect();
        let mut message_ids = Vec::with_capacity(checked.len());
        let mut to_push: Vec<String> = Vec::new();
        let mut asked: HashSet<String> = HashSet::new();
        let mut ask = |object: &String, to_push: &mut Vec<String>| {
            if asked.insert(object.clone()) {
                to_push.push(object.clone());
            }
        };
        let mut complete = Vec::new();
        let mut listed = HashSet::new();
        for instruction in checked {
            let Some((id, metadata, ids, content_id)) = instruction else {
                message_ids.push(String::new());
                continue;
            };
            if !listed.insert(id.clone()) {
                // Twice in one request: it goes once.
                message_ids.push(id);
                continue;
            }
            if let Some(pushing) = state.pushing.get(&id) {
                // The same instruction again (a retry after a lost answer): this session asks
                // for what it still lacks.
                pushing
                    .missing
                    .iter()
                    .for_each(|object| ask(object, &mut to_push));
                message_ids.push(id);
                continue;
            }
            if state.outstanding.contains_key(&id) || state.ready.contains_key(&id) {
                // Sent already, and not yet answered or not yet pulled.
                message_ids.push(id);
                continue;
            }
            let missing: HashSet<String> = ids
                .into_iter()
                .filter(|id| !state.pushed.contains_key(id))
                .collect();
            missing.iter().for_each(|object| ask(object, &mut to_push));
            let pushing = Pushing {
                expires: Instant::now() + Self::reply_wait(metadata.ttl),
                metadata,
                missing,
                content_id,
            };
            if pushing.missing.is_empty() {
                complete.push((id.clone(), pushing));
            } else {
                state.pushing.insert(id.clone(), pushing);
            }
            message_ids.push(id);
        }
        if !asked.is_empty() {
            state.sessions.insert(session.clone(), asked);
        }
        let outgoing = complete
            .into_iter()
            .filter_map(|(id, pushing)| self.read_back(state, id, pushing))
            .collect();
        let response = proto::PushAppMessagesResponse {
            message_ids,
            objects_to_push: to_push,
            session_id: session,
        };
        Ok((encode(&response), outgoing))
    }

    /// Gives up on instructions whose objects did not all arrive within their time to live.
    pub(super) fn forget_expired_pushes(state: &mut State) {
        let now = Instant::now();
        state.pushing.retain(|_, pushing| pushing.expires > now);
        if state.pushing.is_empty() {
            Self::forget_pushed(state);
        }
    }

    /// Drops every pushed object and push session: no instruction being pushed needs them.
    pub(super) fn forget_pushed(state: &mut State) {
        state.pushed = HashMap::new();
        state.pushed_bytes = 0;
        state.contents = HashMap::new();
        state.sessions = HashMap::new();
    }

    /// The instruction's metadata, if it is one this run's server app may send: its own run,
    /// from node 1 to another node, no reply, a type, a positive time to live, and its tree's
    /// root as its id.
    pub(super) fn valid_instruction(
        &self,
        message: &proto::Message,
        tree: &proto::ObjectTree,
    ) -> Option<proto::Metadata> {
        let metadata = message.metadata.as_ref()?;
        let valid = metadata.run_id == self.input.run.run_id
            && metadata.src_node_id == SERVER_NODE
            && metadata.dst_node_id != 0
            && metadata.dst_node_id != SERVER_NODE
            && metadata.reply_to_message_id.is_empty()
            && !metadata.message_type.is_empty()
            && metadata.ttl.is_finite()
            && metadata.ttl > 0.0
            && is_object_id(&tree.object_id)
            && metadata.message_id == tree.object_id;
        valid.then(|| metadata.clone())
    }

    /// Reads instruction `id` back from the pushed objects; one that does not read back as
    /// pushed is answered with an error at once.
    pub(super) fn read_back(
        &self,
        state: &mut State,
        id: String,
        pushing: Pushing,
    ) -> Option<Outgoing> {
        let reply_wait = Self::reply_wait(pushing.metadata.ttl);
        match Self::records_of(state, &id, &pushing, self.max_pushed_bytes) {
            Ok(content) => {
                let outstanding = Outstanding {
                    message_type: pushing.metadata.message_type.clone(),
                    reply_wait,
                };
                state.outstanding.insert(id.clone(), outstanding);
                Some(Outgoing {
                    flower_id: id,
                    dst_node_id: pushing.metadata.dst_node_id,
                    message_type: pushing.metadata.message_type,
                    group_id: pushing.metadata.group_id,
                    ttl: pushing.metadata.ttl,
                    content,
                })
            }
            Err(error) => {
                tracing::warn!(%error, "a Flower ServerApp pushed an unreadable instruction");
                let error = proto::Error {
                    code: code::MESSAGE_UNAVAILABLE,
                    reason: format!("the instruction could not be read: {error}"),
                };
                Self::answer_in_place(state, self.input.run.run_id, &id, error, reply_wait);
                None
            }
        }
    }

    /// The records of instruction `id`, checked: its metadata is the one pushed, it carries
    /// records, and they are within `max_bytes`.
    pub(super) fn records_of(
        state: &mut State,
        id: &str,
        pushing: &Pushing,
        max_bytes: u64,
    ) -> Result<Arc<RecordDict>, ObjectError> {
        let malformed = |why: &str| ObjectError::Malformed {
            id: id.to_string(),
            why: why.into(),
        };
        let inflated = inflate(id, &state.pushed, max_bytes)?;
        let mut read = inflated.metadata;
        read.message_id = id.to_string();
        if read != pushing.metadata {
            return Err(malformed(
                "its metadata differs from that of the message pushed",
            ));
        }
        let Body::Content(records) = inflated.body else {
            return Err(malformed("an instruction carries an error, not records"));
        };
        Ok(match &pushing.content_id {
            Some(content_id) => state
                .contents
                .entry(content_id.clone())
                .or_insert_with(|| Arc::new(records))
                .clone(),
            None => Arc::new(records),
        })
    }

    /// Stores one pushed object; instructions it completes are read back and returned to send.
    pub(super) fn push_object(
        &self,
        state: &mut State,
        request: proto::PushObjectRequest,
    ) -> (bool, Vec<Outgoing>) {
        let id = request.object_id;
        if state.pushed.contains_key(&id) {
            // A retry after a lost response: the same bytes, already kept.
            return (object_id(&request.object_content) == id, Vec::new());
        }
        let asked = state
            .sessions
            .get(&request.session_id)
            .is_some_and(|ids| ids.contains(&id));
        if !asked || object_id(&request.object_content) != id {
            return (false, Vec::new());
        }
        let bytes = state
            .pushed_bytes
            .saturating_add(request.object_content.len() as u64)
            .saturating_add(OBJECT_OVERHEAD);
        if bytes > self.max_pushed_bytes {
            return (false, Vec::new());
        }
        state.pushed_bytes = bytes;
        if let Some(ids) = state.sessions.get_mut(&request.session_id) {
            ids.remove(&id);
            if ids.is_empty() {
                state.sessions.remove(&request.session_id);
            }
        }
        state.pushed.insert(id.clone(), request.object_content);
        let done: Vec<String> = state
            .pushing
            .iter_mut()
            .filter_map(|(message, pushing)| {
                (pushing.missing.remove(&id) && pushing.missing.is_empty()).then(|| message.clone())
            })
            .collect();
        let mut outgoing = Vec::new();
        for message in done {
            if let Some(pushing) = state.pushing.remove(&message)
                && let Some(instruction) = self.read_back(state, message, pushing)
            {
                outgoing.push(instruction);
            }
        }
        if state.pushing.is_empty() {
            // Nothing left that could need them: sent instructions hold their own records, and
            // a session still asking for an object asks for nothing anyone waits on.
            Self::forget_pushed(state);
        }
        (true, outgoing)
    }
}
