//! A real single-node Ceph RADOS Gateway for the tests (scripts/ceph-rgw), not a mock.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::MutexGuard;

use crate::cli::{stderr, Cli};

/// The gateway; dropping it kills its daemons.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
    pub env: Vec<(String, String)>,
    cli: Cli,
    /// One gateway at a time in this process: see [`crate::sys::exclusive`]. Dropped last.
    _exclusive: MutexGuard<'static, ()>,
}

fn script() -> PathBuf {
    crate::fixtures::repo().join("scripts/ceph-rgw")
}

impl Gateway {
    /// Starts a gateway; `cli` is the hero-snap that [`Gateway::hero_snap`] runs.
    pub fn start(cli: Cli) -> Gateway {
        let exclusive = crate::sys::exclusive();
        // A per-process block of 20 ports (the gateway's, then the monitor's and the
        // daemons'), so that gateways of other test processes can run alongside. Blocks lie
        // below Linux's ephemeral range (32768+), where outgoing connections take ports. A
        // start that fails (a port taken after all, a daemon that did not come up) is tried
        // once more in another block, in a new directory, before the test fails.
        let block = std::process::id() % 600;
        let mut errors = String::new();
        for attempt in 0..2 {
            let port = 20000 + ((block + attempt * 300) % 600) as u16 * 20;
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(script()).arg("start").arg(dir.path()).arg(port.to_string()).output().unwrap();
            if !out.status.success() {
                errors.push_str(&format!("port {port}: {}\n", stderr(&out)));
                // Whatever of it did start goes.
                let _ = Command::new(script()).arg("stop").arg(dir.path()).status();
                continue;
            }
            let mut env = Vec::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (k, v) = line.strip_prefix("export ").unwrap().split_once('=').unwrap();
                env.push((k.into(), v.into()));
            }
            if attempt > 0 {
                eprintln!("scripts/ceph-rgw: the first start failed, the second worked:\n{errors}");
            }
            return Gateway { dir, port, env, cli, _exclusive: exclusive };
        }
        panic!("scripts/ceph-rgw start failed twice:\n{errors}");
    }

    pub fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap().1
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One S3 API call: (HTTP status, body).
    pub fn api(&self, method: &str, path: &str, upload: Option<&Path>) -> (u16, String) {
        self.api_as(&self.env, method, path, upload, &[])
    }

    /// One S3 API call with the keys of `env` (the owner's: [`Gateway::env`], or a user's
    /// from [`Gateway::add_user`]) and extra headers (`name: value`).
    pub fn api_as(&self, env: &[(String, String)], method: &str, path: &str, upload: Option<&Path>, headers: &[&str]) -> (u16, String) {
        let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        let body = self.dir.path().join("curl-body");
        let mut c = Command::new("curl");
        c.args(["-s", "-o"]).arg(&body).args(["-w", "%{http_code}", "-X", method, "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"]);
        c.arg(format!("{}:{}", var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")));
        c.args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        for h in headers {
            c.args(["-H", h]);
        }
        if method == "HEAD" {
            c.arg("-I");
        }
        if let Some(f) = upload {
            c.arg("-T").arg(f);
        }
        c.arg(format!("{}{path}", self.endpoint()));
        let out = c.output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        (status, fs::read_to_string(&body).unwrap_or_default())
    }

    pub fn make_bucket(&self, name: &str) {
        let (status, body) = self.api("PUT", &format!("/{name}"), None);
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// A bucket with object lock enabled (and so versioned).
    pub fn make_locked_bucket(&self, name: &str) {
        let (status, body) = self.api_as(&self.env, "PUT", &format!("/{name}"), None, &["x-amz-bucket-object-lock-enabled: true"]);
        assert_eq!(status, 200, "creating bucket {name} with object lock: {body}");
    }

    /// A second user of the gateway (radosgw-admin): its environment, as [`Gateway::env`]
    /// with its own keys. It owns nothing; a bucket policy gives it rights.
    pub fn add_user(&self, uid: &str) -> Vec<(String, String)> {
        let (ak, sk) = (format!("GK{uid:0>24}"), format!("{uid:0>64}"));
        let out = Command::new("timeout")
            .args(["60", "radosgw-admin", "-c"])
            .arg(self.dir.path().join("ceph.conf"))
            .args(["user", "create", &format!("--uid={uid}"), &format!("--display-name={uid}"), &format!("--access-key={ak}"), &format!("--secret={sk}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "radosgw-admin user create {uid}: {}", stderr(&out));
        let mut env = self.env.clone();
        for (k, v) in env.iter_mut() {
            match k.as_str() {
                "AWS_ACCESS_KEY_ID" => *v = ak.clone(),
                "AWS_SECRET_ACCESS_KEY" => *v = sk.clone(),
                _ => {}
            }
        }
        env
    }

    /// The version ids of exactly `key` (ListObjectVersions), newest first.
    pub fn versions(&self, bucket: &str, key: &str) -> Vec<String> {
        let (status, body) = self.api("GET", &format!("/{bucket}?prefix={}&versions=", key.replace('/', "%2F")), None);
        assert_eq!(status, 200, "{body}");
        body.split("<Version>")
            .skip(1)
            .filter(|v| v.contains(&format!("<Key>{key}</Key>")))
            .map(|v| v.split("<VersionId>").nth(1).unwrap().split("</VersionId>").next().unwrap().to_string())
            .collect()
    }

    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        let (status, _) = self.api("HEAD", &format!("/{bucket}/{key}"), None);
        assert!(status == 200 || status == 404, "HEAD {bucket}/{key}: {status}");
        status == 200
    }

    /// Keys of the multipart uploads in progress in the bucket (ListMultipartUploads).
    pub fn uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.api("GET", &format!("/{bucket}?uploads="), None);
        assert_eq!(status, 200, "{body}");
        body.split("<Upload>").skip(1).map(|u| u.split("<Key>").nth(1).unwrap().split("</Key>").next().unwrap().to_string()).collect()
    }

    /// hero-snap with the gateway's environment (endpoint, region, keys).
    pub fn hero_snap(&self, args: &[String], extra_env: &[(&str, &str)]) -> Output {
        self.hero_snap_as(&self.env, args, extra_env)
    }

    /// hero-snap with `env` (a user's from [`Gateway::add_user`]).
    pub fn hero_snap_as(&self, env: &[(String, String)], args: &[String], extra_env: &[(&str, &str)]) -> Output {
        let mut c = self.cli.command();
        c.args(args).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.envs(extra_env.iter().copied());
        c.output().unwrap()
    }

    pub fn ok(&self, args: &[String]) -> Output {
        let out = self.hero_snap(args, &[]);
        assert!(out.status.success(), "hero-snap {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        out
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}
