//! What identifies a template: its key (the binaries, superuser, initdb options and owner that
//! decide initdb's output, and the privileged role its catalog is prepared for), the `origin`
//! it was built with, and the stamp: the manifest of its data directory (every entry's type,
//! mode, size and mtime, under a SHA-256), checked at every start before a copy.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::effects::{pgdata, process};
use crate::node::Node;

const STAMP: &str = "template.stamp";
/// Which `postgres` binary a template was built with (see [`origin`]).
pub(super) const ORIGIN: &str = "origin";
const STAMP_HEADER: &str = "compute_ctl template 1";
/// Bump when the layout of a template changes, so old caches are not mistaken for new ones.
/// Layout 2: the template holds ready databases (see [`super::READY_DATABASES`]).
/// Layout 3: it also holds the privileged role and `public.health_check`, and its ready
/// databases are set up for the privileged role (see [`super::prepare_catalog`]).
const LAYOUT: &str = "layout 3";

/// The uid and gid the files of PGDATA belong to: the Postgres user's when compute_ctl is root,
/// else compute_ctl's own (and nothing is changed).
pub(super) fn owner(node: &Node) -> Option<(u32, u32)> {
    node.os_user
        .as_ref()
        .map(|user| (user.uid.as_raw(), user.gid.as_raw()))
}

/// The cache key: what decides the bytes `initdb` writes, and the privileged role the
/// template's catalog is prepared for, as 16 hex digits.
pub(super) fn key(node: &Node) -> anyhow::Result<String> {
    let mut hash = Sha256::new();
    hash.update(format!("{LAYOUT}\n"));
    for binary in [node.postgres.clone(), node.tool("initdb")] {
        hash.update(binary_identity(&binary)?.1);
    }
    let (uid, gid) = owner(node).unwrap_or_else(|| {
        (
            nix::unistd::Uid::effective().as_raw(),
            nix::unistd::Gid::effective().as_raw(),
        )
    });
    hash.update(format!(
        "superuser {:?}\ninitdb {:?}\nowner {uid}:{gid}\nprivileged role {:?}\n",
        node.superuser,
        pgdata::INITDB_OPTIONS,
        node.privileged_role
    ));
    Ok(hex(&hash.finalize()[..8]))
}

/// A binary's real path, and a line naming that file's identity (an upgrade changes it).
pub(super) fn binary_identity(binary: &Path) -> anyhow::Result<(PathBuf, String)> {
    let real = fs::canonicalize(binary).with_context(|| format!("reading {}", binary.display()))?;
    let meta = fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
    let line = format!(
        "binary {} dev {} ino {} size {} mtime {}.{}\n",
        real.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    Ok((real, line))
}

/// What `<cache>/pg-<key>/origin` says: the `postgres` binary a template was built with, by
/// path and by identity. Two lines, so a later start can tell a template whose binary was
/// replaced (an upgrade: same path, another identity) from one of another installation.
pub(super) fn origin(node: &Node) -> anyhow::Result<String> {
    let (path, identity) = binary_identity(&node.postgres)?;
    Ok(format!(
        "postgres {}\nidentity {}\n",
        path.display(),
        hex(&Sha256::digest(identity.as_bytes()))
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `postgres --version`, for the stamp (humans reading the cache want to know what it holds).
pub(super) async fn server_version(node: &Node) -> anyhow::Result<String> {
    let output = process::output(
        process::command(node, &node.postgres)
            .arg("--version")
            .stdin(std::process::Stdio::null()),
    )
    .await
    .context("running postgres --version")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One entry of a template's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) kind: Kind,
    pub(super) mode: u32,
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    /// Relative to the data directory; never empty, never `..`.
    pub(super) path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => 'f',
            Kind::Symlink => 'l',
        }
    }
}

/// The list of a template's entries, parents before children.
#[derive(Debug)]
pub(super) struct Manifest {
    entries: Vec<Entry>,
    /// See [`Manifest::sum`]: computed once, by the scan or the read that checked it.
    sum: String,
}

impl Manifest {
    /// The SHA-256 of the manifest's body, as in the stamp: it changes whenever the template
    /// is rebuilt (every file has a new mtime), so it names one build of a template.
    pub(super) fn sum(&self) -> &str {
        &self.sum
    }

    /// The entries, parents before children.
    pub(super) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(super) fn scan(data: &Path) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let mut children: Vec<_> = fs::read_dir(data.join(&rel))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            children.sort();
            for name in children {
                let path = rel.join(name);
                let meta = fs::symlink_metadata(data.join(&path))?;
                let entry = entry_of(&meta, path.clone())?;
                if entry.kind == Kind::Dir {
                    pending.push(path);
                }
                entries.push(entry);
            }
        }
        let sum = hex(&Sha256::digest(body(&entries).as_bytes()));
        Ok(Self { entries, sum })
    }

    pub(super) fn write(&self, dir: &Path, key: &str, version: &str) -> anyhow::Result<()> {
        let text = format!(
            "{STAMP_HEADER}\nkey {key}\nversion {version}\nentries {}\nsha256 {}\n{}",
            self.entries.len(),
            self.sum,
            body(&self.entries)
        );
        let path = dir.join(STAMP);
        let mut file =
            File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Read the stamp of `dir` and check the data directory against it.
    pub(super) fn verify(dir: &Path) -> anyhow::Result<Self> {
        let manifest = Self::read(dir)?;
        manifest.check(dir)?;
        Ok(manifest)
    }

    /// The checksum the stamp of `dir` names, from its header alone: which build of the
    /// template `dir` holds, all that taking a spare of that build needs (the spare was copied
    /// once the build's files were checked). [`Manifest::read`] checks the rest.
    pub(super) fn read_sum(dir: &Path) -> anyhow::Result<String> {
        let path = dir.join(STAMP);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Header::parse(&path, &text)?.sum.to_owned())
    }

    /// Read the stamp of `dir` (its checksum checked), not the files it lists.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STAMP);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let Header { count, sum, body } = Header::parse(&path, &text)?;
        if hex(&Sha256::digest(body.as_bytes())) != sum {
            bail!(
                "{}: checksum mismatch (truncated or edited)",
                path.display()
            );
        }
        let entries = body
            .lines()
            .map(parse_entry)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}", path.display()))?;
        if entries.len() != count {
            bail!(
                "{}: {} entries, the stamp says {count}",
                path.display(),
                entries.len()
            );
        }
        Ok(Self {
            entries,
            sum: sum.to_owned(),
        })
    }

    /// Check every entry of the data directory of `dir` against the stamp: type, size, mtime
    /// (~1,500 `lstat`s, a few ms).
    pub(super) fn check(&self, dir: &Path) -> anyhow::Result<()> {
        let data = dir.join("data");
        for expected in &self.entries {
            let full = data.join(&expected.path);
            let meta = fs::symlink_metadata(&full)
                .with_context(|| format!("template entry {}", full.display()))?;
            let mut found = entry_of(&meta, expected.path.clone())?;
            if found.kind == Kind::Dir {
                // A directory's mtime changes with its listing, which is checked entry by entry.
                found.mtime_ns = expected.mtime_ns;
                found.size = expected.size;
            }
            if &found != expected {
                bail!(
                    "template entry {} changed since the template was built",
                    full.display()
                );
            }
        }
        Ok(())
    }
}

/// The header of a stamp, and its body (the entries, one a line).
struct Header<'a> {
    count: usize,
    sum: &'a str,
    body: &'a str,
}

impl<'a> Header<'a> {
    fn parse(path: &Path, text: &'a str) -> anyhow::Result<Self> {
        let mut parts = text.splitn(6, '\n');
        let mut header = |name: &str| -> anyhow::Result<&'a str> {
            let line = parts.next().unwrap_or_default();
            if name.is_empty() {
                return Ok(line);
            }
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .with_context(|| format!("{}: no {name} line", path.display()))
        };
        if header("")? != STAMP_HEADER {
            bail!("{}: not a template stamp", path.display());
        }
        let _key = header("key")?;
        let _version = header("version")?;
        let count = header("entries")?
            .parse()
            .with_context(|| format!("{}: entries", path.display()))?;
        let sum = header("sha256")?;
        let body = parts.next().unwrap_or_default();
        Ok(Self { count, sum, body })
    }
}

/// The stamp's body: one line an entry.
fn body(entries: &[Entry]) -> String {
    let mut body = String::new();
    for e in entries {
        body.push_str(&format!(
            "{} {:o} {} {} {}\n",
            e.kind.letter(),
            e.mode,
            e.size,
            e.mtime_ns,
            e.path.display()
        ));
    }
    body
}

fn entry_of(meta: &fs::Metadata, path: PathBuf) -> anyhow::Result<Entry> {
    let kind = if meta.file_type().is_dir() {
        Kind::Dir
    } else if meta.file_type().is_file() {
        Kind::File
    } else if meta.file_type().is_symlink() {
        Kind::Symlink
    } else {
        bail!(
            "{}: neither a file, a directory nor a symlink",
            path.display()
        );
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & 0o7777,
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        path,
    })
}

fn parse_entry(line: &str) -> anyhow::Result<Entry> {
    let mut fields = line.splitn(5, ' ');
    let mut next = || {
        fields
            .next()
            .with_context(|| format!("short line {line:?}"))
    };
    let kind = match next()? {
        "d" => Kind::Dir,
        "f" => Kind::File,
        "l" => Kind::Symlink,
        other => bail!("unknown entry type {other:?}"),
    };
    let mode = u32::from_str_radix(next()?, 8).with_context(|| format!("mode in {line:?}"))?;
    let size = next()?
        .parse()
        .with_context(|| format!("size in {line:?}"))?;
    let mtime_ns = next()?
        .parse()
        .with_context(|| format!("mtime in {line:?}"))?;
    let path = PathBuf::from(next()?);
    if path.as_os_str().is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("bad path in {line:?}");
    }
    Ok(Entry {
        kind,
        mode,
        size,
        mtime_ns,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_round_trip() {
        let entry = Entry {
            kind: Kind::File,
            mode: 0o600,
            size: 8192,
            mtime_ns: 1_700_000_000_123_456_789,
            path: PathBuf::from("base/1/1259"),
        };
        let body = body(std::slice::from_ref(&entry));
        assert_eq!(body, "f 600 8192 1700000000123456789 base/1/1259\n");
        assert_eq!(parse_entry(body.trim_end()).unwrap(), entry);
    }

    #[test]
    fn escaping_paths_are_refused() {
        for line in [
            "f 600 1 1 ../etc/passwd",
            "f 600 1 1 /etc/passwd",
            "f 600 1 1 a/../../b",
            "x 600 1 1 a",
            "f 600 1",
        ] {
            assert!(parse_entry(line).is_err(), "{line}");
        }
    }

    #[test]
    fn a_truncated_or_edited_stamp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("base")).unwrap();
        fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        fs::write(data.join("base/1"), vec![0u8; 8192]).unwrap();
        let manifest = Manifest::scan(&data).unwrap();
        manifest
            .write(dir.path(), "k", "postgres (PostgreSQL) 15")
            .unwrap();
        assert_eq!(Manifest::verify(dir.path()).unwrap().entries.len(), 3);
        // The read keeps the checksum it checked: the scan's, which the header names.
        assert_eq!(Manifest::read(dir.path()).unwrap().sum(), manifest.sum());
        assert_eq!(Manifest::read_sum(dir.path()).unwrap(), manifest.sum());

        let stamp = dir.path().join(STAMP);
        let text = fs::read_to_string(&stamp).unwrap();
        fs::write(&stamp, &text[..text.len() - 10]).unwrap();
        let err = format!("{:#}", Manifest::verify(dir.path()).unwrap_err());
        assert!(err.contains("checksum mismatch"), "{err}");

        fs::write(&stamp, &text).unwrap();
        fs::write(data.join("base/1"), vec![0u8; 100]).unwrap();
        let err = format!("{:#}", Manifest::verify(dir.path()).unwrap_err());
        assert!(err.contains("changed since"), "{err}");

        fs::remove_file(data.join("base/1")).unwrap();
        assert!(Manifest::verify(dir.path()).is_err());
    }
}
