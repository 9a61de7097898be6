//! Files in the data directory and key files: created private (mode 0600, directories 0700),
//! never readable by other users.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use airlock_shared::seal::{OpeningKey, OpeningKeyring, SealingKey};
use anyhow::{bail, Context};
use zeroize::Zeroizing;

/// Name of the file holding the bootstrap admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Name of the `airlock dev` opening key file in the data directory.
pub const SEAL_KEY_FILE: &str = "seal.key";

/// Create the data directory (mode 0700) if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Write a new private file; fails if `path` exists.
pub fn write_new_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = private_options().create_new(true).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Write a private file, replacing any existing one atomically (write a temporary file
/// beside it, then rename), so a reader never sees a half-written file and an old file with
/// looser permissions is not reused.
pub fn replace_private(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    write_new_private(&temporary, contents)?;
    fs::rename(&temporary, path).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

/// Path of the admin token file in `data_dir`.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// Load the `airlock dev` opening key from `path`, or create one there if the file does not
/// exist. Returns the key and whether it was created.
pub fn load_or_create_opening_key(path: &Path) -> anyhow::Result<(OpeningKey, bool)> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = OpeningKey::from_base64(&text)
                .with_context(|| format!("seal key file {} is not a valid key", path.display()))?;
            Ok((key, false))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let key = OpeningKey::generate();
            write_new_private(path, &format!("{}\n", key.to_base64().as_str()))
                .with_context(|| format!("cannot write seal key file {}", path.display()))?;
            Ok((key, true))
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot read seal key file {}", path.display()))
        }
    }
}

/// `airlock keygen`: write a new opening key to `out` (refusing to overwrite) and return its
/// public half, which the control plane is given.
pub fn keygen(out: &Path) -> anyhow::Result<SealingKey> {
    if out.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key",
            out.display()
        );
    }
    let key = OpeningKey::generate();
    write_new_private(out, &format!("{}\n", key.to_base64().as_str()))
        .with_context(|| format!("cannot write key file {}", out.display()))?;
    Ok(key.sealing_key().clone())
}

/// Read the opening key(s) in a key file (one key as written by [`keygen`], or several, one
/// per line or comma-separated). The file's text is zeroized once parsed, and errors never
/// quote it.
pub fn read_opening_keys(path: &Path) -> anyhow::Result<OpeningKeyring> {
    let bytes = Zeroizing::new(
        fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("key file {} is not text", path.display()))?;
    OpeningKeyring::from_base64_list(text).with_context(|| {
        format!(
            "key file {} does not hold valid opening keys",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dp.key");
        let public = keygen(&out).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&out), 0o600);
        let opening = OpeningKey::from_base64(&fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(opening.sealing_key().to_base64(), public.to_base64());

        let before = fs::read_to_string(&out).unwrap();
        let error = keygen(&out).unwrap_err();
        assert!(error.to_string().contains("refusing to overwrite"));
        assert_eq!(fs::read_to_string(&out).unwrap(), before);
    }

    #[test]
    fn opening_key_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEAL_KEY_FILE);
        let (first, created) = load_or_create_opening_key(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let (second, created) = load_or_create_opening_key(&path).unwrap();
        assert!(!created);
        assert_eq!(
            first.sealing_key().to_base64(),
            second.sealing_key().to_base64()
        );
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEAL_KEY_FILE);
        fs::write(&path, "not a key").unwrap();
        let error = load_or_create_opening_key(&path).unwrap_err();
        assert!(format!("{error:#}").contains("not a valid key"));
    }

    #[test]
    fn key_files_with_one_or_several_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.key");
        let public = keygen(&one).unwrap();
        let ring = read_opening_keys(&one).unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), vec![public.key_id()]);

        let other = OpeningKey::generate();
        let two = dir.path().join("two.key");
        let text = format!(
            "{}\n{}\n",
            fs::read_to_string(&one).unwrap().trim(),
            other.to_base64().as_str()
        );
        fs::write(&two, text).unwrap();
        assert_eq!(read_opening_keys(&two).unwrap().key_ids().count(), 2);

        let bad = dir.path().join("bad.key");
        fs::write(&bad, "not-a-key-at-all").unwrap();
        let error = format!("{:#}", read_opening_keys(&bad).unwrap_err());
        assert!(
            error.contains("does not hold valid opening keys"),
            "{error}"
        );
        assert!(!error.contains("not-a-key-at-all"), "{error}");
        assert!(read_opening_keys(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn replace_private_overwrites_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        replace_private(&path, "new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn data_dir_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        ensure_data_dir(&data).unwrap();
        assert!(data.is_dir());
        #[cfg(unix)]
        assert_eq!(mode(&data), 0o700);
        ensure_data_dir(&data).unwrap();
    }
}
