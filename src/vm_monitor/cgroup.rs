//! Where the memory figures come from, read only: a cgroup (v2, or the v1 memory controller of
//! a hybrid host) or, without `--cgroup`, the whole system.
//!
//! The figure that decides is Neon's "non-reclaimable" memory: `active_anon + inactive_anon`
//! (shmem and tmpfs pages count, page cache does not). Nothing here ever writes to a cgroup:
//! the cgroup belongs to whoever made it (the VM image's sysinit, a test), not to us.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The memory figures of one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// A cgroup v2 group (`memory.stat`, `memory.max`, `memory.pressure`).
    V2 { dir: PathBuf },
    /// A group of the v1 memory controller (`memory.stat`, `memory.limit_in_bytes`); PSI from
    /// the group of the same name in the v2 tree of a hybrid host, when there is one.
    V1 {
        dir: PathBuf,
        pressure: Option<PathBuf>,
    },
    /// `/proc/meminfo` and `/proc/pressure/memory`.
    System,
}

impl MemorySource {
    /// The source for `--cgroup` (a name under the cgroup root, as Neon's), or the whole system.
    pub fn resolve(cgroup: Option<&str>, root: &Path) -> anyhow::Result<Self> {
        let Some(name) = cgroup else {
            return Ok(MemorySource::System);
        };
        let relative = Path::new(name.trim_start_matches('/'));
        if name.trim_matches('/').is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!(
                "--cgroup {name:?} is not a cgroup name (a path below {})",
                root.display()
            );
        }
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(relative);
            if !dir.join("memory.stat").is_file() {
                bail!(
                    "--cgroup {name:?}: {} has no memory.stat (no such group, or the memory controller is not enabled for it)",
                    dir.display()
                );
            }
            return Ok(MemorySource::V2 { dir });
        }
        let dir = root.join("memory").join(relative);
        if !dir.join("memory.stat").is_file() {
            bail!(
                "--cgroup {name:?}: neither a cgroup v2 group ({} is not a cgroup2 mount) nor a v1 memory group ({} has no memory.stat)",
                root.display(),
                dir.display()
            );
        }
        let pressure = root.join("unified").join(relative).join("memory.pressure");
        Ok(MemorySource::V1 {
            dir,
            pressure: pressure.is_file().then_some(pressure),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            MemorySource::V2 { dir } => format!("cgroup v2 {}", dir.display()),
            MemorySource::V1 { dir, .. } => format!("cgroup v1 {}", dir.display()),
            MemorySource::System => "the whole system (/proc/meminfo)".into(),
        }
    }

    /// Non-reclaimable memory now, in bytes.
    pub fn anon_bytes(&self) -> anyhow::Result<u64> {
        match self {
            MemorySource::V2 { dir } => {
                let path = dir.join("memory.stat");
                anon_from_stat(&read(&path)?, false)
                    .with_context(|| format!("parsing {}", path.display()))
            }
            MemorySource::V1 { dir, .. } => {
                let path = dir.join("memory.stat");
                anon_from_stat(&read(&path)?, true)
                    .with_context(|| format!("parsing {}", path.display()))
            }
            MemorySource::System => anon_from_meminfo(&read(Path::new("/proc/meminfo"))?)
                .context("parsing /proc/meminfo"),
        }
    }

    /// The group's memory limit, if it has one below the machine's memory.
    pub fn limit_bytes(&self, mem_total: u64) -> anyhow::Result<Option<u64>> {
        let text = match self {
            MemorySource::V2 { dir } => read(&dir.join("memory.max"))?,
            MemorySource::V1 { dir, .. } => read(&dir.join("memory.limit_in_bytes"))?,
            MemorySource::System => return Ok(None),
        };
        Ok(parse_limit(&text)?.filter(|&limit| limit < mem_total))
    }

    /// The PSI file whose triggers say that this place stalls for memory.
    pub fn pressure_file(&self) -> Option<PathBuf> {
        match self {
            MemorySource::V2 { dir } => Some(dir.join("memory.pressure")),
            MemorySource::V1 { pressure, .. } => pressure.clone(),
            MemorySource::System => Some(PathBuf::from("/proc/pressure/memory")),
        }
        .filter(|p| p.is_file())
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `active_anon + inactive_anon` of a `memory.stat`. In v1 the `total_` counters include the
/// descendants, as v2's plain ones do.
pub fn anon_from_stat(text: &str, v1: bool) -> anyhow::Result<u64> {
    let value = |key: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>())
            })
            .ok_or_else(|| anyhow!("no {key} line"))?
            .with_context(|| format!("{key} is not a number"))
    };
    let (active, inactive) = if v1 {
        ("total_active_anon", "total_inactive_anon")
    } else {
        ("active_anon", "inactive_anon")
    };
    Ok(value(active)? + value(inactive)?)
}

/// `Active(anon) + Inactive(anon)` of `/proc/meminfo`, in bytes.
pub fn anon_from_meminfo(text: &str) -> anyhow::Result<u64> {
    Ok(meminfo_field(text, "Active(anon)")? + meminfo_field(text, "Inactive(anon)")?)
}

/// `MemTotal` of `/proc/meminfo`, in bytes: the memory size Neon starts from.
pub fn mem_total() -> anyhow::Result<u64> {
    meminfo_field(&read(Path::new("/proc/meminfo"))?, "MemTotal").context("parsing /proc/meminfo")
}

fn meminfo_field(text: &str, key: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| anyhow!("no {key} line"))?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("{key} is not in kB: {line:?}"))?
        .trim()
        .parse::<u64>()
        .with_context(|| format!("{key} is not a number: {line:?}"))?;
    Ok(kib * 1024)
}

/// `memory.max` (`max` or bytes) or `memory.limit_in_bytes` (bytes; unlimited is a huge number).
pub fn parse_limit(text: &str) -> anyhow::Result<Option<u64>> {
    match text.trim() {
        "max" => Ok(None),
        value => value
            .parse::<u64>()
            .map(Some)
            .with_context(|| format!("memory limit {value:?} is not a number")),
    }
}

/// A PSI trigger, in the kernel's words: `some|full <stall µs> <window µs>` ("the tasks stalled
/// on memory for at least <stall> within any <window>").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiTrigger {
    pub full: bool,
    pub stall: Duration,
    pub window: Duration,
}

impl PsiTrigger {
    pub fn kernel_text(&self) -> String {
        format!(
            "{} {} {}",
            if self.full { "full" } else { "some" },
            self.stall.as_micros(),
            self.window.as_micros()
        )
    }
}

impl FromStr for PsiTrigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{s:?} is not a PSI trigger: expected `some|full <stall µs> <window µs>`, e.g. `some 100000 2000000`"
            )
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [kind, stall, window] = parts[..] else {
            return Err(usage());
        };
        let full = match kind {
            "some" => false,
            "full" => true,
            _ => return Err(usage()),
        };
        let micros = |v: &str| v.parse::<u64>().map(Duration::from_micros).ok();
        let (Some(stall), Some(window)) = (micros(stall), micros(window)) else {
            return Err(usage());
        };
        // The kernel's own bounds (500 ms to 10 s windows, stall within the window).
        if !(Duration::from_millis(500)..=Duration::from_secs(10)).contains(&window)
            || stall.is_zero()
            || stall > window
        {
            return Err(format!(
                "{s:?}: the window must be 500000..=10000000 µs and the stall more than 0 and at most the window"
            ));
        }
        Ok(PsiTrigger {
            full,
            stall,
            window,
        })
    }
}

/// An armed PSI trigger: readable (POLLPRI) each time the stall threshold is crossed.
pub struct PressureWatch {
    fd: AsyncFd<fs::File>,
}

impl PressureWatch {
    /// Arm `trigger` on `path`. Without CAP_SYS_RESOURCE the kernel takes only windows that
    /// are multiples of 2 s (EINVAL otherwise), which the error then says.
    pub fn arm(path: &Path, trigger: PsiTrigger) -> anyhow::Result<Self> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let text = trigger.kernel_text();
        file.write_all(format!("{text}\0").as_bytes()).with_context(|| {
            format!(
                "arming PSI trigger {text:?} on {} (without CAP_SYS_RESOURCE the window must be a multiple of 2 s)",
                path.display()
            )
        })?;
        // SAFETY: a `File` owns its descriptor, which stays open and the same until the
        // `AsyncFd` (its owner) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }
            .map_err(|e| anyhow!("polling {}: {e}", path.display()))?;
        Ok(Self { fd })
    }

    /// Wait for the next time the trigger fires.
    pub async fn fired(&self) -> anyhow::Result<()> {
        let mut guard = self.fd.ready(Interest::PRIORITY).await?;
        let ready = guard.ready();
        guard.clear_ready();
        if ready.is_error() {
            bail!("the pressure file reports an error (its cgroup was removed?)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_STAT: &str = "cache 1000\nrss 5000\nshmem 0\nactive_anon 4096\ninactive_anon 1024\n\
        total_cache 1000\ntotal_active_anon 8192\ntotal_inactive_anon 2048\n";
    const V2_STAT: &str = "anon 5120\nfile 1000\nactive_anon 4096\ninactive_anon 1024\nshmem 0\n";

    #[test]
    fn anon_counters() {
        assert_eq!(anon_from_stat(V2_STAT, false).unwrap(), 5120);
        assert_eq!(anon_from_stat(V1_STAT, true).unwrap(), 10240);
        let error = anon_from_stat("cache 1\n", false).unwrap_err().to_string();
        assert_eq!(error, "no active_anon line");
        let error = anon_from_stat("active_anon x\ninactive_anon 1\n", false)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "active_anon is not a number");
        let meminfo =
            "MemTotal:       24000000 kB\nActive(anon):     100 kB\nInactive(anon):    28 kB\n";
        assert_eq!(anon_from_meminfo(meminfo).unwrap(), 128 * 1024);
        assert_eq!(
            meminfo_field(meminfo, "MemTotal").unwrap(),
            24_000_000 * 1024
        );
    }

    #[test]
    fn this_machine_has_figures() {
        assert!(mem_total().unwrap() > 0);
        assert!(MemorySource::System.anon_bytes().unwrap() > 0);
        assert_eq!(MemorySource::System.limit_bytes(1 << 40).unwrap(), None);
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n").unwrap(), None);
        assert_eq!(parse_limit("67108864\n").unwrap(), Some(64 << 20));
        assert!(parse_limit("lots").is_err());
    }

    #[test]
    fn cgroup_names_stay_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "/", "../etc", "a/../../b", "./a"] {
            let error = MemorySource::resolve(Some(bad), root.path()).unwrap_err();
            assert!(
                error.to_string().contains("is not a cgroup name"),
                "{bad}: {error}"
            );
        }
        let error = MemorySource::resolve(Some("neon-postgres"), root.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no memory.stat"), "{error}");
        assert_eq!(
            MemorySource::resolve(None, root.path()).unwrap(),
            MemorySource::System
        );
    }

    #[test]
    fn v1_and_v2_layouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("memory/pg")).unwrap();
        fs::write(r.join("memory/pg/memory.stat"), V1_STAT).unwrap();
        fs::write(r.join("memory/pg/memory.limit_in_bytes"), "67108864\n").unwrap();
        let v1 = MemorySource::resolve(Some("pg"), r).unwrap();
        assert_eq!(
            v1,
            MemorySource::V1 {
                dir: r.join("memory/pg"),
                pressure: None
            }
        );
        assert_eq!(v1.anon_bytes().unwrap(), 10240);
        assert_eq!(v1.limit_bytes(1 << 30).unwrap(), Some(64 << 20));
        // A limit at or above the machine's memory is no limit.
        assert_eq!(v1.limit_bytes(32 << 20).unwrap(), None);
        fs::create_dir_all(r.join("unified/pg")).unwrap();
        fs::write(r.join("unified/pg/memory.pressure"), "").unwrap();
        let hybrid = MemorySource::resolve(Some("/pg"), r).unwrap();
        assert_eq!(
            hybrid.pressure_file(),
            Some(r.join("unified/pg/memory.pressure"))
        );

        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::write(r.join("cgroup.controllers"), "memory\n").unwrap();
        fs::create_dir_all(r.join("neon-postgres")).unwrap();
        fs::write(r.join("neon-postgres/memory.stat"), V2_STAT).unwrap();
        fs::write(r.join("neon-postgres/memory.max"), "max\n").unwrap();
        let v2 = MemorySource::resolve(Some("neon-postgres"), r).unwrap();
        assert_eq!(v2.anon_bytes().unwrap(), 5120);
        assert_eq!(v2.limit_bytes(1 << 30).unwrap(), None);
        assert_eq!(v2.pressure_file(), None);
    }

    #[test]
    fn psi_triggers() {
        let t: PsiTrigger = "some 100000 2000000".parse().unwrap();
        assert_eq!(t.kernel_text(), "some 100000 2000000");
        assert!(!t.full);
        assert!("full 1 1000000".parse::<PsiTrigger>().unwrap().full);
        for bad in [
            "",
            "some",
            "most 1 2000000",
            "some x 2000000",
            "some 0 2000000",
            "some 3000000 2000000",
            "some 1 100",
        ] {
            assert!(bad.parse::<PsiTrigger>().is_err(), "{bad}");
        }
    }
}
