//! Deployment artifacts, checked for real: the container image built by
//! `scripts/image.sh` serves JSON-RPC from a read-only root as uid 65532 (run with
//! `buildah run --isolation chroot`, which shares the host's network, in front of a real
//! Anvil node); the Kubernetes base renders with kustomize and validates against the
//! Kubernetes schemas offline; its config passes `outlast check`; the systemd unit
//! passes `systemd-analyze verify` and keeps its hardening.
//!
//! Needs root (buildah, bind mounts), `buildah`, `kubectl` (its built-in kustomize),
//! Python's `kubernetes-validate` and `unshare`: scripts/test.sh installs them. The image
//! is built from the binary this test run built (a debug build: no second, release
//! build just for the test; `OUTLAST_DEPLOY_BIN=target/release/outlast` tests the
//! release one); `scripts/image.sh` alone builds it from the release one.

mod testbed;

use std::{
    collections::BTreeSet,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use testbed::{ACCOUNT0_ADDRESS, Fleet, free_port, rpc_result};

const BIN: &str = env!("CARGO_BIN_EXE_outlast");
/// The tag the tests build, so that a developer's `outlast:dev` is left alone.
const IMAGE: &str = "localhost/outlast:test";
/// The image's user: numeric, non-root.
const UID: u32 = 65532;
/// How long the container may take to become ready, and to stop.
const READY_WITHIN: Duration = Duration::from_secs(60);
const STOP_WITHIN: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; its output when it exits 0, else a panic with everything it printed. A
/// tool that is not installed panics with how to get it.
fn run(cmd: &mut Command, install_hint: &str) -> Output {
    let shown = format!("{cmd:?}");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{shown}: not installed ({e}); {install_hint}")
        }
        Err(e) => panic!("{shown}: {e}"),
    };
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const BUILDAH: &str = "scripts/test.sh installs it (apt-get install -y buildah)";
const KUBECTL: &str = "scripts/test.sh installs it (apt-get install -y kubernetes-client)";
const PYTHON: &str = "scripts/test.sh installs it (pip install kubernetes-validate==1.37.0)";

fn buildah(args: &[&str]) -> String {
    stdout(&run(Command::new("buildah").args(args), BUILDAH))
}

/// A directory in the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("outlast-deploy-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `scripts/image.sh`, once per test run, from the binary under test; its output.
fn image() -> &'static str {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new(root().join("scripts/image.sh"))
            .env(
                "OUTLAST_BIN",
                std::env::var_os("OUTLAST_DEPLOY_BIN").unwrap_or_else(|| BIN.into()),
            )
            .env("OUTLAST_IMAGE", IMAGE)
            .output()
            .map_err(|e| format!("scripts/image.sh: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("scripts/image.sh failed ({}):\n{text}", out.status));
        }
        eprintln!("scripts/image.sh took {:?}:\n{text}", started.elapsed());
        Ok(text)
    });
    match built {
        Ok(text) => {
            assert!(
                text.contains(&format!("image: {IMAGE} built: ")) && text.contains("compressed"),
                "scripts/image.sh prints the image's size at the end:\n{text}"
            );
            IMAGE
        }
        Err(e) => panic!("{e}"),
    }
}

/// A buildah working container of the image; removed (unmounted first) on drop.
struct Container {
    name: String,
    /// Its root filesystem on the host, once mounted.
    root: Option<PathBuf>,
    /// The root is bind-mounted read-only over itself.
    read_only: bool,
}

impl Container {
    fn of(image: &str) -> Container {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("outlast-deploy-test-{}-{n}", std::process::id());
        let _ = Command::new("buildah").args(["rm", &name]).output();
        buildah(&["from", "--pull=false", "--name", &name, image]);
        Container {
            name,
            root: None,
            read_only: false,
        }
    }

    /// Takes the image's `VOLUME` out of this container's config: buildah mounts an
    /// anonymous volume of its own there, over a `-v` at the same path.
    fn without_image_volume(&self, path: &str) {
        buildah(&["config", "--volume", &format!("{path}-"), &self.name]);
    }

    /// The container's root filesystem, mounted on the host.
    fn root(&mut self) -> PathBuf {
        if self.root.is_none() {
            let path = buildah(&["mount", &self.name]).trim().to_owned();
            self.root = Some(PathBuf::from(path));
        }
        self.root.clone().expect("just mounted")
    }

    /// Makes the root filesystem read-only, as `readOnlyRootFilesystem` does. A runtime
    /// creates its mount points (/dev, /proc, /etc/hosts…) before that; buildah's chroot
    /// isolation creates them at each run, so they are made here first, in this
    /// container's own layer (the image stays as built). buildah 1.28 then fails while
    /// cleaning up after a run (it cannot remove those mount points): its exit status
    /// is not looked at, Outlast's own log is.
    fn make_read_only(&mut self) {
        let root = self.root();
        for dir in ["dev", "proc", "sys", "run"] {
            std::fs::create_dir_all(root.join(dir)).expect("mount point");
        }
        for file in [
            "etc/hosts",
            "etc/resolv.conf",
            "etc/hostname",
            "run/.containerenv",
        ] {
            std::fs::write(root.join(file), "").expect("mount point");
        }
        let r = root.to_str().expect("utf-8 path");
        run(
            Command::new("mount").args(["--bind", r, r]),
            "needs root and util-linux",
        );
        self.read_only = true;
        run(
            Command::new("mount").args(["-o", "remount,ro,bind", r]),
            "needs root and util-linux",
        );
    }

    /// `buildah run --isolation chroot [ARGS] CONTAINER [-- COMMAND]`.
    fn command(&self, args: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(["run", "--isolation", "chroot"])
            .args(args)
            .arg(&self.name);
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        cmd
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(root) = &self.root {
            if self.read_only {
                let _ = Command::new("umount").arg(root).status();
            }
            let _ = Command::new("buildah")
                .args(["umount", &self.name])
                .output();
        }
        let _ = Command::new("buildah").args(["rm", &self.name]).output();
    }
}

/// A running `buildah run`: its stderr collected, SIGTERM then SIGKILL on drop.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}; {BUILDAH}"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
        Running { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process running in the container: buildah's descendant named `comm`.
    fn inside(&self, comm: &str) -> Option<u32> {
        let mut family = vec![self.child.id()];
        let mut found = None;
        // Parents before children is not guaranteed by /proc's order: repeat until stable.
        loop {
            let before = family.len();
            for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // "pid (comm) state ppid …": comm may hold spaces, so split at the last ')'.
                let Some((head, rest)) = stat.rsplit_once(')') else {
                    continue;
                };
                let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
                let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                if ppid.is_some_and(|p| family.contains(&p)) && !family.contains(&pid) {
                    family.push(pid);
                    if name == comm {
                        found = Some(pid);
                    }
                }
            }
            if found.is_some() || family.len() == before {
                return found;
            }
        }
    }

    /// SIGTERM to Outlast inside (as a runtime signals a container's first process;
    /// buildah itself answers SIGTERM with SIGKILL), then waits up to `STOP_WITHIN`;
    /// SIGKILL past it. True when it exited by itself.
    fn stop(&mut self) -> bool {
        if self.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        let pid = self.inside("outlast").unwrap_or(self.child.id());
        testbed::signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config the container serves with: one chain in front of the Anvil node, on a
/// free port of the host's loopback (chroot isolation shares the host's network).
fn container_config(port: u16, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_secs = 2\n\n\
         [[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\nquorum = 1\n\n\
         [[chains.upstreams]]\nname = \"anvil\"\nurl = \"{upstream}\"\noperator = \"anvil\"\n"
    )
}

/// The image's config, as `buildah inspect` shows it.
fn image_config(image: &str) -> Value {
    let inspect: Value = serde_json::from_str(&buildah(&["inspect", "--type", "image", image]))
        .expect("buildah inspect prints JSON");
    inspect["OCIv1"]["config"].clone()
}

/// What the image runs: its ENTRYPOINT followed by its CMD.
fn entry_point(image: &str) -> Vec<String> {
    let config = image_config(image);
    let words = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut entry = words("Entrypoint");
    entry.extend(words("Cmd"));
    assert!(
        !entry.is_empty(),
        "the image has an entry point: {config:#}"
    );
    entry
}

async fn get(url: &str) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain reqwest client builds")
        .get(url)
        .send()
        .await
}

/// The image, run with a read-only root, its config and data directory on volumes,
/// serves real calls from a real Anvil node as uid 65532 and keeps its state on the
/// volume; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serves_json_rpc_from_a_read_only_root() {
    let image = image();
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;

    let config = TempDir::new("config");
    let port = free_port();
    std::fs::write(
        config.0.join("outlast.toml"),
        container_config(port, &fleet.url(0)),
    )
    .expect("write config");
    let data = TempDir::new("data");
    std::os::unix::fs::chown(&data.0, Some(UID), Some(UID)).expect("chown the data volume");

    let mut container = Container::of(image);
    container.without_image_volume("/var/lib/outlast");
    container.make_read_only();
    let volumes = [
        format!("{}:/etc/outlast:ro", config.0.display()),
        format!("{}:/var/lib/outlast", data.0.display()),
    ];
    // The image's own ENTRYPOINT and CMD (`buildah run` wants the command spelled out).
    let entry = entry_point(image);
    let entry: Vec<&str> = entry.iter().map(String::as_str).collect();
    let mut serving =
        Running::start(container.command(&["-v", &volumes[0], "-v", &volumes[1]], &entry));

    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = serving.child.try_wait() {
            panic!(
                "the container exited before it was ready ({status}):\n{}",
                serving.log()
            );
        }
        if let Ok(resp) = get(&format!("{base}/readyz")).await
            && resp.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within {READY_WITHIN:?}:\n{}",
            serving.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!("{base}/local");
    assert_eq!(
        rpc_result(&url, "eth_chainId", json!([])).await,
        json!("0x7a69")
    );
    let head = rpc_result(&fleet.url(0), "eth_blockNumber", json!([])).await;
    assert_eq!(head, json!("0x2"), "the node mined two blocks");
    assert_eq!(rpc_result(&url, "eth_blockNumber", json!([])).await, head);
    // A read that only the node can answer, and the header naming who answered.
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain reqwest client builds")
        .post(&url)
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance",
                   "params": [ACCOUNT0_ADDRESS, "latest"]})
            .to_string(),
        )
        .send()
        .await
        .expect("eth_getBalance through the container");
    assert_eq!(
        resp.headers()
            .get("x-outlast-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("anvil")
    );
    let body: Value =
        serde_json::from_slice(&resp.bytes().await.expect("a reply")).expect("a JSON reply");
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "id": 7, "result": "0x21e19e0c9bab2400000"}),
        "10 000 ETH at genesis"
    );
    let health = get(&format!("{base}/healthz")).await.expect("/healthz");
    assert_eq!(health.status(), 200, "/healthz is the liveness check");

    let pid = serving
        .inside("outlast")
        .expect("Outlast runs under buildah run");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(ids("Uid:"), [UID; 4], "not root: {status}");
    assert_eq!(ids("Gid:"), [UID; 4], "not root: {status}");

    // State went to the volume, written by uid 65532: the data directory is
    // $XDG_STATE_HOME/outlast from the image's environment, and nothing else was
    // writable.
    let written: Vec<(String, u32)> = std::fs::read_dir(&data.0)
        .expect("read the data volume")
        .map(|e| {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("metadata");
            (e.file_name().to_string_lossy().into_owned(), meta.uid())
        })
        .collect();
    assert!(
        !written.is_empty(),
        "Outlast keeps its state on the volume: {}",
        serving.log()
    );
    for (name, uid) in &written {
        assert_eq!(*uid, UID, "{name} is written by the image's user");
    }
    let log = serving.log();
    assert!(
        !log.contains("in memory"),
        "the data directory is usable: {log}"
    );

    assert!(
        serving.stop(),
        "SIGTERM stops the container within {STOP_WITHIN:?}:\n{}",
        serving.log()
    );
    let log = serving.log();
    assert!(
        log.contains("stopped"),
        "Outlast got SIGTERM and stopped cleanly:\n{log}"
    );
}

/// What the image is: non-root, Outlast as its entry point with a config that passes
/// `outlast check` inside it (so the copied libraries suffice) and listens on every
/// interface, CA certificates, a data volume, and nothing else: no shell.
#[test]
fn image_is_non_root_and_holds_only_outlast() {
    let image = image();
    let config = &image_config(image);
    assert_eq!(config["User"], json!(format!("{UID}:{UID}")), "{config:#}");
    assert_eq!(
        config["Entrypoint"],
        json!(["/usr/local/bin/outlast"]),
        "{config:#}"
    );
    assert_eq!(
        config["Cmd"],
        json!(["serve", "--config", "/etc/outlast/outlast.toml"]),
        "{config:#}"
    );
    assert!(
        config["ExposedPorts"].get("8545/tcp").is_some(),
        "{config:#}"
    );
    assert!(
        config["Volumes"].get("/var/lib/outlast").is_some(),
        "{config:#}"
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(env.contains(&"XDG_STATE_HOME=/var/lib"), "{env:?}");

    let mut container = Container::of(image);
    let fs = container.root();
    let top: BTreeSet<String> = std::fs::read_dir(&fs)
        .expect("read the image's root")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for name in &top {
        assert!(
            ["etc", "lib", "lib64", "usr", "var"].contains(&name.as_str()),
            "only Outlast, its libraries, config and certificates are in the image: /{name}"
        );
    }
    assert!(!fs.join("bin/sh").exists(), "no shell");
    let certs = std::fs::metadata(fs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("CA certificates are in the image");
    assert!(
        certs.len() > 10_000,
        "a real CA bundle: {} bytes",
        certs.len()
    );
    let state = std::fs::metadata(fs.join("var/lib/outlast")).expect("the data directory");
    assert_eq!(
        state.uid(),
        UID,
        "the data directory belongs to the image's user"
    );

    let checked = run(
        &mut container.command(
            &[],
            &[
                "/usr/local/bin/outlast",
                "check",
                "--config",
                "/etc/outlast/outlast.toml",
            ],
        ),
        BUILDAH,
    );
    let text = stdout(&checked);
    assert!(text.contains("listen: 0.0.0.0:8545"), "{text}");
    assert!(
        text.contains("ethereum") && text.contains("base"),
        "the embedded default's chains: {text}"
    );
}

/// `python3 -c` over YAML files: each file's documents, as JSON.
fn yaml_documents(files: &[PathBuf]) -> Vec<Vec<Value>> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        docs = [[d for d in yaml.safe_load_all(open(p)) if d is not None] for p in sys.argv[1:]]\n\
        json.dump(docs, sys.stdout)\n";
    let out = run(
        Command::new("python3")
            .args(["-c", TO_JSON])
            .args(files.iter().map(|f| f.as_os_str())),
        PYTHON,
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

/// `kubernetes-validate --strict` of `files` against Kubernetes `version`, with no network.
fn validate_offline(files: &[PathBuf], version: &str) {
    let out = run(
        Command::new("unshare")
            .args([
                "--net",
                "python3",
                "-m",
                "kubernetes_validate",
                "--strict",
                "-k",
                version,
            ])
            .args(files.iter().map(|f| f.as_os_str())),
        PYTHON,
    );
    let text = stdout(&out);
    assert!(
        !text.contains("ERROR") && !text.contains("WARN"),
        "every manifest validates against Kubernetes {version}:\n{text}"
    );
}

fn kubernetes_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The kustomization's resources, as paths.
fn kustomization_resources() -> Vec<PathBuf> {
    let dir = kubernetes_dir();
    let docs = yaml_documents(&[dir.join("kustomization.yaml")]);
    let resources = docs[0][0]["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources");
    resources
        .iter()
        .map(|r| {
            let path = dir.join(r.as_str().expect("a resource is a path"));
            assert!(path.is_file(), "{} is missing", path.display());
            path
        })
        .collect()
}

/// `kubectl kustomize deploy/kubernetes`, offline: the rendered manifests.
fn rendered(into: &Path) -> Vec<Value> {
    let out = run(
        Command::new("unshare")
            .args(["--net", "kubectl", "kustomize"])
            .arg(kubernetes_dir()),
        KUBECTL,
    );
    std::fs::write(into, &out.stdout).expect("write the rendered manifests");
    yaml_documents(&[into.to_path_buf()]).remove(0)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered base"))
}

/// Every file of the base, and the base as kustomize renders it, validates strictly
/// against the Kubernetes schemas (the newest the validator knows, and 1.30, the first
/// with the kubelet's preStop sleep), without network.
#[test]
fn kubernetes_base_validates_against_the_schemas_offline() {
    let files = kustomization_resources();
    let out = TempDir::new("kustomize");
    let rendered_file = out.0.join("rendered.yaml");
    let docs = rendered(&rendered_file);
    for version in ["1.37.0", "1.30.0"] {
        validate_offline(&files, version);
        validate_offline(std::slice::from_ref(&rendered_file), version);
    }

    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    for want in [
        "Deployment/outlast",
        "Service/outlast",
        "PodDisruptionBudget/outlast",
        "Secret/outlast-secrets",
        "Deployment/outlast-redis",
        "Service/outlast-redis",
    ] {
        assert!(kinds.contains(want), "{want} in {kinds:?}");
    }
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the generated ConfigMap");
    assert_eq!(
        config_map["data"]["outlast.toml"].as_str(),
        Some(
            std::fs::read_to_string(kubernetes_dir().join("outlast.toml"))
                .expect("read outlast.toml")
                .as_str()
        ),
        "the ConfigMap holds outlast.toml as it is"
    );

    let deployment = find(&docs, "Deployment", "outlast");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8545");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|c| c
                .iter()
                .any(|c| c["topologyKey"] == "topology.kubernetes.io/zone")),
        "replicas spread across zones: {pod:#}"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], UID);
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert!(
        container["resources"]["requests"].is_object(),
        "{container:#}"
    );
    assert!(
        container["resources"]["limits"]["memory"].is_string(),
        "{container:#}"
    );
    assert_eq!(container["ports"][0]["containerPort"], 8545);
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "outlast-secrets"
    );
    let mounts = container["volumeMounts"].as_array().expect("volume mounts");
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"))
    };
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert!(volume(mounted("/var/lib/outlast"))["emptyDir"].is_object());
    assert_eq!(
        volume(mounted("/etc/outlast"))["configMap"]["name"],
        config_map["metadata"]["name"],
        "the pods mount the generated ConfigMap"
    );

    let pdb = find(&docs, "PodDisruptionBudget", "outlast");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
    let service = find(&docs, "Service", "outlast");
    assert_eq!(service["spec"]["selector"], spec["selector"]["matchLabels"]);
    assert_eq!(service["spec"]["ports"][0]["port"], 8545);
}

/// The `${VAR}`s a config uses (outside comments).
fn env_references(toml: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in toml.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after.find('}').expect("a closed ${…}");
            names.insert(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    names
}

/// The ConfigMap's config passes `outlast check` with the Secret's variables set, and
/// every `${VAR}` it uses is a key of that Secret.
#[test]
fn kubernetes_config_checks_with_the_secrets_variables() {
    let dir = kubernetes_dir();
    let toml = std::fs::read_to_string(dir.join("outlast.toml")).expect("read outlast.toml");
    let secret = yaml_documents(&[dir.join("secret.yaml")])
        .remove(0)
        .remove(0);
    let values = secret["stringData"]
        .as_object()
        .expect("secret.yaml has stringData");
    let used = env_references(&toml);
    assert!(
        !used.is_empty(),
        "the config takes its secrets from the environment"
    );
    for name in &used {
        assert!(
            values.contains_key(name),
            "outlast.toml uses ${{{name}}}, which secret.yaml does not set"
        );
    }
    let mut check = Command::new(BIN);
    check
        .args(["check", "--config"])
        .arg(dir.join("outlast.toml"));
    for (name, value) in values {
        check.env(name, value.as_str().expect("string values"));
    }
    let out = run(&mut check, "built by cargo test");
    let text = stdout(&out);
    assert!(text.contains("listen: 0.0.0.0:8545"), "{text}");
    for name in values.keys() {
        let value = values[name].as_str().unwrap_or_default();
        assert!(
            !text.contains(value),
            "check never shows {name}'s value: {text}"
        );
    }
}

/// The systemd unit: `systemd-analyze verify` passes (where systemd is installed), its
/// exposure score stays low, and the hardening asked of it is there.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/outlast.service"))
        .expect("read deploy/systemd/outlast.service");

    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (n, line) in unit.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_owned(), Vec::new()));
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        sections
            .last_mut()
            .unwrap_or_else(|| panic!("line {}: outside a section", n + 1))
            .1
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Unit", "Service", "Install"]);
    let service = &sections[1].1;
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "outlast"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(get(key), [value], "{key}={value}");
    }
    assert!(get("ExecStart")[0].ends_with("outlast serve --config /etc/outlast/outlast.toml"));
    assert!(get("RestrictAddressFamilies")[0].contains("AF_INET6"));
    assert!(!get("LimitNOFILE").is_empty(), "LimitNOFILE");

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit was parsed, not verified");
        return;
    }
    // verify checks that the programs exist: point the unit at the binary under test.
    let dir = TempDir::new("systemd");
    let path = dir.0.join("outlast.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/outlast", BIN)).expect("write unit");
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "apt-get install -y systemd",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warns:\n{said}"
    );
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&path),
        "apt-get install -y systemd",
    );
    let text = stdout(&out);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for outlast.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} (0 best, 10 worst):\n{text}");
}
