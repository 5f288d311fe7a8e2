//! The self-service API as the e2e tests run and call it: `yiyun api` with exactly its chart
//! ServiceAccount over TLS with a certificate of a local CA, and real clients (`grpcurl`, built
//! from the Go module proxy by `e2e/build-binaries.sh`, and `curl`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{eventually, free_port, http_get, yiyun_bin};

/// `yiyun api`, killed when dropped.
pub struct ApiProcess {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl ApiProcess {
    /// `yiyun api` on free ports with the certificate of `local_ca(dir)` and exactly the
    /// chart's role (token and access reviews), ready.
    pub async fn start(dir: &Path, ledger: &str, name: &str, flags: &[&str]) -> ApiProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(yiyun_bin())
            .args(["api", "--addr", &addr, "--admin-addr", &admin, "--billing-database", ledger])
            .arg("--tls-cert")
            .arg(dir.join("api.crt"))
            .arg("--tls-key")
            .arg(dir.join("api.key"))
            .args(["--auth-cache-seconds", "1"])
            .args(flags)
            .arg("--kubeconfig")
            .arg(crate::service_account_kubeconfig("api-rbac.yaml", "yiyun-api"))
            .stderr(std::fs::File::create(&log).expect("a log"))
            .spawn()
            .expect("start yiyun api");
        let api = ApiProcess { child, addr, log };
        let admin_addr = admin.parse().expect("an address");
        eventually(
            Duration::from_secs(60),
            &format!("the API ready (log {})", api.log.display()),
            || async { http_get(admin_addr, "/readyz").filter(|(code, _)| *code == 200).map(|_| ()) },
        )
        .await;
        api
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh token of ServiceAccount `account` in `namespace` (`kubectl create token`).
pub fn service_account_token(namespace: &str, account: &str) -> String {
    let out = crate::kubectl(&["create", "token", account, "-n", namespace]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, in `dir`.
pub fn local_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=yiyun-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=yiyun-api",
        "-keyout",
        "api.key",
        "-out",
        "api.csr",
    ]);
    std::fs::write(
        dir.join("api.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write api.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "api.ext",
        "-out",
        "api.crt",
    ]);
}

/// Who calls: an answer of the API is the same over gRPC and REST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    InvalidArgument,
}

impl Answer {
    pub fn http(self) -> u16 {
        match self {
            Answer::Ok => 200,
            Answer::Unauthenticated => 401,
            Answer::PermissionDenied => 403,
            Answer::NotFound => 404,
            Answer::InvalidArgument => 400,
        }
    }

    pub fn grpc(self) -> &'static str {
        match self {
            Answer::Ok => "OK",
            Answer::Unauthenticated => "Unauthenticated",
            Answer::PermissionDenied => "PermissionDenied",
            Answer::NotFound => "NotFound",
            Answer::InvalidArgument => "InvalidArgument",
        }
    }
}

pub struct Clients {
    pub addr: String,
    pub ca: PathBuf,
    pub grpcurl: PathBuf,
}

impl Clients {
    /// Clients of `api`, trusting the CA `local_ca(dir)` made.
    pub fn of(api: &ApiProcess, dir: &Path) -> Clients {
        Clients {
            addr: api.addr.clone(),
            ca: dir.join("ca.crt"),
            grpcurl: crate::cached_binary("grpcurl", "GRPCURL_VERSION"),
        }
    }

    pub fn grpcurl(&self, token: Option<&str>, data: Option<&Value>, method: &str) -> Output {
        let mut command = Command::new(&self.grpcurl);
        command.args(["-cacert"]).arg(&self.ca);
        if let Some(token) = token {
            command.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        if let Some(data) = data {
            command.args(["-d", &data.to_string()]);
        }
        command.args([self.addr.as_str(), method]).output().expect("grpcurl")
    }

    /// The gRPC code of a call (`OK` or the name grpcurl prints) and its output.
    pub fn grpc(&self, token: Option<&str>, data: &Value, method: &str) -> (String, String) {
        let out = self.grpcurl(token, Some(data), method);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return ("OK".into(), stdout);
        }
        let code =
            stderr.lines().find_map(|l| l.trim().strip_prefix("Code: ")).unwrap_or("(no code)").to_string();
        (code, stderr)
    }

    /// The HTTP status of a REST GET and its body.
    pub fn rest(&self, token: Option<&str>, path: &str) -> (u16, String) {
        self.curl(token, path, None)
    }

    /// The HTTP status of a REST POST of the JSON `body` and the answer's body.
    pub fn rest_post(&self, token: Option<&str>, path: &str, body: &Value) -> (u16, String) {
        self.curl(token, path, Some(body))
    }

    fn curl(&self, token: Option<&str>, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut command = Command::new("curl");
        command.args(["-sS", "--cacert"]).arg(&self.ca).args(["-w", "\n%{http_code}"]);
        if let Some(token) = token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            command.args(["-H", "Content-Type: application/json", "-d", &body.to_string()]);
        }
        let out = command.arg(format!("https://{}{path}", self.addr)).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}
