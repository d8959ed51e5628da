//! Records, following Flower's `RecordDict`: named `ArrayRecord`s (model weights), `MetricRecord`s
//! (numbers reported back) and `ConfigRecord`s (instructions and settings).
//!
//! Every collection keeps insertion order and unique names. Order matters for arrays: it is the order of
//! PyTorch's `state_dict`, so a model trained here loads there unchanged.

use crate::WireError;
use serde::{Deserialize, Serialize};

/// Element type of an [`Array`]. Variants are only ever appended (wire compatibility).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Boolean, one byte each.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> u64 {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name safetensors and NumPy use for this type.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

/// Number of bytes an array of `dtype` with `shape` occupies, or `None` on overflow.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &dim| acc.checked_mul(dim))
}

/// A dense tensor: element type, shape, and little-endian bytes in row-major order; or, with
/// [`Array::serialised`] set, an array its app serialised itself, kept byte for byte as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Array {
    /// Element type ([`DType::U8`] for a serialised array).
    pub dtype: DType,
    /// Dimensions, outermost first (PyTorch's layout); `[data.len()]` for a serialised array.
    pub shape: Vec<u64>,
    /// Little-endian element bytes, row-major; or the serialised array. Serialised as one byte
    /// string (same encoding as a sequence of bytes in postcard, but copied in one go instead of
    /// byte by byte).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// How the app described a serialised array, when `data` holds one.
    pub serialised: Option<Box<Serialised>>,
}

/// How an app described an array it serialised itself: Flower's `Array` fields other than its
/// data, exactly as given. Flower apps send such arrays with serialisation types other than
/// numpy's, and its legacy `Parameters` as arrays whose dtype and shape are left empty; neither can
/// be read as a dense tensor, and both must reach the other side unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serialised {
    /// The dtype name it claims (numpy's, for numpy arrays; empty in legacy `Parameters`).
    pub dtype: String,
    /// The shape it claims.
    pub shape: Vec<i32>,
    /// Its serialisation type (`"numpy.ndarray"` for numpy's `.npy` format).
    pub stype: String,
}

impl Array {
    /// An `f32` array from values; fails when the shape does not match the number of values.
    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Result<Self, WireError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let array = Array::dense(DType::F32, shape, data);
        array.validate()?;
        Ok(array)
    }

    /// A dense array of `dtype` and `shape` holding `data` (not checked: see [`Array::validate`]).
    pub fn dense(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Self {
        Array {
            dtype,
            shape,
            data,
            serialised: None,
        }
    }

    /// An array an app serialised itself, kept as given: `data` with the description `form`.
    pub fn serialised(form: Serialised, data: Vec<u8>) -> Self {
        Array {
            dtype: DType::U8,
            shape: vec![data.len() as u64],
            data,
            serialised: Some(Box::new(form)),
        }
    }

    /// The values of an `f32` array; `None` for another dtype or a serialised array.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if !self.is_dense() || self.dtype != DType::F32 || !self.data.len().is_multiple_of(4) {
            return None;
        }
        Some(
            self.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Checks what can be checked without the bytes (a message stream's head has none): at most
    /// [`MAX_DIMS`] dimensions, and a serialised array described as its bytes (`U8`, one
    /// dimension) within the bounds of its description.
    pub fn check_description(&self) -> Result<(), WireError> {
        if self.shape.len() > MAX_DIMS {
            return Err(WireError::Invalid(format!(
                "an array of {} dimensions (at most {MAX_DIMS})",
                self.shape.len()
            )));
        }
        let Some(form) = &self.serialised else {
            return Ok(());
        };
        if self.dtype != DType::U8 || self.shape.len() != 1 {
            return Err(WireError::Invalid(
                "a serialised array must be described as its bytes (U8, [length])".into(),
            ));
        }
        check_text_len("a serialised array's dtype", &form.dtype)?;
        check_text_len("a serialised array's serialisation type", &form.stype)?;
        if form.shape.len() > MAX_DIMS {
            return Err(WireError::Invalid(format!(
                "a serialised array claims {} dimensions (at most {MAX_DIMS})",
                form.shape.len()
            )));
        }
        Ok(())
    }

    /// Whether this is a dense tensor rather than an array its app serialised itself.
    pub fn is_dense(&self) -> bool {
        self.serialised.is_none()
    }

    /// Number of elements the shape describes.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Checks that the byte length matches dtype and shape, and [`Array::check_description`].
    pub fn validate(&self) -> Result<(), WireError> {
        self.check_description()?;
        let expected = byte_len(self.dtype, &self.shape)
            .ok_or_else(|| WireError::Invalid("array shape overflows".into()))?;
        if expected != self.data.len() as u64 {
            return Err(WireError::Invalid(format!(
                "array of shape {:?} and dtype {} needs {expected} bytes, has {}",
                self.shape,
                self.dtype.name(),
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Most dimensions an array may have (numpy's own limit is 64).
pub const MAX_DIMS: usize = 64;

/// Most elements in one list value of a config or metric record: a list costs at least a byte per
/// element on the wire, so this only matters for what an app builds itself.
pub const MAX_LIST_LEN: usize = 1 << 20;

/// Longest short text field a record carries besides its values (a serialised array's dtype
/// name or serialisation type).
pub const MAX_TEXT_LEN: usize = 1024;

fn check_text_len(what: &str, text: &str) -> Result<(), WireError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(WireError::Invalid(format!(
            "{what} of {} bytes (at most {MAX_TEXT_LEN})",
            text.len()
        )));
    }
    Ok(())
}

/// Most entries one collection may hold when decoded: a head frame of a few MiB could otherwise
/// announce about a million tiny entries, and every later step would pay for each of them.
pub const MAX_ENTRIES: usize = 1 << 16;

/// Longest entry name, in bytes, when decoded (PyTorch's longest `state_dict` keys are far shorter).
pub const MAX_NAME_LEN: usize = 1024;

/// Ordered, uniquely named entries. Serialised as a sequence of pairs so that order survives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Named<T> {
    entries: Vec<(String, T)>,
}

/// Decodes the sequence of pairs, refusing it as soon as it grows past [`MAX_ENTRIES`] or a name
/// past [`MAX_NAME_LEN`], so a hostile count costs nothing beyond the entries actually read.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "at most {MAX_ENTRIES} named entries")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                let announced = seq.size_hint().unwrap_or(0);
                if announced > MAX_ENTRIES {
                    return Err(A::Error::custom(format!(
                        "{announced} entries in one record (at most {MAX_ENTRIES})"
                    )));
                }
                // The hint is the peer's count: trust it only as far as a small reservation.
                let mut entries = Vec::with_capacity(announced.min(1024));
                while let Some((name, value)) = seq.next_element::<(String, T)>()? {
                    if entries.len() == MAX_ENTRIES {
                        return Err(A::Error::custom(format!(
                            "more than {MAX_ENTRIES} entries in one record"
                        )));
                    }
                    if name.len() > MAX_NAME_LEN {
                        return Err(A::Error::custom(format!(
                            "a name of {} bytes (at most {MAX_NAME_LEN})",
                            name.len()
                        )));
                    }
                    entries.push((name, value));
                }
                Ok(Named { entries })
            }
        }

        deserializer.deserialize_seq(Entries(std::marker::PhantomData))
    }
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named {
            entries: Vec::new(),
        }
    }
}

impl<T> Named<T> {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `name`, keeping the position of an existing entry.
    pub fn insert(&mut self, name: impl Into<String>, value: T) {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    /// Builder form of [`Named::insert`].
    pub fn with(mut self, name: impl Into<String>, value: T) -> Self {
        self.insert(name, value);
        self
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Mutable access to the entry called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Mutable access to the entry at `index` (insertion order), in constant time.
    pub fn get_index_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index).map(|(_, v)| v)
    }

    /// The same names in the same order, each value mapped by `f`. Linear: unlike collecting into
    /// a new collection, it never searches for duplicates, which the source cannot have.
    pub fn map_values<U>(&self, mut f: impl FnMut(&T) -> U) -> Named<U> {
        Named {
            entries: self
                .entries
                .iter()
                .map(|(name, value)| (name.clone(), f(value)))
                .collect(),
        }
    }

    /// Mutable entries in insertion order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut T)> {
        self.entries.iter_mut().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Fails on more than [`MAX_ENTRIES`] entries, a name longer than [`MAX_NAME_LEN`], or a
    /// duplicate name: what decoding refuses, for a collection built otherwise (from Flower's
    /// records, say).
    pub fn check_bounds(&self, what: &str) -> Result<(), WireError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(WireError::Invalid(format!(
                "{} {what} entries (at most {MAX_ENTRIES})",
                self.entries.len()
            )));
        }
        if let Some(name) = self.names().find(|name| name.len() > MAX_NAME_LEN) {
            return Err(WireError::Invalid(format!(
                "a {what} name of {} bytes (at most {MAX_NAME_LEN})",
                name.len()
            )));
        }
        self.check_unique(what)
    }

    /// Fails on a duplicate name: decoded input must not smuggle two values under one name.
    pub fn check_unique(&self, what: &str) -> Result<(), WireError> {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        match names.windows(2).find(|pair| pair[0] == pair[1]) {
            Some(pair) => Err(WireError::Invalid(format!(
                "duplicate {what} name {:?}",
                pair[0]
            ))),
            None => Ok(()),
        }
    }
}

/// Later duplicates replace earlier values in place, as [`Named::insert`] does, in linear time.
impl<T> FromIterator<(String, T)> for Named<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        let mut positions: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        let mut entries: Vec<(String, T)> = Vec::new();
        for (name, value) in iter {
            match positions.get(&name) {
                Some(&index) => entries[index].1 = value,
                None => {
                    positions.insert(name.clone(), entries.len());
                    entries.push((name, value));
                }
            }
        }
        Named { entries }
    }
}

/// Named arrays: model weights, in `state_dict` order.
pub type ArrayRecord = Named<Array>;

/// A metric value: Flower's `MetricRecord` values. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetricValue {
    /// An integer metric (for example `num-examples`).
    Int(i64),
    /// A float metric (for example `train_loss`).
    Float(f64),
    /// A list of integers.
    IntList(Vec<i64>),
    /// A list of floats.
    FloatList(Vec<f64>),
    /// An integer above `i64::MAX` (Flower sends these as unsigned).
    UInt(u64),
    /// A list of integers of which at least one is above `i64::MAX` (Flower sends such a list as
    /// unsigned).
    UIntList(Vec<u64>),
}

impl MetricValue {
    /// The number of elements of a list value; `None` for a single value.
    pub fn list_len(&self) -> Option<usize> {
        match self {
            MetricValue::Int(_) | MetricValue::Float(_) | MetricValue::UInt(_) => None,
            MetricValue::IntList(v) => Some(v.len()),
            MetricValue::FloatList(v) => Some(v.len()),
            MetricValue::UIntList(v) => Some(v.len()),
        }
    }
}

/// Named metrics.
pub type MetricRecord = Named<MetricValue>;

/// A configuration value: Flower's `ConfigRecord` values (the single ones are also TOML's).
/// Variants are only ever appended. A list holds one type, as Flower requires; an empty list is
/// whichever type Flower made it (a bool list, for Flower's Python).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConfigValue {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// An integer above `i64::MAX` (Flower sends these as unsigned).
    UInt(u64),
    /// A list of integers.
    IntList(Vec<i64>),
    /// A list of integers of which at least one is above `i64::MAX`.
    UIntList(Vec<u64>),
    /// A list of floats.
    FloatList(Vec<f64>),
    /// A list of booleans.
    BoolList(Vec<bool>),
    /// A list of strings.
    StrList(Vec<String>),
    /// A list of byte strings.
    BytesList(Vec<Vec<u8>>),
}

impl ConfigValue {
    /// The number of elements of a list value; `None` for a single value.
    pub fn list_len(&self) -> Option<usize> {
        match self {
            ConfigValue::Int(_)
            | ConfigValue::Float(_)
            | ConfigValue::Bool(_)
            | ConfigValue::Str(_)
            | ConfigValue::Bytes(_)
            | ConfigValue::UInt(_) => None,
            ConfigValue::IntList(v) => Some(v.len()),
            ConfigValue::UIntList(v) => Some(v.len()),
            ConfigValue::FloatList(v) => Some(v.len()),
            ConfigValue::BoolList(v) => Some(v.len()),
            ConfigValue::StrList(v) => Some(v.len()),
            ConfigValue::BytesList(v) => Some(v.len()),
        }
    }
}

fn check_list_len(what: &str, name: &str, len: Option<usize>) -> Result<(), WireError> {
    match len {
        Some(len) if len > MAX_LIST_LEN => Err(WireError::Invalid(format!(
            "{what} {name:?} is a list of {len} elements (at most {MAX_LIST_LEN})"
        ))),
        _ => Ok(()),
    }
}

/// Named configuration values.
pub type ConfigRecord = Named<ConfigValue>;

/// One record of a [`RecordDict`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Arrays.
    Arrays(ArrayRecord),
    /// Metrics.
    Metrics(MetricRecord),
    /// Configuration.
    Config(ConfigRecord),
}

impl Record {
    /// Checks a record's names (see [`Named::check_bounds`]) and a metric or config record's
    /// values (lists within [`MAX_LIST_LEN`]); an array record's arrays are checked by
    /// [`Array::validate`].
    pub fn check_values(&self) -> Result<(), WireError> {
        match self {
            Record::Arrays(arrays) => arrays.check_bounds("array"),
            Record::Metrics(metrics) => {
                metrics.check_bounds("metric")?;
                metrics
                    .iter()
                    .try_for_each(|(name, v)| check_list_len("metric", name, v.list_len()))
            }
            Record::Config(config) => {
                config.check_bounds("config")?;
                config
                    .iter()
                    .try_for_each(|(name, v)| check_list_len("config entry", name, v.list_len()))
            }
        }
    }
}

/// The content of a message: named records of any kind.
pub type RecordDict = Named<Record>;

impl RecordDict {
    /// The array record called `name`.
    pub fn arrays(&self, name: &str) -> Option<&ArrayRecord> {
        match self.get(name) {
            Some(Record::Arrays(arrays)) => Some(arrays),
            _ => None,
        }
    }

    /// The metric record called `name`.
    pub fn metrics(&self, name: &str) -> Option<&MetricRecord> {
        match self.get(name) {
            Some(Record::Metrics(metrics)) => Some(metrics),
            _ => None,
        }
    }

    /// The config record called `name`.
    pub fn config(&self, name: &str) -> Option<&ConfigRecord> {
        match self.get(name) {
            Some(Record::Config(config)) => Some(config),
            _ => None,
        }
    }

    /// Checks every invariant a decoded record dict must hold.
    pub fn validate(&self) -> Result<(), WireError> {
        self.check_bounds("record")?;
        for (_, record) in self.iter() {
            record.check_values()?;
            if let Record::Arrays(arrays) = record {
                for (_, array) in arrays.iter() {
                    array.validate()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let mut record = MetricRecord::new();
        record.insert("b", MetricValue::Int(1));
        record.insert("a", MetricValue::Int(2));
        record.insert("b", MetricValue::Int(3));
        let names: Vec<_> = record.names().collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(record.get("b"), Some(&MetricValue::Int(3)));
    }

    #[test]
    fn array_with_wrong_length_is_invalid() {
        let array = Array {
            dtype: DType::F32,
            shape: vec![2, 2],
            data: vec![0; 15],
            serialised: None,
        };
        assert!(matches!(array.validate(), Err(WireError::Invalid(_))));
    }

    #[test]
    fn overflowing_shape_is_invalid() {
        let array = Array {
            dtype: DType::F64,
            shape: vec![u64::MAX, 2],
            data: vec![],
            serialised: None,
        };
        assert!(array.validate().is_err());
    }

    #[test]
    fn f32_round_trip() {
        let array = Array::from_f32(vec![3], &[1.0, -2.5, 3.25]).unwrap();
        assert_eq!(array.to_f32().unwrap(), [1.0, -2.5, 3.25]);
        assert!(Array::from_f32(vec![4], &[1.0]).is_err());
    }

    fn legacy_parameters() -> Serialised {
        Serialised {
            dtype: String::new(),
            shape: Vec::new(),
            stype: "numpy.ndarray".into(),
        }
    }

    #[test]
    fn a_serialised_array_is_described_as_its_bytes() {
        let array = Array::serialised(legacy_parameters(), vec![1, 2, 3]);
        assert_eq!((array.dtype, array.shape.as_slice()), (DType::U8, &[3][..]));
        assert!(array.validate().is_ok());
        assert!(!array.is_dense());
        assert_eq!(array.to_f32(), None);
        let mut claims_more = array.clone();
        claims_more.shape = vec![4];
        assert!(claims_more.validate().is_err());
        let mut as_floats = Array::serialised(legacy_parameters(), vec![0; 4]);
        as_floats.dtype = DType::F32;
        as_floats.shape = vec![1];
        assert!(as_floats.validate().is_err());
    }

    #[test]
    fn a_serialised_arrays_description_is_bounded() {
        let mut form = legacy_parameters();
        form.stype = "x".repeat(MAX_TEXT_LEN + 1);
        assert!(Array::serialised(form, vec![]).validate().is_err());
        let mut form = legacy_parameters();
        form.dtype = "x".repeat(MAX_TEXT_LEN + 1);
        assert!(Array::serialised(form, vec![]).validate().is_err());
        let mut form = legacy_parameters();
        form.shape = vec![1; MAX_DIMS + 1];
        assert!(Array::serialised(form, vec![]).validate().is_err());
    }

    #[test]
    fn lists_are_bounded() {
        let at_limit =
            ConfigRecord::new().with("l", ConfigValue::BoolList(vec![true; MAX_LIST_LEN]));
        assert!(Record::Config(at_limit).check_values().is_ok());
        let beyond =
            ConfigRecord::new().with("l", ConfigValue::BoolList(vec![true; MAX_LIST_LEN + 1]));
        assert!(Record::Config(beyond).check_values().is_err());
        let beyond =
            MetricRecord::new().with("l", MetricValue::UIntList(vec![0; MAX_LIST_LEN + 1]));
        let dict = RecordDict::new().with("m", Record::Metrics(beyond));
        assert!(dict.validate().is_err());
    }
}
