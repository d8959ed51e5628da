//! Writing and reading the safetensors format (an 8-byte little-endian header length, a JSON header
//! naming each tensor's dtype, shape and byte range, then the bytes), so the final model loads in
//! PyTorch with `safetensors.torch.load_file` and `Net.load_state_dict`.

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

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I8" => DType::I8,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// Decodes a safetensors file into arrays, ordered by their position in the data section.
pub fn decode(bytes: &[u8]) -> Result<ArrayRecord, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated header length")?;
    let header_len =
        usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| "header too large")?;
    let data_start = 8usize
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated header")?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| format!("malformed header: {e}"))?;
    let data = &bytes[data_start..];
    let mut entries = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"]
            .as_str()
            .and_then(dtype)
            .ok_or_else(|| format!("{name}: unknown dtype"))?;
        let shape: Vec<u64> = info["shape"]
            .as_array()
            .ok_or_else(|| format!("{name}: no shape"))?
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| format!("{name}: bad shape")))
            .collect::<Result<_, _>>()?;
        let offsets = info["data_offsets"]
            .as_array()
            .ok_or_else(|| format!("{name}: no offsets"))?;
        let (start, end) = match offsets.as_slice() {
            [a, b] => (
                a.as_u64().unwrap_or(u64::MAX) as usize,
                b.as_u64().unwrap_or(0) as usize,
            ),
            _ => return Err(format!("{name}: bad offsets")),
        };
        let slice = data
            .get(start..end)
            .ok_or_else(|| format!("{name}: offsets outside the data"))?;
        let array = Array {
            dtype,
            shape,
            data: slice.to_vec(),
        };
        array.validate().map_err(|e| format!("{name}: {e}"))?;
        entries.push((start, name, array));
    }
    entries.sort_by_key(|(start, _, _)| *start);
    Ok(entries
        .into_iter()
        .map(|(_, name, array)| (name, array))
        .collect())
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
}
