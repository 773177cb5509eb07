//! Archives in S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO), through
//! opendal on a private tokio runtime. decisions/D-07-object-storage.md says why.
//!
//! - Backup streams into a multipart upload (parts are sent while the archive is written);
//!   the object appears only when the upload completes after the archive's last byte. A
//!   failed run aborts its upload; a killed run leaves a journal (`upload-<run>.json`) from
//!   which `gc` finds and aborts what it left.
//! - Restore and verify read with parallel ranged GETs; inspect and preflight read the head
//!   of the object in small ranged GETs, never the whole object.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opendal::layers::RetryLayer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to reach the storage. Every field left empty comes from the usual AWS environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ...) and files
/// (`~/.aws/credentials`, `~/.aws/config`). Credentials never come from flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible service; AWS when empty everywhere.
    pub endpoint: Option<String>,
    /// Signing region (AWS: the bucket's region). Default `us-east-1`.
    pub region: Option<String>,
    /// Profile of the AWS config files to take credentials from.
    pub profile: Option<String>,
    /// `https://BUCKET.host/KEY` instead of the path style `https://host/BUCKET/KEY`.
    #[serde(default)]
    pub virtual_host_style: bool,
}

/// One object: `s3://BUCKET/KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The bucket, which must exist.
    pub bucket: String,
    /// The object's key inside the bucket.
    pub key: String,
    /// Endpoint, region and credential source.
    pub config: S3Config,
}

/// Part sizes grow with the stream so that any archive fits S3's 10 000 parts while a
/// small one keeps memory small: 8 MiB for the first 8 GB, then 64 MiB, 512 MiB, 4 GiB.
fn part_size(parts_sent: u64) -> usize {
    const MIB: usize = 1 << 20;
    match parts_sent {
        0..1000 => 8 * MIB,
        1000..2000 => 64 * MIB,
        2000..3000 => 512 * MIB,
        _ => 4096 * MIB,
    }
}
/// Parts in flight at once (on top of the one being filled and the one opendal holds back).
const UPLOAD_CONCURRENCY: usize = 4;
/// Ranged GETs of a whole read (restore, verify): size and how many run at once.
const READ_CHUNK: usize = 8 << 20;
const READ_CONCURRENCY: usize = 4;
/// Ranged GETs of a head read (inspect, preflight): the manifest is in the first few KiB.
const HEAD_CHUNK: usize = 256 << 10;

impl S3Object {
    /// Parses `s3://BUCKET/KEY`.
    pub fn parse(url: &str, config: S3Config) -> Result<S3Object> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| Error::Usage(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(Error::Usage(format!("`{url}`: expected s3://BUCKET/KEY, a key naming one object")));
        }
        Ok(S3Object { bucket: bucket.to_string(), key: key.to_string(), config })
    }

    /// The object as an `s3://BUCKET/KEY` URL, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn endpoint(&self) -> Option<String> {
        self.config
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .map(|e| e.trim_end_matches('/').to_string())
    }

    fn region(&self) -> String {
        self.config.region.clone().or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into())
    }

    fn profile(&self) -> Option<String> {
        self.config.profile.clone().or_else(|| env("AWS_PROFILE"))
    }
}

/// A folder of archives in a bucket: `s3://BUCKET/PREFIX/`, or `s3://BUCKET` for the
/// bucket's top level. `list` and `prune` work on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Prefix {
    /// The bucket, which must exist.
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    /// Endpoint, region and credential source.
    pub config: S3Config,
}

impl S3Prefix {
    /// Parses `s3://BUCKET`, `s3://BUCKET/PREFIX` or `s3://BUCKET/PREFIX/` (the same).
    pub fn parse(url: &str, config: S3Config) -> Result<S3Prefix> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| Error::Usage(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || prefix.starts_with('/') || prefix.contains("//") {
            return Err(Error::Usage(format!("`{url}`: expected s3://BUCKET/PREFIX/, a folder of archives")));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Prefix { bucket: bucket.to_string(), prefix, config })
    }

    /// The folder as an `s3://BUCKET/PREFIX/` URL.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The object `NAME` in the folder.
    pub fn object(&self, name: &str) -> S3Object {
        S3Object { bucket: self.bucket.clone(), key: format!("{}{name}", self.prefix), config: self.config.clone() }
    }

    /// The folder itself, as an object whose key is the prefix (for connections and messages).
    fn as_object(&self) -> S3Object {
        self.object("")
    }
}

/// The objects directly in the folder (not under a further `/`), with their sizes.
pub(crate) fn list(folder: &S3Prefix) -> Result<Vec<(S3Object, u64)>> {
    let store = connect(&folder.as_object())?;
    let path = if folder.prefix.is_empty() { "/" } else { folder.prefix.as_str() };
    let entries = store.rt.block_on(store.op.list(path)).map_err(|e| store.error("listing the folder", e))?;
    let mut out = Vec::new();
    for e in entries {
        if !e.metadata().is_file() {
            continue;
        }
        let key = e.path().trim_start_matches('/');
        let Some(name) = key.strip_prefix(folder.prefix.as_str()).filter(|n| !n.is_empty() && !n.contains('/')) else { continue };
        out.push((folder.object(name), e.metadata().content_length()));
    }
    Ok(out)
}

/// Deletes one object.
pub(crate) fn delete(obj: &S3Object) -> Result<()> {
    let store = connect(obj)?;
    store.rt.block_on(store.op.delete(&obj.key)).map_err(|e| store.error("deleting the archive", e))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A connection: the operator and the runtime its futures run on.
struct Store {
    // Field order matters: the operator must drop before the runtime that drives it.
    op: opendal::Operator,
    rt: tokio::runtime::Runtime,
    obj: S3Object,
    endpoint: String,
}

fn connect(obj: &S3Object) -> Result<Store> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hero-snap-s3")
        .enable_all()
        .build()
        .map_err(|e| Error::Storage(format!("{}: starting the I/O runtime: {e}", obj.url())))?;
    let region = obj.region();
    let endpoint = obj.endpoint();
    let mut b = opendal::services::S3::default().bucket(&obj.bucket).root("/").region(&region);
    if let Some(e) = &endpoint {
        // Not AWS: the EC2 metadata service has no credentials for it, and probing it stalls.
        b = b.endpoint(e).disable_ec2_metadata();
    }
    if let Some(p) = obj.profile() {
        b = b.profile(&p);
    }
    if obj.config.virtual_host_style {
        b = b.enable_virtual_host_style();
    }
    let op = opendal::Operator::new(b)
        .map_err(|e| Error::Storage(format!("{}: {e}", obj.url())))?
        // Transient failures (5xx, throttling, resets) are retried with exponential backoff
        // and jitter; opendal marks which errors are temporary.
        .layer(RetryLayer::new().with_max_times(5).with_min_delay(Duration::from_millis(200)).with_max_delay(Duration::from_secs(10)).with_jitter());
    let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    Ok(Store { op, rt, obj: obj.clone(), endpoint })
}

impl Store {
    /// Turns an opendal error into one that says what is wrong and what to do.
    fn error(&self, action: &str, e: opendal::Error) -> Error {
        Error::Storage(describe(&self.obj, &self.endpoint, action, &e))
    }

    /// A list call answers with the bucket's own error (a HEAD has no body to say
    /// "no such bucket" or "bad key"): used to explain a failed stat.
    fn probe_bucket(&self) -> Option<opendal::Error> {
        let prefix = match self.obj.key.rfind('/') {
            Some(i) => &self.obj.key[..=i],
            None => "",
        };
        self.rt.block_on(async { self.op.list_with(prefix).limit(1).await }).err()
    }

    fn explain(&self, action: &str, e: opendal::Error) -> Error {
        if matches!(e.kind(), opendal::ErrorKind::NotFound | opendal::ErrorKind::PermissionDenied) {
            if let Some(probe) = self.probe_bucket().filter(|p| p.kind() != opendal::ErrorKind::PermissionDenied || e.kind() == opendal::ErrorKind::PermissionDenied) {
                return self.error(action, probe);
            }
        }
        self.error(action, e)
    }
}

/// What an opendal error means for the operator: what is wrong and what to do. S3 error
/// codes are matched in opendal's message, which carries the service's response.
fn describe(o: &S3Object, endpoint: &str, action: &str, e: &opendal::Error) -> String {
    let text = e.to_string();
    let has = |code: &str| text.contains(code);
    if has("NoSuchBucket") {
        format!("bucket `{}` does not exist at {}; create it, or check the URL and AWS_ENDPOINT_URL / --s3-endpoint", o.bucket, endpoint)
    } else if has("InvalidAccessKeyId") || has("SignatureDoesNotMatch") || has("InvalidToken") || has("ExpiredToken") {
        format!("{}: {} refused the credentials while {action}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)", o.url(), endpoint)
    } else if has("AuthorizationHeaderMalformed") || has("PermanentRedirect") || has("IllegalLocationConstraint") || has("IncorrectEndpoint") {
        // AWS names the bucket's region in its answer.
        let right = text.split("<Region>").nth(1).and_then(|r| r.split('<').next()).filter(|r| !r.is_empty());
        let fix = match right {
            Some(r) => format!("the bucket is in `{r}`: set AWS_REGION={r} or --s3-region {r}"),
            None => "set AWS_REGION or --s3-region to the bucket's region".into(),
        };
        format!("{}: region `{}` is wrong for this bucket while {action}; {fix}", o.url(), o.region())
    } else if has("AccessDenied") || e.kind() == opendal::ErrorKind::PermissionDenied {
        format!("{}: access denied while {action}; the credentials need s3:GetObject, s3:PutObject, s3:ListBucket, s3:AbortMultipartUpload and s3:ListBucketMultipartUploads on the bucket (and s3:DeleteObject for prune)", o.url())
    } else if e.kind() == opendal::ErrorKind::NotFound {
        format!("{}: no such object at {}", o.url(), endpoint)
    } else if e.kind() == opendal::ErrorKind::ConfigInvalid {
        format!("{}: the storage configuration is invalid: {e}", o.url())
    } else {
        format!("{}: {action} failed at {} (after retries): {e}", o.url(), endpoint)
    }
}

/// A reader of the object; the runtime lives as long as it.
struct ObjectReader {
    inner: opendal::blocking::StdReader,
    _store: Store,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Opens the object for reading: the head only (small sequential ranged GETs, for
/// inspect and preflight) or the whole (parallel ranged GETs, for restore and verify).
pub(crate) fn open(obj: &S3Object, whole: bool) -> Result<Box<dyn Read>> {
    let store = connect(obj)?;
    let bop = {
        let _guard = store.rt.enter();
        opendal::blocking::Operator::new(store.op.clone()).map_err(|e| store.error("connecting", e))?
    };
    let meta = bop.stat(&obj.key).map_err(|e| store.explain("reading the archive", e))?;
    let size = meta.content_length();
    let opts = opendal::options::ReaderOptions {
        chunk: Some(if whole { READ_CHUNK } else { HEAD_CHUNK }),
        concurrent: if whole { READ_CONCURRENCY } else { 1 },
        ..Default::default()
    };
    let reader = bop.reader_options(&obj.key, opts).map_err(|e| store.explain("reading the archive", e))?;
    let inner = reader.into_std_read(0..size).map_err(|e| store.error("reading the archive", e))?;
    Ok(Box::new(ObjectReader { inner, _store: store }))
}

/// What an upload left for its caller: the first storage error (its text says more than
/// the io::Error the archive writer sees) and whether an abort went through.
#[derive(Default)]
pub(crate) struct UploadOutcome {
    pub error: Option<Error>,
    pub aborted: bool,
}

/// A streaming multipart upload. Bytes are sent in parts as they come; `finish` completes
/// the upload (the object appears); dropping it unfinished aborts the upload.
pub(crate) struct Upload {
    writer: Option<opendal::Writer>,
    part: Vec<u8>,
    parts_sent: u64,
    outcome: Arc<Mutex<UploadOutcome>>,
    store: Store,
}

impl Upload {
    pub(crate) fn start(obj: &S3Object) -> Result<(Upload, Arc<Mutex<UploadOutcome>>)> {
        let store = connect(obj)?;
        // Fail before anything is frozen when the bucket is missing or the keys are wrong.
        if let Some(e) = store.probe_bucket().filter(|e| !e.to_string().contains("AccessDenied")) {
            return Err(store.error("checking the bucket", e));
        }
        let writer = store
            .rt
            .block_on(async { store.op.writer_with(&obj.key).concurrent(UPLOAD_CONCURRENCY).await })
            .map_err(|e| store.error("starting the upload", e))?;
        let outcome = Arc::new(Mutex::new(UploadOutcome::default()));
        let up = Upload { writer: Some(writer), part: Vec::with_capacity(part_size(0)), parts_sent: 0, outcome: outcome.clone(), store };
        Ok((up, outcome))
    }

    fn record(&self, e: Error) -> io::Error {
        let text = e.to_string();
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        o.error.get_or_insert(e);
        io::Error::other(text)
    }

    fn send_part(&mut self) -> io::Result<()> {
        let size = part_size(self.parts_sent + 1);
        let data = std::mem::replace(&mut self.part, Vec::with_capacity(size));
        let w = self.writer.as_mut().expect("an upload writes only while open");
        if let Err(e) = self.store.rt.block_on(w.write(data)) {
            let e = self.store.error("uploading a part", e);
            return Err(self.record(e));
        }
        self.parts_sent += 1;
        if self.parts_sent == 3 {
            crate::failpoint("s3-upload");
        }
        Ok(())
    }

    /// Sends the last part and completes the upload: only now does the object exist.
    pub(crate) fn finish(mut self) -> Result<u64> {
        if !self.part.is_empty() {
            self.send_part().map_err(|e| self.take_error().unwrap_or_else(|| Error::Storage(e.to_string())))?;
        }
        let mut w = self.writer.take().expect("finish runs once");
        match self.store.rt.block_on(w.close()) {
            Ok(_) => {}
            Err(e) => {
                let err = self.store.error("completing the upload", e);
                let _ = self.store.rt.block_on(w.abort());
                return Err(err);
            }
        }
        // opendal's returned metadata can lack the size on RGW; ask the storage.
        let meta = self.store.rt.block_on(self.store.op.stat(&self.store.obj.key)).map_err(|e| self.store.error("checking the uploaded archive", e))?;
        Ok(meta.content_length())
    }

    fn take_error(&self) -> Option<Error> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).error.take()
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = part_size(self.parts_sent) - self.part.len();
        let n = buf.len().min(room);
        self.part.extend_from_slice(&buf[..n]);
        if self.part.len() >= part_size(self.parts_sent) {
            self.send_part()?;
        }
        Ok(n)
    }

    /// Parts go out when full; a flush mid-stream must not cut a short part.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let ok = self.store.rt.block_on(w.abort()).is_ok();
            self.outcome.lock().unwrap_or_else(|p| p.into_inner()).aborted = ok;
            if !ok {
                tracing::warn!("{}: could not abort the multipart upload; `hero-snap gc` will", self.store.obj.url());
            }
        }
    }
}

/// The upload journal: where a run uploads, so that `gc` can abort what a dead run left.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UploadJournal {
    pub run_id: String,
    pub pid: u32,
    pub bucket: String,
    pub key: String,
    pub config: S3Config,
    /// Unix seconds when the run started; uploads of the key initiated since are its own.
    pub started: i64,
}

impl UploadJournal {
    pub(crate) fn new(run_id: &str, obj: &S3Object) -> UploadJournal {
        // The resolved endpoint and region are recorded: gc may run with another environment.
        let config = S3Config { endpoint: obj.endpoint(), region: Some(obj.region()), ..obj.config.clone() };
        UploadJournal {
            run_id: run_id.into(),
            pid: std::process::id(),
            bucket: obj.bucket.clone(),
            key: obj.key.clone(),
            config,
            started: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }
}

/// Aborts the multipart uploads of dead runs' journals (`gc`).
pub(crate) fn recover(state: &Path) -> Result<Vec<crate::state::Recovered>> {
    let mut out = Vec::new();
    for (path, j) in crate::journal::dead::<UploadJournal>(state, "upload", |j| j.pid)? {
        let obj = S3Object { bucket: j.bucket.clone(), key: j.key.clone(), config: j.config.clone() };
        let store = connect(&obj)?;
        // Clocks of this host and the storage may disagree a little.
        let since = j.started - 300;
        let uploads = store.rt.block_on(multipart::list(&store, &obj.key))?;
        let mut aborted = 0;
        for u in uploads.iter().filter(|u| u.key == obj.key && u.initiated >= since) {
            store.rt.block_on(multipart::abort(&store, &u.key, &u.upload_id))?;
            aborted += 1;
        }
        let _ = std::fs::remove_file(&path);
        out.push(crate::state::Recovered { run_id: j.run_id, action: format!("aborted {aborted} unfinished upload(s) to {}", obj.url()) });
    }
    Ok(out)
}

/// The two S3 calls opendal does not offer, signed with reqsign (opendal's signer) from
/// the same credential chain.
mod multipart {
    use reqsign_aws_v4::{DefaultCredentialProvider, RequestSigner};
    use reqsign_core::{Context, OsEnv, ProvideCredentialChain, Signer};

    use super::Store;
    use crate::error::{Error, Result};

    pub(super) struct InProgress {
        pub key: String,
        pub upload_id: String,
        /// Unix seconds.
        pub initiated: i64,
    }

    fn enc(s: &str, keep_slash: bool) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn bucket_url(store: &Store) -> String {
        let (b, e) = (&store.obj.bucket, &store.endpoint);
        if store.obj.config.virtual_host_style {
            match e.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{b}.{host}/"),
                None => format!("https://{b}.{e}/"),
            }
        } else {
            format!("{e}/{b}/")
        }
    }

    async fn send(store: &Store, method: http::Method, url: String) -> Result<String> {
        let what = format!("{method} {url}");
        let mut provider = DefaultCredentialProvider::builder();
        if let Some(p) = store.obj.profile() {
            provider = provider.with_profile(p);
        }
        if store.obj.endpoint().is_some() || store.obj.config.endpoint.is_some() {
            provider = provider.no_imds();
        }
        let ctx = Context::new().with_file_read(reqsign_file_read_tokio::TokioFileRead).with_env(OsEnv);
        let signer = Signer::new(ctx, ProvideCredentialChain::new().push(provider.build()), RequestSigner::new("s3", &store.obj.region()));
        let req = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .body(())
            .map_err(|e| Error::Storage(format!("{what}: {e}")))?;
        let (mut parts, ()) = req.into_parts();
        signer.sign(&mut parts, None).await.map_err(|e| Error::Storage(format!("{what}: signing: {e}")))?;
        let client = reqwest::Client::new();
        let mut last = String::new();
        // The same backoff idea as opendal's retry layer, for these two calls.
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let res = client.request(method.clone(), parts.uri.to_string()).headers(parts.headers.clone()).send().await;
            match res {
                Ok(r) if r.status().is_success() => return r.text().await.map_err(|e| Error::Storage(format!("{what}: {e}"))),
                Ok(r) if r.status().is_server_error() || r.status() == 429 => last = format!("HTTP {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    let code = tag(&body, "Code").unwrap_or_default();
                    return Err(store.error("managing multipart uploads", opendal::Error::new(opendal::ErrorKind::Unexpected, format!("HTTP {status} {code}"))));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Storage(format!("{what}: {last} (after retries)")))
    }

    /// In-progress multipart uploads whose key starts with `prefix` (all pages).
    pub(super) async fn list(store: &Store, prefix: &str) -> Result<Vec<InProgress>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = format!("{}?prefix={}&uploads=", bucket_url(store), enc(prefix, false));
            if let Some((k, u)) = &markers {
                url = format!("{}?key-marker={}&prefix={}&upload-id-marker={}&uploads=", bucket_url(store), enc(k, false), enc(prefix, false), enc(u, false));
            }
            let body = send(store, http::Method::GET, url).await?;
            for block in body.split("<Upload>").skip(1) {
                let block = block.split("</Upload>").next().unwrap_or_default();
                let (Some(key), Some(upload_id)) = (tag(block, "Key"), tag(block, "UploadId")) else { continue };
                let initiated = tag(block, "Initiated")
                    .and_then(|t| time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok())
                    .map(|t| t.unix_timestamp())
                    .unwrap_or(i64::MAX);
                out.push(InProgress { key, upload_id, initiated });
            }
            if tag(&body, "IsTruncated").as_deref() != Some("true") {
                return Ok(out);
            }
            match (tag(&body, "NextKeyMarker"), tag(&body, "NextUploadIdMarker")) {
                (Some(k), Some(u)) => markers = Some((k, u)),
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn abort(store: &Store, key: &str, upload_id: &str) -> Result<()> {
        let url = format!("{}{}?uploadId={}", bucket_url(store), enc(key, true), enc(upload_id, false));
        send(store, http::Method::DELETE, url).await.map(|_| ())
    }

    /// The text of the first `<name>` element, XML entities decoded.
    fn tag(xml: &str, name: &str) -> Option<String> {
        let open = format!("<{name}>");
        let start = xml.find(&open)? + open.len();
        let end = xml[start..].find(&format!("</{name}>"))? + start;
        Some(
            xml[start..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_key() {
        let o = S3Object::parse("s3://b/dir/x.hsnap", S3Config::default()).unwrap();
        assert_eq!((o.bucket.as_str(), o.key.as_str()), ("b", "dir/x.hsnap"));
        for bad in ["s3://b", "s3://b/", "s3:///k", "s3://b/dir/", "/tmp/x"] {
            assert!(S3Object::parse(bad, S3Config::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_parse_into_bucket_and_prefix() {
        for (url, bucket, prefix) in [("s3://b", "b", ""), ("s3://b/", "b", ""), ("s3://b/x/y", "b", "x/y/"), ("s3://b/x/y/", "b", "x/y/")] {
            let f = S3Prefix::parse(url, S3Config::default()).unwrap();
            assert_eq!((f.bucket.as_str(), f.prefix.as_str()), (bucket, prefix), "{url}");
        }
        assert_eq!(S3Prefix::parse("s3://b/x", S3Config::default()).unwrap().object("a.hsnap").url(), "s3://b/x/a.hsnap");
        for bad in ["s3://", "s3:///x", "s3://b//x", "/tmp/x"] {
            assert!(S3Prefix::parse(bad, S3Config::default()).is_err(), "{bad}");
        }
    }

    /// RGW does not check the signing region, so this is the one S3 answer the gateway
    /// tests cannot provoke: AWS's reply to a request signed for the wrong region.
    #[test]
    fn a_wrong_region_is_named() {
        let o = S3Object::parse("s3://b/a.hsnap", S3Config { region: Some("us-east-1".into()), ..Default::default() }).unwrap();
        let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-central-1'</Message><Region>eu-central-1</Region></Error>";
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, format!("S3Error {{ code: \"AuthorizationHeaderMalformed\" }} {body}"));
        let msg = describe(&o, "https://s3.us-east-1.amazonaws.com", "reading the archive", &e);
        assert!(msg.contains("region `us-east-1` is wrong") && msg.contains("--s3-region eu-central-1"), "{msg}");
    }

    #[test]
    fn parts_fit_the_largest_archives() {
        let total: u64 = (0..10_000).map(|n| part_size(n) as u64).sum();
        assert!(total > 5 << 40, "10 000 parts hold only {total} bytes");
        assert!(part_size(0) >= 5 << 20, "S3's smallest part is 5 MiB");
        assert!((0..10_000).all(|n| part_size(n) <= 5 << 30), "S3's largest part is 5 GiB");
    }
}
