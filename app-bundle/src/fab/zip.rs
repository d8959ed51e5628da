//! The ZIP archive of a FAB, byte for byte as Python's `zipfile` writes Flower's: every entry
//! stored (not compressed), dated 2024-10-01 00:00:00, mode 0600, made on Unix, with no extra
//! fields, data descriptors or comments. A general ZIP library makes its own choices for each
//! of those, and a FAB's identity is the SHA-256 of these exact bytes.

/// MS-DOS date of 2024-10-01 (Flower's fixed `FAB_DATE`); the time is midnight, zero.
const DOS_DATE: u16 = ((2024 - 1980) << 9) | (10 << 5) | 1;

/// "Version needed to extract" and "made by" version: 2.0.
const VERSION: u8 = 20;

/// "Made by" system: Unix.
const UNIX: u8 = 3;

/// External attributes: a regular file with mode 0600, in the high 16 bits.
const EXTERNAL_ATTR: u32 = 0o600 << 16;

/// General purpose flag for UTF-8 names.
const UTF8_FLAG: u16 = 0x800;

struct Entry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// A FAB archive being written in memory.
#[derive(Default)]
pub struct ZipWriter {
    out: Vec<u8>,
    entries: Vec<Entry>,
}

/// Why an archive cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("{0} is too large for a FAB")]
pub struct TooLarge(pub String);

fn flags(name: &str) -> u16 {
    if name.is_ascii() { 0 } else { UTF8_FLAG }
}

impl ZipWriter {
    /// Appends a stored entry.
    pub fn add(&mut self, name: &str, data: &[u8]) -> Result<(), TooLarge> {
        let too_large = || TooLarge(name.to_string());
        let size = u32::try_from(data.len()).map_err(|_| too_large())?;
        let offset = u32::try_from(self.out.len()).map_err(|_| too_large())?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_large())?;
        let crc = crc32fast::hash(data);
        let out = &mut self.out;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[VERSION, 0]);
        out.extend_from_slice(&flags(name).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u16.to_le_bytes()); // time
        out.extend_from_slice(&DOS_DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes()); // compressed size
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        self.entries.push(Entry {
            name: name.to_string(),
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// The central directory and its end record appended: the archive.
    pub fn finish(mut self) -> Result<Vec<u8>, TooLarge> {
        let too_large = || TooLarge("the archive".to_string());
        let directory_start = u32::try_from(self.out.len()).map_err(|_| too_large())?;
        let count = u16::try_from(self.entries.len()).map_err(|_| too_large())?;
        for entry in &self.entries {
            let out = &mut self.out;
            out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            out.extend_from_slice(&[VERSION, UNIX, VERSION, 0]);
            out.extend_from_slice(&flags(&entry.name).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // stored
            out.extend_from_slice(&0u16.to_le_bytes()); // time
            out.extend_from_slice(&DOS_DATE.to_le_bytes());
            out.extend_from_slice(&entry.crc.to_le_bytes());
            out.extend_from_slice(&entry.size.to_le_bytes());
            out.extend_from_slice(&entry.size.to_le_bytes());
            // Names were checked to fit in `add`.
            out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // extra
            out.extend_from_slice(&0u16.to_le_bytes()); // comment
            out.extend_from_slice(&0u16.to_le_bytes()); // disk
            out.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            out.extend_from_slice(&EXTERNAL_ATTR.to_le_bytes());
            out.extend_from_slice(&entry.offset.to_le_bytes());
            out.extend_from_slice(entry.name.as_bytes());
        }
        let directory_size =
            u32::try_from(self.out.len()).map_err(|_| too_large())? - directory_start;
        let out = &mut self.out;
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // this disk
        out.extend_from_slice(&0u16.to_le_bytes()); // directory's disk
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&directory_size.to_le_bytes());
        out.extend_from_slice(&directory_start.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // comment
        Ok(self.out)
    }
}
