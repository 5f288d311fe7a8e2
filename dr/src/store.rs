//! Where snapshots are kept: a directory (the default), or an S3-compatible object store
//! (`s3://BUCKET/PREFIX`: AWS S3, MinIO, Ceph RGW, or a provincial cloud's own object storage).
//! Either way an object is written whole or not at all: a directory store writes beside the
//! file and renames it; an object store makes a PUT visible only once it has all of it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle, actions::ListObjectsV2};

use crate::Error;

/// How an S3-compatible store is reached (used when `--store` is an `s3://` URL).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct S3Args {
    /// The object store's URL (e.g. `https://s3.cn-north-1.amazonaws.com.cn`,
    /// `https://minio.dr.example.gov.cn:9000`).
    #[arg(long, env = "YIYUN_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The region the bucket is in (MinIO and most private stores accept the default).
    #[arg(long, env = "YIYUN_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Address buckets as `BUCKET.HOST` rather than `HOST/BUCKET` (path style, what MinIO and
    /// most private stores expect).
    #[arg(long)]
    pub s3_virtual_host: bool,
    /// A CA certificate (PEM) the store's certificate is signed by, besides the system's.
    #[arg(long, env = "YIYUN_S3_CA")]
    pub s3_ca: Option<PathBuf>,
    /// The access key (AWS's own variable names, as every S3 tool reads them).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
}

/// A place snapshots are kept in.
pub enum Store {
    Directory(PathBuf),
    Objects(Box<ObjectStore>),
}

/// A bucket and a prefix in an S3-compatible store.
pub struct ObjectStore {
    bucket: Bucket,
    prefix: String,
    credentials: Credentials,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// How long a signed request stays valid: long enough for a large snapshot to travel.
const SIGNED_FOR: Duration = Duration::from_secs(3_600);

impl Store {
    /// The store at `location`: a directory, or `s3://BUCKET[/PREFIX]` reached as `s3` says.
    pub fn at(location: &str, s3: &S3Args) -> Result<Store, Error> {
        let Some(rest) = location.strip_prefix("s3://") else {
            return Ok(Store::Directory(PathBuf::from(location)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Snapshot(format!(
                "{location}: an object store location is s3://BUCKET/PREFIX"
            )));
        }
        let endpoint = s3.s3_endpoint.as_deref().ok_or_else(|| {
            Error::Snapshot(format!("{location} is in an object store: give its URL with --s3-endpoint"))
        })?;
        let endpoint = endpoint
            .parse()
            .map_err(|err| Error::Snapshot(format!("--s3-endpoint {endpoint:?} is not a URL: {err}")))?;
        let style = if s3.s3_virtual_host { UrlStyle::VirtualHost } else { UrlStyle::Path };
        let bucket = Bucket::new(endpoint, style, bucket.to_string(), s3.s3_region.clone())
            .map_err(|err| Error::Snapshot(format!("bucket {bucket}: {err}")))?;
        let (Some(key), Some(secret)) = (&s3.s3_access_key, &s3.s3_secret_key) else {
            return Err(Error::Snapshot(
                "an object store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        };
        Ok(Store::Objects(Box::new(ObjectStore {
            bucket,
            prefix: prefix.trim_matches('/').to_string(),
            credentials: Credentials::new(key.clone(), secret.clone()),
            http: http_client(s3.s3_ca.as_deref())?,
        })))
    }

    /// Where `name` is, as a person would write it.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Store::Directory(dir) => dir.join(name).display().to_string(),
            Store::Objects(store) => format!("s3://{}/{}", store.bucket.name(), store.key(name)),
        }
    }

    pub async fn put(&self, name: &str, contents: Vec<u8>) -> Result<(), Error> {
        match self {
            Store::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|err| io_error(dir, err))?;
                write_atomically(&dir.join(name), &contents)
            }
            Store::Objects(store) => {
                let url = store
                    .bucket
                    .put_object(Some(&store.credentials), &store.key(name))
                    .sign(SIGNED_FOR)
                    .to_string();
                store.call(hyper::Method::PUT, url, contents, &self.describe(name)).await.map(drop)
            }
        }
    }

    pub async fn get(&self, name: &str) -> Result<Vec<u8>, Error> {
        match self {
            Store::Directory(dir) => {
                let path = dir.join(name);
                std::fs::read(&path).map_err(|err| io_error(&path, err))
            }
            Store::Objects(store) => {
                let url = store
                    .bucket
                    .get_object(Some(&store.credentials), &store.key(name))
                    .sign(SIGNED_FOR)
                    .to_string();
                store.call(hyper::Method::GET, url, Vec::new(), &self.describe(name)).await
            }
        }
    }

    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        match self {
            Store::Directory(dir) => {
                let path = dir.join(name);
                std::fs::remove_file(&path).map_err(|err| io_error(&path, err))
            }
            Store::Objects(store) => {
                let url = store
                    .bucket
                    .delete_object(Some(&store.credentials), &store.key(name))
                    .sign(SIGNED_FOR)
                    .to_string();
                store.call(hyper::Method::DELETE, url, Vec::new(), &self.describe(name)).await.map(drop)
            }
        }
    }

    /// The names of everything in the store (none when a directory does not exist yet).
    pub async fn names(&self) -> Result<Vec<String>, Error> {
        match self {
            Store::Directory(dir) => match std::fs::read_dir(dir) {
                Ok(entries) => Ok(entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| !name.starts_with('.'))
                    .collect()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(err) => Err(io_error(dir, err)),
            },
            Store::Objects(store) => store.names().await,
        }
    }
}

impl ObjectStore {
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) }
    }

    /// One signed request; the body of a 2xx answer, else the store's own words.
    async fn call(
        &self,
        method: hyper::Method,
        url: String,
        body: Vec<u8>,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let request = hyper::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| Error::Snapshot(format!("{what}: {err}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|err| Error::Snapshot(format!("{method} {what}: the object store: {err}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| Error::Snapshot(format!("{method} {what}: {err}")))?
            .to_bytes()
            .to_vec();
        if !status.is_success() {
            return Err(Error::Snapshot(format!(
                "{method} {what}: the object store answered {status}: {}",
                store_message(&body)
            )));
        }
        Ok(body)
    }

    /// Every name under the prefix, page by page.
    async fn names(&self) -> Result<Vec<String>, Error> {
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            if !prefix.is_empty() {
                action.with_prefix(prefix.as_str());
            }
            if let Some(token) = &token {
                action.with_continuation_token(token.as_str());
            }
            let url = action.sign(SIGNED_FOR).to_string();
            let what = format!("s3://{}/{prefix}", self.bucket.name());
            let body = self.call(hyper::Method::GET, url, Vec::new(), &what).await?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|err| Error::Snapshot(format!("listing {what}: {err}")))?;
            names.extend(
                page.contents
                    .iter()
                    .filter_map(|object| object.key.strip_prefix(prefix.as_str()))
                    .filter(|name| !name.contains('/'))
                    .map(String::from),
            );
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(names),
            }
        }
    }
}

/// The `<Message>` of an S3 error document, or the body as it is.
fn store_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let between = text.split_once("<Message>").and_then(|(_, rest)| rest.split_once("</Message>"));
    between.map_or_else(|| text.trim().chars().take(300).collect(), |(message, _)| message.to_string())
}

/// HTTPS (the system's CAs, and `ca` when given) and plain HTTP for a store inside the site.
fn http_client(ca: Option<&Path>) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|err| Error::Snapshot(format!("--s3-ca {}: {err}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|err| Error::Snapshot(format!("--s3-ca {}: {err}", ca.display())))?;
            roots.add(cert).map_err(|err| Error::Snapshot(format!("--s3-ca {}: {err}", ca.display())))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Snapshot(format!("TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Writes to a hidden temporary file beside `path` (which [`Store::names`] skips), then renames:
/// a crash leaves the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&temporary, contents).map_err(|err| io_error(&temporary, err))?;
    std::fs::rename(&temporary, path).map_err(|err| io_error(path, err))
}

pub(crate) fn io_error(path: &Path, err: std::io::Error) -> Error {
    Error::Snapshot(format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> S3Args {
        S3Args {
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_access_key: Some("key".into()),
            s3_secret_key: Some("secret".into()),
            s3_region: "us-east-1".into(),
            ..S3Args::default()
        }
    }

    #[test]
    fn locations_name_a_directory_or_a_bucket_and_prefix() {
        let Store::Objects(store) = Store::at("s3://dr-snapshots/hefei/etcd/", &s3()).unwrap() else {
            panic!("an object store")
        };
        assert_eq!(store.key("a.db"), "hefei/etcd/a.db");
        assert_eq!(Store::at("s3://dr-snapshots", &s3()).unwrap().describe("a.db"), "s3://dr-snapshots/a.db");
        assert!(matches!(Store::at("/var/lib/snapshots", &s3()).unwrap(), Store::Directory(_)));
    }

    #[test]
    fn an_object_store_without_what_it_needs_says_what_is_missing() {
        let message = |location: &str, args: S3Args| match Store::at(location, &args) {
            Err(Error::Snapshot(message)) => message,
            _ => panic!("refused"),
        };
        assert!(message("s3://", s3()).contains("s3://BUCKET/PREFIX"));
        let no_endpoint = S3Args { s3_endpoint: None, ..s3() };
        assert!(message("s3://b", no_endpoint).contains("--s3-endpoint"));
        let no_key = S3Args { s3_access_key: None, ..s3() };
        assert!(message("s3://b", no_key).contains("AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn the_store_s_own_words_are_shown() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(store_message(body), "The specified bucket does not exist");
        assert_eq!(store_message(b"  teapot "), "teapot");
    }
}
