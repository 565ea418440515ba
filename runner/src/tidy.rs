//! Whether a clone's work tree still holds nothing but what the last
//! checkout left, so the next job can skip `git clean` (a git process, 2–3
//! ms of a trivial job's overhead).
//!
//! Right after a checkout and clean, the runner takes a [`TreeState`]: a
//! digest of every path in the work tree (`.git` left out) with its type,
//! and a digest of `.git/index`. Before the next checkout it takes another.
//! If both are equal, every path there is one the same index tracked right
//! after the clean: `git clean` would remove nothing, and `git checkout
//! --force` restores any tracked file the test changed, as it always did.
//! Any difference — a new file, folder or symlink anywhere, a type changed,
//! a path removed, an index entry changed — and the clean runs. The index's
//! content is compared, not its times: a test can rewrite it within the
//! clock's granularity. A split index (`.git/sharedindex.*`, whose entries
//! the index only points to) gets no state.
//!
//! A big tree is not walked twice a job: past [`MAX_ENTRIES`] no state is
//! taken and the clean always runs, as before.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The largest work tree (files, folders and symlinks) whose state is
/// taken; walking more would cost what the clean saves.
pub const MAX_ENTRIES: usize = 10_000;

/// The largest index read (about what a tree of [`MAX_ENTRIES`] needs).
const MAX_INDEX_BYTES: u64 = 4 << 20;

/// The state of a work tree and its index at one moment; equal states mean
/// the same paths of the same types, tracked by the same index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeState {
    paths: [u8; 32],
    index: [u8; 32],
}

impl TreeState {
    /// The state of the work tree at `dir`, or `None` when it cannot be
    /// known cheaply and surely (too many entries, an unreadable folder, no
    /// index or a split one): then the caller cleans.
    pub fn of(dir: &Path) -> Option<TreeState> {
        let git_dir = dir.join(".git");
        let index = git_dir.join("index");
        let meta = std::fs::symlink_metadata(&index).ok()?;
        if !meta.file_type().is_file() || meta.len() > MAX_INDEX_BYTES {
            return None;
        }
        for entry in std::fs::read_dir(&git_dir).ok()? {
            if entry
                .ok()?
                .file_name()
                .as_bytes()
                .starts_with(b"sharedindex.")
            {
                return None;
            }
        }
        let index: [u8; 32] = Sha256::digest(std::fs::read(&index).ok()?).into();
        let mut digest = Sha256::new();
        let mut entries = 0usize;
        walk(dir, &mut Vec::new(), true, &mut digest, &mut entries)?;
        Some(TreeState {
            paths: digest.finalize().into(),
            index,
        })
    }
}

/// Feeds every entry under `dir` (path relative to the tree, its type) to
/// `digest` in name order; `None` past [`MAX_ENTRIES`] or on any error.
fn walk(
    dir: &Path,
    relative: &mut Vec<u8>,
    top: bool,
    digest: &mut Sha256,
    entries: &mut usize,
) -> Option<()> {
    let mut listed: Vec<(OsString, std::fs::FileType)> = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if top && name == ".git" {
            continue;
        }
        // The entry's own type: a symlink is never followed.
        listed.push((name, entry.file_type().ok()?));
        *entries += 1;
        if *entries > MAX_ENTRIES {
            return None;
        }
    }
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in listed {
        let before = relative.len();
        relative.push(b'/');
        relative.extend_from_slice(name.as_bytes());
        let tag: &[u8] = if kind.is_dir() {
            b"d"
        } else if kind.is_symlink() {
            b"l"
        } else if kind.is_file() {
            b"f"
        } else {
            b"o"
        };
        // Names hold no NUL, so each record is unambiguous.
        digest.update(tag);
        digest.update(&relative[..]);
        digest.update([0u8]);
        if kind.is_dir() {
            walk(&dir.join(&name), relative, false, digest, entries)?;
        }
        relative.truncate(before);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".git")).expect(".git");
        std::fs::write(dir.path().join(".git/index"), "index").expect("index");
        std::fs::create_dir_all(dir.path().join("src")).expect("src");
        std::fs::write(dir.path().join("src/a"), "a").expect("a");
        std::fs::write(dir.path().join("b"), "b").expect("b");
        dir
    }

    #[test]
    fn the_same_tree_has_the_same_state_whatever_its_files_hold() {
        let dir = tree();
        let before = TreeState::of(dir.path()).expect("state");
        // Content is checkout's business, not clean's.
        std::fs::write(dir.path().join("src/a"), "changed").expect("write");
        // `.git` is not part of the tree (its index is watched apart).
        std::fs::write(dir.path().join(".git/other"), "x").expect("write");
        assert_eq!(TreeState::of(dir.path()), Some(before));
    }

    /// Something a test does to the tree.
    type Change = fn(&Path);

    #[test]
    fn any_new_removed_or_retyped_path_changes_the_state() {
        let changes: [(&str, Change); 6] = [
            ("an untracked file", |d| {
                std::fs::write(d.join("src/new"), "x").expect("write")
            }),
            ("an empty folder", |d| {
                std::fs::create_dir(d.join("empty")).expect("mkdir")
            }),
            ("a nested repository", |d| {
                std::fs::create_dir_all(d.join("src/.git")).expect("mkdir")
            }),
            ("a removed file", |d| {
                std::fs::remove_file(d.join("b")).expect("rm")
            }),
            ("a file turned symlink", |d| {
                std::fs::remove_file(d.join("b")).expect("rm");
                std::os::unix::fs::symlink("/etc/passwd", d.join("b")).expect("symlink");
            }),
            ("a file turned folder", |d| {
                std::fs::remove_file(d.join("b")).expect("rm");
                std::fs::create_dir(d.join("b")).expect("mkdir");
            }),
        ];
        for (what, change) in changes {
            let dir = tree();
            let before = TreeState::of(dir.path()).expect("state");
            change(dir.path());
            assert_ne!(TreeState::of(dir.path()), Some(before), "{what}");
        }
    }

    #[test]
    fn a_changed_or_split_index_changes_the_state() {
        let dir = tree();
        let index = dir.path().join(".git/index");
        let before = TreeState::of(dir.path()).expect("state");
        // Rewritten with the same size and its times set back.
        let modified = std::fs::metadata(&index)
            .expect("meta")
            .modified()
            .expect("mtime");
        std::fs::write(&index, "INDEX").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&index)
            .expect("open")
            .set_modified(modified)
            .expect("set mtime");
        assert_ne!(TreeState::of(dir.path()), Some(before));
        std::fs::write(&index, "index").expect("write back");
        std::fs::write(dir.path().join(".git/sharedindex.0123"), "entries").expect("write");
        assert_eq!(TreeState::of(dir.path()), None);
    }

    #[test]
    fn a_big_tree_or_one_without_an_index_has_no_state() {
        let dir = tree();
        std::fs::remove_file(dir.path().join(".git/index")).expect("rm");
        assert_eq!(TreeState::of(dir.path()), None);
        let dir = tree();
        for i in 0..=MAX_ENTRIES {
            std::fs::write(dir.path().join(format!("f{i}")), "").expect("write");
        }
        assert_eq!(TreeState::of(dir.path()), None);
    }
}
