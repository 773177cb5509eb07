//! Archives in S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO), through
//! opendal on the process's one tokio runtime. decisions/D-07-object-storage.md says why.
//!
//! - Backup streams into a multipart upload (parts are sent while the archive is written);
//!   the object appears only when the upload completes after the archive's last byte. A
//!   failed run aborts its upload; a killed run leaves a journal (`upload-<run>.json`) from
//!   which `gc` finds and aborts what it left.
//! - Restore and verify read with parallel ranged GETs; inspect and preflight read the head
//!   of the object in small ranged GETs, never the whole object.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opendal::layers::RetryLayer;
use reqsign_core::Signer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::failpoint;

mod lock;
mod transport;

pub(crate) use lock::{delete, Deleted};
use transport::ObjectLock;

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
    /// Backup: lock the archive's object for this many days (`COMPLIANCE` mode, set when
    /// the object is created); the bucket must have object lock enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock_days: Option<u32>,
    /// Backup: at most this many bytes per second go to the storage, over all parts in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_upload: Option<u64>,
    /// Reads: at most this many bytes per second come from the storage, over all ranges in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_download: Option<u64>,
}

/// A bandwidth limit (`--limit-upload`, `--limit-download`): bytes per second, as a number
/// or with a binary suffix `K`, `M`, `G`, `T`, as `--min-free` sizes are written.
///
/// ```
/// use hero_snap_core::BytesPerSec;
/// assert_eq!("10M".parse::<BytesPerSec>().unwrap(), BytesPerSec(10 << 20));
/// assert!("0".parse::<BytesPerSec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesPerSec(pub u64);

impl std::str::FromStr for BytesPerSec {
    type Err = Error;

    fn from_str(s: &str) -> Result<BytesPerSec> {
        match crate::size::parse_size(s) {
            Ok(0) => Err(Error::Usage(format!("`{s}`: a limit of 0 bytes per second would never finish; leave the limit out for none"))),
            Ok(n) => Ok(BytesPerSec(n)),
            Err(e) => Err(Error::Usage(format!("{e} (bytes per second, e.g. 10M)"))),
        }
    }
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
        self.config.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL")).map(|e| e.trim_end_matches('/').to_string())
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
    let at = folder.as_object();
    let store = Store::get(&at)?;
    let path = if folder.prefix.is_empty() { "/" } else { folder.prefix.as_str() };
    let entries = store.block_on(store.op.list(path)).map_err(|e| store.error(&at, "listing the folder", e))?;
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

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The one I/O runtime of the process. A runtime per connection cost two threads per
/// archive in `list`, and connections pooled by the shared HTTP client died with the
/// runtime that opened them. Being a static it is never dropped, so process exit does not
/// wait for it. Callers are ordinary threads that `block_on` it; never call from a task.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hero-snap-s3")
        .enable_all()
        .build()
        .map_err(|e| Error::storage_caused(format!("starting the I/O runtime: {e}"), e))?;
    // Two threads may race here; the loser's runtime never ran a task and drops quietly.
    let _ = RT.set(rt);
    Ok(RT.get().expect("set just above"))
}

/// The one HTTP client (and so one connection pool) of the process, shared by opendal and
/// the multipart calls.
/// `reqwest::Client::new` panics where the client cannot start (no CA certificates on the
/// machine, even for an `http://` endpoint); this says what to install instead.
fn http_client() -> Result<&'static reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::storage_caused(format!("starting the HTTP client: {e}; install the CA certificates (apt-get install ca-certificates)"), e))?;
    let _ = CLIENT.set(client);
    Ok(CLIENT.get().expect("set just above"))
}

/// What makes two objects reachable through the same operator: the bucket and the
/// resolved endpoint, region, profile and addressing style.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StoreKey {
    bucket: String,
    endpoint: Option<String>,
    region: String,
    profile: Option<String>,
    virtual_host: bool,
}

/// A connection to one bucket: opendal's operator (async and blocking faces) and the
/// signer of the calls opendal lacks. Kept for the process, so that `list` and `prune`
/// read and delete every archive of a folder through one operator.
struct Store {
    op: opendal::Operator,
    bop: opendal::blocking::Operator,
    rt: &'static tokio::runtime::Runtime,
    key: StoreKey,
    /// Where requests go, for messages and the multipart calls.
    endpoint: String,
    signer: Signer<reqsign_aws_v4::Credential>,
    /// The object lock the transport puts on the object a backup creates.
    lock: Arc<Mutex<Option<ObjectLock>>>,
}

impl Store {
    /// The store of the object's bucket and configuration, connected on first use.
    fn get(obj: &S3Object) -> Result<Arc<Store>> {
        static STORES: OnceLock<Mutex<HashMap<StoreKey, Arc<Store>>>> = OnceLock::new();
        let key = StoreKey {
            bucket: obj.bucket.clone(),
            endpoint: obj.endpoint(),
            region: obj.region(),
            profile: obj.profile(),
            virtual_host: obj.config.virtual_host_style,
        };
        let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        let store = Arc::new(Store::connect(obj, key.clone())?);
        stores.insert(key, store.clone());
        Ok(store)
    }

    fn connect(obj: &S3Object, key: StoreKey) -> Result<Store> {
        let rt = runtime()?;
        // The bucket owner may read and delete what a machine's own storage user wrote (on RGW
        // and across AWS accounts an object is otherwise its writer's alone): prune runs with
        // the owner's keys (D-14).
        let mut b = opendal::services::S3::default().bucket(&key.bucket).root("/").region(&key.region).default_acl("bucket-owner-full-control");
        if let Some(e) = &key.endpoint {
            // Not AWS: the EC2 metadata service has no credentials for it, and probing it stalls.
            b = b.endpoint(e).disable_ec2_metadata();
        }
        if let Some(p) = &key.profile {
            b = b.profile(p);
        }
        if key.virtual_host {
            b = b.enable_virtual_host_style();
        }
        let signer = multipart::signer(&key);
        let lock = Arc::new(Mutex::new(None));
        let transport = transport::Transport { client: http_client()?.clone(), lock: lock.clone(), signer: signer.clone() };
        let transport = opendal::HttpTransporter::new(transport);
        let op = opendal::Operator::new(b)
            .map_err(|e| Error::storage_caused(format!("{}: {e}", obj.url()), e))?
            .with_context(opendal::OperationContext::new().with_http_transport(transport))
            // Transient failures (5xx, throttling, resets) are retried with exponential backoff
            // and jitter; opendal marks which errors are temporary.
            .layer(RetryLayer::new().with_max_times(5).with_min_delay(Duration::from_millis(200)).with_max_delay(Duration::from_secs(10)).with_jitter());
        let endpoint = key.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", key.region));
        // The blocking face takes the runtime it is created in.
        let bop = {
            let _guard = rt.enter();
            opendal::blocking::Operator::new(op.clone()).map_err(|e| Error::storage_caused(describe(obj, &endpoint, "connecting", &e), e))?
        };
        Ok(Store { op, bop, rt, key, endpoint, signer, lock })
    }

    /// Runs a future to completion from an ordinary (non-runtime) thread.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Turns an opendal error into one that says what is wrong and what to do.
    fn error(&self, obj: &S3Object, action: &str, e: opendal::Error) -> Error {
        Error::storage_caused(describe(obj, &self.endpoint, action, &e), e)
    }

    /// A list call answers with the bucket's own error (a HEAD has no body to say
    /// "no such bucket" or "bad key"): used to explain a failed stat.
    fn probe_bucket(&self, obj: &S3Object) -> Option<opendal::Error> {
        let prefix = match obj.key.rfind('/') {
            Some(i) => &obj.key[..=i],
            None => "",
        };
        self.block_on(async { self.op.list_with(prefix).limit(1).await }).err()
    }

    fn explain(&self, obj: &S3Object, action: &str, e: opendal::Error) -> Error {
        if matches!(e.kind(), opendal::ErrorKind::NotFound | opendal::ErrorKind::PermissionDenied) {
            if let Some(probe) =
                self.probe_bucket(obj).filter(|p| p.kind() != opendal::ErrorKind::PermissionDenied || e.kind() == opendal::ErrorKind::PermissionDenied)
            {
                return self.error(obj, action, probe);
            }
        }
        self.error(obj, action, e)
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
    } else if o.config.object_lock_days.is_some() && (has("InvalidRequest") || has("ObjectLockConfiguration")) {
        // The only request of a locked backup a bucket without object lock finds invalid.
        format!(
            "{}: bucket `{}` refused the object lock while {action}; check that it has object lock enabled (created with it: x-amz-bucket-object-lock-enabled: true), or back up without --s3-object-lock",
            o.url(),
            o.bucket
        )
    } else if has("AccessDenied") || e.kind() == opendal::ErrorKind::PermissionDenied {
        format!("{}: access denied while {action}; the credentials need s3:GetObject, s3:PutObject, s3:ListBucket, s3:AbortMultipartUpload and s3:ListBucketMultipartUploads on the bucket (and for prune s3:ListBucketVersions, s3:DeleteObject and s3:DeleteObjectVersion)", o.url())
    } else if e.kind() == opendal::ErrorKind::NotFound {
        format!("{}: no such object at {}", o.url(), endpoint)
    } else if e.kind() == opendal::ErrorKind::ConfigInvalid {
        format!("{}: the storage configuration is invalid: {e}", o.url())
    } else {
        format!("{}: {action} failed at {} (after retries): {e}", o.url(), endpoint)
    }
}

/// Opens the object for reading: the head only (small sequential ranged GETs, for
/// inspect and preflight) or the whole (parallel ranged GETs, for restore and verify).
pub(crate) fn open(obj: &S3Object, whole: bool) -> Result<Box<dyn Read>> {
    let store = Store::get(obj)?;
    transport::DOWNLOAD.set(obj.config.limit_download);
    let meta = store.bop.stat(&obj.key).map_err(|e| store.explain(obj, "reading the archive", e))?;
    let size = meta.content_length();
    let opts = opendal::options::ReaderOptions {
        chunk: Some(if whole { READ_CHUNK } else { HEAD_CHUNK }),
        concurrent: if whole { READ_CONCURRENCY } else { 1 },
        ..Default::default()
    };
    let reader = store.bop.reader_options(&obj.key, opts).map_err(|e| store.explain(obj, "reading the archive", e))?;
    let inner = reader.into_std_read(0..size).map_err(|e| store.error(obj, "reading the archive", e))?;
    Ok(Box::new(inner))
}

/// An object read in parts, one ranged GET per call: what a reader of an archive's end
/// alone uses (decisions/D-17). Every read asks for the version first seen (its ETag), so
/// that an object replaced meanwhile fails the read instead of mixing two archives.
pub(crate) struct Ranged {
    store: Arc<Store>,
    obj: S3Object,
    etag: Option<String>,
    /// The object's size in bytes.
    pub size: u64,
}

impl Ranged {
    pub(crate) fn open(obj: &S3Object) -> Result<Ranged> {
        let store = Store::get(obj)?;
        transport::DOWNLOAD.set(obj.config.limit_download);
        let meta = store.bop.stat(&obj.key).map_err(|e| store.explain(obj, "reading the archive", e))?;
        Ok(Ranged { size: meta.content_length(), etag: meta.etag().map(str::to_string), store, obj: obj.clone() })
    }

    /// The bytes `range` of the object.
    pub(crate) fn read(&self, range: std::ops::Range<u64>) -> io::Result<Vec<u8>> {
        let opts = opendal::options::ReadOptions { range: range.into(), if_match: self.etag.clone(), ..Default::default() };
        let buf = self.store.bop.read_options(&self.obj.key, opts).map_err(|e| io::Error::other(self.store.error(&self.obj, "reading the archive", e)))?;
        Ok(buf.to_vec())
    }
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
    store: Arc<Store>,
    obj: S3Object,
}

impl Upload {
    pub(crate) fn start(obj: &S3Object) -> Result<(Upload, Arc<Mutex<UploadOutcome>>)> {
        let store = Store::get(obj)?;
        // Fail before anything is frozen when the bucket is missing or the keys are wrong.
        if let Some(e) = store.probe_bucket(obj).filter(|e| !e.to_string().contains("AccessDenied")) {
            return Err(store.error(obj, "checking the bucket", e));
        }
        let lock = obj.config.object_lock_days.map(lock::lock_for).transpose()?;
        *store.lock.lock().unwrap_or_else(|p| p.into_inner()) = lock;
        transport::UPLOAD.set(obj.config.limit_upload);
        let writer = store
            .block_on(async { store.op.writer_with(&obj.key).concurrent(UPLOAD_CONCURRENCY).await })
            .map_err(|e| store.error(obj, "starting the upload", e))?;
        let outcome = Arc::new(Mutex::new(UploadOutcome::default()));
        let up = Upload { writer: Some(writer), part: Vec::with_capacity(part_size(0)), parts_sent: 0, outcome: outcome.clone(), store, obj: obj.clone() };
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
        if let Err(e) = self.store.block_on(w.write(data)) {
            let e = self.store.error(&self.obj, "uploading a part", e);
            return Err(self.record(e));
        }
        self.parts_sent += 1;
        if self.parts_sent == 3 {
            failpoint("s3-upload");
        }
        Ok(())
    }

    /// Sends the last part and completes the upload: only now does the object exist.
    pub(crate) fn finish(mut self) -> Result<u64> {
        if !self.part.is_empty() {
            self.send_part().map_err(|e| self.take_error().unwrap_or_else(|| Error::storage_caused(e.to_string(), e)))?;
        }
        let mut w = self.writer.take().expect("finish runs once");
        match self.store.block_on(w.close()) {
            Ok(_) => {}
            Err(e) => {
                let err = self.store.error(&self.obj, "completing the upload", e);
                let _ = self.store.block_on(w.abort());
                return Err(err);
            }
        }
        let lock = self.store.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lock) = lock {
            self.store.block_on(lock::ensure_locked(&self.store, &self.obj, &lock))?;
        }
        // opendal's returned metadata can lack the size on RGW; ask the storage.
        let meta = self.store.block_on(self.store.op.stat(&self.obj.key)).map_err(|e| self.store.error(&self.obj, "checking the uploaded archive", e))?;
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
        // The next object created through this bucket's connection is not this archive.
        *self.store.lock.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut w) = self.writer.take() {
            let ok = self.store.block_on(w.abort()).is_ok();
            self.outcome.lock().unwrap_or_else(|p| p.into_inner()).aborted = ok;
            if !ok {
                tracing::warn!("{}: could not abort the multipart upload; `hero-snap gc` will", self.obj.url());
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
    for (path, j) in crate::state::journal::dead::<UploadJournal>(state, "upload", |j| j.pid)? {
        let obj = S3Object { bucket: j.bucket.clone(), key: j.key.clone(), config: j.config.clone() };
        let store = Store::get(&obj)?;
        // Clocks of this host and the storage may disagree a little.
        let since = j.started - 300;
        let uploads = store.block_on(multipart::list(&store, &obj))?;
        let mut aborted = 0;
        for u in uploads.iter().filter(|u| u.key == obj.key && u.initiated >= since) {
            store.block_on(multipart::abort(&store, &obj, &u.key, &u.upload_id))?;
            aborted += 1;
        }
        let _ = std::fs::remove_file(&path);
        out.push(crate::state::Recovered {
            run_id: j.run_id,
            action: format!("aborted {aborted} unfinished upload(s) to {}", obj.url()),
            outcomes: Vec::new(),
        });
    }
    Ok(out)
}

/// The two S3 calls opendal does not offer, signed with reqsign (opendal's signer) from
/// the same credential chain and sent with the process's one HTTP client.
mod multipart {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use reqsign_aws_v4::{Credential, DefaultCredentialProvider, RequestSigner};
    use reqsign_core::{Context, OsEnv, ProvideCredentialChain, Signer};
    use serde::Deserialize;

    use super::{http_client, S3Object, Store, StoreKey};
    use crate::error::{Error, Result};

    /// SigV4 signs the URI in canonical form, in which only the unreserved characters stay
    /// as they are; reqsign signs what it is given, so the URI must already be in that form.
    pub(super) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    /// In an object's path `/` separates segments and stays.
    pub(super) const PATH: &AsciiSet = &QUERY_VALUE.remove(b'/');

    pub(super) fn enc(s: &str, set: &'static AsciiSet) -> String {
        utf8_percent_encode(s, set).to_string()
    }

    pub(super) struct InProgress {
        pub key: String,
        pub upload_id: String,
        /// Unix seconds.
        pub initiated: i64,
    }

    /// The reply to ListMultipartUploads; elements not named here are skipped.
    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "PascalCase", default)]
    pub(super) struct ListUploadsReply {
        pub is_truncated: bool,
        pub next_key_marker: Option<String>,
        pub next_upload_id_marker: Option<String>,
        #[serde(rename = "Upload")]
        pub uploads: Vec<UploadEntry>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "PascalCase", default)]
    pub(super) struct UploadEntry {
        pub key: Option<String>,
        pub upload_id: Option<String>,
        pub initiated: Option<String>,
    }

    /// An S3 error reply: `<Error><Code>NoSuchBucket</Code>...</Error>`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "PascalCase", default)]
    pub(super) struct ErrorReply {
        pub code: String,
    }

    impl UploadEntry {
        /// Entries without a key or an upload id name nothing that could be aborted.
        fn into_in_progress(self) -> Option<InProgress> {
            // An unreadable start time counts as recent: the upload is then the dead run's.
            let initiated = self
                .initiated
                .and_then(|t| time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok())
                .map_or(i64::MAX, |t| t.unix_timestamp());
            Some(InProgress { key: self.key?, upload_id: self.upload_id?, initiated })
        }
    }

    /// One signer per store: it caches the credentials it loads.
    pub(super) fn signer(key: &StoreKey) -> Signer<Credential> {
        let mut provider = DefaultCredentialProvider::builder();
        if let Some(p) = &key.profile {
            provider = provider.with_profile(p);
        }
        if key.endpoint.is_some() {
            provider = provider.no_imds();
        }
        let ctx = Context::new().with_file_read(reqsign_file_read_tokio::TokioFileRead).with_env(OsEnv);
        Signer::new(ctx, ProvideCredentialChain::new().push(provider.build()), RequestSigner::new("s3", &key.region))
    }

    pub(super) fn bucket_url(store: &Store) -> String {
        let (b, e) = (&store.key.bucket, &store.endpoint);
        if store.key.virtual_host {
            match e.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{b}.{host}/"),
                None => format!("https://{b}.{e}/"),
            }
        } else {
            format!("{e}/{b}/")
        }
    }

    async fn send(store: &Store, obj: &S3Object, method: http::Method, url: String) -> Result<String> {
        send_for(store, obj, method, url, "managing multipart uploads", None).await
    }

    /// One signed request, retried like opendal's; the reply's body, or the S3 error as
    /// [`Store::error`] explains it for `action`.
    /// A `body` is sent with its Content-MD5, which S3 asks for on configuration calls.
    pub(super) async fn send_for(store: &Store, obj: &S3Object, method: http::Method, url: String, action: &str, body: Option<String>) -> Result<String> {
        let what = format!("{method} {url}");
        let mut req = http::Request::builder().method(method.clone()).uri(&url).header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
        if let Some(b) = &body {
            use md5::Digest;
            req = req.header("content-md5", reqsign_core::hash::base64_encode(&md5::Md5::digest(b.as_bytes())));
        }
        let req = req.body(()).map_err(|e| Error::storage_caused(format!("{what}: {e}"), e))?;
        let (mut parts, ()) = req.into_parts();
        store.signer.sign(&mut parts, None).await.map_err(|e| Error::storage_caused(format!("{what}: signing: {e}"), e))?;
        let client = http_client()?;
        let mut last = String::new();
        // The same backoff idea as opendal's retry layer, for these two calls.
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let mut req = client.request(method.clone(), parts.uri.to_string()).headers(parts.headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let res = req.send().await;
            match res {
                Ok(r) if r.status().is_success() => return r.text().await.map_err(|e| Error::storage_caused(format!("{what}: {e}"), e)),
                Ok(r) if r.status().is_server_error() || r.status() == 429 => last = format!("HTTP {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    // describe() recognises the S3 error code in the message.
                    let code = quick_xml::de::from_str::<ErrorReply>(&body).map(|e| e.code).unwrap_or_default();
                    return Err(store.error(obj, action, opendal::Error::new(opendal::ErrorKind::Unexpected, format!("HTTP {status} {code}"))));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::storage(format!("{what}: {last} (after retries)")))
    }

    /// The query of ListMultipartUploads for `prefix`, after the page that ended at `markers`.
    /// Parameters in the order SigV4 sorts them.
    pub(super) fn list_query(prefix: &str, markers: Option<&(String, String)>) -> String {
        let prefix = enc(prefix, QUERY_VALUE);
        match markers {
            None => format!("prefix={prefix}&uploads="),
            Some((k, u)) => format!("key-marker={}&prefix={prefix}&upload-id-marker={}&uploads=", enc(k, QUERY_VALUE), enc(u, QUERY_VALUE)),
        }
    }

    /// In-progress multipart uploads whose key starts with `obj`'s key (all pages).
    pub(super) async fn list(store: &Store, obj: &S3Object) -> Result<Vec<InProgress>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let url = format!("{}?{}", bucket_url(store), list_query(&obj.key, markers.as_ref()));
            let what = format!("GET {url}");
            let body = send(store, obj, http::Method::GET, url).await?;
            let page: ListUploadsReply = quick_xml::de::from_str(&body).map_err(|e| Error::storage_caused(format!("{what}: unreadable reply: {e}"), e))?;
            out.extend(page.uploads.into_iter().filter_map(UploadEntry::into_in_progress));
            if !page.is_truncated {
                return Ok(out);
            }
            // An empty marker would ask for the first page again.
            match (page.next_key_marker.filter(|k| !k.is_empty()), page.next_upload_id_marker.filter(|u| !u.is_empty())) {
                (Some(k), Some(u)) => markers = Some((k, u)),
                _ => return Ok(out),
            }
        }
    }

    /// The URL of AbortMultipartUpload for one upload.
    pub(super) fn abort_url(store: &Store, key: &str, upload_id: &str) -> String {
        format!("{}{}?uploadId={}", bucket_url(store), enc(key, PATH), enc(upload_id, QUERY_VALUE))
    }

    pub(super) async fn abort(store: &Store, obj: &S3Object, key: &str, upload_id: &str) -> Result<()> {
        send(store, obj, http::Method::DELETE, abort_url(store, key, upload_id)).await.map(|_| ())
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

    #[test]
    fn keys_are_encoded_as_sigv4_signs_them() {
        use multipart::{enc, PATH, QUERY_VALUE};
        let key = "dir/a b+c=d&e/ünï~x_y-z.hsnap";
        assert_eq!(enc(key, PATH), "dir/a%20b%2Bc%3Dd%26e/%C3%BCn%C3%AF~x_y-z.hsnap");
        assert_eq!(enc(key, QUERY_VALUE), "dir%2Fa%20b%2Bc%3Dd%26e%2F%C3%BCn%C3%AF~x_y-z.hsnap");
        let unreserved = "ABCXYZabcxyz0189-_.~";
        assert_eq!(enc(unreserved, QUERY_VALUE), unreserved);
        assert_eq!(enc("%?#:@!*'()", QUERY_VALUE), "%25%3F%23%3A%40%21%2A%27%28%29");
        assert_eq!(multipart::list_query("p/a b", None), "prefix=p%2Fa%20b&uploads=");
        let markers = ("p/k+1".to_string(), "2~x/y=".to_string());
        assert_eq!(multipart::list_query("p/", Some(&markers)), "key-marker=p%2Fk%2B1&prefix=p%2F&upload-id-marker=2~x%2Fy%3D&uploads=");
    }

    #[test]
    fn abort_urls_keep_slashes_in_the_path_only() {
        let config = S3Config { endpoint: Some("http://127.0.0.1:9/".into()), region: Some("r1".into()), ..Default::default() };
        let obj = S3Object::parse("s3://bkt/d/a b+.hsnap", config.clone()).unwrap();
        let store = Store::get(&obj).unwrap();
        assert_eq!(multipart::abort_url(&store, &obj.key, "id/1+="), "http://127.0.0.1:9/bkt/d/a%20b%2B.hsnap?uploadId=id%2F1%2B%3D");
        let vhost = S3Object { config: S3Config { virtual_host_style: true, ..config }, ..obj };
        let store = Store::get(&vhost).unwrap();
        assert_eq!(multipart::abort_url(&store, "k", "u"), "http://bkt.127.0.0.1:9/k?uploadId=u");
    }

    /// AWS's documented reply, with the elements hero-snap does not read.
    #[test]
    fn multipart_listings_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>my-movie.m2ts</NextKeyMarker><NextUploadIdMarker>YW55IGlkZWEgd2h5</NextUploadIdMarker>
  <Prefix>dir/</Prefix><MaxUploads>3</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload>
    <Key>dir/a &amp; b &lt;1&gt;.hsnap</Key><UploadId>XXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
    <Initiator><ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5-b111111f13de</ID><DisplayName>user1</DisplayName></Initiator>
    <Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>OwnerDisplayName</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload><Key>dir/b.hsnap</Key><UploadId>VXBsb2FkIElE</UploadId><Initiated>not a time</Initiated></Upload>
  <Upload><Key>dir/c.hsnap</Key></Upload>
  <CommonPrefixes><Prefix>dir/sub/</Prefix></CommonPrefixes>
</ListMultipartUploadsResult>"#;
        let page: multipart::ListUploadsReply = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!((page.next_key_marker.as_deref(), page.next_upload_id_marker.as_deref()), (Some("my-movie.m2ts"), Some("YW55IGlkZWEgd2h5")));
        let keys: Vec<_> = page.uploads.iter().map(|u| u.key.as_deref()).collect();
        assert_eq!(keys, [Some("dir/a & b <1>.hsnap"), Some("dir/b.hsnap"), Some("dir/c.hsnap")]);
        assert_eq!(page.uploads[0].initiated.as_deref(), Some("2010-11-10T20:48:33.000Z"));
        assert_eq!(page.uploads[2].upload_id, None);

        let last: multipart::ListUploadsReply = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><Bucket>b</Bucket><NextKeyMarker/><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(!last.is_truncated && last.uploads.is_empty());

        let err: multipart::ErrorReply =
            quick_xml::de::from_str("<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><BucketName>x</BucketName><RequestId>tx1</RequestId></Error>")
                .unwrap();
        assert_eq!(err.code, "NoSuchBucket");
    }

    /// `list` and `prune` reach every archive of a folder through one operator, and every
    /// connection shares the process's runtime.
    #[test]
    fn a_bucket_is_connected_once() {
        let config = S3Config { endpoint: Some("http://127.0.0.1:9".into()), region: Some("r2".into()), ..Default::default() };
        let folder = S3Prefix::parse("s3://once/dir/", config.clone()).unwrap();
        let a = Store::get(&folder.object("a.hsnap")).unwrap();
        let b = Store::get(&folder.object("b.hsnap")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = Store::get(&S3Object::parse("s3://other/a.hsnap", config).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert!(std::ptr::eq(a.rt, other.rt));
    }
}
