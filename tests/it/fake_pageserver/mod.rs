//! A pageserver stand-in for tests: a tokio TCP server speaking the PostgreSQL wire protocol as
//! Neon's `postgres_backend` does for `basebackup`. It answers an SSLRequest with `N`, asks for
//! a cleartext password (the storage token) when it has one, then answers the query with
//! CopyOutResponse, CopyData chunks of the tarball it was given, CopyDone, CommandComplete and
//! ReadyForQuery; or, for the attempts told to fail, an ErrorResponse after some CopyData.
//! It records what each connection sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The protocol codes of the startup packets that are not a StartupMessage.
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
/// How much tarball goes into one CopyData message.
const CHUNK: usize = 64 * 1024;

/// What one connection sent.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// StartupMessage parameters, in order.
    pub startup: Vec<(String, String)>,
    pub password: Option<String>,
    /// Simple queries, in order.
    pub queries: Vec<String>,
}

#[derive(Clone)]
pub struct Behaviour {
    /// The gzip'd tarball to serve.
    pub tarball: Arc<Vec<u8>>,
    /// The token the client must send as its password; `None`: no authentication.
    pub token: Option<String>,
    /// The first this-many basebackup queries fail with an ErrorResponse after some CopyData.
    pub failing_attempts: usize,
}

pub struct FakePageserver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePageserver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let basebackups = Arc::new(Mutex::new(0usize));
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let behaviour = behaviour.clone();
                let record = record.clone();
                let basebackups = basebackups.clone();
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let _ = serve(socket, &behaviour, &basebackups, &mut seen).await;
                    record.lock().unwrap().push(seen);
                });
            }
        });
        Self { addr, seen, task }
    }

    /// Every finished connection, in the order they ended.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn queries(&self) -> Vec<String> {
        self.seen().into_iter().flat_map(|s| s.queries).collect()
    }
}

impl Drop for FakePageserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    behaviour: &Behaviour,
    basebackups: &Mutex<usize>,
    seen: &mut Seen,
) -> std::io::Result<()> {
    // Startup, after any encryption requests (refused: no TLS here, as a plain pageserver).
    loop {
        let len = socket.read_u32().await? as usize;
        let mut body = vec![0u8; len - 4];
        socket.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            socket.write_all(b"N").await?;
            continue;
        }
        let mut fields = body[4..]
            .split(|b| *b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned());
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if key.is_empty() {
                break;
            }
            seen.startup.push((key, value));
        }
        break;
    }
    if let Some(token) = &behaviour.token {
        write_message(&mut socket, b'R', &3u32.to_be_bytes()).await?; // cleartext password
        let (kind, body) = read_message(&mut socket).await?;
        assert_eq!(kind, b'p', "expected a PasswordMessage");
        let password =
            String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
        seen.password = Some(password.clone());
        if &password != token {
            error_response(&mut socket, "28000", "invalid storage auth token").await?;
            return Ok(());
        }
    }
    write_message(&mut socket, b'R', &0u32.to_be_bytes()).await?; // AuthenticationOk
    write_message(&mut socket, b'S', b"client_encoding\0UTF8\0").await?;
    ready_for_query(&mut socket).await?;

    loop {
        let (kind, body) = read_message(&mut socket).await?;
        match kind {
            b'Q' => {
                let query =
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                seen.queries.push(query.clone());
                if !query.starts_with("basebackup ") {
                    error_response(
                        &mut socket,
                        "42601",
                        &format!("unsupported query {query:?}"),
                    )
                    .await?;
                    ready_for_query(&mut socket).await?;
                    continue;
                }
                let attempt = {
                    let mut n = basebackups.lock().unwrap();
                    *n += 1;
                    *n
                };
                let fail = attempt <= behaviour.failing_attempts;
                // CopyOutResponse: binary-agnostic (format 0), no columns, as the pageserver.
                write_message(&mut socket, b'H', &[0, 0, 0]).await?;
                let chunks: Vec<&[u8]> = behaviour.tarball.chunks(CHUNK).collect();
                let sent = if fail {
                    (chunks.len() / 2).max(1)
                } else {
                    chunks.len()
                };
                for chunk in &chunks[..sent] {
                    write_message(&mut socket, b'd', chunk).await?;
                }
                if fail {
                    error_response(
                        &mut socket,
                        "XX000",
                        &format!("injected failure on attempt {attempt}"),
                    )
                    .await?;
                } else {
                    write_message(&mut socket, b'c', b"").await?; // CopyDone
                    write_message(&mut socket, b'C', b"COPY 0\0").await?;
                }
                ready_for_query(&mut socket).await?;
            }
            b'X' => return Ok(()),
            other => panic!("fake pageserver: unexpected message {:?}", other as char),
        }
    }
}

async fn read_message(socket: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = socket.read_u8().await?;
    let len = socket.read_u32().await? as usize;
    let mut body = vec![0u8; len - 4];
    socket.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn write_message(socket: &mut TcpStream, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(body.len() + 5);
    message.push(kind);
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    socket.write_all(&message).await
}

async fn ready_for_query(socket: &mut TcpStream) -> std::io::Result<()> {
    write_message(socket, b'Z', b"I").await
}

async fn error_response(socket: &mut TcpStream, code: &str, message: &str) -> std::io::Result<()> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    write_message(socket, b'E', &body).await
}
