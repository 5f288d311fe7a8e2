//! Control-plane snapshots: `yiyun dr snapshot` takes etcd's snapshot of the DR primary through
//! its maintenance API (encrypted, with retention); `yiyun dr restore-snapshot` checks one and
//! restores it into a fresh etcd data directory; a fresh etcd and kube-apiserver started on it
//! serve the tenants and workloads that were there. A damaged snapshot is refused. The same
//! with an S3-compatible object store (MinIO, built from the Go module proxy) as the store.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use serde_json::json;
use yiyun_crds::Tenant;
use yiyun_e2e::{
    LocalCluster, apply_yiyun, cached_binary,
    dr::{DrClusters, deployment},
    eventually, free_port, unique, yiyun_bin,
};

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `yiyun dr snapshot` of `primary`'s etcd (its client certificate) into `store`, keeping two.
fn snapshot_args(primary: &LocalCluster, store: &str) -> Vec<String> {
    let endpoint = format!("https://127.0.0.1:{}", primary.port("ETCD_PORT"));
    let (ca, cert, key) =
        (primary.pki("ca.crt"), primary.pki("etcd-client.crt"), primary.pki("etcd-client.key"));
    let args = ["dr", "snapshot", "--etcd-endpoint", &endpoint, "--etcd-ca", &ca, "--etcd-cert", &cert];
    let args = args.into_iter().chain(["--etcd-key", &key, "--store", store, "--keep", "2"]);
    args.map(String::from).collect()
}

fn yiyun(args: &[&str]) -> (bool, String) {
    let out = Command::new(yiyun_bin()).args(args).output().expect("run yiyun");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// etcd on `data_dir` (plain HTTP on loopback), then a kube-apiserver on it serving with the
/// primary's certificates and admin token; a client of it.
async fn serve_restored(
    primary: &LocalCluster,
    data_dir: &Path,
    name: &str,
    peer_port: u16,
) -> (Process, Process, Client) {
    let client_port = free_port();
    let etcd = Command::new(cached_binary("etcd", "ETCD_VERSION"))
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client_port}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client_port}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
        .args(["--listen-metrics-urls", "", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = Process(etcd);
    let api_port = free_port();
    let pki = |file: &str| primary.pki(file);
    let apiserver = Command::new(cached_binary("kube-apiserver", "KUBERNETES_VERSION"))
        .args(["--etcd-servers", &format!("http://127.0.0.1:{client_port}")])
        .args(["--bind-address", "127.0.0.1", "--secure-port", &api_port.to_string()])
        .args(["--tls-cert-file", &pki("apiserver.crt"), "--tls-private-key-file", &pki("apiserver.key")])
        .args(["--client-ca-file", &pki("ca.crt"), "--token-auth-file", &pki("tokens.csv")])
        .args(["--service-account-issuer", "https://kubernetes.default.svc"])
        .args([
            "--service-account-key-file",
            &pki("sa.pub"),
            "--service-account-signing-key-file",
            &pki("sa.key"),
        ])
        .args([
            "--authorization-mode",
            "RBAC",
            "--service-cluster-ip-range",
            "10.0.0.0/24",
            "--anonymous-auth=false",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kube-apiserver");
    let apiserver = Process(apiserver);
    let token = std::fs::read_to_string(primary.state.join("pki/admin.token")).expect("the admin token");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: r, cluster: {{server: \"https://127.0.0.1:{api_port}\", certificate-authority: \"{}\"}}}}]\n\
         users: [{{name: a, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: r, context: {{cluster: r, user: a}}}}]\ncurrent-context: r\n",
        pki("ca.crt"),
        token.trim()
    );
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("a kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a client configuration");
    let client = Client::try_from(config).expect("a client");
    (etcd, apiserver, client)
}

#[tokio::test]
async fn a_snapshot_restores_into_a_fresh_etcd_that_serves_what_was_there() {
    let clusters = DrClusters::setup().await;
    let primary = &clusters.primary;
    let tenant = unique("dr-snap");
    let object = json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "容灾演练部门", "level": "province", "quota": {"max": {"cpu": "8"}}}
    });
    apply_yiyun::<Tenant>(&clusters.p, &tenant, object).await;
    let ns = clusters.namespace("dr-snap", None).await;
    DrClusters::apply(&clusters.p, &ns, deployment("archive", 1)).await;

    let store = std::env::temp_dir().join(unique("yiyun-snapshots"));
    let key_file = std::env::temp_dir().join(unique("snapshot-key"));
    std::fs::write(&key_file, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
        .expect("a key file");
    let key_arg = key_file.to_str().expect("a path");
    let mut snapshot = snapshot_args(primary, store.to_str().expect("a path"));
    snapshot.extend(["--encryption-key-file".to_string(), key_arg.to_string()]);
    let snapshot: Vec<&str> = snapshot.iter().map(String::as_str).collect();
    for _ in 0..3 {
        let (ok, out) = yiyun(&snapshot);
        assert!(ok, "{out}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Retention: the newest two, each with its manifest; encrypted, so no clear text.
    let mut files: Vec<String> = std::fs::read_dir(&store)
        .expect("the store")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "two snapshots and their manifests: {files:?}");
    let newest = store.join(files.iter().rfind(|f| f.ends_with(".db.enc")).expect("a snapshot"));
    let sealed = std::fs::read(&newest).expect("the snapshot");
    assert!(!sealed.windows(tenant.len()).any(|w| w == tenant.as_bytes()), "the snapshot is encrypted");

    // A damaged copy is refused before anything is restored.
    let damaged = store.join("damaged.db.enc");
    let mut bytes = sealed.clone();
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, bytes).expect("write");
    std::fs::copy(format!("{}.json", newest.display()), format!("{}.json", damaged.display())).expect("copy");
    let data_dir = std::env::temp_dir().join(unique("restored-etcd"));
    let peer_port = free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcdutl = cached_binary("etcdutl", "ETCD_VERSION");
    let etcdutl = etcdutl.to_str().expect("a path");
    let restore = |file: &Path| {
        yiyun(&[
            "dr",
            "restore-snapshot",
            file.to_str().expect("a path"),
            "--data-dir",
            data_dir.to_str().expect("a path"),
            "--name",
            "restored",
            "--peer-url",
            &peer_url,
            "--encryption-key-file",
            key_arg,
            "--etcdutl",
            etcdutl,
        ])
    };
    let (ok, out) = restore(&damaged);
    assert!(!ok && out.contains("does not decrypt"), "{out}");
    assert!(!data_dir.exists());

    let (ok, out) = restore(&newest);
    assert!(ok, "{out}");
    assert!(out.contains("revisions bumped by 1000000000"), "{out}");
    let (_etcd, _apiserver, restored) = serve_restored(primary, &data_dir, "restored", peer_port).await;
    let tenants: Api<Tenant> = Api::all(restored.clone());
    let found = eventually(Duration::from_secs(90), "the restored apiserver serving the tenant", || async {
        tenants.get_opt(&tenant).await.ok().flatten()
    })
    .await;
    assert_eq!(found.spec.display_name, "容灾演练部门");
    let deployments: Api<Deployment> = Api::namespaced(restored, &ns);
    let archive = deployments.get("archive").await.expect("the workload was there");
    assert_eq!(archive.spec.and_then(|s| s.replicas), Some(1));
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// MinIO on a free port with a data directory of its own, killed when dropped.
struct Minio {
    _process: Process,
    endpoint: String,
    user: String,
    password: String,
}

impl Minio {
    async fn start() -> Minio {
        let (port, console) = (free_port(), free_port());
        let data = std::env::temp_dir().join(unique("minio"));
        let (user, password) = ("yiyun-dr".to_string(), format!("{}-secret", unique("minio")));
        let process = Command::new(cached_binary("minio", "MINIO_VERSION"))
            .arg("server")
            .arg(&data)
            .args([
                "--address",
                &format!("127.0.0.1:{port}"),
                "--console-address",
                &format!("127.0.0.1:{console}"),
            ])
            .env("MINIO_ROOT_USER", &user)
            .env("MINIO_ROOT_PASSWORD", &password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start MinIO");
        let minio = Minio {
            _process: Process(process),
            endpoint: format!("http://127.0.0.1:{port}"),
            user,
            password,
        };
        let live = format!("{}/minio/health/live", minio.endpoint);
        eventually(Duration::from_secs(60), "MinIO live", || async {
            let out = Command::new("curl").args(["-sf", "-o", "/dev/null", &live]).status().ok()?;
            out.success().then_some(())
        })
        .await;
        minio
    }

    fn bucket(&self, name: &str) -> rusty_s3::Bucket {
        let endpoint = self.endpoint.parse().expect("a URL");
        rusty_s3::Bucket::new(endpoint, rusty_s3::UrlStyle::Path, name.to_string(), "us-east-1")
            .expect("a bucket")
    }

    fn credentials(&self) -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(self.user.clone(), self.password.clone())
    }

    /// curl of a signed URL: success and the body.
    fn curl(method: &str, url: &str) -> (bool, String) {
        let out = Command::new("curl").args(["-sS", "-f", "-X", method, url]).output().expect("curl");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn create_bucket(&self, name: &str) {
        use rusty_s3::S3Action;
        let (bucket, credentials) = (self.bucket(name), self.credentials());
        let url = bucket.create_bucket(&credentials).sign(Duration::from_secs(60));
        let (ok, out) = Self::curl("PUT", url.as_str());
        assert!(ok, "create bucket {name}: {out}");
    }

    /// The keys under `prefix` in `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        use rusty_s3::S3Action;
        let (bucket, credentials) = (self.bucket(bucket), self.credentials());
        let mut action = bucket.list_objects_v2(Some(&credentials));
        action.with_prefix(prefix);
        let (ok, body) = Self::curl("GET", action.sign(Duration::from_secs(60)).as_str());
        assert!(ok, "list {prefix}: {body}");
        let listed = rusty_s3::actions::ListObjectsV2::parse_response(&body).expect("a listing");
        let mut keys: Vec<String> = listed.contents.into_iter().map(|object| object.key).collect();
        keys.sort();
        keys
    }
}

#[tokio::test]
async fn snapshots_kept_in_an_object_store_restore_alike() {
    let clusters = DrClusters::setup().await;
    let primary = &clusters.primary;
    let tenant = unique("dr-s3");
    let object = json!({
        "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
        "spec": {"displayName": "对象存储备份", "level": "province"}
    });
    apply_yiyun::<Tenant>(&clusters.p, &tenant, object).await;
    let minio = Minio::start().await;
    minio.create_bucket("etcd-snapshots");

    let yiyun_s3 = |args: &[&str], secret: &str| {
        let out = Command::new(yiyun_bin())
            .args(args)
            .args(["--s3-endpoint", &minio.endpoint])
            .env("AWS_ACCESS_KEY_ID", &minio.user)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .expect("run yiyun");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let snapshot = snapshot_args(primary, "s3://etcd-snapshots/hefei/control-plane");
    let snapshot: Vec<&str> = snapshot.iter().map(String::as_str).collect();
    // Wrong credentials: the store's own refusal, nothing kept.
    let (ok, out) = yiyun_s3(&snapshot, "not-the-secret");
    assert!(!ok && out.contains("the object store answered 403"), "{out}");
    for _ in 0..3 {
        let (ok, out) = yiyun_s3(&snapshot, &minio.password);
        assert!(ok, "{out}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let keys = minio.keys("etcd-snapshots", "hefei/control-plane/");
    assert_eq!(keys.len(), 4, "two snapshots and their manifests (retention 2): {keys:?}");
    let newest = keys.iter().rfind(|k| k.ends_with(".db")).expect("a snapshot");

    let data_dir = std::env::temp_dir().join(unique("restored-from-s3"));
    let peer_port = free_port();
    let (ok, out) = yiyun_s3(
        &[
            "dr",
            "restore-snapshot",
            &format!("s3://etcd-snapshots/{newest}"),
            "--data-dir",
            data_dir.to_str().expect("a path"),
            "--name",
            "from-s3",
            "--peer-url",
            &format!("http://127.0.0.1:{peer_port}"),
            "--etcdutl",
            cached_binary("etcdutl", "ETCD_VERSION").to_str().expect("a path"),
        ],
        &minio.password,
    );
    assert!(ok, "{out}");
    let (_etcd, _apiserver, restored) = serve_restored(primary, &data_dir, "from-s3", peer_port).await;
    let tenants: Api<Tenant> = Api::all(restored);
    let found = eventually(Duration::from_secs(90), "the tenant restored from the object store", || async {
        tenants.get_opt(&tenant).await.ok().flatten()
    })
    .await;
    assert_eq!(found.spec.display_name, "对象存储备份");
    let _ = std::fs::remove_dir_all(&data_dir);
}
