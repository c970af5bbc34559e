//! Files in the data dir: creating it owner-only, the lock a running gateway (or a writing CLI
//! command) holds on it, and secret files (mode 0600).

use std::path::Path;

use crate::error::InitError;

/// Creates the data dir (0700 on Unix) if missing.
pub fn ensure_data_dir(dir: &Path) -> Result<(), InitError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| InitError::io(format!("creating data dir {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// An exclusive lock on `<data_dir>/poolgate.lock`, held by a running gateway (and by CLI commands
/// that write the store) so that, e.g., a key rotation cannot run under a live gateway.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data-dir lock, or says who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, InitError> {
    let path = dir.join("poolgate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| InitError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(InitError::Invalid(format!(
            "the data dir {} is in use by a running poolgate (stop it first, or use the admin API)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(InitError::io(format!("locking {}", path.display()), error))
        }
    }
}

/// Writes a secret file readable only by its owner.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), InitError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| InitError::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| InitError::io(format!("writing {}", path.display()), e))
}
