//! `inspect`: the manifest of an archive, read from its head alone.

use std::io::Read;

use crate::archive::format::Manifest;
use crate::archive::{read, Decryption};
use crate::error::Result;

/// Reads the manifest from the head of an archive, without reading the rest.
pub fn inspect(input: impl Read, keys: &Decryption) -> Result<Manifest> {
    read::read_manifest(input, keys)
}
