//! Flower's content-addressed message objects: how a message and its records travel through the
//! runtime API, as a tree of objects each named by the SHA-256 of its bytes.
//!
//! An object is `<Type> <child ids, comma-separated> <body length>`, a zero byte, then the body.
//! A `Message`'s body is its protobuf (metadata without the message id, and the error if any) and
//! its one child the `RecordDict`; a `RecordDict` and an `ArrayRecord` are JSON maps from names to
//! child ids, written as Python's `json.dumps` writes them; an `Array` is JSON metadata whose
//! `.npy` bytes are cut into `ArrayChunk`s of at most 5 MiB; metric and config records are their
//! protobuf. A message's id is its root object's id. Identical objects (two equal arrays, chunks
//! of zeros) are stored once.

use crate::proto;
use crate::records::{
    self, RecordError, array_from_parts, config_from_proto, config_to_proto, metrics_from_proto,
    metrics_to_proto,
};
use prost::Message as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use thiserror::Error;
use wire::records::{Array, ArrayRecord, Record, RecordDict};

/// The most bytes of an array's `.npy` data one chunk holds.
pub const MAX_CHUNK: usize = 5_242_880;

/// The most entries a record dict or an array record may have when read: a model with more
/// named arrays than this is unheard of, and the bound keeps building the record linear.
pub const MAX_ENTRIES: usize = 16_384;

/// One object: its id (the lowercase hex SHA-256 of its bytes) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The id.
    pub id: String,
    /// Head, separator and body.
    pub bytes: Vec<u8>,
}

impl Object {
    fn new(kind: &str, children: &[String], body: &[u8]) -> Object {
        let head = format!("{kind} {} {}", children.join(","), body.len());
        let mut bytes = Vec::with_capacity(head.len() + 1 + body.len());
        bytes.extend_from_slice(head.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(body);
        Object {
            id: object_id(&bytes),
            bytes,
        }
    }
}

/// The id of an object with these bytes.
pub fn object_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the form of an object id: 64 lowercase hex digits.
pub fn is_object_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A message as objects: its tree (whose root id is the message's id) and every distinct object,
/// children before their parents.
#[derive(Debug, Clone, PartialEq)]
pub struct Deflated {
    /// The tree of ids.
    pub tree: proto::ObjectTree,
    /// Each object once.
    pub objects: Vec<Object>,
}

impl Deflated {
    /// The message's id: its root object's.
    pub fn message_id(&self) -> &str {
        &self.tree.object_id
    }
}

/// What a message carries: records, or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Records.
    Content(RecordDict),
    /// Why there are none.
    Error(proto::Error),
}

/// Collects objects once each, in the order they are first made.
#[derive(Default)]
struct Deflater {
    seen: HashSet<String>,
    objects: Vec<Object>,
}

impl Deflater {
    fn add(&mut self, object: Object) -> String {
        let id = object.id.clone();
        if self.seen.insert(id.clone()) {
            self.objects.push(object);
        }
        id
    }

    /// Adds an object whose children are the distinct ids of `trees`; returns its tree.
    fn node(
        &mut self,
        kind: &str,
        trees: Vec<proto::ObjectTree>,
        body: &[u8],
    ) -> proto::ObjectTree {
        let children = distinct(trees);
        let ids: Vec<String> = children.iter().map(|t| t.object_id.clone()).collect();
        let object_id = self.add(Object::new(kind, &ids, body));
        proto::ObjectTree {
            object_id,
            children,
        }
    }

    fn array(&mut self, name: &str, array: &Array) -> Result<proto::ObjectTree, RecordError> {
        let parts = records::array_to_proto(name, array)?;
        let chunks: Vec<proto::ObjectTree> = parts
            .data
            .chunks(MAX_CHUNK)
            .map(|chunk| self.node("ArrayChunk", Vec::new(), chunk))
            .collect();
        let unique = distinct(chunks.clone());
        let positions: Vec<usize> = chunks
            .iter()
            .map(|chunk| {
                unique
                    .iter()
                    .position(|u| u.object_id == chunk.object_id)
                    .unwrap_or_default()
            })
            .collect();
        let mut body = String::from("{\"dtype\": ");
        push_json_string(&mut body, &parts.dtype);
        body.push_str(", \"shape\": ");
        push_json_list(&mut body, parts.shape.iter());
        body.push_str(", \"stype\": ");
        push_json_string(&mut body, &parts.stype);
        body.push_str(", \"arraychunk_ids\": ");
        push_json_list(&mut body, positions.iter());
        body.push('}');
        Ok(self.node("Array", chunks, body.as_bytes()))
    }

    fn array_record(&mut self, record: &ArrayRecord) -> Result<proto::ObjectTree, RecordError> {
        let mut trees = Vec::with_capacity(record.len());
        for (name, array) in record.iter() {
            trees.push((name, self.array(name, array)?));
        }
        let body = json_refs(
            trees
                .iter()
                .map(|(name, tree)| (*name, tree.object_id.as_str())),
        );
        Ok(self.node(
            "ArrayRecord",
            trees.into_iter().map(|(_, t)| t).collect(),
            body.as_bytes(),
        ))
    }

    fn record_dict(&mut self, content: &RecordDict) -> Result<proto::ObjectTree, RecordError> {
        let mut trees = Vec::with_capacity(content.len());
        for (name, record) in content.iter() {
            let tree = match record {
                Record::Arrays(arrays) => self.array_record(arrays)?,
                Record::Metrics(metrics) => self.node(
                    "MetricRecord",
                    Vec::new(),
                    &metrics_to_proto(metrics).encode_to_vec(),
                ),
                Record::Config(config) => self.node(
                    "ConfigRecord",
                    Vec::new(),
                    &config_to_proto(config).encode_to_vec(),
                ),
            };
            trees.push((name, tree));
        }
        let body = json_refs(
            trees
                .iter()
                .map(|(name, tree)| (*name, tree.object_id.as_str())),
        );
        Ok(self.node(
            "RecordDict",
            trees.into_iter().map(|(_, t)| t).collect(),
            body.as_bytes(),
        ))
    }
}

/// The trees with distinct ids, in first-occurrence order.
fn distinct(trees: Vec<proto::ObjectTree>) -> Vec<proto::ObjectTree> {
    let mut seen = HashSet::new();
    trees
        .into_iter()
        .filter(|tree| seen.insert(tree.object_id.clone()))
        .collect()
}

/// A message's objects. `metadata.message_id` is left out of the body, as Flower leaves it out:
/// the id is the result.
pub fn deflate(metadata: &proto::Metadata, body: &Body) -> Result<Deflated, RecordError> {
    let mut deflater = Deflater::default();
    let mut metadata = metadata.clone();
    metadata.message_id.clear();
    let (children, error) = match body {
        Body::Content(content) => (vec![deflater.record_dict(content)?], None),
        Body::Error(error) => (Vec::new(), Some(error.clone())),
    };
    let message = proto::Message {
        metadata: Some(metadata),
        content: None,
        error,
    };
    let tree = deflater.node("Message", children, &message.encode_to_vec());
    Ok(Deflated {
        tree,
        objects: deflater.objects,
    })
}

/// Python's `json.dumps` of `s` (ASCII only: everything else as `\uXXXX`, surrogate pairs above
/// the Basic Multilingual Plane).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

fn push_json_list<T: std::fmt::Display>(out: &mut String, items: impl Iterator<Item = T>) {
    let items: Vec<String> = items.map(|item| item.to_string()).collect();
    out.push('[');
    out.push_str(&items.join(", "));
    out.push(']');
}

/// `{"name": "id", ...}` as Python writes it.
fn json_refs<'a>(refs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut body = String::from("{");
    for (i, (name, id)) in refs.enumerate() {
        if i > 0 {
            body.push_str(", ");
        }
        push_json_string(&mut body, name);
        body.push_str(": ");
        push_json_string(&mut body, id);
    }
    body.push('}');
    body
}

/// Why a tree of objects is not a message.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ObjectError {
    /// An object the tree names is not among those given.
    #[error("object {0} is missing")]
    Missing(String),
    /// An object's bytes do not hash to its id.
    #[error("object {0} does not match its id")]
    WrongId(String),
    /// An object that is not of the form Flower writes.
    #[error("object {id} is malformed: {why}")]
    Malformed {
        /// The object.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// A value with no counterpart here, or inconsistent.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The message's records add up to more than the caller allows.
    #[error("the message's records exceed {0} bytes")]
    TooLarge(u64),
}

/// A message read back from its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Inflated {
    /// Its metadata (the message id is the root's id, not in the body).
    pub metadata: proto::Metadata,
    /// Its records or error.
    pub body: Body,
}

/// An object's parts, checked against its id and its expected type.
struct Parsed<'a> {
    id: &'a str,
    children: Vec<&'a str>,
    body: &'a [u8],
}

/// Reads message `root` from `objects`, checking every object's id, form and type, and that
/// the records it builds come to no more than `max_bytes`. An object may be named many times
/// (equal records, chunks of zeros), and each naming is a copy, so every naming is counted,
/// before anything is allocated for it; each object is hashed once.
pub fn inflate(
    root: &str,
    objects: &HashMap<String, Vec<u8>>,
    max_bytes: u64,
) -> Result<Inflated, ObjectError> {
    let mut reader = Inflater {
        objects,
        verified: HashSet::new(),
        budget: max_bytes,
        limit: max_bytes,
    };
    let message = reader.parse(root, "Message")?;
    let proto = proto::Message::decode(message.body).map_err(|e| malformed(root, e))?;
    let metadata = proto
        .metadata
        .ok_or_else(|| malformed(root, "no metadata"))?;
    if proto.content.is_some() {
        return Err(malformed(root, "content in the message body"));
    }
    let body = match (proto.error, message.children.as_slice()) {
        (Some(error), []) => Body::Error(error),
        (None, [content]) => {
            let records = reader.record_dict(content)?;
            // The bounds every message of this project keeps (list lengths, a serialised
            // array's description), checked where Flower's records come in.
            records.validate().map_err(|e| malformed(content, e))?;
            Body::Content(records)
        }
        _ => return Err(malformed(root, "neither one error nor one record dict")),
    };
    Ok(Inflated { metadata, body })
}

fn malformed(id: &str, why: impl ToString) -> ObjectError {
    ObjectError::Malformed {
        id: id.to_string(),
        why: why.to_string(),
    }
}

struct Inflater<'o> {
    objects: &'o HashMap<String, Vec<u8>>,
    /// Objects whose bytes were checked against their id.
    verified: HashSet<&'o str>,
    budget: u64,
    limit: u64,
}

impl<'o> Inflater<'o> {
    /// Takes `bytes` from the budget.
    fn charge(&mut self, bytes: u64) -> Result<(), ObjectError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(ObjectError::TooLarge(self.limit))?;
        Ok(())
    }

    /// Object `id`, of type `kind`, charged to the budget: each visit is a copy made.
    fn parse(&mut self, id: &str, kind: &str) -> Result<Parsed<'o>, ObjectError> {
        let (id, bytes) = self
            .objects
            .get_key_value(id)
            .ok_or_else(|| ObjectError::Missing(id.to_string()))?;
        self.charge(bytes.len() as u64)?;
        if !self.verified.contains(id.as_str()) {
            if object_id(bytes) != *id {
                return Err(ObjectError::WrongId(id.clone()));
            }
            self.verified.insert(id.as_str());
        }
        let split = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(id, "no head"))?;
        let (head, body) = (&bytes[..split], &bytes[split + 1..]);
        let head = std::str::from_utf8(head).map_err(|_| malformed(id, "head is not text"))?;
        let fields: Vec<&str> = head.split(' ').collect();
        let [found, children, length] = fields.as_slice() else {
            return Err(malformed(id, "head is not three fields"));
        };
        if *found != kind {
            return Err(malformed(id, format!("a {found} where a {kind} belongs")));
        }
        if length.parse::<usize>().ok() != Some(body.len()) {
            return Err(malformed(id, "body length differs from the head's"));
        }
        let children: Vec<&str> = if children.is_empty() {
            Vec::new()
        } else {
            children.split(',').collect()
        };
        if !children.iter().all(|child| is_object_id(child)) {
            return Err(malformed(id, "a child id is not 64 hex digits"));
        }
        Ok(Parsed { id, children, body })
    }

    /// A JSON map of names to child ids, checked against the head's children.
    fn refs(&self, parsed: &Parsed<'o>) -> Result<Vec<(String, String)>, ObjectError> {
        let map: Map<String, Value> =
            serde_json::from_slice(parsed.body).map_err(|e| malformed(parsed.id, e))?;
        let refs: Vec<(String, String)> = map
            .into_iter()
            .map(|(name, id)| match id {
                Value::String(id) => Ok((name, id)),
                _ => Err(malformed(parsed.id, "a reference is not a string")),
            })
            .collect::<Result<_, _>>()?;
        if refs.len() > MAX_ENTRIES {
            return Err(malformed(
                parsed.id,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let named: HashSet<&str> = refs.iter().map(|(_, id)| id.as_str()).collect();
        let children: HashSet<&str> = parsed.children.iter().copied().collect();
        if named != children || children.len() != parsed.children.len() {
            return Err(malformed(
                parsed.id,
                "its references and its children differ",
            ));
        }
        Ok(refs)
    }

    fn record_dict(&mut self, id: &str) -> Result<RecordDict, ObjectError> {
        let parsed = self.parse(id, "RecordDict")?;
        let mut content = RecordDict::new();
        for (name, child) in self.refs(&parsed)? {
            let kind = self
                .objects
                .get(&child)
                .and_then(|bytes| bytes.split(|&b| b == b' ').next())
                .ok_or_else(|| ObjectError::Missing(child.clone()))?;
            let record = match kind {
                b"ArrayRecord" => Record::Arrays(self.array_record(&child)?),
                b"MetricRecord" => {
                    let parsed = self.parse(&child, "MetricRecord")?;
                    let proto = proto::MetricRecord::decode(parsed.body)
                        .map_err(|e| malformed(&child, e))?;
                    Record::Metrics(metrics_from_proto(&proto)?)
                }
                b"ConfigRecord" => {
                    let parsed = self.parse(&child, "ConfigRecord")?;
                    let proto = proto::ConfigRecord::decode(parsed.body)
                        .map_err(|e| malformed(&child, e))?;
                    Record::Config(config_from_proto(&proto)?)
                }
                _ => return Err(malformed(&child, "not a record")),
            };
            content.insert(name, record);
        }
        Ok(content)
    }

    fn array_record(&mut self, id: &str) -> Result<ArrayRecord, ObjectError> {
        let parsed = self.parse(id, "ArrayRecord")?;
        let mut arrays = ArrayRecord::new();
        for (name, child) in self.refs(&parsed)? {
            let array = self.array(&child)?;
            arrays.insert(name, array);
        }
        Ok(arrays)
    }

    fn array(&mut self, id: &str) -> Result<Array, ObjectError> {
        let parsed = self.parse(id, "Array")?;
        let meta: Map<String, Value> =
            serde_json::from_slice(parsed.body).map_err(|e| malformed(id, e))?;
        let text = |key: &str| meta.get(key).and_then(Value::as_str);
        let ints = |key: &str| -> Option<Vec<i64>> {
            meta.get(key)?
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect()
        };
        let (Some(dtype), Some(stype), Some(shape), Some(positions)) = (
            text("dtype"),
            text("stype"),
            ints("shape"),
            ints("arraychunk_ids"),
        ) else {
            return Err(malformed(id, "array metadata lacks a field"));
        };
        let shape = shape
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|_| malformed(id, "a dimension is outside Flower's 32-bit range"))?;
        let distinct: HashSet<&str> = parsed.children.iter().copied().collect();
        if distinct.len() != parsed.children.len() {
            return Err(malformed(id, "a chunk is listed twice among its children"));
        }
        let mut chunks = Vec::with_capacity(parsed.children.len());
        for child in &parsed.children {
            chunks.push(self.parse(child, "ArrayChunk")?.body);
        }
        // Counted before anything is allocated: one small object may name a chunk many times.
        let mut total = 0u64;
        let mut order = Vec::with_capacity(positions.len());
        for &position in &positions {
            let chunk = usize::try_from(position)
                .ok()
                .and_then(|p| chunks.get(p))
                .ok_or_else(|| malformed(id, "a chunk index is out of range"))?;
            total = total.saturating_add(chunk.len() as u64);
            order.push(*chunk);
        }
        self.charge(total)?;
        let mut data = Vec::with_capacity(usize::try_from(total).unwrap_or(usize::MAX));
        for chunk in order {
            data.extend_from_slice(chunk);
        }
        Ok(array_from_parts(dtype, &shape, stype, data))
    }
}
