//! Control-plane snapshots: etcd's own snapshot through its maintenance API, checksummed,
//! optionally encrypted, kept with retention in a store (a directory, or an S3-compatible
//! object store: [`crate::store`]); and a restore that brings a fresh
//! etcd data directory up from one (`etcdutl snapshot restore`, with the revision bump etcd's
//! restore guide asks for so that the old cluster's watchers and caches see time move forward).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use k8s_openapi::jiff::Timestamp;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    Error,
    rules::durations,
    store::{S3Args, Store, io_error, write_atomically},
};

/// Where etcd is and how to reach it.
#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd's client URL.
    #[arg(long, env = "YIYUN_ETCD_ENDPOINT", default_value = "https://127.0.0.1:2379")]
    pub etcd_endpoint: String,
    /// The CA that signed etcd's serving certificate.
    #[arg(long, env = "YIYUN_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate etcd accepts, and its key.
    #[arg(long, env = "YIYUN_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, env = "YIYUN_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

/// `yiyun dr snapshot`.
#[derive(clap::Args, Clone, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Where the snapshots are kept: a directory, or `s3://BUCKET/PREFIX` in an S3-compatible
    /// object store (see the `--s3-*` options).
    #[arg(long, env = "YIYUN_SNAPSHOT_STORE", default_value = "/var/lib/yiyun/etcd-snapshots")]
    pub store: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// How many snapshots are kept; the oldest beyond that are deleted after each new one.
    #[arg(long, default_value_t = 24)]
    pub keep: usize,
    /// A file holding a 256-bit key as 64 hexadecimal digits: snapshots are encrypted with
    /// AES-256-GCM. Keep the key apart from the snapshots.
    #[arg(long, env = "YIYUN_SNAPSHOT_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Take one every so often (e.g. `1h`) until stopped; once when left out.
    #[arg(long)]
    pub every: Option<String>,
}

/// `yiyun dr restore-snapshot`.
#[derive(clap::Args, Clone, Debug)]
pub struct RestoreArgs {
    /// The snapshot: a file, or `s3://BUCKET/PREFIX/FILE` (its manifest, `FILE.json`, beside
    /// it either way).
    pub snapshot: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// The new etcd data directory (must not exist yet).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The restored member's name and peer URL (what the new etcd is started with).
    #[arg(long, default_value = "default")]
    pub name: String,
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub peer_url: String,
    /// The key the snapshot was encrypted with, if it was.
    #[arg(long, env = "YIYUN_SNAPSHOT_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// etcd's offline tool (`e2e/build-binaries.sh` builds it).
    #[arg(long, env = "YIYUN_ETCDUTL", default_value = "etcdutl")]
    pub etcdutl: PathBuf,
    /// Added to the snapshot's revision: more than the writes made after the snapshot, so that
    /// nothing that watched the old cluster takes the restored one for older.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub bump_revision: u64,
}

/// What is known of a snapshot, kept beside it as `FILE.json` (written last: a snapshot
/// without one is incomplete).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub file: String,
    pub created: String,
    /// etcd's revision when the snapshot began.
    pub revision: i64,
    pub etcd_version: String,
    /// Bytes of the snapshot itself (before encryption).
    pub bytes: u64,
    /// SHA-256 of the snapshot itself, hexadecimal.
    pub sha256: String,
    pub encrypted: bool,
}

/// Takes a snapshot now, and every `--every` until `shutdown` when that is given; each one is
/// reported by `report`.
pub async fn snapshots(
    args: &SnapshotArgs,
    shutdown: CancellationToken,
    report: impl Fn(&Manifest),
) -> Result<(), Error> {
    let every = args.every.as_deref().map(durations::parse).transpose().map_err(Error::Snapshot)?;
    let key = args.encryption_key_file.as_deref().map(read_key).transpose()?;
    let store = Store::at(&args.store, &args.s3)?;
    loop {
        let manifest = take(args, &store, key.as_ref()).await?;
        report(&manifest);
        let Some(every) = every else { return Ok(()) };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
        }
    }
}

async fn connect(etcd: &EtcdArgs) -> Result<Client, Error> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &etcd.etcd_ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&etcd.etcd_cert, &etcd.etcd_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    let options = etcd.etcd_endpoint.starts_with("https://").then(|| ConnectOptions::new().with_tls(tls));
    Client::connect([etcd.etcd_endpoint.as_str()], options).await.map_err(etcd_error)
}

async fn take(args: &SnapshotArgs, store: &Store, key: Option<&LessSafeKey>) -> Result<Manifest, Error> {
    let mut client = connect(&args.etcd).await?;
    let status = client.status().await.map_err(etcd_error)?;
    let revision = status.header().map_or(0, |h| h.revision());
    let mut stream = client.snapshot().await.map_err(etcd_error)?;
    let mut snapshot = Vec::new();
    while let Some(part) = stream.message().await.map_err(etcd_error)? {
        snapshot.extend_from_slice(part.blob());
    }
    if snapshot.is_empty() {
        return Err(Error::Snapshot("etcd sent an empty snapshot".into()));
    }
    let created = Timestamp::now();
    let stem = format!("etcd-{}-r{revision}", created.strftime("%Y%m%dT%H%M%SZ"));
    let file = if key.is_some() { format!("{stem}.db.enc") } else { format!("{stem}.db") };
    let manifest = Manifest {
        file: file.clone(),
        created: created.to_string(),
        revision,
        etcd_version: status.version().to_string(),
        bytes: snapshot.len() as u64,
        sha256: hex(digest(&SHA256, &snapshot).as_ref()),
        encrypted: key.is_some(),
    };
    let contents = match key {
        Some(key) => seal(key, snapshot)?,
        None => snapshot,
    };
    store.put(&file, contents).await?;
    let text = serde_json::to_vec_pretty(&manifest).map_err(|err| Error::Snapshot(err.to_string()))?;
    store.put(&format!("{file}.json"), text).await?;
    info!(snapshot = store.describe(&file), revision, bytes = manifest.bytes, "etcd snapshot taken");
    prune(store, args.keep).await?;
    Ok(manifest)
}

/// The snapshots of `store`, oldest first (those with a manifest).
pub async fn list(store: &Store) -> Result<Vec<Manifest>, Error> {
    let mut manifests = Vec::new();
    for name in store.names().await?.iter().filter(|name| name.ends_with(".json")) {
        match serde_json::from_slice::<Manifest>(&store.get(name).await?) {
            Ok(manifest) => manifests.push(manifest),
            Err(err) => warn!(manifest = store.describe(name), %err, "not a snapshot manifest: skipped"),
        }
    }
    manifests.sort_by(|a, b| (&a.created, a.revision).cmp(&(&b.created, b.revision)));
    Ok(manifests)
}

/// Deletes all but the newest `keep` snapshots (manifest first, so an interrupted prune
/// leaves no manifest pointing at nothing).
async fn prune(store: &Store, keep: usize) -> Result<(), Error> {
    let manifests = list(store).await?;
    let excess = manifests.len().saturating_sub(keep.max(1));
    for old in &manifests[..excess] {
        store.delete(&format!("{}.json", old.file)).await?;
        if let Err(err) = store.delete(&old.file).await {
            warn!(snapshot = store.describe(&old.file), error = %err, "cannot delete an old snapshot");
        }
        info!(snapshot = store.describe(&old.file), "old snapshot deleted (retention)");
    }
    Ok(())
}

/// The store a snapshot's location is in, and its name there.
fn located(snapshot: &str, s3: &S3Args) -> Result<(Store, String), Error> {
    let (within, name) = snapshot.rsplit_once('/').unwrap_or((".", snapshot));
    // `s3://BUCKET` alone names a bucket, not a snapshot in it.
    if name.is_empty() || within == "s3:/" {
        return Err(Error::Snapshot(format!(
            "{snapshot}: name the snapshot itself (a file, or s3://BUCKET/PREFIX/FILE)"
        )));
    }
    let within = if within.is_empty() { "/" } else { within };
    Ok((Store::at(within, s3)?, name.to_string()))
}

/// Checks a snapshot against its manifest, decrypts it if need be, and restores it into a new
/// data directory with etcdutl. Returns what it did.
pub async fn restore(args: &RestoreArgs) -> Result<String, Error> {
    let (store, name) = located(&args.snapshot, &args.s3)?;
    let manifest_name = format!("{name}.json");
    let manifest: Manifest = serde_json::from_slice(&store.get(&manifest_name).await?).map_err(|err| {
        Error::Snapshot(format!("{}: not a snapshot manifest: {err}", store.describe(&manifest_name)))
    })?;
    let contents = store.get(&name).await?;
    let snapshot = match (manifest.encrypted, &args.encryption_key_file) {
        (false, _) => contents,
        (true, Some(key)) => open(&read_key(key)?, contents)?,
        (true, None) => {
            return Err(Error::Snapshot("the snapshot is encrypted: give --encryption-key-file".into()));
        }
    };
    let sha256 = hex(digest(&SHA256, &snapshot).as_ref());
    if sha256 != manifest.sha256 {
        return Err(Error::Snapshot(format!(
            "{}: checksum mismatch (SHA-256 {sha256}, the manifest says {}): the snapshot is damaged",
            args.snapshot, manifest.sha256
        )));
    }
    if args.data_dir.exists() {
        return Err(Error::Snapshot(format!(
            "{} exists: restore into a new data directory",
            args.data_dir.display()
        )));
    }
    let parent = args.data_dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|err| io_error(parent, err))?;
    let plain = parent.join(format!(".{}.restoring", manifest.file));
    write_atomically(&plain, &snapshot)?;
    let output = tokio::process::Command::new(&args.etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(&plain)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .args(["--name", &args.name])
        .args(["--initial-cluster", &format!("{}={}", args.name, args.peer_url)])
        .args(["--initial-advertise-peer-urls", &args.peer_url])
        .args(["--bump-revision", &args.bump_revision.to_string(), "--mark-compacted"])
        .output()
        .await;
    let _ = std::fs::remove_file(&plain);
    let output =
        output.map_err(|err| Error::Snapshot(format!("cannot run {}: {err}", args.etcdutl.display())))?;
    if !output.status.success() {
        return Err(Error::Snapshot(format!(
            "etcdutl snapshot restore failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(format!(
        "restored {} (revision {}, taken {}) into {}; revisions bumped by {}: start etcd there with --name {} and peer URL {}\n",
        manifest.file,
        manifest.revision,
        manifest.created,
        args.data_dir.display(),
        args.bump_revision,
        args.name,
        args.peer_url
    ))
}

/// The key of a key file: 64 hexadecimal digits.
fn read_key(path: &Path) -> Result<LessSafeKey, Error> {
    let text = String::from_utf8(read(path)?).unwrap_or_default();
    let bytes = unhex(text.trim()).filter(|b| b.len() == 32).ok_or_else(|| {
        Error::Snapshot(format!("{}: a snapshot key is 64 hexadecimal digits (256 bits)", path.display()))
    })?;
    let key =
        UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| Error::Snapshot("not an AES-256 key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// AES-256-GCM with a random nonce, written before the ciphertext.
fn seal(key: &LessSafeKey, mut plain: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| Error::Snapshot("no randomness for a nonce".into()))?;
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut plain)
        .map_err(|_| Error::Snapshot("encryption failed".into()))?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&plain);
    Ok(sealed)
}

fn open(key: &LessSafeKey, sealed: Vec<u8>) -> Result<Vec<u8>, Error> {
    let wrong =
        || Error::Snapshot("the snapshot does not decrypt with this key (wrong key, or damaged)".into());
    if sealed.len() < NONCE_LEN {
        return Err(wrong());
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
    let mut body = body.to_vec();
    let plain = key.open_in_place(nonce, Aad::empty(), &mut body).map_err(|_| wrong())?;
    Ok(plain.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| io_error(path, err))
}

fn etcd_error(err: etcd_client::Error) -> Error {
    Error::Snapshot(format!("etcd: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap())
    }

    #[test]
    fn sealed_snapshots_open_with_their_key_only() {
        let plain = b"etcd snapshot bytes".to_vec();
        let sealed = seal(&key(), plain.clone()).unwrap();
        assert!(!sealed.windows(plain.len()).any(|w| w == plain.as_slice()), "no clear text");
        assert_eq!(open(&key(), sealed.clone()).unwrap(), plain);
        let other = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[8u8; 32]).unwrap());
        assert!(open(&other, sealed.clone()).is_err());
        let mut damaged = sealed;
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(open(&key(), damaged).is_err());
    }

    #[test]
    fn a_snapshot_is_found_in_its_store_by_its_location() {
        let s3 = S3Args {
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_access_key: Some("key".into()),
            s3_secret_key: Some("secret".into()),
            ..S3Args::default()
        };
        let (store, name) = located("s3://dr/hefei/etcd-1.db", &s3).unwrap();
        assert_eq!((store.describe(&name), name.as_str()), ("s3://dr/hefei/etcd-1.db".into(), "etcd-1.db"));
        let (store, name) = located("snapshots/etcd-1.db", &s3).unwrap();
        assert_eq!(store.describe(&name), "snapshots/etcd-1.db");
        assert_eq!(located("etcd-1.db", &s3).unwrap().1, "etcd-1.db");
        assert!(located("s3://dr", &s3).is_err(), "a bucket is not a snapshot");
        assert!(located("snapshots/", &s3).is_err());
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not() {
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[tokio::test]
    async fn retention_keeps_the_newest() {
        let store = std::env::temp_dir().join(format!("yiyun-snapshots-{}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        for second in 0..4 {
            let file = format!("etcd-2026113{second}-r{second}.db");
            std::fs::write(store.join(&file), b"x").unwrap();
            let manifest = Manifest {
                file: file.clone(),
                created: format!("2026-11-30T00:00:0{second}Z"),
                revision: second,
                etcd_version: "3.6.16".into(),
                bytes: 1,
                sha256: String::new(),
                encrypted: false,
            };
            std::fs::write(store.join(format!("{file}.json")), serde_json::to_vec(&manifest).unwrap())
                .unwrap();
        }
        let kept_in = Store::Directory(store.clone());
        prune(&kept_in, 2).await.unwrap();
        let kept: Vec<i64> = list(&kept_in).await.unwrap().iter().map(|m| m.revision).collect();
        assert_eq!(kept, [2, 3]);
        assert!(!store.join("etcd-20261130-r0.db").exists());
        std::fs::remove_dir_all(&store).unwrap();
    }
}
