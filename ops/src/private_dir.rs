//! Directories where a daemon keeps what it runs (app workspaces, Flower installs, token files):
//! nobody but the daemon's user may change them, nor any directory on the way to them.
//!
//! A directory is only as private as its path: another user who owns it, or who can write to any
//! of its ancestors, can rename it away and put a tree of their own in its place, and the daemon
//! then runs their code as its own user. So, as OpenSSH's `StrictModes` does, every directory from
//! the root down is checked: owned by root or by this user, and writable by nobody else unless its
//! sticky bit keeps others from renaming what they do not own (as on `/tmp`). The directory
//! itself must be this user's and writable by nobody else. The path is resolved here one step at
//! a time, so every directory passed through is checked, links and their targets included, and
//! each link must belong to this user or root: whoever owns a link can point it elsewhere.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// The sticky bit: in such a directory only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Written to by group or others.
const SHARED_WRITE: u32 = 0o022;

/// Why a directory is not private.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    /// The directory, or one on its path, could not be made or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Another user owns it.
    #[error(
        "{} belongs to user {owner}, not to this daemon's user {user}: other users could swap \
         what runs from it (give a private --apps-dir)",
        path.display()
    )]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        user: u32,
    },
    /// Other users may write to it.
    #[error(
        "{} is writable by other users (mode {mode:o}): they could swap what runs from it \
         (chmod go-w it, or give a private --apps-dir)",
        path.display()
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

impl From<NotPrivate> for std::io::Error {
    fn from(error: NotPrivate) -> Self {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, error)
    }
}

/// What turns an error of the file system at `path` into a [`NotPrivate`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NotPrivate {
    let path = path.to_path_buf();
    move |source| NotPrivate::Io { path, source }
}

/// Creates `dir` and its missing parents (those it creates are 0700), then checks that it and
/// every directory above it are private to this user (see the module's documentation).
pub fn create_private_dir(dir: &Path) -> Result<(), NotPrivate> {
    let dir = std::path::absolute(dir).map_err(io(dir))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    check_private_dir(&dir)
}

/// Most links followed on the way to a directory (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Checks that `dir` (which exists) and every directory above it are private to this user.
/// The path is resolved here, one component at a time, so that every directory passed through
/// is checked, and every link followed must belong to this user or root: another user who owns a
/// link on the way could point it elsewhere after the check.
pub fn check_private_dir(dir: &Path) -> Result<(), NotPrivate> {
    let user = nix::unistd::geteuid().as_raw();
    let given = std::path::absolute(dir).map_err(io(dir))?;
    let mut pending: std::collections::VecDeque<Part> = Part::all(&given).collect();
    let mut current = PathBuf::from("/");
    let mut links = 0;
    check_stated(&current, user, false)?;
    while let Some(part) = pending.pop_front() {
        match part {
            Part::Root => current = PathBuf::from("/"),
            // Its parent was checked on the way here.
            Part::Parent => {
                current.pop();
            }
            Part::Name(name) => {
                let next = current.join(name);
                let metadata = std::fs::symlink_metadata(&next).map_err(io(&next))?;
                if !metadata.is_symlink() {
                    check_one(&next, &metadata, user, false)?;
                    current = next;
                    continue;
                }
                let owner = metadata.uid();
                if owner != user && owner != 0 {
                    return Err(NotPrivate::Owner {
                        path: next,
                        owner,
                        user,
                    });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(NotPrivate::Io {
                        path: given,
                        source: std::io::Error::other("too many links on the way"),
                    });
                }
                let target = std::fs::read_link(&next).map_err(io(&next))?;
                for part in Part::all(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(part);
                }
            }
        }
    }
    check_stated(&current, user, true)
}

/// A step along a path being resolved.
enum Part {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

impl Part {
    fn all(path: &Path) -> impl Iterator<Item = Part> + '_ {
        use std::path::Component;
        path.components().filter_map(|component| match component {
            Component::RootDir | Component::Prefix(_) => Some(Part::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(name) => Some(Part::Name(name.to_os_string())),
        })
    }
}

/// [`check_one`] for `path`, read from the file system (a real directory: `/` or one the
/// resolution reached).
fn check_stated(path: &Path, user: u32, leaf: bool) -> Result<(), NotPrivate> {
    let metadata = std::fs::symlink_metadata(path).map_err(io(path))?;
    check_one(path, &metadata, user, leaf)
}

/// Checks one directory, whose `metadata` was read without following a link: the leaf must be
/// `user`'s and writable by nobody else; an ancestor may also be root's, and shared-writable when
/// sticky.
fn check_one(
    path: &Path,
    metadata: &std::fs::Metadata,
    user: u32,
    leaf: bool,
) -> Result<(), NotPrivate> {
    if !metadata.is_dir() {
        return Err(NotPrivate::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let owner = metadata.uid();
    let owner_allowed = owner == user || (!leaf && owner == 0);
    if !owner_allowed {
        return Err(NotPrivate::Owner {
            path: path.to_path_buf(),
            owner,
            user,
        });
    }
    let mode = metadata.mode() & 0o7777;
    let sticky_ancestor = !leaf && mode & STICKY != 0;
    if mode & SHARED_WRITE != 0 && !sticky_ancestor {
        return Err(NotPrivate::Writable {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Gives `path` (a link itself, not its target) to user 65534; `false` when this process may
    /// not (only root may give a file away: the case cannot be made here then).
    fn give_to_nobody(path: &Path) -> bool {
        match std::os::unix::fs::lchown(path, Some(65534), None) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!(
                    "skipped: only root can give {} to another user",
                    path.display()
                );
                false
            }
            Err(error) => panic!("lchown: {error}"),
        }
    }

    #[test]
    fn a_private_directory_is_made_and_accepted() {
        let parent = tempfile::tempdir().unwrap();
        let apps = parent.path().join("a/b/apps");
        create_private_dir(&apps).unwrap();
        let mode = std::fs::metadata(&apps).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again, now that it exists.
        create_private_dir(&apps).unwrap();
    }

    #[test]
    fn a_directory_other_users_may_write_to_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let apps = parent.path().join("apps");
        std::fs::create_dir(&apps).unwrap();
        set_mode(&apps, 0o777);
        let error = create_private_dir(&apps).unwrap_err();
        assert!(matches!(error, NotPrivate::Writable { .. }), "{error}");
        // Sticky is no excuse for the directory itself: it is where its own entries live.
        set_mode(&apps, 0o1777);
        assert!(create_private_dir(&apps).is_err());
    }

    #[test]
    fn an_ancestor_other_users_may_write_to_is_refused_unless_sticky() {
        let parent = tempfile::tempdir().unwrap();
        let shared = parent.path().join("shared");
        let apps = shared.join("apps");
        std::fs::create_dir_all(&apps).unwrap();
        set_mode(&apps, 0o700);
        set_mode(&shared, 0o777);
        let error = create_private_dir(&apps).unwrap_err().to_string();
        assert!(
            error.contains("shared") && error.contains("writable by other users"),
            "{error}"
        );
        // Sticky, as /tmp is: nobody else may rename the apps directory away.
        set_mode(&shared, 0o1777);
        create_private_dir(&apps).unwrap();
    }

    #[test]
    fn a_link_cannot_lead_around_a_shared_directory() {
        let parent = tempfile::tempdir().unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir_all(shared.join("apps")).unwrap();
        set_mode(&shared.join("apps"), 0o700);
        set_mode(&shared, 0o777);
        let private = parent.path().join("private");
        std::fs::create_dir(&private).unwrap();
        set_mode(&private, 0o700);
        let link = private.join("apps");
        std::os::unix::fs::symlink(shared.join("apps"), &link).unwrap();
        let error = check_private_dir(&link).unwrap_err().to_string();
        assert!(error.contains("writable by other users"), "{error}");
    }

    #[test]
    fn a_link_another_user_owns_is_refused_though_it_leads_somewhere_private() {
        let parent = tempfile::tempdir().unwrap();
        let apps = parent.path().join("private/apps");
        create_private_dir(&apps).unwrap();
        let sticky = parent.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        set_mode(&sticky, 0o1777);
        let link = sticky.join("apps");
        std::os::unix::fs::symlink(&apps, &link).unwrap();
        check_private_dir(&link).unwrap();
        if !give_to_nobody(&link) {
            return;
        }
        let error = check_private_dir(&link).unwrap_err();
        assert!(
            matches!(&error, NotPrivate::Owner { path, owner: 65534, .. } if *path == link),
            "{error}"
        );
    }

    #[test]
    fn a_path_through_links_and_dots_is_resolved_and_checked_on_the_way() {
        let parent = tempfile::tempdir().unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir_all(shared.join("apps")).unwrap();
        set_mode(&shared, 0o777);
        set_mode(&shared.join("apps"), 0o700);
        let private = parent.path().join("private");
        std::fs::create_dir_all(private.join("apps")).unwrap();
        set_mode(&private, 0o700);
        set_mode(&private.join("apps"), 0o700);
        // Through the shared directory and back out of it with `..`: still through it.
        let through = shared.join("../private/apps");
        assert!(check_private_dir(&through).is_err());
        check_private_dir(&private.join("apps")).unwrap();
        let via_link = private.join("to-shared");
        std::os::unix::fs::symlink("../shared/apps", &via_link).unwrap();
        let error = check_private_dir(&via_link).unwrap_err().to_string();
        assert!(error.contains("writable by other users"), "{error}");
    }

    #[test]
    fn a_directory_another_user_owns_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let apps = parent.path().join("apps");
        std::fs::create_dir(&apps).unwrap();
        set_mode(&apps, 0o755);
        if !give_to_nobody(&apps) {
            return;
        }
        let error = create_private_dir(&apps).unwrap_err();
        assert!(
            matches!(error, NotPrivate::Owner { owner: 65534, .. }),
            "{error}"
        );
    }
}
