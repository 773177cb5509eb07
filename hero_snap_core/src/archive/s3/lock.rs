//! History a compromised host cannot erase (decisions/D-14): the object lock a backup puts
//! on its archive, and `prune`'s delete of an archive: every version of it in a versioned
//! bucket (a plain delete there only hides it behind a delete marker), or "kept, locked
//! until ..." while the store's lock holds it.

use serde::Deserialize;

use super::multipart::{bucket_url, enc, send_for, PATH, QUERY_VALUE};
use super::transport::ObjectLock;
use super::{S3Object, Store};
use crate::error::{Error, Result};

/// What deleting an archive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// The archive is gone (every version of it).
    Gone,
    /// The store refused: its object lock holds the archive until this time (RFC 3339).
    Locked(String),
}

/// The lock of an archive written now, held for `days`.
pub(super) fn lock_for(days: u32) -> Result<ObjectLock> {
    let until = time::OffsetDateTime::now_utc() + time::Duration::days(days.into());
    let until = until
        .format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .map_err(|e| Error::Usage(format!("--s3-object-lock {days}: no date {days} days from now ({e})")))?;
    Ok(ObjectLock { mode: "COMPLIANCE", until })
}

/// One child of a ListObjectVersions reply. Versions and delete markers come interleaved
/// (by key, newest first), so they are read as one sequence.
#[derive(Debug, Deserialize)]
enum Child {
    IsTruncated(bool),
    NextKeyMarker(String),
    NextVersionIdMarker(String),
    Version(VersionEntry),
    DeleteMarker(VersionEntry),
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct VersionEntry {
    key: String,
    version_id: String,
}

#[derive(Debug, Default, Deserialize)]
struct VersionsReply {
    #[serde(rename = "$value", default)]
    children: Vec<Child>,
}

/// The version ids of exactly `obj`'s key: its versions first, then its delete markers.
async fn versions(store: &Store, obj: &S3Object) -> Result<Vec<String>> {
    let (mut found, mut markers) = (Vec::new(), Vec::new());
    let mut after: Option<(String, String)> = None;
    loop {
        let prefix = enc(&obj.key, QUERY_VALUE);
        let query = match &after {
            None => format!("prefix={prefix}&versions="),
            Some((k, v)) => format!("key-marker={}&prefix={prefix}&version-id-marker={}&versions=", enc(k, QUERY_VALUE), enc(v, QUERY_VALUE)),
        };
        let url = format!("{}?{query}", bucket_url(store));
        let body = send_for(store, obj, http::Method::GET, url, "listing the archive's versions", None).await?;
        let page: VersionsReply =
            quick_xml::de::from_str(&body).map_err(|e| Error::storage_caused(format!("{}: unreadable list of versions: {e}", obj.url()), e))?;
        let (mut truncated, mut next) = (false, (String::new(), String::new()));
        for child in page.children {
            match child {
                Child::IsTruncated(t) => truncated = t,
                Child::NextKeyMarker(k) => next.0 = k,
                Child::NextVersionIdMarker(v) => next.1 = v,
                Child::Version(v) if v.key == obj.key => found.push(v.version_id),
                Child::DeleteMarker(v) if v.key == obj.key => markers.push(v.version_id),
                _ => {}
            }
        }
        // An empty marker would ask for the first page again.
        if !truncated || next.0.is_empty() {
            found.append(&mut markers);
            return Ok(found);
        }
        after = Some(next);
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Retention {
    retain_until_date: String,
}

/// When the store's lock on `obj` (this version) ends, if it has not ended yet.
async fn locked_until(store: &Store, obj: &S3Object, version: Option<&str>) -> Option<String> {
    let mut url = format!("{}{}?retention=", bucket_url(store), enc(&obj.key, PATH));
    if let Some(v) = version {
        url.push_str(&format!("&versionId={}", enc(v, QUERY_VALUE)));
    }
    // No lock configuration, no retention on the object, or no right to read it: not locked.
    let body = send_for(store, obj, http::Method::GET, url, "reading the archive's retention", None).await.ok()?;
    let until = quick_xml::de::from_str::<Retention>(&body).ok()?.retain_until_date;
    let t = time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339).ok()?;
    (t > time::OffsetDateTime::now_utc()).then_some(until)
}

/// Makes sure the archive just completed is locked. The lock headers went with the request
/// that created it, but some stores ignore them on CreateMultipartUpload (Ceph RGW 16):
/// then the retention is set now (PutObjectRetention), and the object was unlocked for as
/// long as that one request took. A store that takes neither fails the backup.
pub(super) async fn ensure_locked(store: &Store, obj: &S3Object, lock: &ObjectLock) -> Result<()> {
    if locked_until(store, obj, None).await.is_some() {
        return Ok(());
    }
    let url = format!("{}{}?retention=", bucket_url(store), enc(&obj.key, PATH));
    let body = format!("<Retention><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>", lock.mode, lock.until);
    let action = "locking the uploaded archive (it is stored, but not locked; check that the bucket has object lock enabled)";
    send_for(store, obj, http::Method::PUT, url, action, Some(body)).await?;
    match locked_until(store, obj, None).await {
        Some(_) => Ok(()),
        None => Err(Error::storage(format!(
            "{}: the archive is stored but the storage did not lock it; check that bucket `{}` has object lock enabled, or back up without --s3-object-lock",
            obj.url(),
            obj.bucket
        ))),
    }
}

/// Deletes the archive: in a versioned bucket every version of its key (by version id, so
/// that it is gone and not only hidden), else the object. An archive the store's object
/// lock still holds is [`Deleted::Locked`]; a delete the credentials may not do is an
/// error naming the archive.
pub(crate) fn delete(obj: &S3Object) -> Result<Deleted> {
    let store = Store::get(obj)?;
    let ids = match store.block_on(versions(&store, obj)) {
        Ok(ids) => ids,
        // Keys that may not list versions may not delete them either: the delete says so.
        Err(e) if e.to_string().contains("access denied") => Vec::new(),
        Err(e) => return Err(e),
    };
    // An unversioned bucket lists its object as version `null`: a plain delete removes it.
    let ids: Vec<Option<String>> = if ids.iter().all(|v| v.is_empty() || v == "null") { vec![None] } else { ids.into_iter().map(Some).collect() };
    for id in &ids {
        let done = match id {
            Some(v) => store.block_on(async { store.op.delete_with(&obj.key).version(v).await }),
            None => store.block_on(store.op.delete(&obj.key)),
        };
        if let Err(e) = done {
            return refused(&store, obj, id.as_deref(), e);
        }
    }
    Ok(Deleted::Gone)
}

/// Why a delete failed: the object lock (the archive is kept), the credentials, or else.
fn refused(store: &Store, obj: &S3Object, version: Option<&str>, e: opendal::Error) -> Result<Deleted> {
    if e.kind() != opendal::ErrorKind::PermissionDenied && !e.to_string().contains("AccessDenied") {
        return Err(store.error(obj, "deleting the archive", e));
    }
    if let Some(until) = store.block_on(locked_until(store, obj, version)) {
        return Ok(Deleted::Locked(until));
    }
    let right = if version.is_some() { "s3:DeleteObjectVersion" } else { "s3:DeleteObject" };
    Err(Error::storage_caused(
        format!(
            "{}: the storage denies deletes ({right}) to these credentials, so prune stopped here; \
             prune with credentials that may delete (the bucket owner's, on a host other than the one that backs up: docs/DEPLOYMENT.md), \
             or lift the deny in the bucket policy",
            obj.url()
        ),
        e,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented reply: versions and delete markers interleaved, other keys between.
    #[test]
    fn version_listings_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01">
  <Name>bucket</Name><Prefix>d/a.hsnap</Prefix><KeyMarker></KeyMarker><VersionIdMarker></VersionIdMarker><MaxKeys>5</MaxKeys>
  <IsTruncated>true</IsTruncated><NextKeyMarker>d/a.hsnap.x</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker>
  <DeleteMarker><Key>d/a.hsnap</Key><VersionId>m1</VersionId><IsLatest>true</IsLatest><LastModified>2009-11-12T17:50:30.000Z</LastModified></DeleteMarker>
  <Version><Key>d/a.hsnap</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><ETag>"fba9dede5f27731c9771645a39863328"</ETag><Size>434234</Size><StorageClass>STANDARD</StorageClass>
    <Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>mtd@amazon.com</DisplayName></Owner></Version>
  <Version><Key>d/a.hsnap</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest></Version>
  <Version><Key>d/a.hsnap.x</Key><VersionId>v9</VersionId></Version>
</ListVersionsResult>"#;
        let page: VersionsReply = quick_xml::de::from_str(xml).unwrap();
        let mut got = Vec::new();
        for c in page.children {
            match c {
                Child::IsTruncated(t) => got.push(format!("truncated {t}")),
                Child::NextKeyMarker(k) => got.push(format!("next {k}")),
                Child::Version(v) => got.push(format!("version {} {}", v.key, v.version_id)),
                Child::DeleteMarker(v) => got.push(format!("marker {} {}", v.key, v.version_id)),
                _ => {}
            }
        }
        let want = ["truncated true", "next d/a.hsnap.x", "marker d/a.hsnap m1", "version d/a.hsnap v2", "version d/a.hsnap v1", "version d/a.hsnap.x v9"];
        assert_eq!(got, want);
        let empty: VersionsReply = quick_xml::de::from_str("<ListVersionsResult><Name>b</Name><IsTruncated>false</IsTruncated></ListVersionsResult>").unwrap();
        assert!(matches!(empty.children.as_slice(), [Child::Other, Child::IsTruncated(false)]));
    }

    #[test]
    fn locks_end_days_from_now_in_compliance_mode() {
        let lock = lock_for(30).unwrap();
        assert_eq!(lock.mode, "COMPLIANCE");
        let until = time::OffsetDateTime::parse(&lock.until, &time::format_description::well_known::Rfc3339).unwrap();
        let days = (until - time::OffsetDateTime::now_utc()).whole_hours();
        assert!((719..=720).contains(&days), "{}", lock.until);
        assert!(lock.until.ends_with('Z') && !lock.until.contains('.'), "{}", lock.until);
        let r: Retention =
            quick_xml::de::from_str("<Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>2030-01-01T00:00:00.000Z</RetainUntilDate></Retention>").unwrap();
        assert_eq!(r.retain_until_date, "2030-01-01T00:00:00.000Z");
    }
}
