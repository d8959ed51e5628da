//! Which files of an app directory go into its FAB, by Flower 1.42's rules: every regular file
//! under the directory (symbolic links skipped), narrowed by the publishing patterns and the
//! root `.gitignore`, then by the FAB's own include and exclude patterns (gitignore syntax,
//! matched by the `ignore` crate, which implements git's rules).

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files an app may publish at all.
const PUBLISH_INCLUDE: &[&str] = &[
    "**/*.py",
    "**/*.toml",
    "**/*.md",
    "**/*.yaml",
    "**/*.yml",
    "**/*.json",
    "**/*.jsonl",
    "/.gitignore",
    "**/.editorconfig",
    "/LICENSE",
    "/LICENSE.md",
];

/// Never published.
const PUBLISH_EXCLUDE: &[&str] = &[".flwr/**", ".venv/**", "**/__pycache__/**"];

/// Files a FAB holds.
pub const FAB_INCLUDE: &[&str] = &[
    "**/*.py",
    "**/*.toml",
    "**/*.md",
    "**/*.yaml",
    "**/*.yml",
    "**/*.json",
    "**/*.jsonl",
    "/LICENSE",
];

/// Never in a FAB (the original `pyproject.toml` is replaced by the rewritten one).
pub const FAB_EXCLUDE: &[&str] = &[
    ".flwr/**",
    "**/__pycache__/**",
    "pyproject.toml",
    "**/*_test.py",
    "**/test_*.py",
    "build/**",
    "eggs/**",
    ".eggs/**",
    "lib/**",
    "lib64/**",
    "parts/**",
    "*.egg",
    ".venv/**",
    "env/**",
    "venv/**",
    "ENV/**",
    "env.bak/**",
    "venv.bak/**",
];

/// Deepest directory nesting a published file may have.
const MAX_DEPTH: usize = 10;

/// A set of gitignore-style patterns.
pub struct Patterns(Gitignore);

impl Patterns {
    /// Compiles `patterns`; a malformed one is named.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut builder = GitignoreBuilder::new(".");
        for pattern in patterns {
            builder
                .add_line(None, pattern.as_ref())
                .map_err(|e| format!("pattern {:?}: {e}", pattern.as_ref()))?;
        }
        builder.build().map(Patterns).map_err(|e| e.to_string())
    }

    /// Whether `path` (relative, `/`-separated), or a directory above it, matches.
    pub fn matches(&self, path: &str) -> bool {
        self.0
            .matched_path_or_any_parents(Path::new(path), false)
            .is_ignore()
    }
}

/// Every regular file under `root`, by relative `/`-separated path.
pub fn collect(root: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let Ok(relative) = path.strip_prefix(root) else {
                    continue;
                };
                let parts: Option<Vec<&str>> = relative
                    .components()
                    .map(|c| c.as_os_str().to_str())
                    .collect();
                let Some(parts) = parts else {
                    return Err(format!(
                        "{} is not a UTF-8 name, which a FAB cannot hold",
                        relative.display()
                    ));
                };
                files.insert(parts.join("/"), path);
            }
            // Symbolic links, to files or directories, are skipped, as Flower skips them.
        }
    }
    Ok(files)
}

/// The files Flower would publish: the publishing patterns, then the root `.gitignore`.
pub fn publishable(
    files: BTreeMap<String, PathBuf>,
    gitignore: &str,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let include = Patterns::new(PUBLISH_INCLUDE)?;
    let exclude = Patterns::new(PUBLISH_EXCLUDE)?;
    let ignored: Vec<&str> = gitignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let ignored = Patterns::new(&ignored).map_err(|e| format!(".gitignore: {e}"))?;
    let mut kept = BTreeMap::new();
    for (path, file) in files {
        if include.matches(&path) && !exclude.matches(&path) && !ignored.matches(&path) {
            if path.split('/').count().saturating_sub(1) > MAX_DEPTH {
                return Err(format!(
                    "{path} is nested more than {MAX_DEPTH} directories deep"
                ));
            }
            kept.insert(path, file);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics_anchor_and_reach_into_directories() {
        let exclude = Patterns::new(FAB_EXCLUDE).unwrap();
        for excluded in [
            "pyproject.toml",
            "sub/pyproject.toml",
            "a/__pycache__/x.py",
            "pkg/test_model.py",
            "pkg/model_test.py",
            "build/x/y.py",
            ".venv/lib/z.py",
        ] {
            assert!(exclude.matches(excluded), "{excluded}");
        }
        for kept in ["pkg/model.py", "pkg/build/x.py", "README.md"] {
            assert!(!exclude.matches(kept), "{kept}");
        }
        let include = Patterns::new(FAB_INCLUDE).unwrap();
        assert!(include.matches("a.py") && include.matches("deep/er/a.json"));
        assert!(include.matches("LICENSE") && !include.matches("sub/LICENSE"));
        assert!(!include.matches("notes.txt"));
    }
}
