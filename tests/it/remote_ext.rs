//! Remote extensions (`--remote-ext-base-url`, `POST /extension_server/…`) with a real
//! extension: Debian's `hypopg` (installed by scripts/install-postgres, never loaded by other
//! tests), packed at test time into Neon's archive layout (`share/extension/*`, `lib/*.so`)
//! under a name of each test's own (`rx<tag>_<pid>`: its control file, SQL script and library
//! renamed), so that tests running at once, here or in another checkout on the machine,
//! never touch each other's files nor the installed `hypopg`. The archives are served by a
//! gateway in the test that counts requests; a guard removes what compute_ctl installed into
//! Postgres's directories, also when a test fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode as Code;
use axum::routing::get;
use compute_ctl::effects::remote_ext::arch;
use compute_ctl::node::BUILD_TAG;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::common::{self, Compute, PG_BIN, exec};

/// hypopg's version as Debian ships it for PostgreSQL 15 (its SQL script's name).
const HYPOPG_VERSION: &str = "1.3.1";

/// Postgres's directories, as compute_ctl finds them.
struct PgDirs {
    share: PathBuf,
    lib: PathBuf,
}

fn pg_dirs() -> PgDirs {
    let out = std::process::Command::new(format!("{PG_BIN}/pg_config"))
        .args(["--sharedir", "--pkglibdir"])
        .output()
        .expect("run pg_config");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    PgDirs {
        share: Path::new(lines.next().unwrap()).join("extension"),
        lib: PathBuf::from(lines.next().unwrap()),
    }
}

/// A name of this test process's own.
fn name(tag: &str) -> String {
    format!("rx{tag}_{}", std::process::id())
}

/// Removes, when dropped, every file an extension of these names may have put into Postgres's
/// directories (tests share the machine's PostgreSQL).
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn new(names: &[&str]) -> Self {
        let dirs = pg_dirs();
        let mut files = Vec::new();
        for name in names {
            files.push(dirs.share.join(format!("{name}.control")));
            files.push(dirs.share.join(format!("{name}--{HYPOPG_VERSION}.sql")));
            files.push(dirs.lib.join(format!("{name}.so")));
        }
        let cleanup = Self(files);
        cleanup.remove();
        cleanup
    }

    fn remove(&self) {
        for file in &self.0 {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One tar entry with a raw header, so that hostile names survive (`tar::Builder` refuses them).
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    let name = &mut header.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        let target = &mut header.as_old_mut().linkname;
        target[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn zstd(tar: Vec<u8>) -> Vec<u8> {
    zstd::encode_all(&tar[..], 0).unwrap()
}

/// Debian's hypopg, renamed `name`, in Neon's archive layout.
fn hypopg_archive(name: &str) -> Vec<u8> {
    let dirs = pg_dirs();
    let control = format!(
        "comment = 'hypopg, packed as {name}'\ndefault_version = '{HYPOPG_VERSION}'\n\
         module_pathname = '$libdir/{name}'\nrelocatable = true\n"
    );
    let script = std::fs::read_to_string(dirs.share.join(format!("hypopg--{HYPOPG_VERSION}.sql")))
        .expect("hypopg is installed (scripts/install-postgres installs postgresql-15-hypopg)")
        .replace("'$libdir/hypopg'", &format!("'$libdir/{name}'"));
    let library = std::fs::read(dirs.lib.join("hypopg.so")).expect("hypopg.so");
    let mut tar = tar::Builder::new(Vec::new());
    use tar::EntryType::{Directory, Regular};
    append(&mut tar, "share/", Directory, None, b"");
    append(&mut tar, "share/extension/", Directory, None, b"");
    append(
        &mut tar,
        &format!("share/extension/{name}.control"),
        Regular,
        None,
        control.as_bytes(),
    );
    append(
        &mut tar,
        &format!("share/extension/{name}--{HYPOPG_VERSION}.sql"),
        Regular,
        None,
        script.as_bytes(),
    );
    append(&mut tar, "lib/", Directory, None, b"");
    append(&mut tar, &format!("lib/{name}.so"), Regular, None, &library);
    zstd(tar.into_inner().unwrap())
}

/// The gateway: archives by name, requests counted by path; while the gate is closed,
/// requests wait for it to open before they are answered.
#[derive(Clone)]
struct Gateway {
    archives: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    gate: Arc<watch::Sender<bool>>,
    base: String,
}

impl Gateway {
    async fn start() -> Self {
        let mut gateway = Gateway {
            archives: Arc::default(),
            requests: Arc::default(),
            gate: Arc::new(watch::Sender::new(true)),
            base: String::new(),
        };
        let app = Router::new()
            .route("/{*path}", get(serve))
            .with_state(gateway.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A base URL with a path and a trailing slash of its own (compute_ctl normalises it).
        gateway.base = format!("http://{}/gw//", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        gateway
    }

    /// The path compute_ctl asks for `ext`.
    fn path(ext: &str) -> String {
        format!("gw/{BUILD_TAG}/{}/v15/extensions/{ext}.tar.zst", arch())
    }

    fn put(&self, ext: &str, archive: Vec<u8>) {
        self.archives
            .lock()
            .unwrap()
            .insert(Self::path(ext), archive);
    }

    fn requests(&self, ext: &str) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .get(&Self::path(ext))
            .copied()
            .unwrap_or(0)
    }

    fn all_requests(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }
}

async fn serve(State(gateway): State<Gateway>, UrlPath(path): UrlPath<String>) -> (Code, Vec<u8>) {
    *gateway
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let _ = gateway.gate.subscribe().wait_for(|open| *open).await;
    match gateway.archives.lock().unwrap().get(&path) {
        Some(archive) => (Code::OK, archive.clone()),
        None => (Code::NOT_FOUND, b"no such archive".to_vec()),
    }
}

/// A spec whose `remote_extensions` allows `public` (with a control file each) and lists
/// `unlisted` in the index and the data without allowing it.
fn spec_with(public: &[&str], unlisted: &str, settings: Vec<Value>) -> Value {
    let mut spec = common::spec(vec![], vec![], settings);
    let mut data = serde_json::Map::new();
    let mut index = serde_json::Map::new();
    for ext in public.iter().chain([&unlisted]) {
        index.insert((*ext).to_owned(), json!(ext));
        data.insert(
            (*ext).to_owned(),
            json!({
                "archive_path": format!("ignored/{ext}.tar.zst"),
                "control_data": {
                    format!("{ext}.control"): format!(
                        "comment = 'written by compute_ctl'\ndefault_version = '{HYPOPG_VERSION}'\n\
                         module_pathname = '$libdir/{ext}'\nrelocatable = true\n"
                    )
                }
            }),
        );
    }
    spec["remote_extensions"] = json!({
        "public_extensions": [public[0]],
        "custom_extensions": public[1..],
        "library_index": index,
        "extension_data": data,
    });
    spec
}

async fn fetch(c: &Compute, path: &str) -> (StatusCode, Value) {
    let resp = c
        .http()
        .post(c.internal_url(&format!("/extension_server/{path}")))
        .send()
        .await
        .expect("POST /extension_server");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn start_with_gateway(c: &mut Compute, spec: Option<&Value>, base: Option<&str>) {
    let mut config = common::config(spec);
    config["compute_ctl_config"]["jwks"] = c.jwks();
    let mut args = c.config_args_as_is(&config);
    if let Some(base) = base {
        args.push("--remote-ext-base-url".into());
        args.push(base.into());
    }
    c.start_raw(args);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_is_fetched_once_on_request_then_created() {
    let ext = name("a");
    let unlisted = name("u");
    let missing = name("m");
    let hostile: Vec<String> = ["h1", "h2", "h3", "h4"].iter().map(|t| name(t)).collect();
    let mut all: Vec<&str> = vec![&ext, &unlisted, &missing];
    all.extend(hostile.iter().map(String::as_str));
    let _cleanup = Cleanup::new(&all);
    let dirs = pg_dirs();

    let gateway = Gateway::start().await;
    gateway.put(&ext, hypopg_archive(&ext));
    gateway.put(&unlisted, hypopg_archive(&unlisted));
    // Hostile archives: each tries to write `escape` outside the staging directory.
    let escape = std::env::temp_dir().join(format!("{}-escaped", name("x")));
    let escape_str = escape.display().to_string();
    let climbing = format!("{}{}", "../".repeat(12), escape_str.trim_start_matches('/'));
    use tar::EntryType::{Regular, Symlink};
    let cases: [&[(&str, tar::EntryType, Option<&str>)]; 4] = [
        &[
            ("share/extension/ok.sql", Regular, None),
            (&climbing, Regular, None),
        ],
        &[(&escape_str, Regular, None)],
        &[
            ("lib/evil", Symlink, Some("/tmp")),
            ("lib/evil/escaped", Regular, None),
        ],
        &[
            ("lib/evil", Symlink, Some("../../../../../../../../tmp")),
            ("lib/x.so", Regular, None),
        ],
    ];
    for (ext, entries) in hostile.iter().zip(cases) {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            append(&mut tar, path, *kind, *link, b"pwned");
        }
        gateway.put(ext, zstd(tar.into_inner().unwrap()));
    }

    let mut public: Vec<&str> = vec![&ext, &missing];
    public.extend(hostile.iter().map(String::as_str));
    let spec = spec_with(&public, &unlisted, vec![]);
    let mut c = Compute::new("remote-ext");
    start_with_gateway(&mut c, Some(&spec), Some(&gateway.base));
    c.wait_for_status("running").await;

    // At start the control files of the allowed extensions were written (Neon's listing),
    // not the unlisted one's; without its script the extension cannot be created yet.
    assert!(dirs.share.join(format!("{ext}.control")).exists());
    assert!(!dirs.share.join(format!("{unlisted}.control")).exists());
    let mut conn = c.connect("postgres").await;
    let listed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_available_extensions WHERE name = $1")
            .bind(&ext)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(listed, 1);
    let early = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE EXTENSION {ext}")))
        .execute(&mut conn)
        .await;
    assert!(early.is_err(), "created before its files were fetched");

    // Two requests at once (the gateway holds the first until the second waits): one download.
    gateway.gate.send_replace(false);
    let (first, second) = {
        let library = format!("{ext}.so.1?is_library=true");
        let one = fetch(&c, &ext);
        let two = fetch(&c, &library);
        let waiting = async {
            let deadline = tokio::time::Instant::now() + common::STATUS_TIMEOUT;
            while !c.log().contains("is being downloaded: waiting for it") {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no request joined the download\n{}",
                    c.log_tail(40)
                );
                tokio::time::sleep(common::POLL).await;
            }
            gateway.gate.send_replace(true);
        };
        let (one, two, ()) = tokio::join!(one, two, waiting);
        (one, two)
    };
    assert_eq!(first.0, StatusCode::OK, "{first:?}\n{}", c.log_tail(40));
    assert_eq!(second.0, StatusCode::OK, "{second:?}");
    assert_eq!(gateway.requests(&ext), 1);
    // Done: not fetched again.
    assert_eq!(fetch(&c, &ext).await.0, StatusCode::OK);
    assert_eq!(gateway.requests(&ext), 1);

    exec(&mut conn, &format!("CREATE EXTENSION {ext}")).await;
    // A function of the library: it loads.
    exec(&mut conn, "SELECT hypopg_reset()").await;
    let version: String =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = $1")
            .bind(&ext)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(version, HYPOPG_VERSION);

    // Not allowed (in the index and the data, but neither public nor custom), or unknown: 404,
    // and the gateway is not asked.
    let before = gateway.all_requests();
    for path in [
        unlisted.clone(),
        format!("{unlisted}.so?is_library=true"),
        "nope".to_owned(),
        "nope.so?is_library=true".to_owned(),
        // An extension name is not looked up as a library.
        format!("{ext}.so"),
    ] {
        let (status, body) = fetch(&c, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("failed to find file"),
            "{body}"
        );
    }
    assert_eq!(gateway.all_requests(), before);
    assert!(!dirs.lib.join(format!("{unlisted}.so")).exists());
    let (status, body) = fetch(&c, "x?is_library=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Hostile archives are refused and write nothing outside the staging directory, nor
    // anything into Postgres's directories.
    for ext in &hostile {
        let (status, body) = fetch(&c, ext).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{ext}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("refused"), "{ext}: {error}");
        assert!(!escape.exists(), "{ext}: {error}");
        assert!(!Path::new("/tmp/escaped").exists());
        assert!(!dirs.lib.join("x.so").exists() && !dirs.lib.join("evil").exists());
        assert!(!dirs.share.join("ok.sql").exists());
    }
    let staging = Path::new(PG_BIN)
        .parent()
        .unwrap()
        .join("download_extensions");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| hostile.iter().any(|h| n.starts_with(h.as_str())))
        .collect();
    assert!(left.is_empty(), "staging directories left: {left:?}");

    // A failed download is retried by the next request.
    let (status, body) = fetch(&c, &missing).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("404 Not Found"),
        "{body}"
    );
    assert_eq!(gateway.requests(&missing), 1);
    assert_eq!(
        fetch(&c, &missing).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(gateway.requests(&missing), 2);

    let metrics = c.metrics().await;
    let line = |status: &str, ext: &str| {
        format!(
            "compute_ctl_remote_ext_requests_total{{filename=\"{ext}.tar.zst\",http_status=\"{status}\"}}"
        )
    };
    assert_eq!(
        common::metric_in(&metrics, &line("200 OK", &ext)),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric_in(&metrics, &line("404 Not Found", &missing)),
        Some(2.0),
        "{metrics}"
    );

    drop(conn);
    c.terminate(None).await;
    c.wait_exit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preloaded_remote_library_is_fetched_before_postgres_starts() {
    let ext = name("p");
    let _cleanup = Cleanup::new(&[&ext]);
    let gateway = Gateway::start().await;
    let archive = hypopg_archive(&ext);
    let size = archive.len() as f64;
    gateway.put(&ext, archive);
    let settings = vec![common::setting("shared_preload_libraries", &ext, "string")];
    let spec = spec_with(&[&ext], &name("pu"), settings);
    let mut c = Compute::new("remote-ext-preload");
    start_with_gateway(&mut c, Some(&spec), Some(&gateway.base));
    c.wait_for_status("running").await;
    assert_eq!(gateway.requests(&ext), 1);
    // Preloaded: the library's setting exists.
    let mut conn = c.connect("postgres").await;
    let enabled: String = sqlx::query_scalar("SELECT current_setting('hypopg.enabled')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(enabled, "on");
    exec(&mut conn, &format!("CREATE EXTENSION {ext}")).await;
    let (status, metrics) =
        Compute::response(c.http().get(c.url("/metrics.json")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metrics["num_ext_downloaded"], 1, "{metrics}");
    assert_eq!(
        metrics["largest_ext_size"].as_f64(),
        Some(size),
        "{metrics}"
    );
    assert_eq!(
        metrics["total_ext_download_size"].as_f64(),
        Some(size),
        "{metrics}"
    );
    assert!(metrics["load_ext_ms"].is_u64(), "{metrics}");
    // Already there: the route answers at once.
    assert_eq!(
        fetch(&c, &format!("{ext}.so?is_library=true")).await.0,
        StatusCode::OK
    );
    assert_eq!(gateway.requests(&ext), 1);
    drop(conn);
    c.terminate(None).await;
    c.wait_exit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_gateway_412_and_without_remote_extensions_409() {
    // No --remote-ext-base-url: 412 whatever the spec says.
    let mut c = Compute::new("remote-ext-412");
    start_with_gateway(&mut c, None, None);
    c.wait_for_status("empty").await;
    let (status, body) = fetch(&c, "anything").await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body["error"], "remote storage is not configured");
    c.terminate(None).await;
    c.wait_exit().await;

    // A gateway but no remote_extensions (here: no spec yet, where Neon panics): 409, and the
    // gateway is not asked.
    let gateway = Gateway::start().await;
    let mut c = Compute::new("remote-ext-409");
    start_with_gateway(&mut c, None, Some(&gateway.base));
    c.wait_for_status("empty").await;
    for path in ["anything", "lib.so?is_library=true"] {
        let (status, body) = fetch(&c, path).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(
            body["error"],
            "information about remote extensions is unavailable"
        );
    }
    // A spec without remote_extensions: 409 as well.
    let (status, body) = c.configure(&common::spec(vec![], vec![], vec![])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = fetch(&c, "anything").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(gateway.all_requests(), 0);
    c.terminate(None).await;
    c.wait_exit().await;

    // A query string on the flag is a usage error.
    let mut c = Compute::new("remote-ext-flag");
    start_with_gateway(&mut c, None, Some("http://127.0.0.1:1/?x=y"));
    let exit = c.wait_exit().await;
    assert_eq!(exit.code(), Some(2), "{}", c.stderr());
    assert!(
        c.stderr().contains("--remote-ext-base-url"),
        "{}",
        c.stderr()
    );
}
