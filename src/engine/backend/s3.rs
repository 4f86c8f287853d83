//! A repository in an S3-compatible bucket (AWS S3, Garage, MinIO, Ceph RGW),
//! through the `object_store` crate (request signing, retries with backoff
//! on 5xx/429/connection errors, per-request timeouts).
//!
//! Objects have the same names as a local repository's files under the
//! URL's prefix (`packs/ab/<hash>`, `index/<hash>`, …). New files are
//! written with `If-None-Match: *`, so a backup never replaces an object and
//! needs no right to: a 412 answer means the name — the hash of the same
//! bytes — is already stored. A successful PUT is durable. There is no
//! `tmp/`: an interrupted upload leaves nothing under the final name.
//!
//! The engine is synchronous; each call blocks on a small private tokio
//! runtime, so several engine threads keep several requests in flight.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use super::{Backend, Dir, FileInfo, ReadAhead, ReadCache, Stored, relative_path};
use crate::error::{Error, Result};

/// Everything needed to reach a bucket. The secret never appears in
/// `Debug` or `Display` output.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    /// `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Transfers in flight at once (uploads of packs, reads).
    pub connections: usize,
    /// Limit for one request, body included.
    pub request_timeout: Duration,
}

impl S3Settings {
    /// Default transfers in flight: enough to hide latency, each holding at
    /// most one pack (16 MiB) in memory.
    pub const DEFAULT_CONNECTIONS: usize = 4;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Split `s3://bucket/prefix`.
    pub fn parse_url(url: &str) -> std::result::Result<(String, String), String> {
        let shown = crate::units::hide_credentials(url);
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{shown:?} does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains(['@', ':']) {
            // Not echoed: it may hold a secret key.
            return Err("the S3 URL holds credentials (key:secret@); keys go in access_key_id_file and \
                        secret_access_key_file, or $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY"
                .into());
        }
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Err(format!(
                "{bucket:?} is not a valid bucket name (3 to 63 lowercase letters, digits, '-' or '.')"
            ));
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }

    /// Check an endpoint: `http(s)://host[:port][/path]`, nothing else
    /// (the S3 client would fail on anything else only when it sends).
    pub fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
        let bad =
            |why: &str| format!("{endpoint:?} is not an S3 endpoint ({why}); expected http(s)://host[:port][/path]");
        if endpoint.contains('@') {
            // Not echoed: it may hold a password.
            return Err("the S3 endpoint holds credentials (user:password@); keys go in \
                        access_key_id_file and secret_access_key_file"
                .into());
        }
        if endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it holds spaces or control characters"));
        }
        let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("not http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it has a query or a fragment"));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        s3_url(&self.bucket, &self.prefix)
    }
}

/// `s3://bucket/prefix` (or `s3://bucket`), for messages.
pub fn s3_url(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") }
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Settings({})", self.url())
    }
}

/// A bucket (and prefix) holding a repository.
pub struct S3Backend {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    connections: usize,
    runtime: tokio::runtime::Runtime,
}

/// How many times a conditional PUT is sent again after a timeout (the
/// library retries it only when the request never left).
const PUT_ATTEMPTS: u32 = 4;

impl S3Backend {
    pub fn connect(s: &S3Settings) -> Result<S3Backend> {
        // reqwest's rustls needs a process-wide provider; ring is the one
        // already in the build. A second install is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(&s.secret_access_key)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: s.request_timeout * 2,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(s.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10).min(s.request_timeout))
                    .with_allow_http(true),
            );
        // They go into request headers, which the client cannot build from
        // control characters or spaces (it would stop the process).
        let printable = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
        for (what, value) in [("access key id", &s.access_key_id), ("secret access key", &s.secret_access_key)] {
            if !printable(value) {
                return Err(Error::Invalid(format!(
                    "{}: the {what} is empty or holds spaces or control characters",
                    s.url()
                )));
            }
        }
        if !printable(&s.region) || s.region.contains('/') {
            return Err(Error::Invalid(format!("{}: {:?} is not a region name", s.url(), s.region)));
        }
        if let Some(endpoint) = &s.endpoint {
            S3Settings::check_endpoint(endpoint).map_err(|e| Error::Invalid(format!("{}: {e}", s.url())))?;
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| Error::Invalid(format!("{}: {e}", s.url())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("holdfast-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start the S3 client: {e}")))?;
        Ok(S3Backend {
            store,
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            connections: s.connections.max(1),
            runtime,
        })
    }

    fn key(&self, dir: Dir, name: &str) -> ObjectPath {
        self.under_prefix(&relative_path(dir, name))
    }

    /// `s3://bucket/key`, for messages.
    fn object_url(&self, key: &ObjectPath) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// `rel` (a file or a directory of the repository) under the prefix.
    fn under_prefix(&self, rel: &str) -> ObjectPath {
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => ObjectPath::from(rel),
            (false, true) => ObjectPath::from(self.prefix.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{rel}", self.prefix)),
        }
    }

    /// An `object_store` error as an engine error about `key`.
    fn error(&self, key: &ObjectPath, e: object_store::Error) -> Error {
        use std::io::ErrorKind;
        let kind = match &e {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                ErrorKind::AlreadyExists
            }
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Other,
        };
        Error::io(self.object_url(key), std::io::Error::new(kind, message(&e)))
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        s3_url(&self.bucket, &self.prefix)
    }

    fn parallelism(&self) -> usize {
        self.connections
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn put_only_backups(&self) -> bool {
        true
    }

    fn is_empty(&self) -> Result<bool> {
        let prefix = self.under_prefix("");
        let first = self.runtime.block_on(async { self.store.list(Some(&prefix)).next().await });
        match first {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(self.error(&prefix, e)),
        }
    }

    fn create_layout(&self) -> Result<()> {
        Ok(())
    }

    fn put_new(&self, dir: Dir, name: &str, bytes: Vec<u8>) -> Result<Stored> {
        let key = self.key(dir, name);
        let payload = PutPayload::from(bytes::Bytes::from(bytes));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            let result = self.runtime.block_on(self.store.put_opts(&key, payload.clone(), opts));
            match result {
                Ok(_) => return Ok(Stored::New),
                Err(object_store::Error::AlreadyExists { .. }) => return Ok(Stored::AlreadyThere),
                // A timeout may hide a PUT that arrived: sending it again is
                // safe, the name says what the bytes are.
                Err(e) if attempt < PUT_ATTEMPTS && is_transient(&e) => {
                    std::thread::sleep(Duration::from_millis(500 << attempt));
                }
                Err(e) => return Err(self.error(&key, e)),
            }
        }
    }

    fn put_state(&self, dir: Dir, name: &str, bytes: &[u8]) -> Result<()> {
        let key = self.key(dir, name);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        self.runtime.block_on(self.store.put(&key, payload)).map_err(|e| self.error(&key, e))?;
        Ok(())
    }

    fn get(&self, dir: Dir, name: &str) -> Result<Vec<u8>> {
        let key = self.key(dir, name);
        let bytes = self
            .runtime
            .block_on(async { self.store.get(&key).await?.bytes().await })
            .map_err(|e| self.error(&key, e))?;
        Ok(Vec::from(bytes))
    }

    /// Reads ahead only what is worth it: a whole small object when the
    /// caller asks for that (trees), or the stretch after `range` when this
    /// thread is reading the object in order (restore of a large file).
    fn get_range(
        &self,
        dir: Dir,
        name: &str,
        range: Range<u64>,
        worth: Range<u64>,
        cache: &mut ReadCache,
    ) -> Result<Vec<u8>> {
        let key = self.key(dir, name);
        cache.state::<ReadAhead>().read(name, range, worth, |fetch| {
            let bytes =
                self.runtime.block_on(self.store.get_range(&key, fetch.clone())).map_err(|e| self.error(&key, e))?;
            if bytes.len() as u64 != fetch.end - fetch.start {
                return Err(Error::io(
                    self.object_url(&key),
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "object shorter than its index says"),
                ));
            }
            // The response buffer becomes the result without a copy.
            Ok(Vec::from(bytes))
        })
    }

    fn list(&self, dir: Dir) -> Result<Vec<FileInfo>> {
        let prefix = self.under_prefix(dir.as_str());
        let metas = self
            .runtime
            .block_on(async {
                let mut out = Vec::new();
                let mut stream = self.store.list(Some(&prefix));
                while let Some(meta) = stream.next().await {
                    out.push(meta?);
                }
                Ok::<_, object_store::Error>(out)
            })
            .map_err(|e| self.error(&prefix, e))?;
        let mut out: Vec<FileInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                let modified = jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis()).ok();
                Some(FileInfo { name, size: m.size, modified, tag: m.e_tag })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, dir: Dir, name: &str) -> Result<()> {
        let key = self.key(dir, name);
        self.runtime.block_on(self.store.delete(&key)).map_err(|e| self.error(&key, e))
    }
}

/// The library's message on one line, with the root cause (a refused
/// connection, a timeout) when the message does not already say it.
fn message(e: &object_store::Error) -> String {
    let mut text = e.to_string().replace('\n', " ");
    let mut root: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    if let Some(root) = root.map(|r| r.to_string())
        && !text.contains(&root)
    {
        text.push_str(&format!(" ({root})"));
    }
    text
}

/// Worth sending again: the request timed out or the connection broke
/// (found by the kind of the HTTP or I/O error under it, never by text).
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    use std::io::ErrorKind;
    // Answers of the server (not found, denied, exists) are never transient.
    if !matches!(e, object_store::Error::Generic { .. }) {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(http) = s.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted
            );
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::TimedOut
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::ConnectionRefused
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: Box::new(source) }
    }

    #[test]
    fn timeouts_and_broken_connections_are_transient_by_their_kind() {
        use object_store::client::{HttpError, HttpErrorKind};
        let io = |kind: std::io::ErrorKind| std::io::Error::new(kind, "no words are looked at");
        assert!(is_transient(&generic(HttpError::new(HttpErrorKind::Timeout, io(std::io::ErrorKind::Other)))));
        assert!(is_transient(&generic(HttpError::new(HttpErrorKind::Connect, io(std::io::ErrorKind::Other)))));
        assert!(!is_transient(&generic(HttpError::new(HttpErrorKind::Decode, io(std::io::ErrorKind::Other)))));
        assert!(is_transient(&generic(io(std::io::ErrorKind::ConnectionReset))));
        // A message that merely mentions a timeout is not one.
        assert!(!is_transient(&generic(io(std::io::ErrorKind::InvalidData))));
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: Box::new(io(std::io::ErrorKind::TimedOut)),
        };
        assert!(!is_transient(&denied), "an answer of the server is not sent again");
    }
}
