//! The template's catalog, kept beside its stamp: the first start from a copy of a build reads
//! it (the apply reads the catalog anyway) and keeps it here; later starts from pristine copies
//! of that build hand it to the apply instead of reading it on their cold backend.

use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::reconcile::Catalog;

const FILE: &str = "catalog.json";

/// The file: the catalog, the build it was read from (its stamp's checksum) and the
/// compute_ctl that read it (another one may read other things: it reads again).
#[derive(Serialize, Deserialize)]
struct Kept {
    template: String,
    reader: String,
    catalog: Catalog,
}

/// This compute_ctl executable's identity (path, inode, size, mtime).
fn reader() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    super::manifest::binary_identity(&exe)
        .ok()
        .map(|(_, id)| id)
}

/// The catalog kept for the build whose stamp sums to `sum`; none when nothing was kept yet,
/// or it was another build's or another compute_ctl's, or the file does not parse (it is then
/// read and kept again).
pub(super) fn load(dir: &Path, sum: &str) -> Option<Catalog> {
    let text = fs::read_to_string(dir.join(FILE)).ok()?;
    match serde_json::from_str::<Kept>(&text) {
        Ok(kept) if kept.template == sum && reader().as_ref() == Some(&kept.reader) => {
            Some(kept.catalog)
        }
        Ok(_) => None,
        Err(error) => {
            tracing::info!("reading the template's kept catalog again: {error}");
            None
        }
    }
}

/// Keep `catalog` for the build whose stamp sums to `sum`, replacing whatever was kept (a
/// write and a rename: a reader sees the old file or the new one).
pub(super) fn keep(dir: &Path, sum: &str, catalog: &Catalog) -> anyhow::Result<()> {
    let kept = Kept {
        template: sum.to_owned(),
        reader: reader().context("this executable's identity")?,
        catalog: catalog.clone(),
    };
    let path = dir.join(FILE);
    let partial = dir.join(format!("{FILE}.{}", std::process::id()));
    fs::write(&partial, serde_json::to_vec(&kept)?)
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// Drop the kept catalog: the next start reads it again, from its own pristine copy.
pub(super) fn forget(dir: &Path) {
    match fs::remove_file(dir.join(FILE)) {
        Ok(()) => tracing::info!("forgot the template's kept catalog"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("forgetting the template's kept catalog: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{ReadyDatabase, RoleState};

    #[test]
    fn a_kept_catalog_serves_its_own_build_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "a"), None);
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "cloud_admin".into(),
            RoleState {
                password: Some("SCRAM-SHA-256$x".into()),
                ..RoleState::default()
            },
        );
        catalog.ready.push(ReadyDatabase {
            name: "compute_ctl_ready_0".into(),
            granted: true,
            ..ReadyDatabase::default()
        });
        catalog.main.health_check = true;
        catalog.file_copy = true;
        keep(dir.path(), "a", &catalog).unwrap();
        // `file_copy` follows the running settings: never kept.
        let loaded = load(dir.path(), "a").unwrap();
        assert!(!loaded.file_copy);
        assert_eq!(
            loaded,
            Catalog {
                file_copy: false,
                ..catalog.clone()
            }
        );
        assert_eq!(load(dir.path(), "b"), None);
        // Kept by another compute_ctl executable: read again.
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        let mut other: Kept = serde_json::from_str(&text).unwrap();
        other.reader = "binary /elsewhere".into();
        fs::write(dir.path().join(FILE), serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(load(dir.path(), "a"), None);
        fs::write(dir.path().join(FILE), "{").unwrap();
        assert_eq!(load(dir.path(), "a"), None);
    }
}
