//! A real Garage cluster for the S3 tests: [`Garage::start`] runs `garage
//! server` nodes on loopback ports with a generated config (SQLite metadata,
//! replication factor = number of nodes), connects them, applies a layout;
//! [`Garage::bucket`] makes a bucket and a key that may read and write it.
//! [`Garage::shared`] is one 3-node cluster for all tests of this run; a test
//! that stops a node starts its own.
//!
//! [`Proxy`] stands in front of Garage and forwards requests as they are
//! (signatures stay valid). [`Proxy::put_only`] refuses DELETE and any PUT to
//! a name that already exists, like the bucket policy the README documents
//! for AWS and MinIO (Garage's own key permissions cannot say "no
//! overwrite"), and counts what it refused. [`Proxy::flaky`] answers every
//! n-th request with 503 SlowDown, as a throttling or failing store does.
//!
//! [`TlsFront`] puts HTTPS in front of it (socat, a test CA).
//!
//! Garage processes die with the test binary: each has a watchdog that kills
//! it once this process is gone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The `garage` binary: on `$PATH`, or where `cargo install` puts it.
pub fn garage_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("garage"))
        .find(|p| p.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let installed = cargo_home.join("bin/garage");
    on_path.or_else(|| installed.is_file().then_some(installed)).expect(
        "garage is not installed: run scripts/test-all.sh (it runs `cargo install garage --locked`) or install it",
    )
}

/// A free TCP port on loopback (free when asked; Garage binds it soon after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free port").port()
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One `garage server` process.
struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
    watchdog: Option<Child>,
}

/// A running Garage cluster.
pub struct Garage {
    _dir: TempDir,
    nodes: Vec<Node>,
}

/// A bucket and a key with read, write and owner rights on it.
#[derive(Clone)]
pub struct Bucket {
    pub name: String,
    pub key_id: String,
    pub secret: String,
    /// The S3 endpoint the tests talk to (node 1).
    pub endpoint: String,
}

impl Garage {
    /// The cluster most tests share: 3 nodes, replication factor 3.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| Garage::start(3))
    }

    /// Start `n` nodes with replication factor `n` and wait until they
    /// accept requests. Ports are picked free but may be taken by another
    /// test's cluster before a node binds them (the node then cannot be
    /// reached): the cluster is started again on new ports.
    pub fn start(n: usize) -> Garage {
        let mut last = String::new();
        for _ in 0..4 {
            match Garage::try_start(n) {
                Ok(g) => return g,
                Err(e) => last = e,
            }
        }
        panic!("a Garage cluster of {n} did not come up: {last}");
    }

    fn try_start(n: usize) -> Result<Garage, String> {
        let dir = tempfile::tempdir().expect("create a directory for Garage");
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let secret: String = crate::util::random_bytes(seed as u64 ^ std::process::id() as u64, 32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let home = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&home).expect("create node directory");
            let (s3_port, rpc_port) = (free_port(), free_port());
            let config = home.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{home}/meta"
data_dir = "{home}/data"
db_engine = "sqlite"
replication_factor = {n}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
                    home = home.display()
                ),
            )
            .expect("write the Garage config");
            set_private(&config);
            let mut node = Node { config, s3_port, child: None, watchdog: None };
            node.spawn();
            nodes.push(node);
        }
        let garage = Garage { _dir: dir, nodes };
        let ids: Vec<String> = (0..n).map(|i| garage.wait_for_node(i)).collect();
        for id in &ids[1..] {
            garage.try_cli(0, &["node", "connect", id], Duration::from_secs(20))?;
        }
        let short: Vec<&str> = ids.iter().map(|id| &id[..16]).collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        assign.extend(&short);
        garage.cli(0, &assign);
        garage.cli(0, &["layout", "apply", "--version", "1"]);
        Ok(garage)
    }

    /// `garage -c <node i's config> ARGS`, which must succeed; its stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.try_cli(i, args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `garage -c <node i's config> ARGS`, tried until it succeeds or
    /// `patience` has passed.
    fn try_cli(&self, i: usize, args: &[&str], patience: Duration) -> Result<String, String> {
        let deadline = Instant::now() + patience;
        loop {
            let out = Command::new(garage_bin())
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(args)
                .output()
                .expect("run garage");
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            // Right after start or a layout change, a command may find the
            // cluster not ready yet; anything else fails below.
            if Instant::now() >= deadline {
                return Err(format!(
                    "garage {args:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_for_node(&self, i: usize) -> String {
        self.cli(i, &["node", "id", "-q"]).trim().to_string()
    }

    /// A new bucket and a key allowed to read and write it.
    pub fn bucket(&self) -> Bucket {
        let name = format!("hf-{}", unique());
        self.cli(0, &["bucket", "create", &name]);
        let info = self.cli(0, &["key", "create", &name]);
        let field = |label: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label} in garage's output: {info}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        self.cli(0, &["bucket", "allow", "--read", "--write", "--owner", &name, "--key", &name]);
        Bucket { name, key_id, secret, endpoint: format!("http://127.0.0.1:{}", self.nodes[0].s3_port) }
    }

    /// Stop node `i` the hard way (SIGKILL), as a crashed machine would.
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        for mut child in [node.child.take(), node.watchdog.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.config.with_file_name("log")).expect("create the Garage log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start garage server");
        self.watchdog = Some(watchdog(&child));
        self.child = Some(child);
    }
}

/// A process that kills `child` once the test binary is gone.
fn watchdog(child: &Child) -> Child {
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; kill -9 {child} 2>/dev/null",
        me = std::process::id(),
        child = child.id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a watchdog")
}

/// An HTTPS endpoint in front of a bucket's Garage, as S3 endpoints on a
/// network are: `socat` terminates TLS with a certificate for `localhost`
/// signed by a CA made for this test only (`ca`, to trust or not).
pub struct TlsFront {
    pub endpoint: String,
    pub ca: PathBuf,
    _dir: TempDir,
    socat: Child,
    watchdog: Child,
}

impl TlsFront {
    pub fn start(bucket: &Bucket) -> TlsFront {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let at = |f: &str| dir.path().join(f);
        std::fs::write(
            at("ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the extensions");
        for args in [
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=holdfast-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
            "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext",
        ] {
            let out = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(dir.path())
                .output()
                .expect("run openssl (the test setup installs it)");
            assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let upstream = bucket.endpoint.trim_start_matches("http://");
        let socat = Command::new("socat")
            .arg(format!(
                "openssl-listen:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                at("server.pem").display(),
                at("server.key").display()
            ))
            .arg(format!("tcp:{upstream}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (the test setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsFront {
            endpoint: format!("https://localhost:{port}"),
            ca: at("ca.pem"),
            watchdog: watchdog(&socat),
            socat,
            _dir: dir,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

impl Bucket {
    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// The same bucket reached through `endpoint` (a proxy).
    pub fn via(&self, endpoint: &str) -> Bucket {
        Bucket { endpoint: endpoint.to_string(), ..self.clone() }
    }

    /// Give `cmd` this bucket's endpoint, region and keys, the way a person
    /// sets them for `--repo s3://…`.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "garage")
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
    }

    /// A job config's `[repositories.NAME]` for `prefix`, keys in files under `dir`.
    pub fn repository_toml(&self, name: &str, prefix: &str, dir: &Path, extra: &str) -> String {
        let (id_file, secret_file) = (dir.join(format!("{name}.s3.id")), dir.join(format!("{name}.s3.secret")));
        std::fs::write(&id_file, format!("{}\n", self.key_id)).expect("write the key id file");
        std::fs::write(&secret_file, format!("{}\n", self.secret)).expect("write the secret key file");
        set_private(&secret_file);
        format!(
            "[repositories.{name}]\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\nregion = \"garage\"\n\
             access_key_id_file = \"{id}\"\nsecret_access_key_file = \"{secret}\"\npassphrase_file = \"passphrase\"\n{extra}\n",
            url = self.url(prefix),
            endpoint = self.endpoint,
            id = id_file.display(),
            secret = secret_file.display(),
        )
    }

    /// Every object under `prefix`: name → (size, ETag), listed with the
    /// full-rights key (through curl's SigV4 signing).
    pub fn objects(&self, prefix: &str) -> std::collections::BTreeMap<String, (u64, String)> {
        let mut out = std::collections::BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/{}?list-type=2&prefix={}", self.endpoint, self.name, percent_encode(prefix));
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={}", percent_encode(t)));
            }
            let body = self.curl(&["-X", "GET", &url]);
            for item in body.split("<Contents>").skip(1) {
                let tag = |t: &str| {
                    item.split(&format!("<{t}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{t}>")).next())
                        .unwrap_or_default()
                        .to_string()
                };
                out.insert(tag("Key"), (tag("Size").parse().unwrap_or(0), tag("ETag")));
            }
            token = body
                .split("<NextContinuationToken>")
                .nth(1)
                .and_then(|r| r.split("</NextContinuationToken>").next())
                .map(str::to_string);
            if token.is_none() {
                return out;
            }
        }
    }

    /// Does `key` exist (HEAD with the full-rights key)?
    pub fn exists(&self, key: &str) -> bool {
        let code = self.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-I",
            &format!("{}/{}/{key}", self.endpoint, self.name),
        ]);
        code.trim() == "200"
    }

    /// Delete `key` behind holdfast's back (full-rights key).
    pub fn delete(&self, key: &str) {
        self.curl(&["-X", "DELETE", &format!("{}/{}/{key}", self.endpoint, self.name)]);
    }

    /// Store `bytes` as `key` behind holdfast's back.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), bytes).expect("write temporary file");
        self.curl(&["-T", &file.path().to_string_lossy(), &format!("{}/{}/{key}", self.endpoint, self.name)]);
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-s", "--aws-sigv4", "aws:amz:garage:s3", "--user"])
            .arg(format!("{}:{}", self.key_id, self.secret))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ------------------------------------------------------------ proxies

/// What the proxy saw and refused.
#[derive(Debug, Default, Clone)]
pub struct ProxyLog {
    /// "METHOD /path status" for every request.
    pub requests: Vec<String>,
    pub refused_deletes: usize,
    pub refused_overwrites: usize,
    /// Requests answered with 503 by a flaky proxy.
    pub failed: usize,
}

/// An HTTP proxy in front of one Garage endpoint.
pub struct Proxy {
    pub endpoint: String,
    log: Arc<Mutex<ProxyLog>>,
}

/// What a [`Proxy`] does besides forwarding.
#[derive(Clone, Copy)]
struct Policy {
    put_only: bool,
    /// Answer every n-th request with 503 (0: never).
    fail_every: usize,
}

impl Proxy {
    /// Refuse DELETE and PUT over an existing object (existence is checked
    /// with `bucket`'s key).
    pub fn put_only(bucket: &Bucket) -> Proxy {
        Proxy::start(bucket, Policy { put_only: true, fail_every: 0 })
    }

    /// Answer every `n`-th request with 503 SlowDown instead of forwarding it.
    pub fn flaky(bucket: &Bucket, n: usize) -> Proxy {
        Proxy::start(bucket, Policy { put_only: false, fail_every: n })
    }

    fn start(bucket: &Bucket, policy: Policy) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = bucket.endpoint.trim_start_matches("http://").to_string();
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let (log2, bucket) = (log.clone(), bucket.clone());
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().flatten().enumerate() {
                let (log, upstream, bucket) = (log2.clone(), upstream.clone(), bucket.clone());
                let fail = policy.fail_every > 0 && (n + 1) % policy.fail_every == 0;
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &bucket, &log, policy.put_only, fail);
                });
            }
        });
        Proxy { endpoint, log }
    }

    pub fn log(&self) -> ProxyLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// One request per connection: read it, refuse or forward it, answer, close.
fn serve(
    mut client: TcpStream,
    upstream: &str,
    bucket: &Bucket,
    log: &Mutex<ProxyLog>,
    put_only: bool,
    fail: bool,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let (head, body) = read_message(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (method, target) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
    let path = target.split('?').next().unwrap_or("").to_string();
    let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    // The object key without the leading "/bucket/".
    let key = path.trim_start_matches('/').split_once('/').map(|(_, k)| k.to_string()).unwrap_or_default();
    let refuse = |client: &mut TcpStream, status: &str, code: &str| -> std::io::Result<()> {
        let why = if fail { "the test proxy fails this request" } else { "refused by the put-only policy" };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{why}</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let is_delete =
        method == "DELETE" || (method == "POST" && query.split('&').any(|q| q == "delete" || q.starts_with("delete=")));
    if fail {
        if let Ok(mut l) = log.lock() {
            l.failed += 1;
            l.requests.push(format!("{method} {path} 503"));
        }
        return refuse(&mut client, "503 Service Unavailable", "SlowDown");
    }
    if put_only && is_delete {
        if let Ok(mut l) = log.lock() {
            l.refused_deletes += 1;
            l.requests.push(format!("{method} {path} 403"));
        }
        return refuse(&mut client, "403 Forbidden", "AccessDenied");
    }
    if put_only && method == "PUT" && !key.is_empty() && bucket.exists(&key) {
        let conditional = text.lines().any(|l| l.to_ascii_lowercase().starts_with("if-none-match:"));
        if let Ok(mut l) = log.lock() {
            if !conditional {
                l.refused_overwrites += 1;
            }
            l.requests.push(format!("{method} {path} {}", if conditional { 412 } else { 403 }));
        }
        return if conditional {
            refuse(&mut client, "412 Precondition Failed", "PreconditionFailed")
        } else {
            refuse(&mut client, "403 Forbidden", "AccessDenied")
        };
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&with_connection_close(&head))?;
    server.write_all(&body)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let split = find(&response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
    let status = String::from_utf8_lossy(&response[..split]).split_whitespace().nth(1).unwrap_or("?").to_string();
    if let Ok(mut l) = log.lock() {
        l.requests.push(format!("{method} {path} {status}"));
    }
    client.write_all(&with_connection_close(&response[..split]))?;
    client.write_all(&response[split..])
}

/// A request's head (through the blank line) and its body (Content-Length).
fn read_message(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = buf[..head_end].to_vec();
    let length: usize = String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// `head` with any Connection header replaced by `Connection: close`.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    let mut out = lines.join("\r\n");
    out.push_str("\r\nConnection: close\r\n\r\n");
    out.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
