//! Remote extensions, as Neon serves them (reference §1.5 step 3, §3.3): extensions whose files
//! are not installed with Postgres but fetched on demand from an extension-storage gateway
//! (`--remote-ext-base-url`), as `GET <base>/<BUILD_TAG>/<arch>/v<pg major>/extensions/<ext>.tar.zst`.
//!
//! The archive holds `share/extension/*` (control and SQL files) and `lib/*` (shared
//! libraries). It is unpacked as it streams in, with the checks of the base-backup untar (no
//! absolute path, no `..`, no link that climbs, no device), into a staging directory of its
//! own; only then are `lib/*` moved into `pg_config --pkglibdir` and `share/extension/*` into
//! `pg_config --sharedir`/extension, so a refused or broken archive writes nothing there.
//!
//! Who may fetch what is the spec's `remote_extensions`: a library name (any `.so…` suffix
//! stripped) maps to its extension through `library_index`, and the extension must be one of
//! `public_extensions` or `custom_extensions`. Requests for one archive share one download (a
//! task whose outcome every requester waits for); a completed archive is not fetched again for
//! the life of the process, a failed one is fetched anew by the next request. Every wait is
//! bounded: the connection, the whole download, the archive's size and what it unpacks to.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use reqwest::Url;
use tokio::sync::{OnceCell, mpsc, watch};
use tracing::Instrument;

use super::lock;
use super::untar::{self, ChannelReader, UnpackError};
use crate::node::{BUILD_TAG, Node};
use crate::operation::OperationError;
use crate::report::{ComputeMetrics, Reporter, millis};
use crate::spec::{RemoteExtSpec, ValidSpec};

/// How long connecting to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one archive may take, from the request to its last byte unpacked.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest archive accepted, as downloaded (Neon's largest, PostGIS, is tens of MiB).
pub const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
/// The most an archive may unpack to (a small archive may decompress to a huge stream).
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// How long `pg_config` may take.
const PG_CONFIG_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks of the download in flight to the unpacking thread.
const CHANNEL_CHUNKS: usize = 16;
/// Libraries of `shared_preload_libraries` that are part of Neon's image, never remote.
const NEVER_REMOTE: [&str; 2] = ["neon", "databricks_auth"];

/// Where archives go: Postgres's directories, as `pg_config` names them.
#[derive(Debug, Clone)]
struct Layout {
    /// `v15`: the third part of an archive's URL.
    pg_major: String,
    /// `pg_config --sharedir`/extension.
    share: PathBuf,
    /// `pg_config --pkglibdir`.
    lib: PathBuf,
    /// Where archives are unpacked before their files are moved: beside the installation, as
    /// Neon's `download_extensions` (so a move is a rename on the same file system).
    staging: PathBuf,
}

/// One archive's download: under way (its outcome comes on the channel), or done.
enum Archive {
    Downloading(watch::Receiver<Option<Result<u64, String>>>),
    Done,
}

/// The remote extensions of this compute: the gateway, the spec in force, the archives fetched.
/// Shared by the start (preloaded libraries) and `/extension_server`.
pub struct RemoteExtensions {
    /// `--remote-ext-base-url`, and the client that downloads from it.
    gateway: Option<(Url, reqwest::Client)>,
    node: Arc<Node>,
    reporter: Reporter,
    /// The spec in force (the effects' handle): its `remote_extensions` is the allow-list.
    spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    layout: OnceCell<Layout>,
    archives: Mutex<HashMap<String, Archive>>,
    next_staging: AtomicU64,
}

/// What the start's downloads measured (Neon's `/metrics.json` fields).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub load_ext_ms: u64,
    pub num_ext_downloaded: u64,
    pub largest_ext_size: u64,
    pub total_ext_download_size: u64,
}

impl Figures {
    pub fn record(self, metrics: &mut ComputeMetrics) {
        metrics.load_ext_ms = self.load_ext_ms;
        metrics.num_ext_downloaded = self.num_ext_downloaded;
        metrics.largest_ext_size = self.largest_ext_size;
        metrics.total_ext_download_size = self.total_ext_download_size;
    }
}

/// `--remote-ext-base-url`, as Neon normalises it: trailing slashes stripped, then exactly one
/// `/` appended; a query string is refused (the archive's path is appended to it).
pub fn parse_base_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?} is not an http or https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{value:?} has a query string or fragment: the archive's path is appended to it"
        ));
    }
    let mut url = url;
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// The architecture part of an archive's URL: Go's names, as Neon's gateway has them.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `<base><BUILD_TAG>/<arch>/<v15>/extensions/<archive>`, each part percent-encoded.
fn archive_url(base: &Url, pg_major: &str, archive: &str) -> anyhow::Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| anyhow!("{base} cannot take a path"))?
        .pop_if_empty()
        .extend([BUILD_TAG, arch(), pg_major, "extensions", archive]);
    Ok(url)
}

/// The extension `name` stands for, if the spec lets this compute fetch it: a library name
/// (`postgis-3`, `postgis-3.so`, `postgis-3.so.1`) goes through `library_index`; the extension
/// must be public or custom and have `extension_data`. Neon's `RemoteExtSpec::get_ext`.
pub fn resolve(spec: &RemoteExtSpec, name: &str, is_library: bool) -> Result<String, String> {
    let mut ext = name;
    if is_library {
        let library = match name.find(".so") {
            Some(at) => &name[..at],
            None => name,
        };
        ext = spec
            .library_index
            .get(library)
            .ok_or_else(|| format!("library {library} is not found"))?;
    }
    let listed = |list: &Option<Vec<String>>| list.iter().flatten().any(|e| e == ext);
    if !listed(&spec.public_extensions) && !listed(&spec.custom_extensions) {
        return Err(format!("extension {ext} is not found"));
    }
    if !spec.extension_data.contains_key(ext) {
        return Err(format!("extension {ext} has no extension_data"));
    }
    Ok(ext.to_owned())
}

/// The libraries of `shared_preload_libraries` (from `cluster.settings`, and from the last
/// `shared_preload_libraries` line of `cluster.postgresql_conf`) that `library_index` names,
/// without `neon` and `databricks_auth`: what must be fetched before Postgres starts.
pub fn preload_libraries(spec: &ValidSpec, remote: &RemoteExtSpec) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    if let Some(value) = spec.setting("shared_preload_libraries") {
        values.push(value.to_owned());
    }
    if let Some(conf) = &spec.cluster.postgresql_conf
        && let Some(line) = conf.lines().rev().find_map(|line| {
            let rest = line.trim_start().strip_prefix("shared_preload_libraries")?;
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest);
            Some(rest.to_owned())
        })
    {
        values.push(line);
    }
    let mut libraries = Vec::new();
    for value in &values {
        for library in value.split([',', '\'', '"', ' ', '\t']) {
            let library = library.strip_prefix("$libdir/").unwrap_or(library);
            let library = match library.find(".so") {
                Some(at) => &library[..at],
                None => library,
            };
            if library.is_empty()
                || NEVER_REMOTE.contains(&library)
                || !remote.library_index.contains_key(library)
                || libraries.iter().any(|l| l == library)
            {
                continue;
            }
            libraries.push(library.to_owned());
        }
    }
    libraries
}

impl RemoteExtensions {
    pub fn new(
        node: Arc<Node>,
        base: Option<Url>,
        reporter: Reporter,
        spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    ) -> anyhow::Result<Self> {
        let mut this = Self::without_gateway(node, reporter, spec);
        if let Some(base) = base {
            let client = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(DOWNLOAD_TIMEOUT)
                .build()
                .map_err(|e| anyhow!("building the HTTP client: {e}"))?;
            this.gateway = Some((base, client));
        }
        Ok(this)
    }

    /// No `--remote-ext-base-url`: `/extension_server` answers 412, a start fetches nothing.
    pub fn without_gateway(
        node: Arc<Node>,
        reporter: Reporter,
        spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    ) -> Self {
        Self {
            gateway: None,
            node,
            reporter,
            spec,
            layout: OnceCell::new(),
            archives: Mutex::default(),
            next_staging: AtomicU64::new(0),
        }
    }

    /// `POST /extension_server/{filename}[?is_library=true]`: fetch the archive that `filename`
    /// (an extension, or with `is_library` a library) belongs to, unless it was fetched.
    pub async fn serve(
        self: &Arc<Self>,
        filename: &str,
        is_library: bool,
    ) -> Result<(), OperationError> {
        if self.gateway.is_none() {
            return Err(OperationError::NotConfigured(
                "remote storage is not configured".to_owned(),
            ));
        }
        let in_force = lock(&self.spec).clone();
        let spec = in_force
            .and_then(|s| s.remote_extensions.clone())
            .ok_or_else(|| {
                OperationError::NotInSpec(
                    "information about remote extensions is unavailable".to_owned(),
                )
            })?;
        let ext = resolve(&spec, filename, is_library).map_err(|e| {
            tracing::warn!("extension download failed to find extension: {e}");
            OperationError::NotFound(format!("failed to find file {filename}: {e}"))
        })?;
        match self.fetch(&ext).await {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!("extension download failed: {error}");
                Err(OperationError::Failed(format!(
                    "downloading extension {ext} failed: {error}"
                )))
            }
        }
    }

    /// Before Postgres starts: write the control files of the allowed extensions (so Postgres
    /// lists them; an installed one is left as it is) and fetch the extensions of the remote
    /// libraries of `shared_preload_libraries`, at once. A failure is logged, not fatal (as
    /// Neon: Postgres then says which library it misses). `None` without a gateway or
    /// `remote_extensions`.
    pub async fn prepare(self: &Arc<Self>, spec: &ValidSpec) -> Option<Figures> {
        self.gateway.as_ref()?;
        let remote = spec.remote_extensions.as_ref()?;
        let began = Instant::now();
        let layout = match self.layout().await {
            Ok(layout) => layout,
            Err(error) => {
                tracing::error!("remote extensions: {error:#}");
                return None;
            }
        };
        write_control_files(remote, &layout.share);
        let mut extensions = BTreeSet::new();
        for library in preload_libraries(spec, remote) {
            match resolve(remote, &library, true) {
                Ok(ext) => {
                    extensions.insert(ext);
                }
                Err(error) => tracing::warn!("preloaded library {library}: {error}"),
            }
        }
        let fetches = extensions.into_iter().map(|ext| {
            let this = self.clone();
            tokio::spawn(async move {
                let result = this.fetch(&ext).await;
                (ext, result)
            })
        });
        let mut figures = Figures::default();
        for fetch in fetches.collect::<Vec<_>>() {
            match fetch.await {
                Ok((_, Ok(size))) => {
                    figures.num_ext_downloaded += 1;
                    figures.largest_ext_size = figures.largest_ext_size.max(size);
                    figures.total_ext_download_size += size;
                }
                Ok((ext, Err(error))) => {
                    tracing::error!("downloading extension {ext} failed: {error}")
                }
                Err(error) => tracing::error!("extension download task failed: {error}"),
            }
        }
        figures.load_ext_ms = millis(began.elapsed());
        Some(figures)
    }

    /// The archive of `ext`, fetched once: a request while it downloads waits for that
    /// download; after it succeeded the answer is at once (size 0, as Neon); after it failed
    /// the next request downloads again. The size downloaded on success.
    async fn fetch(self: &Arc<Self>, ext: &str) -> Result<u64, String> {
        let archive = format!("{ext}.tar.zst");
        let mut outcome = {
            let mut archives = lock(&self.archives);
            match archives.get(&archive) {
                Some(Archive::Done) => {
                    tracing::info!("{archive} already downloaded");
                    return Ok(0);
                }
                // A live download (its task holds the sender until it reports).
                Some(Archive::Downloading(outcome)) if outcome.has_changed().is_ok() => {
                    tracing::info!("{archive} is being downloaded: waiting for it");
                    outcome.clone()
                }
                _ => {
                    let (tx, rx) = watch::channel(None);
                    archives.insert(archive.clone(), Archive::Downloading(rx.clone()));
                    let this = self.clone();
                    let ext = ext.to_owned();
                    let span = tracing::info_span!("download_extension", archive);
                    // A task of its own: it finishes (bounded) whoever still waits for it.
                    tokio::spawn(
                        async move {
                            let result = this
                                .download(&ext, &archive)
                                .await
                                .map_err(|e| format!("{e:#}"));
                            let mut archives = lock(&this.archives);
                            if result.is_ok() {
                                archives.insert(archive, Archive::Done);
                            } else {
                                archives.remove(&archive);
                            }
                            drop(archives);
                            let _ = tx.send(Some(result));
                        }
                        .instrument(span),
                    );
                    rx
                }
            }
        };
        let stopped = || Err("the download stopped without an outcome".to_owned());
        match outcome.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or_else(stopped),
            Err(_) => stopped(),
        }
    }

    /// Postgres's directories, read once from `pg_config`; then the staging directories of
    /// compute_ctl processes that died half-way are removed.
    async fn layout(&self) -> anyhow::Result<&Layout> {
        self.layout
            .get_or_try_init(|| async {
                let layout = pg_layout(&self.node).await?;
                remove_stale_staging(&layout.staging);
                Ok(layout)
            })
            .await
    }

    /// Download, unpack and install one archive; its size.
    async fn download(&self, ext: &str, archive: &str) -> anyhow::Result<u64> {
        let (base, client) = self
            .gateway
            .as_ref()
            .context("remote storage is not configured")?;
        let layout = self.layout().await?;
        let url = archive_url(base, &layout.pg_major, archive)?;
        tracing::info!(%url, "downloading extension {ext}");
        let began = Instant::now();
        let staging = Staging::new(
            layout,
            ext,
            self.next_staging.fetch_add(1, Ordering::Relaxed),
        )?;
        let size = tokio::time::timeout(
            DOWNLOAD_TIMEOUT,
            self.unpack_from(client, &url, archive, &staging.0),
        )
        .await
        .map_err(|_| anyhow!("GET {url}: not done within {DOWNLOAD_TIMEOUT:?}"))??;
        let root = staging.0.clone();
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || install(&root, &layout))
            .await
            .context("installing the archive's files")??;
        tracing::info!(size, "extension {ext} installed in {:?}", began.elapsed());
        Ok(size)
    }

    /// GET the archive and unpack it into `target` as it streams in; its size.
    async fn unpack_from(
        &self,
        client: &reqwest::Client,
        url: &Url,
        archive: &str,
        target: &Path,
    ) -> anyhow::Result<u64> {
        let response = client.get(url.clone()).send().await;
        let status = match &response {
            Ok(response) => response.status().to_string(),
            Err(_) => "unknown".to_owned(),
        };
        self.reporter.remote_ext_request(status, archive.to_owned());
        let mut response = response
            .map_err(|e| anyhow!("GET {url}: {}", crate::control_plane::error_chain(&e)))?;
        if response.status() != reqwest::StatusCode::OK {
            bail!("GET {url}: {}", response.status());
        }
        if let Some(length) = response.content_length()
            && length > MAX_ARCHIVE_BYTES
        {
            bail!("GET {url}: the archive has {length} bytes, more than {MAX_ARCHIVE_BYTES}");
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let target = target.to_owned();
        let unpacker =
            tokio::task::spawn_blocking(move || unpack_zstd(ChannelReader::new(rx), &target));
        let mut size = 0u64;
        let mut failed = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if size > MAX_ARCHIVE_BYTES {
                        failed = Some(anyhow!(
                            "GET {url}: the archive is larger than {MAX_ARCHIVE_BYTES} bytes"
                        ));
                        break;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        break; // the unpacker stopped: its error says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(anyhow!(
                        "GET {url}: {}",
                        crate::control_plane::error_chain(&e)
                    ));
                    break;
                }
            }
        }
        if failed.is_some() {
            let _ = tx.send(Err(io::Error::other("download failed"))).await;
        }
        drop(tx);
        let unpacked = unpacker.await.context("the unpacking thread failed")?;
        if let Some(error) = failed {
            return Err(error);
        }
        match unpacked {
            Ok(()) => Ok(size),
            Err(UnpackError::Refused(error)) => Err(error.context(format!("{archive} refused"))),
            Err(UnpackError::Io(error)) => Err(anyhow!("unpacking {archive}: {error}")),
        }
    }
}

/// The staging directory of one download, removed with everything in it when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(layout: &Layout, ext: &str, n: u64) -> anyhow::Result<Self> {
        fs::create_dir_all(&layout.staging)
            .with_context(|| format!("creating {}", layout.staging.display()))?;
        let dir = layout
            .staging
            .join(format!("{ext}.{}.{n}", std::process::id()));
        // Left by a process of the same pid that died half-way.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {error}", self.0.display());
        }
    }
}

/// Remove the staging directories (`<ext>.<pid>.<n>`) whose process is gone: a process
/// that exited during a download leaves its own behind.
fn remove_stale_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit('.').nth(1))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            tracing::info!("removing {}, left by process {pid}", path.display());
            if let Err(error) = fs::remove_dir_all(&path) {
                tracing::warn!("removing {}: {error}", path.display());
            }
        }
    }
}

/// Unzstd and untar `reader` into `target`, refusing more than [`MAX_UNPACKED_BYTES`].
/// Every frame of the stream is decompressed (a parallel compressor writes several) and each
/// frame's checksum, when it has one, is checked.
fn unpack_zstd(reader: impl Read, target: &Path) -> Result<(), UnpackError> {
    let frames =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(256 * 1024, reader))?;
    let limited = Limited {
        inner: frames,
        left: MAX_UNPACKED_BYTES,
    };
    untar::unpack_tar(limited, target, "the archive's directory")
}

/// A reader that fails once more than `left` bytes came through.
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            ))
        })?;
        Ok(n)
    }
}

/// Move what an unpacked archive holds into Postgres's directories: `lib/*` first, so that a
/// control file never names a library that is not there yet, then `share/extension/*`. A file
/// replaces one of the same name (a rename: a running backend keeps the file it opened).
fn install(root: &Path, layout: &Layout) -> anyhow::Result<()> {
    let mut moved = 0;
    for (from, to) in [
        (root.join("lib"), &layout.lib),
        (root.join("share/extension"), &layout.share),
    ] {
        match fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_dir() => moved += move_children(&from, to)?,
            Ok(_) => bail!(
                "{} in the archive is not a directory",
                from.strip_prefix(root).unwrap_or(&from).display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
        }
    }
    if moved == 0 {
        tracing::warn!("the archive holds nothing in lib/ or share/extension/");
    }
    Ok(())
}

/// Move every entry of `from` into `to`, merging directories; how many files were moved.
fn move_children(from: &Path, to: &Path) -> anyhow::Result<usize> {
    let mut moved = 0;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        let target_is_dir = fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir());
        if is_dir && target_is_dir {
            moved += move_children(&source, &target)?;
            continue;
        }
        tracing::info!("installing {}", target.display());
        move_entry(&source, &target)
            .with_context(|| format!("moving {} to {}", source.display(), target.display()))?;
        moved += 1;
    }
    Ok(moved)
}

/// A rename; across file systems a copy beside the target renamed over it.
fn move_entry(source: &Path, target: &Path) -> io::Result<()> {
    match fs::rename(source, target) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let meta = fs::symlink_metadata(source)?;
            let name = target.file_name().unwrap_or_default().to_string_lossy();
            let tmp = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(source)?, &tmp)?;
            } else if meta.is_dir() {
                return Err(io::Error::other(
                    "a directory cannot be moved across file systems",
                ));
            } else {
                fs::copy(source, &tmp)?;
            }
            fs::rename(&tmp, target)
        }
        other => other,
    }
}

/// Write the control files of the extensions this compute may use, unless Postgres has them.
fn write_control_files(remote: &RemoteExtSpec, share: &Path) {
    for (ext, data) in &remote.extension_data {
        let listed = |list: &Option<Vec<String>>| list.iter().flatten().any(|e| e == ext);
        if !listed(&remote.public_extensions) && !listed(&remote.custom_extensions) {
            continue;
        }
        for (file, text) in &data.control_data {
            let path = share.join(file);
            if path.exists() {
                tracing::info!("control file {} exists: kept", path.display());
                continue;
            }
            if let Err(error) = fs::write(&path, text) {
                tracing::warn!("writing control file {}: {error}", path.display());
            }
        }
    }
}

/// `pg_config --version --sharedir --pkglibdir`, one answer a line.
async fn pg_layout(node: &Node) -> anyhow::Result<Layout> {
    let pg_config = node.tool("pg_config");
    let mut command = tokio::process::Command::new(&pg_config);
    command
        .args(["--version", "--sharedir", "--pkglibdir"])
        .kill_on_drop(true);
    let output = tokio::time::timeout(PG_CONFIG_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            anyhow!(
                "{} took more than {PG_CONFIG_TIMEOUT:?}",
                pg_config.display()
            )
        })?
        .with_context(|| format!("running {}", pg_config.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            pg_config.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(share), Some(lib)) = (lines.next(), lines.next(), lines.next()) else {
        bail!("{} printed {text:?}", pg_config.display());
    };
    let pg_major = pg_major(version)
        .ok_or_else(|| anyhow!("{}: no major version in {version:?}", pg_config.display()))?;
    let postgres = fs::canonicalize(&node.postgres).unwrap_or_else(|_| node.postgres.clone());
    let install = postgres
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} is not in a bin/ directory", postgres.display()))?;
    Ok(Layout {
        pg_major,
        share: Path::new(share).join("extension"),
        lib: PathBuf::from(lib),
        staging: install.join("download_extensions"),
    })
}

/// `PostgreSQL 15.18` → `v15`; `PostgreSQL 17devel` → `v17`.
fn pg_major(version: &str) -> Option<String> {
    let number = version.trim().strip_prefix("PostgreSQL ")?;
    let major: String = number.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then(|| format!("v{major}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RemoteExtSpec {
        serde_json::from_value(serde_json::json!({
            "public_extensions": ["postgis"],
            "custom_extensions": ["mine"],
            "library_index": {"postgis-3": "postgis", "mine": "mine", "gone": "gone", "secret": "secret"},
            "extension_data": {
                "postgis": {"control_data": {}, "archive_path": ""},
                "mine": {"control_data": {}, "archive_path": ""},
                "secret": {"control_data": {}, "archive_path": ""},
            }
        }))
        .unwrap()
    }

    #[test]
    fn names_resolve_as_neon_resolves_them() {
        let spec = spec();
        assert_eq!(resolve(&spec, "postgis", false).unwrap(), "postgis");
        assert_eq!(resolve(&spec, "mine", false).unwrap(), "mine");
        for library in ["postgis-3", "postgis-3.so", "postgis-3.so.1.2"] {
            assert_eq!(
                resolve(&spec, library, true).unwrap(),
                "postgis",
                "{library}"
            );
        }
        // Not a library name: the index is not consulted for extensions.
        assert!(resolve(&spec, "postgis-3", false).is_err());
        let e = resolve(&spec, "nope.so", true).unwrap_err();
        assert_eq!(e, "library nope is not found");
        // Indexed and with data, but neither public nor custom.
        let e = resolve(&spec, "secret", true).unwrap_err();
        assert_eq!(e, "extension secret is not found");
        // Listed nowhere.
        assert!(resolve(&spec, "gone", true).is_err());
        let mut no_lists = spec.clone();
        no_lists.public_extensions = None;
        no_lists.custom_extensions = None;
        assert!(resolve(&no_lists, "postgis", false).is_err());
    }

    /// The libraries to fetch before a start: from the setting and the last line of
    /// `postgresql_conf`, suffixes stripped, only those of the index, not Neon's own, once each.
    #[test]
    fn preloaded_libraries_to_fetch() {
        let spec = serde_json::json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": -1,
            "cluster": {
                "roles": [], "databases": [],
                "postgresql_conf": "shared_preload_libraries='old'\n shared_preload_libraries = 'neon,$libdir/mine.so, postgis-3'\n",
                "settings": [{"name": "shared_preload_libraries", "value": "neon,pg_stat_statements,postgis-3,mine", "vartype": "string"}]
            },
            "remote_extensions": {
                "public_extensions": ["postgis"],
                "library_index": {"postgis-3": "postgis", "mine": "mine", "neon": "neon", "old": "old"},
                "extension_data": {}
            }
        });
        let reserved = crate::spec::Reserved::new("cloud_admin", "neon_superuser");
        let spec =
            crate::spec::parse_spec(serde_json::to_string(&spec).unwrap().as_bytes(), &reserved)
                .unwrap();
        let remote = spec.remote_extensions.clone().unwrap();
        assert_eq!(preload_libraries(&spec, &remote), ["postgis-3", "mine"]);
    }

    #[test]
    fn base_urls_are_normalised() {
        for (given, expected) in [
            ("http://gw:5000", "http://gw:5000/"),
            ("http://gw:5000/", "http://gw:5000/"),
            ("http://gw/a/b//", "http://gw/a/b/"),
        ] {
            assert_eq!(parse_base_url(given).unwrap().as_str(), expected);
        }
        assert!(
            parse_base_url("http://gw/?x=1")
                .unwrap_err()
                .contains("query")
        );
        assert!(parse_base_url("gw:5000").is_err());
        assert!(parse_base_url("ftp://gw/").is_err());
        let url = archive_url(
            &parse_base_url("http://gw/a").unwrap(),
            "v15",
            "my ext.tar.zst",
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            format!(
                "http://gw/a/{BUILD_TAG}/{}/v15/extensions/my%20ext.tar.zst",
                arch()
            )
        );
    }

    #[test]
    fn staging_left_by_a_dead_process_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let mine = root.path().join(format!("a.b.{}.0", std::process::id()));
        // No process has a pid this large (the kernel's maximum is 2^22).
        let dead = root.path().join("ext.99999999.3");
        let other = root.path().join("unrelated");
        for dir in [&mine, &dead, &other] {
            fs::create_dir(dir).unwrap();
        }
        remove_stale_staging(root.path());
        assert!(mine.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn major_versions() {
        assert_eq!(pg_major("PostgreSQL 15.18\n").as_deref(), Some("v15"));
        assert_eq!(pg_major("PostgreSQL 17devel").as_deref(), Some("v17"));
        assert_eq!(pg_major("9.6"), None);
    }

    /// Several frames (as a parallel compressor writes) decode as one stream; a frame whose
    /// content does not match its checksum, and a stream that unpacks to too much, fail.
    #[test]
    fn frames_follow_each_other() {
        let decode = |stream: &[u8], limit: u64| {
            let mut out = Vec::new();
            Limited {
                inner: zstd::stream::read::Decoder::new(stream).unwrap(),
                left: limit,
            }
            .read_to_end(&mut out)
            .map(|_| out)
        };
        let mut stream = zstd::encode_all(&b"hello "[..], 0).unwrap();
        stream.extend(zstd::encode_all(&b"world"[..], 0).unwrap());
        assert_eq!(decode(&stream, 100).unwrap(), b"hello world");
        assert!(decode(&stream, 4).is_err());
        // What `zstd` writes for "hello world": a raw block and a checksum.
        let checked: [u8; 24] = [
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0x59, 0x00, 0x00, b'h', b'e', b'l', b'l', b'o',
            b' ', b'w', b'o', b'r', b'l', b'd', 0x68, 0x69, 0x1e, 0xb2,
        ];
        assert_eq!(decode(&checked, 100).unwrap(), b"hello world");
        let mut corrupt = checked;
        corrupt[9] = b'j';
        let error = decode(&corrupt, 100).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
