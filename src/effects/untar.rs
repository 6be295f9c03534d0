//! Unpacking a tar stream into a directory as it streams in, refusing any entry that could land
//! outside it: absolute paths, `..`, links whose target is absolute or climbs, and devices or
//! FIFOs. (`tar`'s `unpack_in` also checks that the parent of every entry resolves inside the
//! directory, so an earlier symlink cannot be used to escape either.) Used for Neon's gzip'd
//! base backups (into PGDATA) and for remote extensions' zstd archives (into a staging
//! directory).

use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::lchown;
use std::path::{Component, Path};

use anyhow::anyhow;
use bytes::{Buf, Bytes};
use tar::EntryType;
use tokio::sync::mpsc::Receiver;

#[derive(Debug)]
pub enum UnpackError {
    /// The archive holds something we will not write: the same on every attempt.
    Refused(anyhow::Error),
    /// Reading the stream or writing the files failed.
    Io(io::Error),
}

impl From<io::Error> for UnpackError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// A blocking `Read` over chunks sent from an async task; an `Err` chunk ends it with that error.
pub struct ChannelReader {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => self.current = chunk?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Gunzip and untar `reader` into PGDATA (`target`).
pub fn unpack(reader: impl Read, target: &Path) -> Result<(), UnpackError> {
    let gunzip = flate2::read::GzDecoder::new(BufReader::with_capacity(256 * 1024, reader));
    unpack_tar(gunzip, target, "PGDATA")
}

/// Untar the (decompressed) `reader` into `target`, which error messages call `what`. Zero
/// blocks are skipped rather than taken as the end, so the whole stream is consumed (as Neon
/// does with base backups: a trailing error is noticed).
pub fn unpack_tar(reader: impl Read, target: &Path, what: &str) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_ignore_zeros(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // Permission bits as archived, without setuid/setgid/sticky.
    archive.set_preserve_permissions(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        check_inside(&path, "path", what).map_err(UnpackError::Refused)?;
        if path.components().all(|c| c == Component::CurDir) {
            continue; // the archive's root, `./`
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let link = entry.link_name()?.ok_or_else(|| {
                    UnpackError::Refused(anyhow!("link {} has no target", path.display()))
                })?;
                check_inside(&link, &format!("target of link {}", path.display()), what)
                    .map_err(UnpackError::Refused)?;
            }
            other => {
                return Err(UnpackError::Refused(anyhow!(
                    "entry {} is of type {other:?}, which {what} may not hold",
                    path.display()
                )));
            }
        }
        if !entry.unpack_in(target)? {
            return Err(UnpackError::Refused(anyhow!(
                "entry {} would be written outside {what}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// `path` must be relative and must not climb (`..`).
fn check_inside(path: &Path, what: &str, root: &str) -> anyhow::Result<()> {
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                anyhow::bail!(
                    "{what} {:?} would lead outside {root} (absolute, or with '..')",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Give everything below `root` (and `root`) to `uid:gid`, without following symlinks.
pub fn give_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    lchown(root, Some(uid), Some(gid))?;
    let meta = fs::symlink_metadata(root)?;
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            give_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    /// A gzip'd tarball of (path, type, link target, contents), with raw header paths so that
    /// hostile names survive (`tar::Builder` refuses them).
    fn tarball(entries: &[(&str, EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (path, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o600);
            header.set_size(data.len() as u64);
            if let Some(link) = link {
                let target = &mut header.as_old_mut().linkname;
                target[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn unpack_into(dir: &Path, bytes: &[u8]) -> Result<(), UnpackError> {
        unpack(bytes, &dir.join("pgdata"))
    }

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pgdata")).unwrap();
        dir
    }

    #[test]
    fn ordinary_entries_are_unpacked() {
        let dir = setup();
        let archive = tarball(&[
            ("./", EntryType::Directory, None, b""),
            ("global/", EntryType::Directory, None, b""),
            ("global/pg_control", EntryType::Regular, None, b"ctl"),
            ("PG_VERSION", EntryType::Regular, None, b"15\n"),
            ("pg_wal", EntryType::Symlink, Some("global"), b""),
        ]);
        unpack_into(dir.path(), &archive).unwrap();
        let pgdata = dir.path().join("pgdata");
        assert_eq!(fs::read(pgdata.join("global/pg_control")).unwrap(), b"ctl");
        assert_eq!(fs::read(pgdata.join("PG_VERSION")).unwrap(), b"15\n");
        assert_eq!(
            fs::read_link(pgdata.join("pg_wal")).unwrap(),
            Path::new("global")
        );
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_escapes() {
        let cases: &[(&str, EntryType, Option<&str>)] = &[
            ("../escaped", EntryType::Regular, None),
            ("base/../../escaped", EntryType::Regular, None),
            ("/tmp/escaped-absolute", EntryType::Regular, None),
            ("evil", EntryType::Symlink, Some("/")),
            ("evil", EntryType::Symlink, Some("../..")),
            ("evil", EntryType::Link, Some("../escaped")),
            ("fifo", EntryType::Fifo, None),
            ("dev", EntryType::Char, None),
        ];
        for (path, kind, link) in cases {
            let dir = setup();
            let archive = tarball(&[
                ("PG_VERSION", EntryType::Regular, None, b"15\n"),
                (path, *kind, *link, b"x"),
                ("evil/passwd", EntryType::Regular, None, b"pwned"),
            ]);
            match unpack_into(dir.path(), &archive) {
                Err(UnpackError::Refused(error)) => {
                    assert!(
                        error.to_string().contains("PGDATA") || error.to_string().contains("type"),
                        "{path}: {error}"
                    )
                }
                other => panic!("{path}: expected a refusal, got {other:?}"),
            }
            assert!(!dir.path().join("escaped").exists(), "{path}");
            assert!(!Path::new("/tmp/escaped-absolute").exists(), "{path}");
            assert!(!dir.path().join("passwd").exists(), "{path}");
        }
    }
}
