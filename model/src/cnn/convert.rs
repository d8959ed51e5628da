//! Between the Burn module and an `ArrayRecord` with PyTorch's names, shapes and layouts, so a model
//! trained here loads into the seed's PyTorch `Net` with `load_state_dict` unchanged.
//!
//! Convolutions have the same layout in both. Linear weights differ: PyTorch stores
//! `[out, in]`, Burn `[in, out]`; they are transposed on the way in and out.

use super::module::Net;
use crate::net::{InputShape, layout};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use flwr_sdk::app::AppError;
use wire::{Array, ArrayRecord, DType};

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn values(arrays: &ArrayRecord, name: &str, shape: &[usize]) -> Result<Vec<f32>, AppError> {
    let array = arrays
        .get(name)
        .ok_or_else(|| AppError::new(format!("model arrays lack {name:?}")))?;
    let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    if array.dtype != DType::F32 || array.shape != want {
        return Err(AppError::new(format!(
            "{name:?} is {} {:?}, the network needs F32 {want:?}",
            array.dtype.name(),
            array.shape
        )));
    }
    array
        .to_f32()
        .ok_or_else(|| AppError::new(format!("{name:?} is malformed")))
}

fn tensor<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Builds the network for `input` on `device` with the parameters in `arrays`.
pub fn from_arrays(
    arrays: &ArrayRecord,
    input: InputShape,
    device: &Device,
) -> Result<Net, AppError> {
    let layout = layout(input).ok_or_else(|| AppError::new("images too small for the network"))?;
    if arrays.len() != layout.len() {
        return Err(AppError::new(format!(
            "{} arrays, the network has {}",
            arrays.len(),
            layout.len()
        )));
    }
    let mut net =
        Net::new(input, device).ok_or_else(|| AppError::new("images too small for the network"))?;
    let get = |i: usize| values(arrays, layout[i].0, &layout[i].1);
    let dims4 = |s: &[usize]| [s[0], s[1], s[2], s[3]];
    net.conv1.weight = tensor(get(0)?, dims4(&layout[0].1), device);
    net.conv1.bias = Some(tensor(get(1)?, [layout[1].1[0]], device));
    net.conv2.weight = tensor(get(2)?, dims4(&layout[2].1), device);
    net.conv2.bias = Some(tensor(get(3)?, [layout[3].1[0]], device));
    for (linear, index) in [(&mut net.fc1, 4), (&mut net.fc2, 6), (&mut net.fc3, 8)] {
        let (out, inp) = (layout[index].1[0], layout[index].1[1]);
        linear.weight = tensor(transpose(&get(index)?, out, inp), [inp, out], device);
        linear.bias = Some(tensor(get(index + 1)?, [out], device));
    }
    Ok(net)
}

fn read<const D: usize>(param: &Param<Tensor<D>>) -> Result<Vec<f32>, AppError> {
    param
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| AppError::new(format!("cannot read parameters: {e:?}")))
}

fn array(shape: &[usize], values: &[f32]) -> Result<Array, AppError> {
    Array::from_f32(shape.iter().map(|&d| d as u64).collect(), values)
        .map_err(|e| AppError::new(e.to_string()))
}

/// The network's parameters as PyTorch names them.
pub fn to_arrays(net: &Net, input: InputShape) -> Result<ArrayRecord, AppError> {
    let layout = layout(input).ok_or_else(|| AppError::new("images too small for the network"))?;
    let bias =
        |b: &Option<Param<Tensor<1>>>| b.as_ref().map(read).unwrap_or_else(|| Ok(Vec::new()));
    let mut record = ArrayRecord::new();
    record.insert(layout[0].0, array(&layout[0].1, &read(&net.conv1.weight)?)?);
    record.insert(layout[1].0, array(&layout[1].1, &bias(&net.conv1.bias)?)?);
    record.insert(layout[2].0, array(&layout[2].1, &read(&net.conv2.weight)?)?);
    record.insert(layout[3].0, array(&layout[3].1, &bias(&net.conv2.bias)?)?);
    for (linear, index) in [(&net.fc1, 4), (&net.fc2, 6), (&net.fc3, 8)] {
        let (out, inp) = (layout[index].1[0], layout[index].1[1]);
        let weight = transpose(&read(&linear.weight)?, inp, out);
        record.insert(layout[index].0, array(&layout[index].1, &weight)?);
        record.insert(
            layout[index + 1].0,
            array(&layout[index + 1].1, &bias(&linear.bias)?)?,
        );
    }
    Ok(record)
}
