//! The prepared-dataset file format, version 1. A partition directory holds `train.flds` and
//! `test.flds`, each:
//!
//! ```text
//! offset  size        field
//! 0       8           magic "FLWRDS\0\x01"
//! 8       4           format version, u32 little-endian (1)
//! 12      4           channels   (u32 LE)
//! 16      4           height     (u32 LE)
//! 20      4           width      (u32 LE)
//! 24      4           classes    (u32 LE)
//! 28      8           count N    (u64 LE)
//! 36      2           name length L (u16 LE), then L bytes of UTF-8 (the source, e.g. "cifar10")
//! ..      N*C*H*W     pixels, u8, channel-major per image (C, H, W), images in order
//! ..      N           labels, u8, each < classes
//! end-32  32          SHA-256 of every byte before it
//! ```
//! A file that is truncated, from elsewhere, of another version, or damaged is refused with a
//! reason; nothing is guessed.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 8] = b"FLWRDS\0\x01";
const VERSION: u32 = 1;
const HEADER_FIXED: usize = 38;
const CHECKSUM_LEN: usize = 32;

/// File name of the training split inside a partition directory.
pub const TRAIN_FILE: &str = "train.flds";
/// File name of the test split inside a partition directory.
pub const TEST_FILE: &str = "test.flds";

/// Why a dataset could not be read or written.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a prepared dataset, is damaged, or is truncated.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A source dataset (IDX, CIFAR-10 binary) is malformed.
    #[error("{0}")]
    Source(String),
}

/// Labelled images, u8 pixels in (C, H, W) order per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Where it came from ("cifar10", "fashion-mnist", "synthetic").
    pub name: String,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
    /// Pixels of every image, concatenated.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels[index * len..(index + 1) * len]
    }

    /// A dataset of the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            pixels,
            labels,
            ..self.empty_like()
        }
    }

    /// An empty dataset with this one's shape.
    pub fn empty_like(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
            pixels: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Checks sizes and labels.
    pub fn validate(&self) -> Result<(), String> {
        if self.pixels.len() != self.labels.len() * self.image_len() {
            return Err(format!(
                "{} pixel bytes for {} images of {} bytes",
                self.pixels.len(),
                self.labels.len(),
                self.image_len()
            ));
        }
        if let Some(bad) = self
            .labels
            .iter()
            .find(|&&l| usize::from(l) >= self.classes)
        {
            return Err(format!("label {bad} outside 0..{}", self.classes));
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut bytes = Vec::with_capacity(
            HEADER_FIXED + name.len() + self.pixels.len() + self.labels.len() + CHECKSUM_LEN,
        );
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        for dim in [self.channels, self.height, self.width, self.classes] {
            bytes.extend_from_slice(&(dim as u32).to_le_bytes());
        }
        bytes.extend_from_slice(&(self.labels.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&self.pixels);
        bytes.extend_from_slice(&self.labels);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    /// Parses a file's bytes; `Err` says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Dataset, String> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(
                "not a prepared dataset (bad magic); prepare it with `flwr dataset prepare`".into(),
            );
        }
        if bytes.len() < HEADER_FIXED + CHECKSUM_LEN {
            return Err("truncated header".into());
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        };
        let version = u32_at(8) as u32;
        if version != VERSION {
            return Err(format!(
                "format version {version}; this build reads version {VERSION}"
            ));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let (channels, height, width, classes) = (u32_at(12), u32_at(16), u32_at(20), u32_at(24));
        let mut count_bytes = [0u8; 8];
        count_bytes.copy_from_slice(&bytes[28..36]);
        let count = u64::from_le_bytes(count_bytes);
        let name_len = usize::from(u16::from_le_bytes([bytes[36], bytes[37]]));
        let image_len = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .ok_or("image size overflows")?;
        let count = usize::try_from(count).map_err(|_| "image count overflows")?;
        let expected = (HEADER_FIXED + name_len)
            .checked_add(
                count
                    .checked_mul(image_len + 1)
                    .ok_or("dataset size overflows")?,
            )
            .ok_or("dataset size overflows")?;
        if body.len() != expected {
            return Err(format!(
                "{} bytes where the header announces {expected} (truncated or damaged)",
                body.len()
            ));
        }
        if Sha256::digest(body).as_slice() != checksum {
            return Err("checksum mismatch: the file is damaged".into());
        }
        let name = std::str::from_utf8(&bytes[HEADER_FIXED..HEADER_FIXED + name_len])
            .map_err(|_| "dataset name is not UTF-8")?
            .to_string();
        let pixels_start = HEADER_FIXED + name_len;
        let labels_start = pixels_start + count * image_len;
        let dataset = Dataset {
            name,
            channels,
            height,
            width,
            classes,
            pixels: body[pixels_start..labels_start].to_vec(),
            labels: body[labels_start..].to_vec(),
        };
        dataset.validate()?;
        Ok(dataset)
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), DatasetError> {
        let io = |source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let temp = path.with_extension("flds.tmp");
        std::fs::write(&temp, self.encode()).map_err(io)?;
        std::fs::rename(&temp, path).map_err(io)
    }

    /// Reads and checks a file.
    pub fn read(path: &Path) -> Result<Dataset, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Dataset::decode(&bytes).map_err(|reason| DatasetError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// A partition directory's train and test splits.
pub fn read_partition(dir: &Path) -> Result<(Dataset, Dataset), DatasetError> {
    Ok((
        Dataset::read(&dir.join(TRAIN_FILE))?,
        Dataset::read(&dir.join(TEST_FILE))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        Dataset {
            name: "synthetic".into(),
            channels: 1,
            height: 2,
            width: 2,
            classes: 3,
            pixels: (0..12).collect(),
            labels: vec![0, 2, 1],
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let dataset = sample();
        assert_eq!(Dataset::decode(&dataset.encode()).unwrap(), dataset);
    }

    #[test]
    fn every_truncation_and_any_bit_flip_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(
                Dataset::decode(&bytes[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(Dataset::decode(&flipped).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_foreign_file_is_refused_with_a_hint() {
        let error =
            Dataset::decode(b"PK\x03\x04 some zip file contents here, long enough").unwrap_err();
        assert!(error.contains("flwr dataset prepare"), "{error}");
    }
}
