//! The archive: one tar stream (manifest first, surfaces, index last), zstd, age.
//! docs/FORMAT.md is the reference; decisions/D-02-archive-format.md says why.
//!
//! [`format`] is the manifest and index, [`write`] and [`read`] the streams, [`crypto`]
//! the age and zstd layers, [`location`] where an archive is (file, stdin/stdout, S3),
//! [`folder`] a directory or prefix of archives, [`s3`] object storage, [`pattern`] the
//! path patterns of `ls` and `extract`.

pub(crate) mod catalog;
pub(crate) mod chain;
pub(crate) mod crypto;
pub(crate) mod folder;
pub(crate) mod format;
pub(crate) mod location;
pub(crate) mod pattern;
pub(crate) mod ranged;
pub(crate) mod read;
pub(crate) mod s3;
pub(crate) mod trailer;
pub(crate) mod tree_reader;
pub(crate) mod write;

pub use chain::{Ancestors, Since};
pub use crypto::{Decryption, DecryptionChoice, Encryption, EncryptionChoice};
pub use folder::{Folder, Listed, Summary};
pub use format::{
    Consistency, LeftOut, Manifest, ManifestService, ManifestSurface, ParentRecord, SelectionRecord, Warning, ARCHIVE_FORMAT, INCREMENTAL_FORMAT,
};
pub use location::{Extent, Location};
pub use pattern::PathPatterns;
pub use ranged::ParentFetch;
pub use s3::{BytesPerSec, S3Config, S3Object, S3Prefix};
pub use write::Compression;
