//! Where datasets come from: CIFAR-10's binary release, Fashion-MNIST's IDX files (as Debian's
//! `dataset-fashion-mnist` installs them), and a seeded synthetic set of CIFAR-10's shape.
//! Only training splits are read: partitions are carved from them and split 80/20, as in the
//! Flower example.

use super::format::{Dataset, DatasetError};
use flate2::read::GzDecoder;
use rand::RngExt as _;
use std::io::Read;
use std::path::Path;

/// Canonical CIFAR-10 binary tarball.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// MD5 of the tarball, as published with it (and pinned by torchvision).
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Bytes per CIFAR-10 record: a label, then 3 x 32 x 32 pixels (R plane, G plane, B plane).
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

fn source(message: impl Into<String>) -> DatasetError {
    DatasetError::Source(message.into())
}

/// Reads a file, gunzipping it when its name ends in `.gz`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| source(format!("{}: not valid gzip: {e}", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first of `names` that exists in `dir`, plain or gzipped.
fn find(dir: &Path, name: &str) -> Result<std::path::PathBuf, DatasetError> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(source(format!(
        "{} has no {name} (or {name}.gz); install Debian's dataset-fashion-mnist package or pass --source DIR",
        dir.display()
    )))
}

/// Parses an IDX file of u8 values; returns its dimensions and data.
fn parse_idx(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>), DatasetError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(source(format!("{what}: not an IDX file of unsigned bytes")));
    }
    let rank = usize::from(bytes[3]);
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(source(format!("{what}: truncated IDX header")));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 + 4 * i],
                bytes[5 + 4 * i],
                bytes[6 + 4 * i],
                bytes[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| source(format!("{what}: size overflows")))?;
    if bytes.len() != header + len {
        return Err(source(format!(
            "{what}: {} data bytes, header announces {len}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Fashion-MNIST's training set (60,000 images of 1 x 28 x 28) from its IDX files in `dir`.
pub fn fashion_mnist(dir: &Path) -> Result<Dataset, DatasetError> {
    let images_path = find(dir, "train-images-idx3-ubyte")?;
    let labels_path = find(dir, "train-labels-idx1-ubyte")?;
    let (image_dims, pixels) = parse_idx(
        &read_maybe_gz(&images_path)?,
        &images_path.display().to_string(),
    )?;
    let (label_dims, labels) = parse_idx(
        &read_maybe_gz(&labels_path)?,
        &labels_path.display().to_string(),
    )?;
    let [count, height, width] = image_dims[..] else {
        return Err(source(format!(
            "{}: expected 3 dimensions",
            images_path.display()
        )));
    };
    if label_dims != [count] {
        return Err(source(format!(
            "{count} images but labels of shape {label_dims:?}"
        )));
    }
    let dataset = Dataset {
        name: "fashion-mnist".into(),
        channels: 1,
        height,
        width,
        classes: 10,
        pixels,
        labels,
    };
    dataset.validate().map_err(source)?;
    Ok(dataset)
}

/// Appends the records of one CIFAR-10 binary batch.
fn push_cifar_batch(bytes: &[u8], name: &str, dataset: &mut Dataset) -> Result<(), DatasetError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(source(format!(
            "{name}: {} bytes is not a whole number of CIFAR-10 records",
            bytes.len()
        )));
    }
    for record in bytes.chunks_exact(CIFAR_RECORD) {
        dataset.labels.push(record[0]);
        dataset.pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// CIFAR-10's training set (50,000 images of 3 x 32 x 32) from the binary tarball or from its
/// extracted directory (`cifar-10-batches-bin`, or the directory holding it).
pub fn cifar10(path: &Path) -> Result<Dataset, DatasetError> {
    let mut dataset = Dataset {
        name: "cifar10".into(),
        channels: 3,
        height: 32,
        width: 32,
        classes: 10,
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    let wanted = |name: &str| (1..=5).any(|i| name == format!("data_batch_{i}.bin"));
    if path.is_dir() {
        let dir = if path.join("cifar-10-batches-bin").is_dir() {
            path.join("cifar-10-batches-bin")
        } else {
            path.to_path_buf()
        };
        for i in 1..=5 {
            let file = dir.join(format!("data_batch_{i}.bin"));
            let bytes = std::fs::read(&file).map_err(|e| DatasetError::Io {
                path: file.clone(),
                source: e,
            })?;
            push_cifar_batch(&bytes, &file.display().to_string(), &mut dataset)?;
        }
    } else {
        let file = std::fs::File::open(path).map_err(|e| DatasetError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut archive = tar::Archive::new(GzDecoder::new(file));
        let entries = archive
            .entries()
            .map_err(|e| source(format!("{}: not a tar.gz archive: {e}", path.display())))?;
        let mut batches = Vec::new();
        for entry in entries {
            let mut entry =
                entry.map_err(|e| source(format!("{}: damaged archive: {e}", path.display())))?;
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            if wanted(&name) {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| source(format!("{name}: {e}")))?;
                batches.push((name, bytes));
            }
        }
        batches.sort();
        if batches.len() != 5 {
            return Err(source(format!(
                "{}: expected data_batch_1..5.bin, found {}",
                path.display(),
                batches.len()
            )));
        }
        for (name, bytes) in batches {
            push_cifar_batch(&bytes, &name, &mut dataset)?;
        }
    }
    dataset.validate().map_err(source)?;
    Ok(dataset)
}

/// `count` learnable images of CIFAR-10's shape: every class has its own seeded pattern of
/// coloured blocks, and each image is its class's pattern with per-pixel noise and a random
/// brightness shift.
pub fn synthetic(count: usize, seed: u64) -> Dataset {
    const CLASSES: usize = 10;
    const SIDE: usize = 32;
    const BLOCK: usize = 8;
    let mut rng = super::partition::rng(seed);
    let cells = SIDE / BLOCK;
    let templates: Vec<Vec<f32>> = (0..CLASSES)
        .map(|_| {
            (0..3 * cells * cells)
                .map(|_| rng.random::<f32>())
                .collect()
        })
        .collect();
    let mut pixels = Vec::with_capacity(count * 3 * SIDE * SIDE);
    let mut labels = Vec::with_capacity(count);
    for _ in 0..count {
        let class = rng.random_range(0..CLASSES);
        let shift = rng.random_range(-0.1f32..0.1);
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let base = templates[class][(c * cells + y / BLOCK) * cells + x / BLOCK];
                    let noise = rng.random_range(-0.25f32..0.25);
                    pixels.push(((base + noise + shift).clamp(0.0, 1.0) * 255.0) as u8);
                }
            }
        }
        labels.push(class as u8);
    }
    Dataset {
        name: "synthetic".into(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        classes: CLASSES,
        pixels,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_data_is_seeded_and_valid() {
        let a = synthetic(50, 1);
        assert_eq!(a, synthetic(50, 1));
        assert_ne!(a, synthetic(50, 2));
        a.validate().unwrap();
        assert_eq!(a.image_len(), 3072);
    }

    #[test]
    fn idx_parsing_refuses_truncation() {
        let mut idx = vec![0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9];
        assert_eq!(parse_idx(&idx, "x").unwrap(), (vec![3], vec![7, 8, 9]));
        idx.pop();
        assert!(parse_idx(&idx, "x").is_err());
        assert!(parse_idx(&[0, 0, 9, 1], "x").is_err());
    }

    #[test]
    fn cifar_batches_must_hold_whole_records() {
        let mut dataset = synthetic(0, 0);
        assert!(push_cifar_batch(&[0; CIFAR_RECORD + 1], "b", &mut dataset).is_err());
        push_cifar_batch(&[3; CIFAR_RECORD * 2], "b", &mut dataset).unwrap();
        assert_eq!(dataset.labels, [3, 3]);
    }
}
