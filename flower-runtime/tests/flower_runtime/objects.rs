//! Our objects against Flower 1.42's own (`tests/fixtures/objects.json`, written by
//! `scripts/flower-object-fixtures` from Flower's implementation): the same messages deflate to
//! the same ids and bytes, Flower's objects inflate to the same records, and anything else is a
//! typed error.

#![allow(clippy::unwrap_used)]

use flower_runtime::objects::{Body, ObjectError, deflate, inflate, object_id};
use flower_runtime::proto;
use serde_json::Value;
use std::collections::HashMap;
use wire::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, DType, MetricRecord, MetricValue, Record,
    RecordDict, Serialised,
};

const NO_LIMIT: u64 = u64::MAX;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../fixtures/objects.json")).unwrap()
}

/// An exactly representable f32 as f16 bits.
fn f16_bits(value: f32) -> u16 {
    if value == 0.0 {
        return 0;
    }
    let bits = value.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    (((bits >> 16) & 0x8000) | ((exponent as u32) << 10) | ((bits >> 13) & 0x3ff)) as u16
}

/// The array a fixture describes: `ramp` is 0, 1, 2, ... (times 0.5 for floats; for bool, odd
/// positions true), `zeros` is zeros; as the script builds it with numpy.
fn array(spec: &Value) -> Array {
    let dtype = spec[0].as_str().unwrap();
    let shape: Vec<u64> = spec[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    let zeros = spec[2] == "zeros";
    let count: u64 = shape.iter().product();
    let value = |i: u64| if zeros { 0.0 } else { i as f64 };
    let (dtype, data): (DType, Vec<u8>) = match dtype {
        "float32" => (
            DType::F32,
            (0..count)
                .flat_map(|i| ((value(i) * 0.5) as f32).to_le_bytes())
                .collect(),
        ),
        "float64" => (
            DType::F64,
            (0..count)
                .flat_map(|i| (value(i) * 0.5).to_le_bytes())
                .collect(),
        ),
        "float16" => (
            DType::F16,
            (0..count)
                .flat_map(|i| f16_bits((value(i) * 0.5) as f32).to_le_bytes())
                .collect(),
        ),
        "int8" => (
            DType::I8,
            (0..count).map(|i| value(i) as i8 as u8).collect(),
        ),
        "int32" => (
            DType::I32,
            (0..count)
                .flat_map(|i| (value(i) as i32).to_le_bytes())
                .collect(),
        ),
        "int64" => (
            DType::I64,
            (0..count)
                .flat_map(|i| (value(i) as i64).to_le_bytes())
                .collect(),
        ),
        "uint8" => (DType::U8, (0..count).map(|i| value(i) as u8).collect()),
        "bool" => (DType::Bool, (0..count).map(|i| (i % 2) as u8).collect()),
        other => panic!("no dtype {other}"),
    };
    Array::dense(dtype, shape, data)
}

fn body(description: &Value) -> Body {
    let description = description.as_object().unwrap();
    if let Some(error) = description.get("error") {
        return Body::Error(proto::Error {
            code: error[0].as_i64().unwrap(),
            reason: error[1].as_str().unwrap().to_string(),
        });
    }
    let mut content = RecordDict::new();
    if let Some(arrays) = description.get("arrays") {
        let record: ArrayRecord = arrays
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, spec)| (name.clone(), array(spec)))
            .collect();
        content.insert("arrays", Record::Arrays(record));
    }
    if let Some(metrics) = description.get("metrics") {
        let record: MetricRecord = metrics
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::Number(n) if n.is_i64() => MetricValue::Int(n.as_i64().unwrap()),
                    Value::Number(n) => MetricValue::Float(n.as_f64().unwrap()),
                    Value::Array(items) if items[0].is_i64() => {
                        MetricValue::IntList(items.iter().map(|v| v.as_i64().unwrap()).collect())
                    }
                    Value::Array(items) => {
                        MetricValue::FloatList(items.iter().map(|v| v.as_f64().unwrap()).collect())
                    }
                    other => panic!("metric {other}"),
                };
                (name.clone(), value)
            })
            .collect();
        content.insert("metrics", Record::Metrics(record));
    }
    if let Some(config) = description.get("config") {
        let record: ConfigRecord = config
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| {
                let value = match (name.as_str(), value) {
                    ("blob", Value::String(hex)) => ConfigValue::Bytes(
                        (0..hex.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                            .collect(),
                    ),
                    (_, Value::Bool(b)) => ConfigValue::Bool(*b),
                    (_, Value::String(s)) => ConfigValue::Str(s.clone()),
                    (_, Value::Number(n)) if n.is_i64() => ConfigValue::Int(n.as_i64().unwrap()),
                    (_, Value::Number(n)) => ConfigValue::Float(n.as_f64().unwrap()),
                    (_, other) => panic!("config {other}"),
                };
                (name.clone(), value)
            })
            .collect();
        content.insert("config", Record::Config(record.clone()));
        content.insert("same config", Record::Config(record));
    }
    if let Some(config) = description.get("typed config") {
        let record: ConfigRecord = typed_values(config, config_value);
        content.insert("config", Record::Config(record));
    }
    if let Some(metrics) = description.get("typed metrics") {
        let record: MetricRecord = typed_values(metrics, metric_value);
        content.insert("metrics", Record::Metrics(record));
    }
    if let Some(records) = description.get("raw records") {
        for (record_name, arrays) in records.as_object().unwrap() {
            let record: ArrayRecord = arrays
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, spec)| (name.clone(), raw_array(&spec["raw"])))
                .collect();
            content.insert(record_name.clone(), Record::Arrays(record));
        }
    }
    Body::Content(content)
}

/// A record whose values the fixture gives as `[Flower's oneof field, value]`.
fn typed_values<T>(
    values: &Value,
    value_of: impl Fn(&str, &Value) -> T,
) -> wire::records::Named<T> {
    values
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, typed)| {
            let kind = typed[0].as_str().unwrap();
            (name.clone(), value_of(kind, &typed[1]))
        })
        .collect()
}

fn list<T>(value: &Value, item: impl Fn(&Value) -> T) -> Vec<T> {
    value.as_array().unwrap().iter().map(item).collect()
}

fn unhex(value: &Value) -> Vec<u8> {
    let hex = value.as_str().unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn config_value(kind: &str, value: &Value) -> ConfigValue {
    match kind {
        "sint64" => ConfigValue::Int(value.as_i64().unwrap()),
        "uint64" => ConfigValue::UInt(value.as_u64().unwrap()),
        "double" => ConfigValue::Float(value.as_f64().unwrap()),
        "bool" => ConfigValue::Bool(value.as_bool().unwrap()),
        "string" => ConfigValue::Str(value.as_str().unwrap().to_string()),
        "bytes" => ConfigValue::Bytes(unhex(value)),
        "sint_list" => ConfigValue::IntList(list(value, |v| v.as_i64().unwrap())),
        "uint_list" => ConfigValue::UIntList(list(value, |v| v.as_u64().unwrap())),
        "double_list" => ConfigValue::FloatList(list(value, |v| v.as_f64().unwrap())),
        "bool_list" => ConfigValue::BoolList(list(value, |v| v.as_bool().unwrap())),
        "string_list" => ConfigValue::StrList(list(value, |v| v.as_str().unwrap().to_string())),
        "bytes_list" => ConfigValue::BytesList(list(value, unhex)),
        other => panic!("config kind {other}"),
    }
}

fn metric_value(kind: &str, value: &Value) -> MetricValue {
    match kind {
        "sint64" => MetricValue::Int(value.as_i64().unwrap()),
        "uint64" => MetricValue::UInt(value.as_u64().unwrap()),
        "double" => MetricValue::Float(value.as_f64().unwrap()),
        "sint_list" => MetricValue::IntList(list(value, |v| v.as_i64().unwrap())),
        "uint_list" => MetricValue::UIntList(list(value, |v| v.as_u64().unwrap())),
        "double_list" => MetricValue::FloatList(list(value, |v| v.as_f64().unwrap())),
        other => panic!("metric kind {other}"),
    }
}

/// An array kept as Flower gave it: `[dtype, shape, stype, data as hex]`.
fn raw_array(parts: &Value) -> Array {
    let form = Serialised {
        dtype: parts[0].as_str().unwrap().to_string(),
        shape: list(&parts[1], |d| i32::try_from(d.as_i64().unwrap()).unwrap()),
        stype: parts[2].as_str().unwrap().to_string(),
    };
    Array::serialised(form, unhex(&parts[3]))
}

fn metadata(case: &Value) -> proto::Metadata {
    let name = case["name"].as_str().unwrap();
    let message_type = case["message_type"].as_str().unwrap();
    proto::Metadata {
        run_id: (1 << 63) + 5,
        message_id: String::new(),
        src_node_id: 1,
        dst_node_id: u64::MAX - 6,
        reply_to_message_id: String::new(),
        group_id: "3".into(),
        ttl: 43200.0,
        message_type: message_type.into(),
        created_at: 1_767_225_600.25,
        src_task_id: (name == "train").then_some(77),
        dst_task_id: None,
    }
}

fn tree_json(tree: &proto::ObjectTree) -> Value {
    serde_json::json!({
        "id": tree.object_id,
        "children": tree.children.iter().map(tree_json).collect::<Vec<_>>(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn our_messages_deflate_to_flowers_objects_byte_for_byte() {
    for case in fixtures()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ours = deflate(&metadata(case), &body(&case["message"])).unwrap();
        assert_eq!(ours.message_id(), case["id"], "{name}: message id");
        assert_eq!(tree_json(&ours.tree), case["tree"], "{name}: tree");
        let theirs = case["objects"].as_object().unwrap();
        assert_eq!(ours.objects.len(), theirs.len(), "{name}: object count");
        for object in &ours.objects {
            assert_eq!(object_id(&object.bytes), object.id);
            match &theirs[&object.id] {
                Value::String(bytes) => assert_eq!(&hex(&object.bytes), bytes, "{name}"),
                // Large: the id, a SHA-256 of the bytes, stands for them.
                _ => assert!(object.bytes.len() >= 64 * 1024),
            }
        }
    }
}

#[test]
fn flowers_objects_inflate_to_the_same_records() {
    for case in fixtures()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = body(&case["message"]);
        // Flower's bytes where the fixture holds them; for the large chunks, ours, which the
        // previous test shows are Flower's (same SHA-256).
        let ours = deflate(&metadata(case), &expected).unwrap();
        let mut objects: HashMap<String, Vec<u8>> = ours
            .objects
            .into_iter()
            .map(|object| (object.id, object.bytes))
            .collect();
        for (id, bytes) in case["objects"].as_object().unwrap() {
            if let Value::String(hex) = bytes {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                objects.insert(id.clone(), bytes);
            }
        }
        let inflated = inflate(case["id"].as_str().unwrap(), &objects, NO_LIMIT).unwrap();
        assert_eq!(inflated.body, expected, "{name}");
        assert_eq!(inflated.metadata, metadata(case), "{name}");
    }
}

fn train_objects() -> (String, HashMap<String, Vec<u8>>) {
    let case = &fixtures()["cases"][0];
    let deflated = deflate(&metadata(case), &body(&case["message"])).unwrap();
    let objects = deflated
        .objects
        .into_iter()
        .map(|object| (object.id, object.bytes))
        .collect();
    (deflated.tree.object_id, objects)
}

#[test]
fn a_missing_or_altered_object_is_a_typed_error() {
    let (root, objects) = train_objects();
    for id in objects.keys() {
        let mut missing = objects.clone();
        missing.remove(id);
        assert_eq!(
            inflate(&root, &missing, NO_LIMIT),
            Err(ObjectError::Missing(id.clone()))
        );
        let mut altered = objects.clone();
        altered.get_mut(id).unwrap().push(b' ');
        assert_eq!(
            inflate(&root, &altered, NO_LIMIT),
            Err(ObjectError::WrongId(id.clone()))
        );
    }
}

/// An object made by hand, named by its hash so that only its form is wrong.
fn forged(kind: &str, children: &[&str], body: &[u8]) -> (String, Vec<u8>) {
    let mut bytes = format!("{kind} {} {}", children.join(","), body.len()).into_bytes();
    bytes.push(0);
    bytes.extend_from_slice(body);
    (object_id(&bytes), bytes)
}

#[test]
fn a_chunk_named_many_times_is_refused_before_anything_is_allocated() {
    let npy = flower_runtime::npy::encode(&Array::from_f32(vec![1], &[1.0]).unwrap()).unwrap();
    let (chunk_id, chunk) = forged("ArrayChunk", &[], &npy);
    let many = vec!["0"; 100_000].join(", ");
    let meta = format!(
        "{{\"dtype\": \"float32\", \"shape\": [1], \"stype\": \"numpy.ndarray\", \"arraychunk_ids\": [{many}]}}"
    );
    let (array_id, array) = forged("Array", &[&chunk_id], meta.as_bytes());
    let refs = format!("{{\"a\": \"{array_id}\"}}");
    let (arrays_id, arrays) = forged("ArrayRecord", &[&array_id], refs.as_bytes());
    let refs = format!("{{\"arrays\": \"{arrays_id}\"}}");
    let (content_id, content) = forged("RecordDict", &[&arrays_id], refs.as_bytes());
    let message = prost::Message::encode_to_vec(&proto::Message {
        metadata: Some(metadata(&fixtures()["cases"][0])),
        content: None,
        error: None,
    });
    let (root, message) = forged("Message", &[&content_id], &message);
    let objects: HashMap<String, Vec<u8>> = [
        (chunk_id, chunk),
        (array_id, array),
        (arrays_id, arrays),
        (content_id, content),
        (root.clone(), message),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        inflate(&root, &objects, 1 << 20),
        Err(ObjectError::TooLarge(1 << 20))
    );
}

#[test]
fn objects_of_the_wrong_kind_or_form_are_malformed() {
    let (root, objects) = train_objects();
    let cases: [(&str, &[&str], &[u8]); 4] = [
        ("RecordDict", &[], b"{}"),
        ("Message", &["not-an-id"], b""),
        ("Message", &[], b"\xff\xff"),
        ("Message", &[], b""),
    ];
    for (kind, children, body) in cases {
        let (id, bytes) = forged(kind, children, body);
        let mut objects = objects.clone();
        objects.insert(id.clone(), bytes);
        assert!(
            matches!(
                inflate(&id, &objects, NO_LIMIT),
                Err(ObjectError::Malformed { .. })
            ),
            "{kind} {body:?}"
        );
    }
    assert!(inflate(&root, &objects, NO_LIMIT).is_ok());
}
