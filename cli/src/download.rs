//! Downloading CIFAR-10 with a progress bar, resuming a partial download, and verifying the
//! published checksum before the file is used.

use crate::CliError;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A progress bar on stderr for `total` bytes (a spinner when the size is unknown).
pub fn bytes_bar(total: Option<u64>, message: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.set_message(message.to_string());
    bar
}

fn md5_of(path: &Path) -> Result<String, CliError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Downloads `url` to `dir/name` unless a verified copy is already there; a partial download
/// (`name.part`) is resumed. Returns the verified file.
pub fn fetch_verified(url: &str, md5: &str, dir: &Path, name: &str) -> Result<PathBuf, CliError> {
    let target = dir.join(name);
    if target.exists() && md5_of(&target)? == md5 {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::Io(format!("{}: {e}", dir.display())))?;
    let partial = dir.join(format!("{name}.part"));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let offline = |e: &dyn std::fmt::Display| {
        CliError::Connect(format!(
            "cannot download {url}: {e}. Without network access, fetch the file elsewhere and pass \
             --source PATH (the tarball or its extracted directory)"
        ))
    };
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| offline(&e))?;
    let resumed = response.status().as_u16() == 206;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let start = if resumed { have } else { 0 };
    let bar = bytes_bar(length.map(|l| l + start), "Downloading CIFAR-10");
    bar.set_position(start);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&partial)
        .map_err(|e| CliError::Io(format!("{}: {e}", partial.display())))?;
    let mut body = response.into_body().into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buffer).map_err(|e| offline(&e))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])
            .map_err(|e| CliError::Io(format!("{}: {e}", partial.display())))?;
        bar.inc(n as u64);
    }
    file.sync_all()
        .map_err(|e| CliError::Io(format!("{}: {e}", partial.display())))?;
    bar.finish_and_clear();
    let actual = md5_of(&partial)?;
    if actual != md5 {
        let _ = std::fs::remove_file(&partial);
        return Err(CliError::Io(format!(
            "downloaded {url} but its MD5 is {actual}, not the published {md5}; the partial file was removed, try again"
        )));
    }
    std::fs::rename(&partial, &target)
        .map_err(|e| CliError::Io(format!("{}: {e}", target.display())))?;
    Ok(target)
}
