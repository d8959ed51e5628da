//! Any record dict this project can hold goes through Flower's objects and comes back the same,
//! and deflates to the same ids every time.

#![allow(clippy::unwrap_used)]

use flower_runtime::objects::{Body, deflate, inflate};
use flower_runtime::proto;
use flower_runtime::records::{record_dict_from_proto, record_dict_to_proto};
use proptest::prelude::*;
use std::collections::HashMap;
use wire::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, DType, MetricRecord, MetricValue, Record,
    RecordDict, Serialised,
};

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::I8),
        Just(DType::I32),
        Just(DType::I64),
        Just(DType::U8),
        Just(DType::Bool),
    ]
}

/// An array its app serialised itself: any description, any bytes (random bytes are never a
/// `.npy` file that reads back the same, so it stays as given even with numpy's type).
fn serialised_array() -> impl Strategy<Value = Array> {
    (
        "\\PC{0,8}",
        prop::collection::vec(any::<i32>(), 0..3),
        prop_oneof![
            Just(String::new()),
            Just("numpy.ndarray".to_string()),
            "\\PC{0,12}"
        ],
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(dtype, shape, stype, data)| {
            Array::serialised(
                Serialised {
                    dtype,
                    shape,
                    stype,
                },
                data,
            )
        })
}

fn array() -> impl Strategy<Value = Array> {
    prop_oneof![dense_array(), serialised_array()]
}

fn dense_array() -> impl Strategy<Value = Array> {
    (dtype(), prop::collection::vec(0u64..4, 0..3)).prop_flat_map(|(dtype, shape)| {
        let bytes = (shape.iter().product::<u64>() * dtype.size()) as usize;
        let data = if dtype == DType::Bool {
            prop::collection::vec(0u8..2, bytes).boxed()
        } else {
            prop::collection::vec(any::<u8>(), bytes).boxed()
        };
        data.prop_map(move |data| Array {
            dtype,
            shape: shape.clone(),
            data,
            serialised: None,
        })
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z.]{1,8}", "\\PC{1,6}"]
}

fn metric() -> impl Strategy<Value = MetricValue> {
    prop_oneof![
        any::<i64>().prop_map(MetricValue::Int),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |v| !v.is_nan())
            .prop_map(MetricValue::Float),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(MetricValue::IntList),
        prop::collection::vec(-1e9f64..1e9, 0..4).prop_map(MetricValue::FloatList),
        (1u64 << 63..=u64::MAX).prop_map(MetricValue::UInt),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(MetricValue::UIntList),
    ]
}

fn config() -> impl Strategy<Value = ConfigValue> {
    prop_oneof![
        any::<i64>().prop_map(ConfigValue::Int),
        (-1e9f64..1e9).prop_map(ConfigValue::Float),
        any::<bool>().prop_map(ConfigValue::Bool),
        "\\PC{0,8}".prop_map(ConfigValue::Str),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(ConfigValue::Bytes),
        (1u64 << 63..=u64::MAX).prop_map(ConfigValue::UInt),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(ConfigValue::IntList),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(ConfigValue::UIntList),
        prop::collection::vec(-1e9f64..1e9, 0..4).prop_map(ConfigValue::FloatList),
        prop::collection::vec(any::<bool>(), 0..4).prop_map(ConfigValue::BoolList),
        prop::collection::vec("\\PC{0,4}", 0..4).prop_map(ConfigValue::StrList),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..4)
            .prop_map(ConfigValue::BytesList),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        prop::collection::vec((name(), array()), 0..4)
            .prop_map(|items| Record::Arrays(items.into_iter().collect::<ArrayRecord>())),
        prop::collection::vec((name(), metric()), 0..4)
            .prop_map(|items| Record::Metrics(items.into_iter().collect::<MetricRecord>())),
        prop::collection::vec((name(), config()), 0..4)
            .prop_map(|items| Record::Config(items.into_iter().collect::<ConfigRecord>())),
    ]
}

fn content() -> impl Strategy<Value = RecordDict> {
    prop::collection::vec((name(), record()), 0..4).prop_map(|items| items.into_iter().collect())
}

proptest! {
    #[test]
    fn records_survive_flowers_objects_exactly(content in content()) {
        let metadata = proto::Metadata {
            run_id: 7,
            src_node_id: 1,
            dst_node_id: 9,
            message_type: "train".into(),
            ttl: 60.0,
            created_at: 1_767_225_600.0,
            ..proto::Metadata::default()
        };
        let body = Body::Content(content);
        let deflated = deflate(&metadata, &body).unwrap();
        prop_assert_eq!(&deflate(&metadata, &body).unwrap(), &deflated);
        let objects: HashMap<String, Vec<u8>> = deflated
            .objects
            .iter()
            .map(|object| (object.id.clone(), object.bytes.clone()))
            .collect();
        let inflated = inflate(deflated.message_id(), &objects, u64::MAX).unwrap();
        prop_assert_eq!(inflated.body, body);
        prop_assert_eq!(inflated.metadata, metadata);
    }

    #[test]
    fn records_survive_flowers_protobuf_form_exactly(content in content()) {
        let proto = record_dict_to_proto(&content).unwrap();
        prop_assert_eq!(record_dict_from_proto(&proto).unwrap(), content);
    }
}
