//! The age layer: who can read an archive (recipients or a passphrase) and the keys that
//! open it. Key material is never logged or put in an error message.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::SecretString;

use crate::error::{Error, Result};

/// How a new archive is encrypted.
pub enum Encryption {
    /// Plaintext; the CLI only allows it with an explicit `--no-encrypt`.
    None,
    /// X25519 (`age1...`) and SSH (`ssh-ed25519`, `ssh-rsa`) recipients.
    Recipients(Vec<Box<dyn age::Recipient + Send>>),
    /// A passphrase (scrypt); `work_factor` is log2(N), `None` for age's default (~1 s).
    Passphrase {
        /// The passphrase.
        passphrase: SecretString,
        /// scrypt's log2(N); `None` for age's default.
        work_factor: Option<u8>,
    },
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::None => f.write_str("Encryption::None"),
            Encryption::Recipients(r) => write!(f, "Encryption::Recipients({} recipients)", r.len()),
            Encryption::Passphrase { .. } => f.write_str("Encryption::Passphrase"),
        }
    }
}

impl Encryption {
    /// Parses recipients given as strings (`age1...`, `ssh-ed25519 ...`, `ssh-rsa ...`).
    pub fn parse_recipients<S: AsRef<str>>(list: &[S]) -> Result<Vec<Box<dyn age::Recipient + Send>>> {
        list.iter().map(|s| parse_recipient(s.as_ref(), None)).collect()
    }

    /// Reads a recipients file: one recipient per line, `#` comments and blank lines ignored.
    pub fn read_recipients_file(path: &Path) -> Result<Vec<Box<dyn age::Recipient + Send>>> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "reading the recipients file"))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse_recipient(line, Some((path, n + 1)))?);
        }
        if out.is_empty() {
            return Err(Error::Crypto(format!("{}: holds no recipient; add an `age1...` or `ssh-ed25519 ...` line", path.display())));
        }
        Ok(out)
    }

    /// A passphrase read from a file (first line), refusing files others can read.
    pub fn passphrase_file(path: &Path) -> Result<Encryption> {
        Ok(Encryption::Passphrase { passphrase: read_passphrase(path)?, work_factor: None })
    }
}

/// The environment variable that sets scrypt's work factor for passphrase archives
/// written by [`EncryptionChoice::resolve`]. For tests only (docs/CLI.md).
const SCRYPT_WORK_FACTOR_ENV: &str = "HERO_SNAP_SCRYPT_WORK_FACTOR";

/// What the caller asked for about a new archive's encryption (the `backup` flags
/// `--recipient`, `--recipients-file`, `--passphrase-file`, `--no-encrypt`);
/// [`EncryptionChoice::resolve`] decides the [`Encryption`].
#[derive(Debug, Clone, Default)]
pub struct EncryptionChoice {
    /// Recipients as strings (`age1...`, `ssh-ed25519 ...`, `ssh-rsa ...`).
    pub recipients: Vec<String>,
    /// Files of recipients, one a line.
    pub recipients_files: Vec<PathBuf>,
    /// A file holding the passphrase (mode 600).
    pub passphrase_file: Option<PathBuf>,
    /// Write a plaintext archive.
    pub no_encrypt: bool,
}

impl EncryptionChoice {
    /// The encryption asked for:
    /// - `no_encrypt`: [`Encryption::None`];
    /// - a passphrase file: [`Encryption::Passphrase`], with scrypt's work factor taken from
    ///   `HERO_SNAP_SCRYPT_WORK_FACTOR` when it is set (for tests only) (unparsable: age's default);
    /// - otherwise [`Encryption::Recipients`]: the recipients, then every file's.
    ///
    /// Nothing at all is a usage error (archives are encrypted unless one says not to), as
    /// is `no_encrypt` or a passphrase together with recipients.
    pub fn resolve(&self) -> Result<Encryption> {
        self.resolve_with(std::env::var(SCRYPT_WORK_FACTOR_ENV).ok().as_deref())
    }

    fn resolve_with(&self, work_factor: Option<&str>) -> Result<Encryption> {
        let has_recipients = !self.recipients.is_empty() || !self.recipients_files.is_empty();
        if self.no_encrypt {
            if has_recipients || self.passphrase_file.is_some() {
                return Err(Error::Usage("--no-encrypt cannot be combined with recipients or a passphrase".into()));
            }
            return Ok(Encryption::None);
        }
        if let Some(p) = &self.passphrase_file {
            if has_recipients {
                return Err(Error::Usage("--passphrase-file cannot be combined with recipients".into()));
            }
            return Ok(Encryption::Passphrase { passphrase: read_passphrase(p)?, work_factor: work_factor.and_then(|n| n.parse().ok()) });
        }
        let mut list = Encryption::parse_recipients(&self.recipients)?;
        for f in &self.recipients_files {
            list.extend(Encryption::read_recipients_file(f)?);
        }
        if list.is_empty() {
            return Err(Error::Usage(
                "backups are encrypted: pass --recipient, --recipients-file or --passphrase-file (or --no-encrypt for a plaintext archive)".into(),
            ));
        }
        Ok(Encryption::Recipients(list))
    }
}

/// The keys the caller gave to open archives (the flags `--identity`,
/// `--passphrase-file`, `--allow-plaintext`); [`DecryptionChoice::resolve`] reads them.
#[derive(Debug, Clone, Default)]
pub struct DecryptionChoice {
    /// age identity files or unencrypted SSH private keys (mode 600).
    pub identities: Vec<PathBuf>,
    /// A file holding the passphrase (mode 600).
    pub passphrase_file: Option<PathBuf>,
    /// Accept archives that are not encrypted.
    pub allow_plaintext: bool,
}

impl DecryptionChoice {
    /// Reads every identity file and the passphrase file into a [`Decryption`]. No keys
    /// at all is not an error here: reading an encrypted archive then fails, naming the
    /// flags to pass.
    pub fn resolve(&self) -> Result<Decryption> {
        let mut d = Decryption { allow_plaintext: self.allow_plaintext, ..Decryption::default() };
        for i in &self.identities {
            d.add_identity_file(i)?;
        }
        if let Some(p) = &self.passphrase_file {
            d.set_passphrase_file(p)?;
        }
        Ok(d)
    }
}

fn parse_recipient(s: &str, at: Option<(&Path, usize)>) -> Result<Box<dyn age::Recipient + Send>> {
    let where_ = at.map(|(p, n)| format!("{}:{n}: ", p.display())).unwrap_or_default();
    if s.starts_with("age1") {
        return age::x25519::Recipient::from_str(s)
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|e| Error::Crypto(format!("{where_}not a valid age recipient ({e}); it should look like `age1...`")));
    }
    if s.starts_with("ssh-") {
        return age::ssh::Recipient::from_str(s)
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|_| Error::Crypto(format!("{where_}not a supported SSH public key; use ssh-ed25519 or ssh-rsa")));
    }
    Err(Error::Crypto(format!("{where_}unrecognised recipient; use an age key (`age1...`) or an SSH public key (`ssh-ed25519 ...`)")))
}

/// Refuses key and passphrase files that group or others can read.
fn check_private(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(Error::io(path, "reading"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Crypto(format!(
            "{}: the {what} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    Ok(())
}

fn read_passphrase(path: &Path) -> Result<SecretString> {
    check_private(path, "passphrase file")?;
    let text = std::fs::read_to_string(path).map_err(Error::io(path, "reading the passphrase file"))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(Error::Crypto(format!("{}: the passphrase file is empty", path.display())));
    }
    Ok(SecretString::from(line.to_string()))
}

/// The keys that may open an archive.
#[derive(Default)]
pub struct Decryption {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    passphrase: Option<SecretString>,
    sources: Vec<PathBuf>,
    /// Allow reading an archive that is not encrypted.
    pub allow_plaintext: bool,
}

impl Decryption {
    /// No keys: reads plaintext archives only.
    pub fn plaintext() -> Decryption {
        Decryption { allow_plaintext: true, ..Decryption::default() }
    }

    /// Adds the identities of an age identity file or an unencrypted SSH private key.
    pub fn add_identity_file(&mut self, path: &Path) -> Result<()> {
        check_private(path, "identity file")?;
        let data = std::fs::read(path).map_err(Error::io(path, "reading the identity file"))?;
        let text = String::from_utf8_lossy(&data);
        if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") || text.contains("-----BEGIN RSA PRIVATE KEY-----") {
            let id = age::ssh::Identity::from_buffer(BufReader::new(&data[..]), Some(path.display().to_string()))
                .map_err(|_| Error::Crypto(format!("{}: not a readable SSH private key", path.display())))?;
            match id {
                age::ssh::Identity::Unencrypted(_) => self.identities.push(Box::new(id)),
                _ => {
                    return Err(Error::Crypto(format!(
                        "{}: passphrase-protected or unsupported SSH keys are not supported; decrypt it to an unprotected copy readable by root only",
                        path.display()
                    )))
                }
            }
        } else {
            let file = age::IdentityFile::from_buffer(BufReader::new(&data[..]))
                .map_err(|_| Error::Crypto(format!("{}: not an age identity file (expected `AGE-SECRET-KEY-1...` lines)", path.display())))?;
            let ids = file.into_identities().map_err(|_| Error::Crypto(format!("{}: holds an identity this build cannot use", path.display())))?;
            if ids.is_empty() {
                return Err(Error::Crypto(format!("{}: holds no identity", path.display())));
            }
            self.identities.extend(ids);
        }
        self.sources.push(path.to_path_buf());
        Ok(())
    }

    /// Adds an age X25519 identity given as a string (`AGE-SECRET-KEY-1...`).
    pub fn add_identity_str(&mut self, key: &str) -> Result<()> {
        let id = age::x25519::Identity::from_str(key).map_err(|_| Error::Crypto("not a valid age identity".into()))?;
        self.identities.push(Box::new(id));
        Ok(())
    }

    /// Uses the passphrase in a file (first line).
    pub fn set_passphrase_file(&mut self, path: &Path) -> Result<()> {
        self.passphrase = Some(read_passphrase(path)?);
        self.sources.push(path.to_path_buf());
        Ok(())
    }

    /// Uses this passphrase.
    pub fn set_passphrase(&mut self, passphrase: SecretString) {
        self.passphrase = Some(passphrase);
    }

    /// Whether an identity or a passphrase was given.
    pub(crate) fn has_keys(&self) -> bool {
        !self.identities.is_empty() || self.passphrase.is_some()
    }

    fn describe(&self) -> String {
        if self.sources.is_empty() {
            "no identity or passphrase was given: pass --identity FILE or --passphrase-file FILE".into()
        } else {
            format!(
                "none of the given keys opens it ({}); check that the archive was encrypted to this identity or passphrase",
                self.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// What the first bytes of a stream say it is.
enum Kind {
    Age,
    ArmoredAge,
    Zstd,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn sniff(buf: &[u8]) -> Option<Kind> {
    if buf.starts_with(b"age-encryption.org/") {
        Some(Kind::Age)
    } else if buf.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
        Some(Kind::ArmoredAge)
    } else if buf.starts_with(&ZSTD_MAGIC) {
        Some(Kind::Zstd)
    } else {
        None
    }
}

/// Whether the first bytes of a file are an age-encrypted stream (`Some(true)`), a
/// plaintext zstd stream (`Some(false)`), or neither (`None`).
pub(crate) fn encrypted_head(head: &[u8]) -> Option<bool> {
    sniff(head).map(|k| !matches!(k, Kind::Zstd))
}

/// Opens the decrypted, decompressed tar stream of an archive.
pub(crate) fn open_tar_stream<'a, R: Read + 'a>(input: R, keys: &Decryption) -> Result<Box<dyn Read + 'a>> {
    let compressed = open_compressed_stream(input, keys)?;
    let zstd = zstd::stream::read::Decoder::new(compressed).map_err(|e| Error::Corrupt(format!("zstd: {e}")))?;
    Ok(Box::new(zstd))
}

/// Opens the decrypted (still compressed) stream of an archive: what `zstd -d` reads.
pub(crate) fn open_compressed_stream<'a, R: Read + 'a>(input: R, keys: &Decryption) -> Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 20, input);
    let head = buf.fill_buf().map_err(|e| Error::Corrupt(format!("cannot read the archive: {e}")))?;
    let compressed: Box<dyn Read + 'a> = match sniff(head) {
        None if head.is_empty() => return Err(Error::Corrupt("the archive is empty".into())),
        None => return Err(Error::Corrupt("not a hero-snap archive: neither age-encrypted nor zstd-compressed".into())),
        Some(Kind::Zstd) => {
            if !keys.allow_plaintext {
                return Err(Error::Crypto("the archive is not encrypted; pass --allow-plaintext to read it anyway".into()));
            }
            Box::new(buf)
        }
        Some(kind) => {
            // age re-parses its whole header for every line it reads: the guard bounds that work.
            let reader: Box<dyn BufRead + 'a> = match kind {
                Kind::ArmoredAge => Box::new(BufReader::new(HeaderGuard::new(age::armor::ArmoredReader::new(buf)))),
                _ => Box::new(BufReader::new(HeaderGuard::new(buf))),
            };
            Box::new(decrypt(reader, keys)?)
        }
    };
    Ok(compressed)
}

/// A stream that can be read from any place.
pub(crate) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Opens the decrypted (still compressed) stream of an archive so that it can be read
/// from any place: age authenticates each 64 KiB chunk on its own, and its reader seeks
/// by chunk (decisions/D-17). hero-snap never writes armored archives; one is refused here.
pub(crate) fn open_seekable<'a, R: Read + Seek + 'a>(input: R, keys: &Decryption) -> Result<Box<dyn ReadSeek + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 16, input);
    let head = buf.fill_buf().map_err(|e| Error::Corrupt(format!("cannot read the archive: {e}")))?;
    match sniff(head) {
        None if head.is_empty() => Err(Error::Corrupt("the archive is empty".into())),
        None => Err(Error::Corrupt("not a hero-snap archive: neither age-encrypted nor zstd-compressed".into())),
        Some(Kind::Zstd) if !keys.allow_plaintext => Err(Error::Crypto("the archive is not encrypted; pass --allow-plaintext to read it anyway".into())),
        Some(Kind::Zstd) => Ok(Box::new(buf)),
        Some(Kind::ArmoredAge) => Err(Error::Refused("an ASCII-armored archive cannot be read in parts; dearmor it with `age -d` first".into())),
        Some(Kind::Age) => Ok(Box::new(decrypt(BufReader::new(HeaderGuard::new(buf)), keys)?)),
    }
}

fn decrypt<'a, R: BufRead + 'a>(input: R, keys: &Decryption) -> Result<age::stream::StreamReader<R>> {
    let dec = age::Decryptor::new_buffered(input).map_err(|e| match e {
        age::DecryptError::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<HeaderTooLarge>()) => Error::Refused(e.to_string()),
        age::DecryptError::Io(e) => Error::Corrupt(format!("cannot read the age header: {e}")),
        other => Error::Corrupt(format!("damaged age header: {other}")),
    })?;
    let result = if dec.is_scrypt() {
        let Some(pass) = &keys.passphrase else {
            return Err(Error::Crypto("the archive is passphrase-encrypted: pass --passphrase-file FILE".into()));
        };
        let id = age::scrypt::Identity::new(pass.clone());
        dec.decrypt(std::iter::once(&id as &dyn age::Identity))
    } else {
        if keys.identities.is_empty() {
            return Err(Error::Crypto(format!("the archive is encrypted to recipients; {}", keys.describe())));
        }
        dec.decrypt(keys.identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
    };
    result.map_err(|e| match e {
        age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => Error::Crypto(keys.describe()),
        age::DecryptError::ExcessiveWork { required, target } => Error::Refused(format!(
            "the passphrase's work factor ({required}) is far above this machine's ({target}); refusing what could be a resource-exhaustion attack"
        )),
        other => Error::Corrupt(format!("age: {other}")),
    })
}

/// Most recipient stanzas an age header may hold, and most bytes it may take: a hostile
/// header of 50,000 stanzas would otherwise cost minutes of parsing before any check.
const MAX_STANZAS: usize = 256;
const MAX_HEADER_BYTES: u64 = 256 << 10;

#[derive(Debug)]
struct HeaderTooLarge;

impl std::fmt::Display for HeaderTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the age header holds more than {MAX_STANZAS} recipient stanzas or {MAX_HEADER_BYTES} bytes; refusing what could be a resource-exhaustion attack"
        )
    }
}

impl std::error::Error for HeaderTooLarge {}

/// Passes the stream through, failing once the age header (up to its `---` MAC line)
/// exceeds [`MAX_STANZAS`] or [`MAX_HEADER_BYTES`]; transparent after the header.
struct HeaderGuard<R> {
    inner: R,
    done: bool,
    bytes: u64,
    stanzas: usize,
    line_head: Vec<u8>,
    at_line_start: bool,
}

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> HeaderGuard<R> {
        HeaderGuard { inner, done: false, bytes: 0, stanzas: 0, line_head: Vec::with_capacity(3), at_line_start: true }
    }
}

/// Seeking happens only after the header (age seeks within its payload).
impl<R: Seek> Seek for HeaderGuard<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.done {
            return Ok(n);
        }
        for &b in &buf[..n] {
            self.bytes += 1;
            if self.at_line_start {
                self.line_head.clear();
                self.at_line_start = false;
            }
            if self.line_head.len() < 3 {
                self.line_head.push(b);
                match &self.line_head[..] {
                    b"-> " => self.stanzas += 1,
                    b"---" => {
                        self.done = true;
                        break;
                    }
                    _ => {}
                }
            }
            self.at_line_start = b == b'\n';
        }
        if !self.done && (self.stanzas > MAX_STANZAS || self.bytes > MAX_HEADER_BYTES) {
            return Err(std::io::Error::other(HeaderTooLarge));
        }
        Ok(n)
    }
}

/// The encrypting (or not) end of the archive pipeline. `finish` must be called.
pub(crate) enum EncryptedWriter<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> EncryptedWriter<W> {
    pub(crate) fn new(out: W, enc: &Encryption) -> Result<EncryptedWriter<W>> {
        let encryptor = match enc {
            Encryption::None => return Ok(EncryptedWriter::Plain(out)),
            Encryption::Recipients(list) => {
                if list.is_empty() {
                    return Err(Error::Crypto("no recipient given: pass --recipient, --recipients-file or --passphrase-file (or --no-encrypt)".into()));
                }
                if list.len() > MAX_STANZAS {
                    return Err(Error::Crypto(format!(
                        "{} recipients given; an archive takes at most {MAX_STANZAS} (readers refuse larger headers)",
                        list.len()
                    )));
                }
                age::Encryptor::with_recipients(list.iter().map(|r| r.as_ref() as &dyn age::Recipient))
                    .map_err(|e| Error::Crypto(format!("cannot encrypt to these recipients: {e}")))?
            }
            Encryption::Passphrase { passphrase, work_factor } => {
                let mut r = age::scrypt::Recipient::new(passphrase.clone());
                if let Some(n) = work_factor {
                    r.set_work_factor(*n);
                }
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(|e| Error::Crypto(format!("cannot encrypt with the passphrase: {e}")))?
            }
        };
        let w = encryptor.wrap_output(out).map_err(|e| Error::Io { path: PathBuf::from("<archive>"), action: "writing the age header", source: e })?;
        Ok(EncryptedWriter::Age(w))
    }

    pub(crate) fn finish(self) -> std::io::Result<W> {
        match self {
            EncryptedWriter::Plain(w) => Ok(w),
            EncryptedWriter::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for EncryptedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            EncryptedWriter::Plain(w) => w.write(buf),
            EncryptedWriter::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            EncryptedWriter::Plain(w) => w.flush(),
            EncryptedWriter::Age(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn nothing_chosen_is_a_usage_error() {
        let e = EncryptionChoice::default().resolve_with(None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("backups are encrypted: pass --recipient"), "{e}");
    }

    #[test]
    fn no_encrypt_is_plaintext_and_only_alone() {
        let choice = EncryptionChoice { no_encrypt: true, ..Default::default() };
        assert!(matches!(choice.resolve_with(None).unwrap(), Encryption::None));
        let both = EncryptionChoice { recipients: vec![RECIPIENT.into()], ..choice };
        assert_eq!(both.resolve_with(None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn recipients_and_recipients_files_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path(), "r", &format!("# ops\n{RECIPIENT}\n\n{RECIPIENT}\n"));
        let choice = EncryptionChoice { recipients: vec![RECIPIENT.into()], recipients_files: vec![file], ..Default::default() };
        assert!(matches!(choice.resolve_with(None).unwrap(), Encryption::Recipients(l) if l.len() == 3));
        let bad = EncryptionChoice { recipients: vec!["age1nope".into()], ..Default::default() };
        assert_eq!(bad.resolve_with(None).unwrap_err().exit_code(), 6);
    }

    #[test]
    fn passphrase_file_takes_the_work_factor_override() {
        let dir = tempfile::tempdir().unwrap();
        let choice = EncryptionChoice { passphrase_file: Some(private_file(dir.path(), "p", "secret\n")), ..Default::default() };
        for (env, expected) in [(None, None), (Some("10"), Some(10)), (Some("ten"), None)] {
            let enc = choice.resolve_with(env).unwrap();
            assert!(matches!(enc, Encryption::Passphrase { work_factor, .. } if work_factor == expected), "{env:?}");
        }
        let both = EncryptionChoice { recipients: vec![RECIPIENT.into()], ..choice };
        assert_eq!(both.resolve_with(None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn decryption_choice_reads_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let id_file = private_file(dir.path(), "id", &format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&id.to_string())));
        let pass = private_file(dir.path(), "p", "secret\n");
        let choice = DecryptionChoice { identities: vec![id_file], passphrase_file: Some(pass), allow_plaintext: true };
        let keys = choice.resolve().unwrap();
        assert!(keys.allow_plaintext && keys.has_keys());
        assert_eq!((keys.identities.len(), keys.sources.len()), (1, 2));
        assert!(!DecryptionChoice::default().resolve().unwrap().has_keys());
    }

    #[test]
    fn decryption_choice_refuses_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = private_file(dir.path(), "id", "AGE-SECRET-KEY-1\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let Err(e) = DecryptionChoice { identities: vec![p], ..Default::default() }.resolve() else { panic!("a key others can read was accepted") };
        assert_eq!(e.exit_code(), 6);
    }
}
