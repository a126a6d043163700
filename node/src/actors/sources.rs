//! Where a model load may read from: the operator's paths and catalog
//! names as given, an admin request's only inside the node's model
//! directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::registry::{LoadSpec, RegistryError};

/// Turns a model argument into a file path: a catalog name (smollm2,
/// gemma3) becomes its file in the models directory, fetched first when the
/// second argument allows it and it is missing; anything else is returned as
/// the path it names.
pub type Resolver = Arc<dyn Fn(&str, bool) -> Result<PathBuf, String> + Send + Sync>;

/// Who asked for a load, which decides where it may read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The operator: the command line or the config file. Any path; catalog
    /// names are fetched when missing.
    Operator,
    /// `POST /admin/models`: only files inside the model directories, and
    /// fetching only when the node allows downloads.
    Admin,
}

/// Where admin loads may read model files from.
#[derive(Debug, Clone, Default)]
pub struct ModelDirs {
    /// Canonical directories.
    pub dirs: Vec<PathBuf>,
    pub allow_downloads: bool,
}

impl ModelDirs {
    pub fn new(dirs: &[PathBuf], allow_downloads: bool) -> Self {
        ModelDirs {
            dirs: dirs
                .iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect(),
            allow_downloads,
        }
    }

    /// The file `p` names inside one of the directories (a path relative to
    /// one of them, or an absolute path under one), after following every
    /// symlink. Anything else, including a file that does not exist, is the
    /// same `NotAllowed`, so a caller learns nothing about files outside. The
    /// file itself is never opened here.
    pub fn confine(&self, p: &Path) -> Result<PathBuf, RegistryError> {
        let not_allowed = || RegistryError::NotAllowed(p.display().to_string());
        if p.as_os_str().is_empty()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(not_allowed());
        }
        for d in &self.dirs {
            // An absolute path is judged by where it really leads (a
            // models directory reached through a symlink is still inside).
            let candidate = if p.is_absolute() {
                p.to_path_buf()
            } else {
                d.join(p)
            };
            if let Ok(c) = std::fs::canonicalize(&candidate) {
                if c.starts_with(d) && c.is_file() {
                    return Ok(c);
                }
            }
        }
        Err(not_allowed())
    }
}

/// Where a load reads from: the operator's path or catalog name as given;
/// an admin request's only inside the model directories.
pub fn resolve(
    spec: &LoadSpec,
    resolver: &Resolver,
    dirs: &ModelDirs,
) -> Result<PathBuf, RegistryError> {
    match spec.origin {
        Origin::Operator => resolver(&spec.path, true).map_err(RegistryError::Resolve),
        Origin::Admin => {
            let named = resolver(&spec.path, false);
            let p = match named {
                Ok(p) => p,
                // A catalog name that is not on disk.
                Err(_) if dirs.allow_downloads => {
                    resolver(&spec.path, true).map_err(RegistryError::Resolve)?
                }
                Err(_) => return Err(RegistryError::NoDownload(spec.path.clone())),
            };
            dirs.confine(&p)
                .map_err(|_| RegistryError::NotAllowed(spec.path.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_admits_only_files_inside_the_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("models");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/m.gguf"), b"x").unwrap();
        std::fs::write(root.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("out.gguf")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub/m.gguf"), dir.join("in.gguf")).unwrap();
        let dirs = ModelDirs::new(std::slice::from_ref(&dir), false);
        let canon = std::fs::canonicalize(dir.join("sub/m.gguf")).unwrap();
        for ok in ["sub/m.gguf", "in.gguf", "./sub/m.gguf"] {
            assert_eq!(dirs.confine(Path::new(ok)).unwrap(), canon, "{ok}");
        }
        assert_eq!(dirs.confine(&canon).unwrap(), canon);
        let secret = root.path().join("secret");
        for bad in [
            "out.gguf",
            "../secret",
            "sub/../../secret",
            "sub/../sub/m.gguf",
            "missing.gguf",
            "sub",
            "",
            secret.to_str().unwrap(),
            "/etc/passwd",
        ] {
            assert!(
                matches!(
                    dirs.confine(Path::new(bad)),
                    Err(RegistryError::NotAllowed(_))
                ),
                "{bad}"
            );
        }
        // A models directory reached through a symlink: absolute paths
        // through the link are inside; a link inside to outside is not.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let via = ModelDirs::new(std::slice::from_ref(&link), false);
        assert_eq!(via.confine(&link.join("sub/m.gguf")).unwrap(), canon);
        assert_eq!(via.confine(&dir.join("in.gguf")).unwrap(), canon);
        assert!(via.confine(&link.join("out.gguf")).is_err());
        // No directory at all: nothing is allowed.
        let none = ModelDirs::new(&[root.path().join("absent")], false);
        assert!(none.confine(Path::new("sub/m.gguf")).is_err());
    }
}
