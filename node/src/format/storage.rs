//! The bytes of a model file: a read-only memory map, or an owned buffer
//! (for images built in memory by tests and tools).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::error::{FormatError, Result};

#[derive(Debug)]
pub enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Map a file read-only.
    pub fn map(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| FormatError::io(path, &e))?;
        let len = file
            .metadata()
            .map_err(|e| FormatError::io(path, &e))?
            .len();
        if len == 0 {
            // mmap of an empty file fails on some platforms; nothing to map.
            return Ok(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process. Model files
        // are treated as immutable while served; if another process truncates
        // the file, reads of the lost pages fault (SIGBUS), which is the
        // documented limit of serving from a memory map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, &e))?;
        #[cfg(unix)]
        {
            // Advice only; failure changes nothing.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(Storage::Mapped(map))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}
