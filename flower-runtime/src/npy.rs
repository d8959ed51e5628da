//! Arrays as `.npy` files, byte for byte as numpy's `np.save` writes them: what Flower puts in an
//! `Array`'s data, and so what its object ids hash.
//!
//! Format 1.0: the magic `\x93NUMPY`, the version, the header's length (u16, little-endian), then
//! the header, a Python dict literal with sorted keys (`descr`, `fortran_order`, `shape`), followed
//! by room for the first axis to grow to 21 digits, padded with spaces and a newline so that the
//! data starts on a 64-byte boundary; then the elements in C order.

use thiserror::Error;
use wire::records::{Array, DType};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The data starts on a multiple of this.
const ALIGN: usize = 64;
/// numpy leaves room in the header for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Why bytes are not an array this project can hold.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NpyError {
    /// Not a `.npy` file, or one cut short.
    #[error("not a .npy file: {0}")]
    Malformed(String),
    /// A numpy dtype with no counterpart here (complex, unsigned wider than 8 bits, ...).
    #[error("numpy dtype {0:?} is not supported")]
    UnsupportedDType(String),
    /// Arrays in Fortran order are not read.
    #[error("arrays in Fortran order are not supported")]
    FortranOrder,
    /// A dtype numpy has no name for.
    #[error("{0:?} arrays have no numpy dtype")]
    NoNumpyDType(&'static str),
    /// The data is not as long as the shape and dtype say.
    #[error("{got} bytes of data where the shape and dtype need {expected}")]
    Length {
        /// Bytes the shape and dtype need.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
}

/// numpy's name for `dtype` (what Flower's `Array.dtype` holds) and its `descr` (byte order, kind
/// and size), or why there is none.
pub fn numpy_dtype(dtype: DType) -> Result<(&'static str, &'static str), NpyError> {
    Ok(match dtype {
        DType::F32 => ("float32", "<f4"),
        DType::F64 => ("float64", "<f8"),
        DType::F16 => ("float16", "<f2"),
        DType::I8 => ("int8", "|i1"),
        DType::I32 => ("int32", "<i4"),
        DType::I64 => ("int64", "<i8"),
        DType::U8 => ("uint8", "|u1"),
        DType::Bool => ("bool", "|b1"),
        DType::BF16 => return Err(NpyError::NoNumpyDType("bfloat16")),
    })
}

fn dtype_of_descr(descr: &str) -> Result<DType, NpyError> {
    Ok(match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "|i1" => DType::I8,
        "<i4" => DType::I32,
        "<i8" => DType::I64,
        "|u1" => DType::U8,
        "|b1" => DType::Bool,
        other => return Err(NpyError::UnsupportedDType(other.to_string())),
    })
}

/// Python's `repr` of a shape tuple: `()`, `(5,)`, `(2, 3)`.
fn shape_repr(shape: &[u64]) -> String {
    match shape {
        [] => "()".to_string(),
        [only] => format!("({only},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(u64::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// `array` as numpy would save it.
pub fn encode(array: &Array) -> Result<Vec<u8>, NpyError> {
    let expected = array.numel().saturating_mul(array.dtype.size());
    if expected != array.data.len() as u64 {
        return Err(NpyError::Length {
            expected,
            got: array.data.len() as u64,
        });
    }
    let mut bytes = header(array.dtype, &array.shape)?;
    bytes.reserve_exact(array.data.len());
    bytes.extend_from_slice(&array.data);
    Ok(bytes)
}

/// The bytes numpy writes before the elements of an array of `dtype` and `shape`.
pub fn header(dtype: DType, shape: &[u64]) -> Result<Vec<u8>, NpyError> {
    let (_, descr) = numpy_dtype(dtype)?;
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        shape_repr(shape)
    );
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    // The newline ends the header; spaces before it align the data.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    let padding = ALIGN - unpadded % ALIGN;
    let header_len = header.len() + padding + 1;
    let header_len = u16::try_from(header_len).map_err(|_| {
        NpyError::Malformed("the shape is too long for a version 1.0 header".into())
    })?;
    let mut bytes = Vec::with_capacity(unpadded + padding);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + padding, b' ');
    bytes.push(b'\n');
    Ok(bytes)
}

/// The array a `.npy` file holds (any format version numpy writes).
pub fn decode(bytes: &[u8]) -> Result<Array, NpyError> {
    let malformed = |why: &str| NpyError::Malformed(why.to_string());
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| malformed("no numpy magic"))?;
    let (header, data) = match rest {
        [1, 0, a, b, rest @ ..] => {
            let len = usize::from(u16::from_le_bytes([*a, *b]));
            split(rest, len).ok_or_else(|| malformed("header cut short"))?
        }
        [2 | 3, 0, a, b, c, d, rest @ ..] => {
            let len = usize::try_from(u32::from_le_bytes([*a, *b, *c, *d]))
                .map_err(|_| malformed("header too long"))?;
            split(rest, len).ok_or_else(|| malformed("header cut short"))?
        }
        _ => return Err(malformed("unknown format version")),
    };
    let header = std::str::from_utf8(header).map_err(|_| malformed("header is not text"))?;
    let descr = quoted_value(header, "descr").ok_or_else(|| malformed("no descr"))?;
    let dtype = dtype_of_descr(descr)?;
    match raw_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err(NpyError::FortranOrder),
        _ => return Err(malformed("no fortran_order")),
    }
    let shape = parse_shape(raw_value(header, "shape").ok_or_else(|| malformed("no shape"))?)
        .ok_or_else(|| malformed("shape is not a tuple of integers"))?;
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| malformed("shape overflows"))?;
    if expected != data.len() as u64 {
        return Err(NpyError::Length {
            expected,
            got: data.len() as u64,
        });
    }
    Ok(Array::dense(dtype, shape, data.to_vec()))
}

fn split(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (at <= bytes.len()).then(|| bytes.split_at(at))
}

/// The text after `'key': ` up to the next `,` or `}` outside brackets.
fn raw_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = header.find(&format!("'{key}':"))? + key.len() + 3;
    let rest = header[start..].trim_start();
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim_end()),
            _ => {}
        }
    }
    None
}

fn quoted_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    raw_value(header, key)?
        .strip_prefix('\'')?
        .strip_suffix('\'')
}

fn parse_shape(text: &str) -> Option<Vec<u64>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_numpys_to_the_byte() {
        let array = Array::from_f32(vec![2, 3], &[0.0; 6]).unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode(&array).unwrap_or_else(|e| panic!("{e}"));
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..6], MAGIC);
        assert_eq!(&bytes[10..10 + header.len()], header.as_bytes());
        // As numpy writes it: room for the first axis to grow, then the data at byte 128.
        assert_eq!(bytes.len() - 24, 128, "data starts at 128");
        assert_eq!(bytes[127], b'\n');
        assert_eq!(decode(&bytes), Ok(array));
    }

    #[test]
    fn truncated_and_foreign_files_are_typed_errors() {
        let array = Array::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode(&array).unwrap_or_else(|e| panic!("{e}"));
        for cut in [0, 5, 9, 40, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let text = String::from_utf8_lossy(&bytes[6..128]).replace("<f4", ">f4");
        let mut big_endian = bytes[..6].to_vec();
        big_endian.extend_from_slice(text.as_bytes());
        big_endian.extend_from_slice(&bytes[128..]);
        assert_eq!(
            decode(&big_endian),
            Err(NpyError::UnsupportedDType(">f4".into()))
        );
        let header = String::from_utf8_lossy(&bytes[6..128]).replace("False", "True ");
        let mut fortran = bytes[..6].to_vec();
        fortran.extend_from_slice(header.as_bytes());
        fortran.extend_from_slice(&bytes[128..]);
        assert_eq!(decode(&fortran), Err(NpyError::FortranOrder));
    }
}
