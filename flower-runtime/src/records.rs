//! Flower's record values and this project's, both ways, exactly: every value this project can
//! hold goes to Flower and back unchanged, and every Flower value that has a counterpart here comes
//! back to Flower byte for byte. The few Flower values without one (integers above `i64::MAX`,
//! lists in a config record, arrays of a dtype numpy has and this project has not) are refused
//! with a typed error rather than approximated.

use crate::npy::{self, NpyError};
use crate::proto;
use crate::proto::config_record_value::Value as ConfigProto;
use crate::proto::metric_record_value::Value as MetricProto;
use thiserror::Error;
use wire::records::{Array, ArrayRecord, ConfigRecord, ConfigValue, MetricRecord, MetricValue};

/// The serialisation type of every array Flower sends and this project writes.
pub const NUMPY_STYPE: &str = "numpy.ndarray";

/// Why a value cannot cross between Flower and this project.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RecordError {
    /// A Flower value with no counterpart here.
    #[error("{0} cannot be represented here")]
    Unsupported(String),
    /// An array's `.npy` bytes are not usable.
    #[error("array {name:?}: {error}")]
    Array {
        /// The array's name in its record.
        name: String,
        /// What is wrong with it.
        error: NpyError,
    },
    /// An array whose dtype name, serialisation type or shape disagree with its data.
    #[error("array {name:?}: {why}")]
    Inconsistent {
        /// The array's name in its record.
        name: String,
        /// What disagrees.
        why: String,
    },
    /// A value that is empty in a way Flower never writes (a oneof with nothing set).
    #[error("{0} has no value")]
    Empty(String),
}

fn unsupported_uint(what: &str, value: u64) -> RecordError {
    RecordError::Unsupported(format!(
        "{what}: the unsigned integer {value} (above i64::MAX)"
    ))
}

fn signed(what: &str, value: u64) -> Result<i64, RecordError> {
    i64::try_from(value).map_err(|_| unsupported_uint(what, value))
}

/// A metric record's protobuf body, as Flower writes it.
pub fn metrics_to_proto(record: &MetricRecord) -> proto::MetricRecord {
    let items = record
        .iter()
        .map(|(key, value)| {
            let value = match value {
                MetricValue::Int(v) => MetricProto::Sint64(*v),
                MetricValue::Float(v) => MetricProto::Double(*v),
                MetricValue::IntList(v) => {
                    MetricProto::SintList(proto::SintList { vals: v.clone() })
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

/// A metric record from Flower.
pub fn metrics_from_proto(record: &proto::MetricRecord) -> Result<MetricRecord, RecordError> {
    let mut metrics = MetricRecord::new();
    for item in &record.items {
        let what = || format!("metric {:?}", item.key);
        let value = match item.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(MetricProto::Double(v)) => MetricValue::Float(*v),
            Some(MetricProto::Sint64(v)) => MetricValue::Int(*v),
            Some(MetricProto::Uint64(v)) => MetricValue::Int(signed(&what(), *v)?),
            Some(MetricProto::DoubleList(list)) => MetricValue::FloatList(list.vals.clone()),
            Some(MetricProto::SintList(list)) => MetricValue::IntList(list.vals.clone()),
            Some(MetricProto::UintList(list)) => MetricValue::IntList(
                list.vals
                    .iter()
                    .map(|v| signed(&what(), *v))
                    .collect::<Result<_, _>>()?,
            ),
            None => return Err(RecordError::Empty(what())),
        };
        metrics.insert(item.key.clone(), value);
    }
    Ok(metrics)
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
        ConfigValue::Float(v) => ConfigProto::Double(*v),
        ConfigValue::Bool(v) => ConfigProto::Bool(*v),
        ConfigValue::Str(v) => ConfigProto::String(v.clone()),
        ConfigValue::Bytes(v) => ConfigProto::Bytes(v.clone()),
    }
}

/// A config record from Flower.
pub fn config_from_proto(record: &proto::ConfigRecord) -> Result<ConfigRecord, RecordError> {
    let mut config = ConfigRecord::new();
    for item in &record.items {
        let what = format!("config entry {:?}", item.key);
        let value = match item.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(ConfigProto::Double(v)) => ConfigValue::Float(*v),
            Some(ConfigProto::Sint64(v)) => ConfigValue::Int(*v),
            Some(ConfigProto::Uint64(v)) => ConfigValue::Int(signed(&what, *v)?),
            Some(ConfigProto::Bool(v)) => ConfigValue::Bool(*v),
            Some(ConfigProto::String(v)) => ConfigValue::Str(v.clone()),
            Some(ConfigProto::Bytes(v)) => ConfigValue::Bytes(v.clone()),
            Some(_) => return Err(RecordError::Unsupported(format!("{what}: a list"))),
            None => return Err(RecordError::Empty(what)),
        };
        config.insert(item.key.clone(), value);
    }
    Ok(config)
}

/// A run-config or node-config value (`Scalar`), as Flower writes one.
pub fn scalar_of(value: &ConfigValue) -> proto::Scalar {
    use proto::scalar::Scalar;
    let scalar = match value {
        ConfigValue::Int(v) => Scalar::Sint64(*v),
        ConfigValue::Float(v) => Scalar::Double(*v),
        ConfigValue::Bool(v) => Scalar::Bool(*v),
        ConfigValue::Str(v) => Scalar::String(v.clone()),
        ConfigValue::Bytes(v) => Scalar::Bytes(v.clone()),
    };
    proto::Scalar {
        scalar: Some(scalar),
    }
}

/// A run-config or node-config value from Flower.
pub fn config_value_of(name: &str, scalar: &proto::Scalar) -> Result<ConfigValue, RecordError> {
    use proto::scalar::Scalar;
    let what = || format!("config entry {name:?}");
    Ok(match &scalar.scalar {
        Some(Scalar::Double(v)) => ConfigValue::Float(*v),
        Some(Scalar::Uint64(v)) => ConfigValue::Int(signed(&what(), *v)?),
        Some(Scalar::Sint64(v)) => ConfigValue::Int(*v),
        Some(Scalar::Bool(v)) => ConfigValue::Bool(*v),
        Some(Scalar::String(v)) => ConfigValue::Str(v.clone()),
        Some(Scalar::Bytes(v)) => ConfigValue::Bytes(v.clone()),
        None => return Err(RecordError::Empty(what())),
    })
}

/// An array as Flower's protobuf `Array`: numpy's dtype name, the shape, and a `.npy` file.
pub fn array_to_proto(name: &str, array: &Array) -> Result<proto::Array, RecordError> {
    let (dtype, _) = npy::numpy_dtype(array.dtype).map_err(|error| RecordError::Array {
        name: name.to_string(),
        error,
    })?;
    let shape = array
        .shape
        .iter()
        .map(|&d| i32::try_from(d))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| RecordError::Inconsistent {
            name: name.to_string(),
            why: "a dimension is above Flower's limit of 2^31 - 1".into(),
        })?;
    let data = npy::encode(array).map_err(|error| RecordError::Array {
        name: name.to_string(),
        error,
    })?;
    Ok(proto::Array {
        dtype: dtype.to_string(),
        shape,
        stype: NUMPY_STYPE.to_string(),
        data,
    })
}

/// An array from its Flower parts: the dtype name, shape and serialisation type it claims, and
/// its `.npy` bytes, which must agree.
pub fn array_from_parts(
    name: &str,
    dtype: &str,
    shape: &[i64],
    stype: &str,
    data: &[u8],
) -> Result<Array, RecordError> {
    let inconsistent = |why: String| RecordError::Inconsistent {
        name: name.to_string(),
        why,
    };
    if stype != NUMPY_STYPE {
        return Err(inconsistent(format!(
            "serialisation type {stype:?} (only {NUMPY_STYPE:?} is read)"
        )));
    }
    let array = npy::decode(data).map_err(|error| RecordError::Array {
        name: name.to_string(),
        error,
    })?;
    let (numpy_name, _) = npy::numpy_dtype(array.dtype).map_err(|error| RecordError::Array {
        name: name.to_string(),
        error,
    })?;
    if numpy_name != dtype {
        return Err(inconsistent(format!(
            "dtype {dtype:?} but its data holds {numpy_name}"
        )));
    }
    let same_shape = shape.len() == array.shape.len()
        && shape
            .iter()
            .zip(&array.shape)
            .all(|(&claimed, &actual)| u64::try_from(claimed) == Ok(actual));
    if !same_shape {
        return Err(inconsistent(format!(
            "shape {shape:?} but its data has {:?}",
            array.shape
        )));
    }
    Ok(array)
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
    let mut arrays = ArrayRecord::new();
    for item in &record.items {
        let array = item
            .value
            .as_ref()
            .ok_or_else(|| RecordError::Empty(format!("array {:?}", item.key)))?;
        let shape: Vec<i64> = array.shape.iter().map(|&d| i64::from(d)).collect();
        let array = array_from_parts(&item.key, &array.dtype, &shape, &array.stype, &array.data)?;
        arrays.insert(item.key.clone(), array);
    }
    Ok(arrays)
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
    let mut records = wire::RecordDict::new();
    for item in &content.items {
        let record = match &item.value {
            Some(Value::ArrayRecord(arrays)) => wire::Record::Arrays(arrays_from_proto(arrays)?),
            Some(Value::MetricRecord(metrics)) => {
                wire::Record::Metrics(metrics_from_proto(metrics)?)
            }
            Some(Value::ConfigRecord(config)) => wire::Record::Config(config_from_proto(config)?),
            None => return Err(RecordError::Empty(format!("record {:?}", item.key))),
        };
        records.insert(item.key.clone(), record);
    }
    Ok(records)
}
