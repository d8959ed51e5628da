//! Log output: stderr, filtered by `RUST_LOG` (default `info`), and with `--log-file PATH` the
//! same lines in a file that rotates hourly or daily (UTC), the newest few kept: Flower's
//! `--log-file`, `--log-rotation-interval-hours` and `--log-rotation-backup-count`.

use std::path::{Path, PathBuf};
use tracing_appender::rolling::Rotation;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The log file flags, as Flower's daemons take them.
#[derive(Debug, Clone, clap::Args)]
pub struct LogFileArgs {
    /// Also write the log to this file, rotated: PATH's stem, the date (and hour), PATH's
    /// extension, in PATH's directory (`superlink.log` becomes `superlink.2026-11-29.log`).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Hours between two log files: 1 (hourly) or 24 (daily).
    #[arg(long, default_value_t = 24, value_name = "HOURS")]
    pub log_rotation_interval_hours: u32,
    /// How many rotated log files to keep.
    #[arg(long, default_value_t = 7, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub log_rotation_backup_count: u32,
}

impl LogFileArgs {
    /// Installs the logger: stderr in `format`, and the file if one was given.
    pub fn install(&self, format: LogFormat) -> Result<(), String> {
        init(format, self.resolve()?.as_ref())
    }

    /// The file to log to, if any.
    pub fn resolve(&self) -> Result<Option<LogFile>, String> {
        let Some(path) = &self.log_file else {
            return Ok(None);
        };
        let rotation = match self.log_rotation_interval_hours {
            1 => Rotation::HOURLY,
            24 => Rotation::DAILY,
            other => {
                return Err(format!(
                    "--log-rotation-interval-hours {other}: give 1 (hourly) or 24 (daily)"
                ));
            }
        };
        let mut file = LogFile::new(path)?;
        file.rotation = rotation;
        file.kept = self.log_rotation_backup_count as usize;
        Ok(Some(file))
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The files `--log-file PATH` writes: PATH's stem, the date, PATH's extension
/// (`superlink.log` becomes `superlink.2026-11-29.log`) in PATH's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The directory.
    pub dir: PathBuf,
    /// The file name before the date.
    pub prefix: String,
    /// The extension after it, if any.
    pub suffix: Option<String>,
    /// How often a new file starts.
    pub rotation: Rotation,
    /// How many files are kept.
    pub kept: usize,
}

impl LogFile {
    /// Splits `path` into directory, stem and extension; a path without a file name is refused.
    pub fn new(path: &Path) -> Result<Self, String> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("--log-file {}: not a file name", path.display()))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(LogFile {
            dir,
            prefix: stem.to_string(),
            suffix: path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_string),
            rotation: Rotation::DAILY,
            kept: 7,
        })
    }

    fn appender(&self) -> Result<tracing_appender::rolling::RollingFileAppender, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("--log-file: cannot create {}: {e}", self.dir.display()))?;
        // No `max_log_files`: tracing-appender would delete any file sharing the stem and the
        // extension (`flwr.toml` beside `--log-file flwr`); [`LogFile::prune`] removes ours only.
        let mut builder = tracing_appender::rolling::Builder::new()
            .rotation(self.rotation.clone())
            .filename_prefix(&self.prefix);
        if let Some(suffix) = &self.suffix {
            builder = builder.filename_suffix(suffix);
        }
        builder
            .build(&self.dir)
            .map_err(|e| format!("--log-file in {}: {e}", self.dir.display()))
    }

    /// Whether `name` is one of this log's dated files: the stem, a date (with the hour when
    /// hourly), the extension, exactly.
    fn is_ours(&self, name: &str) -> bool {
        let Some(rest) = name
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let date = match &self.suffix {
            Some(suffix) => match rest
                .strip_suffix(suffix.as_str())
                .and_then(|r| r.strip_suffix('.'))
            {
                Some(date) => date,
                None => return false,
            },
            None => rest,
        };
        let shape = |pattern: &str| {
            date.len() == pattern.len()
                && date
                    .chars()
                    .zip(pattern.chars())
                    .all(|(c, p)| if p == 'd' { c.is_ascii_digit() } else { c == p })
        };
        shape("dddd-dd-dd") || shape("dddd-dd-dd-dd")
    }

    /// Removes this log's oldest dated files beyond the newest `kept`; other files are never
    /// touched.
    pub fn prune(&self) -> std::io::Result<usize> {
        let mut ours: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| self.is_ours(name))
            .collect();
        // Dates sort as text.
        ours.sort();
        let excess = ours.len().saturating_sub(self.kept);
        for name in &ours[..excess] {
            std::fs::remove_file(self.dir.join(name))?;
        }
        Ok(excess)
    }
}

/// How often old log files are looked for (a new one starts at most hourly).
const PRUNE_PERIOD: std::time::Duration = std::time::Duration::from_secs(600);

/// Installs the global subscriber: stderr, and `file` when given.
pub fn init(format: LogFormat, file: Option<&LogFile>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().boxed(),
    };
    let file = match file {
        Some(file) => {
            let appender = file.appender()?;
            let pruned = file.clone();
            let _ = pruned.prune();
            // A thread of its own: the log outlives any async runtime the daemon starts.
            let _ = std::thread::Builder::new()
                .name("log-prune".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(PRUNE_PERIOD);
                        let _ = pruned.prune();
                    }
                });
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(appender);
            Some(match format {
                LogFormat::Text => layer.boxed(),
                LogFormat::Json => layer.json().boxed(),
            })
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_path_splits_into_directory_stem_and_extension() {
        let file = LogFile::new(Path::new("/var/log/flwr/superlink.log")).unwrap();
        assert_eq!(file.dir, PathBuf::from("/var/log/flwr"));
        assert_eq!(
            (file.prefix.as_str(), file.suffix.as_deref()),
            ("superlink", Some("log"))
        );
        let bare = LogFile::new(Path::new("node")).unwrap();
        assert_eq!((bare.dir, bare.suffix), (PathBuf::from("."), None));
        assert!(LogFile::new(Path::new("/")).is_err());
    }

    #[test]
    fn rotation_is_hourly_or_daily_as_flowers_flags_say() {
        use clap::Parser;
        #[derive(Parser)]
        struct Daemon {
            #[command(flatten)]
            log: LogFileArgs,
        }
        let parse = |args: &[&str]| {
            let mut argv = vec!["daemon", "--log-file", "d.log"];
            argv.extend_from_slice(args);
            Daemon::try_parse_from(argv).unwrap().log.resolve()
        };
        let daily = parse(&[]).unwrap().unwrap();
        assert_eq!((daily.rotation, daily.kept), (Rotation::DAILY, 7));
        let hourly = parse(&[
            "--log-rotation-interval-hours",
            "1",
            "--log-rotation-backup-count",
            "3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((hourly.rotation, hourly.kept), (Rotation::HOURLY, 3));
        let error = parse(&["--log-rotation-interval-hours", "6"]).unwrap_err();
        assert!(error.contains("1 (hourly) or 24 (daily)"), "{error}");
        assert!(
            Daemon::try_parse_from(["daemon"])
                .unwrap()
                .log
                .resolve()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn pruning_removes_only_this_logs_oldest_dated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = LogFile::new(&dir.path().join("flwr.log")).unwrap();
        file.kept = 2;
        let names = [
            "flwr.2026-11-01.log",
            "flwr.2026-11-02.log",
            "flwr.2026-11-03.log",
            "flwr.2026-11-03-07.log",
            "flwr.toml",
            "flwr-other.log",
            "flwr.notes.log",
            "flwr.2026-11-01.log.bak",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(file.prune().unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "flwr-other.log",
                "flwr.2026-11-01.log.bak",
                "flwr.2026-11-03-07.log",
                "flwr.2026-11-03.log",
                "flwr.notes.log",
                "flwr.toml",
            ]
        );
        // Without an extension the stem alone must not reach `flwr.toml`.
        let mut bare = LogFile::new(&dir.path().join("flwr")).unwrap();
        bare.kept = 1;
        bare.prune().unwrap();
        assert!(dir.path().join("flwr.toml").exists());
    }

    #[test]
    fn lines_reach_the_dated_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = LogFile::new(&dir.path().join("daemon.log")).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(file.appender().unwrap())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!("hello from the test"));
        let written: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(written.len(), 1, "{written:?}");
        let name = written[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with("daemon.") && name.ends_with(".log"),
            "{name}"
        );
        let text = std::fs::read_to_string(&written[0]).unwrap();
        assert!(text.contains("hello from the test"), "{text}");
    }
}
