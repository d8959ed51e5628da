//! Writing and reading the safetensors format (an 8-byte little-endian header length, a JSON header
//! naming each tensor's dtype, shape and byte range, then the bytes), so the final model loads in
//! PyTorch with `safetensors.torch.load_file` and `Net.load_state_dict`.
//!
//! Writing stays here: the `safetensors` crate's writer orders tensors by dtype and name, while
//! this one keeps the `state_dict` order, so that a model read back is the model written. Reading
//! is the crate's, whose validation of a file from elsewhere is stricter than a hand-written one.

use serde_json::{Map, Value, json};
use wire::{Array, ArrayRecord, DType};

/// Encodes `arrays` (in order) with optional string metadata.
pub fn encode(arrays: &ArrayRecord, metadata: &[(&str, String)]) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let meta: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0usize;
    for (name, array) in arrays.iter() {
        let end = offset + array.data.len();
        header.insert(
            name.to_string(),
            json!({"dtype": array.dtype.name(), "shape": array.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header_bytes = Value::Object(header).to_string().into_bytes();
    // The data section starts 8-byte aligned.
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len() + offset);
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    for (_, array) in arrays.iter() {
        out.extend_from_slice(&array.data);
    }
    out
}

fn dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match dtype {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I8 => DType::I8,
        S::I32 => DType::I32,
        S::I64 => DType::I64,
        S::U8 => DType::U8,
        S::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Decodes a safetensors file into arrays, ordered by their position in the data section. The
/// `safetensors` crate (Hugging Face's own) parses and validates the header: offsets that
/// overlap, leave gaps or run past the data, sizes that disagree with dtype and shape, and
/// oversized headers are all refused.
pub fn decode(bytes: &[u8]) -> Result<ArrayRecord, String> {
    let (header_len, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let data = bytes.get(8 + header_len..).ok_or("truncated header")?;
    let mut arrays = ArrayRecord::new();
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .ok_or_else(|| format!("{name}: missing from the header"))?;
        let dtype = dtype(info.dtype)
            .ok_or_else(|| format!("{name}: unsupported dtype {:?}", info.dtype))?;
        let (start, end) = info.data_offsets;
        let slice = data
            .get(start..end)
            .ok_or_else(|| format!("{name}: offsets outside the data"))?;
        let array = Array {
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            data: slice.to_vec(),
            serialised: None,
        };
        array.validate().map_err(|e| format!("{name}: {e}"))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_order_and_bytes() {
        let arrays = ArrayRecord::new()
            .with(
                "b.weight",
                Array::from_f32(vec![2, 1], &[1.0, 2.0]).unwrap(),
            )
            .with(
                "a.bias",
                Array::from_f32(vec![3], &[3.0, 4.0, 5.0]).unwrap(),
            );
        let bytes = encode(&arrays, &[("format", "pt".into())]);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
        assert_eq!(decode(&bytes).unwrap(), arrays);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn what_we_write_is_what_the_reference_reader_reads() {
        let arrays = ArrayRecord::new()
            .with(
                "w",
                Array::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap(),
            )
            .with("b", Array::from_f32(vec![2], &[5.0, 6.0]).unwrap());
        let bytes = encode(&arrays, &[("format", "pt".into())]);
        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let w = reference.tensor("w").unwrap();
        assert_eq!(
            (w.dtype(), w.shape()),
            (safetensors::Dtype::F32, &[2, 2][..])
        );
        assert_eq!(w.data(), arrays.get("w").unwrap().data.as_slice());
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
    }

    #[test]
    fn overlapping_offsets_are_refused() {
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 4]);
        assert!(decode(&bytes).is_err());
    }
}
