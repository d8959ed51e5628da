//! Flower's record values and this project's, both ways: every Flower value comes back to Flower
//! byte for byte. Integers above `i64::MAX` stay unsigned, lists keep their element type (an
//! empty one too), and an array is read as a dense tensor only where writing it back gives the
//! same bytes; any other array (another serialisation type, a dtype this project lacks, legacy
//! `Parameters` with their empty dtype and shape) is carried as given
//! ([`wire::records::Serialised`]). The other way, a value of this project comes back from Flower
//! in the form Flower itself writes: an unsigned integer or list within `i64` as a signed one, an
//! empty list as Flower types it, a serialised array that is exactly a `.npy` as a dense one.
//!
//! What cannot cross is refused with a typed error: a list in a run or node config (Flower's
//! `Scalar` holds single values) and a value with nothing set.

use crate::npy;
use crate::proto;
use crate::proto::config_record_value::Value as ConfigProto;
use crate::proto::metric_record_value::Value as MetricProto;
use thiserror::Error;
use wire::records::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, MAX_ENTRIES, MAX_LIST_LEN, MetricRecord,
    MetricValue, Serialised,
};

/// The serialisation type of numpy's `.npy` format, which Flower uses for its own arrays.
pub const NUMPY_STYPE: &str = "numpy.ndarray";

/// Why a value cannot cross between Flower and this project.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RecordError {
    /// A value with no counterpart on the other side.
    #[error("{0} cannot be represented here")]
    Unsupported(String),
    /// An array this project holds that Flower's `Array` cannot describe.
    #[error("array {name:?}: {why}")]
    Inconsistent {
        /// The array's name in its record.
        name: String,
        /// What stands in the way.
        why: String,
    },
    /// A value that is empty in a way Flower never writes (a oneof with nothing set).
    #[error("{0} has no value")]
    Empty(String),
    /// A record beyond this project's bounds (entries, list lengths).
    #[error("{0}")]
    Beyond(String),
}

/// Refuses a record of `count` items before any is converted.
fn check_entries(what: &str, count: usize) -> Result<(), RecordError> {
    if count > MAX_ENTRIES {
        return Err(RecordError::Beyond(format!(
            "a {what} record of {count} entries (at most {MAX_ENTRIES})"
        )));
    }
    Ok(())
}

/// A copy of the list `values`, refused before it is copied when it is beyond the bound.
fn list<T: Clone>(what: &dyn Fn() -> String, values: &[T]) -> Result<Vec<T>, RecordError> {
    if values.len() > MAX_LIST_LEN {
        return Err(RecordError::Beyond(format!(
            "{} is a list of {} elements (at most {MAX_LIST_LEN})",
            what(),
            values.len()
        )));
    }
    Ok(values.to_vec())
}

/// A metric record's protobuf body, as Flower writes it.
pub fn metrics_to_proto(record: &MetricRecord) -> proto::MetricRecord {
    let items = record
        .iter()
        .map(|(key, value)| {
            let value = match value {
                MetricValue::Int(v) => MetricProto::Sint64(*v),
                MetricValue::UInt(v) => MetricProto::Uint64(*v),
                MetricValue::Float(v) => MetricProto::Double(*v),
                MetricValue::IntList(v) => {
                    MetricProto::SintList(proto::SintList { vals: v.clone() })
                }
                MetricValue::UIntList(v) => {
                    MetricProto::UintList(proto::UintList { vals: v.clone() })
                }
                MetricValue::FloatList(v) => {
                    MetricProto::DoubleList(proto::DoubleList { vals: v.clone() })
                }
            };
            proto::metric_record::Item {
                key: key.to_string(),
                value: Some(proto::MetricRecordValue { value: Some(value) }),
            }
        })
        .collect();
    proto::MetricRecord { items }
}

/// A metric record from Flower (a name given twice keeps its last value, as in Python's dict).
pub fn metrics_from_proto(record: &proto::MetricRecord) -> Result<MetricRecord, RecordError> {
    check_entries("metric", record.items.len())?;
    record
        .items
        .iter()
        .map(|item| {
            let what = || format!("metric {:?}", item.key);
            let value = match item.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(MetricProto::Double(v)) => MetricValue::Float(*v),
                Some(MetricProto::Sint64(v)) => MetricValue::Int(*v),
                Some(MetricProto::Uint64(v)) => MetricValue::UInt(*v),
                Some(MetricProto::DoubleList(l)) => MetricValue::FloatList(list(&what, &l.vals)?),
                Some(MetricProto::SintList(l)) => MetricValue::IntList(list(&what, &l.vals)?),
                Some(MetricProto::UintList(l)) => MetricValue::UIntList(list(&what, &l.vals)?),
                None => return Err(RecordError::Empty(what())),
            };
            Ok((item.key.clone(), value))
        })
        .collect()
}

/// A config record's protobuf body, as Flower writes it.
pub fn config_to_proto(record: &ConfigRecord) -> proto::ConfigRecord {
    let items = record
        .iter()
        .map(|(key, value)| proto::config_record::Item {
            key: key.to_string(),
            value: Some(proto::ConfigRecordValue {
                value: Some(config_value_to_proto(value)),
            }),
        })
        .collect();
    proto::ConfigRecord { items }
}

fn config_value_to_proto(value: &ConfigValue) -> ConfigProto {
    match value {
        ConfigValue::Int(v) => ConfigProto::Sint64(*v),
        ConfigValue::UInt(v) => ConfigProto::Uint64(*v),
        ConfigValue::Float(v) => ConfigProto::Double(*v),
        ConfigValue::Bool(v) => ConfigProto::Bool(*v),
        ConfigValue::Str(v) => ConfigProto::String(v.clone()),
        ConfigValue::Bytes(v) => ConfigProto::Bytes(v.clone()),
        ConfigValue::IntList(v) => ConfigProto::SintList(proto::SintList { vals: v.clone() }),
        ConfigValue::UIntList(v) => ConfigProto::UintList(proto::UintList { vals: v.clone() }),
        ConfigValue::FloatList(v) => ConfigProto::DoubleList(proto::DoubleList { vals: v.clone() }),
        ConfigValue::BoolList(v) => ConfigProto::BoolList(proto::BoolList { vals: v.clone() }),
        ConfigValue::StrList(v) => ConfigProto::StringList(proto::StringList { vals: v.clone() }),
        ConfigValue::BytesList(v) => ConfigProto::BytesList(proto::BytesList { vals: v.clone() }),
    }
}

/// A config record from Flower (a name given twice keeps its last value, as in Python's dict).
pub fn config_from_proto(record: &proto::ConfigRecord) -> Result<ConfigRecord, RecordError> {
    check_entries("config", record.items.len())?;
    record
        .items
        .iter()
        .map(|item| {
            let what = || format!("config entry {:?}", item.key);
            let value = match item.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(ConfigProto::Double(v)) => ConfigValue::Float(*v),
                Some(ConfigProto::Sint64(v)) => ConfigValue::Int(*v),
                Some(ConfigProto::Uint64(v)) => ConfigValue::UInt(*v),
                Some(ConfigProto::Bool(v)) => ConfigValue::Bool(*v),
                Some(ConfigProto::String(v)) => ConfigValue::Str(v.clone()),
                Some(ConfigProto::Bytes(v)) => ConfigValue::Bytes(v.clone()),
                Some(ConfigProto::DoubleList(l)) => ConfigValue::FloatList(list(&what, &l.vals)?),
                Some(ConfigProto::SintList(l)) => ConfigValue::IntList(list(&what, &l.vals)?),
                Some(ConfigProto::UintList(l)) => ConfigValue::UIntList(list(&what, &l.vals)?),
                Some(ConfigProto::BoolList(l)) => ConfigValue::BoolList(list(&what, &l.vals)?),
                Some(ConfigProto::StringList(l)) => ConfigValue::StrList(list(&what, &l.vals)?),
                Some(ConfigProto::BytesList(l)) => ConfigValue::BytesList(list(&what, &l.vals)?),
                None => return Err(RecordError::Empty(what())),
            };
            Ok((item.key.clone(), value))
        })
        .collect()
}

/// A run-config or node-config value (`Scalar`), as Flower writes one; `None` for a list, which
/// a `Scalar` cannot hold.
pub fn scalar_of(value: &ConfigValue) -> Option<proto::Scalar> {
    use proto::scalar::Scalar;
    let scalar = match value {
        ConfigValue::Int(v) => Scalar::Sint64(*v),
        ConfigValue::UInt(v) => Scalar::Uint64(*v),
        ConfigValue::Float(v) => Scalar::Double(*v),
        ConfigValue::Bool(v) => Scalar::Bool(*v),
        ConfigValue::Str(v) => Scalar::String(v.clone()),
        ConfigValue::Bytes(v) => Scalar::Bytes(v.clone()),
        ConfigValue::IntList(_)
        | ConfigValue::UIntList(_)
        | ConfigValue::FloatList(_)
        | ConfigValue::BoolList(_)
        | ConfigValue::StrList(_)
        | ConfigValue::BytesList(_) => return None,
    };
    Some(proto::Scalar {
        scalar: Some(scalar),
    })
}

/// A run-config or node-config value from Flower.
pub fn config_value_of(name: &str, scalar: &proto::Scalar) -> Result<ConfigValue, RecordError> {
    use proto::scalar::Scalar;
    Ok(match &scalar.scalar {
        Some(Scalar::Double(v)) => ConfigValue::Float(*v),
        Some(Scalar::Uint64(v)) => ConfigValue::UInt(*v),
        Some(Scalar::Sint64(v)) => ConfigValue::Int(*v),
        Some(Scalar::Bool(v)) => ConfigValue::Bool(*v),
        Some(Scalar::String(v)) => ConfigValue::Str(v.clone()),
        Some(Scalar::Bytes(v)) => ConfigValue::Bytes(v.clone()),
        None => return Err(RecordError::Empty(format!("config entry {name:?}"))),
    })
}

/// An array as Flower's protobuf `Array`: a dense one as numpy's dtype name, its shape and a
/// `.npy` file; a serialised one as it came.
pub fn array_to_proto(name: &str, array: &Array) -> Result<proto::Array, RecordError> {
    if let Some(form) = &array.serialised {
        return Ok(proto::Array {
            dtype: form.dtype.clone(),
            shape: form.shape.clone(),
            stype: form.stype.clone(),
            data: array.data.clone(),
        });
    }
    let inconsistent = |why: String| RecordError::Inconsistent {
        name: name.to_string(),
        why,
    };
    let (dtype, _) = npy::numpy_dtype(array.dtype).map_err(|e| inconsistent(e.to_string()))?;
    let shape = array
        .shape
        .iter()
        .map(|&d| i32::try_from(d))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| inconsistent("a dimension is above Flower's limit of 2^31 - 1".into()))?;
    let data = npy::encode(array).map_err(|e| inconsistent(e.to_string()))?;
    Ok(proto::Array {
        dtype: dtype.to_string(),
        shape,
        stype: NUMPY_STYPE.to_string(),
        data,
    })
}

/// An array from its Flower parts: a dense tensor when they describe a `.npy` file exactly as
/// [`array_to_proto`] would write it back, and otherwise the parts themselves, kept as given.
pub fn array_from_parts(dtype: &str, shape: &[i32], stype: &str, data: Vec<u8>) -> Array {
    if stype == NUMPY_STYPE
        && let Some(array) = dense_npy(dtype, shape, &data)
    {
        return array;
    }
    Array::serialised(
        Serialised {
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            stype: stype.to_string(),
        },
        data,
    )
}

/// The dense tensor a `.npy` file holds, when its dtype name and shape are the ones claimed and
/// numpy's own header for them is the one it has (so nothing is lost in reading it).
fn dense_npy(dtype: &str, shape: &[i32], data: &[u8]) -> Option<Array> {
    let array = npy::decode(data).ok()?;
    let (numpy_name, _) = npy::numpy_dtype(array.dtype).ok()?;
    let same_shape = shape.len() == array.shape.len()
        && shape
            .iter()
            .zip(&array.shape)
            .all(|(&claimed, &actual)| u64::try_from(claimed) == Ok(actual));
    let header_len = data.len() - array.data.len();
    let same_header = npy::header(array.dtype, &array.shape).ok()? == data[..header_len];
    (numpy_name == dtype && same_shape && same_header).then_some(array)
}

/// An array record as Flower's protobuf form (used for a context's state).
pub fn arrays_to_proto(record: &ArrayRecord) -> Result<proto::ArrayRecord, RecordError> {
    let items = record
        .iter()
        .map(|(key, array)| {
            Ok(proto::array_record::Item {
                key: key.to_string(),
                value: Some(array_to_proto(key, array)?),
            })
        })
        .collect::<Result<_, RecordError>>()?;
    Ok(proto::ArrayRecord { items })
}

/// An array record from Flower's protobuf form.
pub fn arrays_from_proto(record: &proto::ArrayRecord) -> Result<ArrayRecord, RecordError> {
    check_entries("array", record.items.len())?;
    record
        .items
        .iter()
        .map(|item| {
            let array = item
                .value
                .as_ref()
                .ok_or_else(|| RecordError::Empty(format!("array {:?}", item.key)))?;
            let array =
                array_from_parts(&array.dtype, &array.shape, &array.stype, array.data.clone());
            Ok((item.key.clone(), array))
        })
        .collect()
}

/// A record dict in Flower's protobuf form (a context's state travels so).
pub fn record_dict_to_proto(content: &wire::RecordDict) -> Result<proto::RecordDict, RecordError> {
    use proto::record_dict::item::Value;
    let items = content
        .iter()
        .map(|(key, record)| {
            let value = match record {
                wire::Record::Arrays(arrays) => Value::ArrayRecord(arrays_to_proto(arrays)?),
                wire::Record::Metrics(metrics) => Value::MetricRecord(metrics_to_proto(metrics)),
                wire::Record::Config(config) => Value::ConfigRecord(config_to_proto(config)),
            };
            Ok(proto::record_dict::Item {
                key: key.to_string(),
                value: Some(value),
            })
        })
        .collect::<Result<_, RecordError>>()?;
    Ok(proto::RecordDict { items })
}

/// A record dict from Flower's protobuf form.
pub fn record_dict_from_proto(
    content: &proto::RecordDict,
) -> Result<wire::RecordDict, RecordError> {
    use proto::record_dict::item::Value;
    check_entries("record dict", content.items.len())?;
    content
        .items
        .iter()
        .map(|item| {
            let record = match &item.value {
                Some(Value::ArrayRecord(arrays)) => {
                    wire::Record::Arrays(arrays_from_proto(arrays)?)
                }
                Some(Value::MetricRecord(metrics)) => {
                    wire::Record::Metrics(metrics_from_proto(metrics)?)
                }
                Some(Value::ConfigRecord(config)) => {
                    wire::Record::Config(config_from_proto(config)?)
                }
                None => return Err(RecordError::Empty(format!("record {:?}", item.key))),
            };
            Ok((item.key.clone(), record))
        })
        .collect()
}
