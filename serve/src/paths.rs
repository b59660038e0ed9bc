//! Writing a folder atomically: everything goes into a hidden sibling of the destination,
//! which is renamed into place at the end (or removed on failure); links are relative to
//! where they will finally live.

use std::path::{Component, Path, PathBuf};

use crate::{io_err, ServeError};

/// `path` made absolute with every existing ancestor resolved (the rest kept as written).
fn absolute(path: &Path) -> Result<PathBuf, ServeError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(io_err(path))?.join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = vec![];
    loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            return Ok(rest.iter().rev().fold(c, |p: PathBuf, r: &&std::ffi::OsStr| p.join(r)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// The path of `target` as seen from folder `from` (`../../export` style).
pub fn relative_to(target: &Path, from: &Path) -> Result<PathBuf, ServeError> {
    let (t, f) = (absolute(target)?, absolute(from)?);
    let (tc, fc): (Vec<Component>, Vec<Component>) = (t.components().collect(), f.components().collect());
    let common = tc.iter().zip(&fc).take_while(|(a, b)| a == b).count();
    let mut rel: PathBuf = fc[common..].iter().map(|_| Component::ParentDir).collect();
    rel.extend(&tc[common..]);
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    Ok(rel)
}

/// A folder being written beside its destination.
pub struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    force: bool,
    done: bool,
}

impl Staging {
    /// Starts writing `out`; fails if it exists (unless `force`) or its parent does not.
    pub fn new(out: &Path, force: bool) -> Result<Staging, ServeError> {
        let name = out.file_name().ok_or_else(|| ServeError::Option {
            option: "--out".into(),
            msg: format!("{} has no folder name", out.display()),
        })?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(ServeError::Option {
                option: "--out".into(),
                msg: format!("folder {} does not exist", parent.display()),
            });
        }
        if out.symlink_metadata().is_ok() && !force {
            return Err(ServeError::Option {
                option: "--out".into(),
                msg: format!("{} exists (pass --force to replace it)", out.display()),
            });
        }
        let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        Ok(Staging { tmp, out: out.to_path_buf(), force, done: false })
    }

    /// The folder being written (becomes `out`).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Writes a file (creating its folder).
    pub fn write(&self, path: &Path, text: &str) -> Result<(), ServeError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::write(path, text).map_err(io_err(path))
    }

    /// A symbolic link at `link` (inside the staging folder) to folder `target`, relative to
    /// `final_parent`, the folder that will hold the link once the repository is in place.
    pub fn link_dir(&self, target: &Path, link: &Path, final_parent: &Path) -> Result<(), ServeError> {
        if !target.is_dir() {
            return Err(ServeError::Model { path: target.to_path_buf(), msg: "not a folder".into() });
        }
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let rel = relative_to(target, final_parent)?;
        std::os::unix::fs::symlink(&rel, link).map_err(io_err(link))
    }

    /// Renames the staging folder into place (replacing `out` when forced).
    pub fn commit(mut self) -> Result<(), ServeError> {
        let old = self.tmp.with_file_name(format!(
            ".{}.old-{}",
            self.out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            std::process::id()
        ));
        let replacing = self.force && self.out.symlink_metadata().is_ok();
        if replacing {
            std::fs::rename(&self.out, &old).map_err(io_err(&self.out))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
            if replacing {
                let _ = std::fs::rename(&old, &self.out);
            }
            return Err(io_err(&self.out)(e));
        }
        self.done = true;
        if replacing {
            let removed = match old.symlink_metadata() {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&old),
                _ => std::fs::remove_file(&old),
            };
            removed.map_err(io_err(&old))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("x/export"), d.path().join("repo/flux2"));
        std::fs::create_dir_all(&a).unwrap();
        assert_eq!(relative_to(&a, &b).unwrap(), PathBuf::from("../../x/export"));
        assert_eq!(relative_to(&a, &a).unwrap(), PathBuf::from("."));
    }

    #[test]
    fn nothing_is_left_behind_without_commit_and_existing_output_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("repo");
        {
            let s = Staging::new(&out, false).unwrap();
            s.write(&s.path().join("a/b.txt"), "x").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let s = Staging::new(&out, false).unwrap();
        s.write(&s.path().join("f"), "1").unwrap();
        s.commit().unwrap();
        let e = Staging::new(&out, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--force"), "{e}");
        let s = Staging::new(&out, true).unwrap();
        s.write(&s.path().join("f"), "2").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("f")).unwrap(), "2");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
