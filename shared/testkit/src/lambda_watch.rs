//! Plumbing of the functions' end-to-end tests (`functions/*/tests/it/e2e_lambda.rs`): the
//! prerequisites check, a scratch directory, and [`LambdaWatch`], the `cargo lambda watch`
//! child process with its readiness wait and its clean-up on drop.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RUN_TEST_SH;

/// How long the first `cargo lambda watch` invocation may take: it compiles the function
/// (`cargo run --features sandbox`) when `scripts/test.sh` has not built it already.
pub const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace root (where `cargo lambda watch` must run).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo the tests were started with.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// moto's endpoint; panics (never skips) with instructions when the environment lacks it or
/// `cargo lambda`.
pub fn require_prerequisites() -> String {
    let moto = crate::moto::endpoint();
    let version = Command::new(cargo())
        .args(["lambda", "--version"])
        .stdin(Stdio::null())
        .output();
    match version {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`cargo lambda --version` failed ({}): cargo-lambda is not installed; {RUN_TEST_SH} \
             (or `python3 -m pip install 'cargo-lambda>=1.8,<2'`)\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("could not run `cargo lambda --version` ({error}); {RUN_TEST_SH}"),
    }
    moto
}

/// A free loopback port (bound, then released for the child to bind).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new, empty directory under the system temp directory.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Self(path)
    }

    /// Writes `name` with `text`; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Kept when the test failed: the watch log is in it.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `cargo lambda watch` serving one function, started by [`LambdaWatch::start`].
///
/// On drop: SIGTERM to `cargo lambda` (it stops the function instances it spawned, each in a
/// session of its own), then SIGKILL to whatever of its process tree is still alive after a
/// grace period, so no process outlives the test. A watchdog (`sh`) also sends SIGTERM if the
/// test process dies without running the drop (killed by a signal).
#[derive(Debug)]
pub struct LambdaWatch {
    child: Child,
    watchdog: Option<Child>,
    port: u16,
    log: PathBuf,
    function: &'static str,
}

impl LambdaWatch {
    /// Spawns `cargo lambda watch -P <free port> -p <package> [--features <features>]` in the
    /// workspace root, its output going to `log`. The function instances inherit this process's
    /// environment plus `env` (configuration by environment keeps the secrets out of `argv`);
    /// every `AWS_*` variable of this process is dropped first, so only `env`'s reach them.
    pub fn start(
        function: &'static str,
        features: Option<&str>,
        env: &HashMap<String, String>,
        log: PathBuf,
    ) -> Self {
        let port = free_port();
        let output = File::create(&log).expect("create the watch log");
        let errors = output.try_clone().expect("clone the log handle");
        let mut command = Command::new(cargo());
        command
            .current_dir(workspace_root())
            .args(["lambda", "watch", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()])
            .args(["--package", function, "--bin", function])
            // Other people's edits must not restart the function mid-test.
            .arg("--ignore-changes")
            // Up to five function instances, as Lambda would run for concurrent deliveries.
            .args(["--concurrency", "5"])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        if let Some(features) = features {
            command.args(["--features", features]);
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command.envs(env);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("could not start `cargo lambda watch`: {error}"));
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; kill -TERM \"$1\" 2>/dev/null",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Self {
            child,
            watchdog,
            port,
            log,
            function,
        }
    }

    /// The Function URL of the function.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/lambda-url/{}/",
            self.port, self.function
        )
    }

    /// Waits (bounded by [`READY_TIMEOUT`]) until a GET through the Function URL is answered
    /// by the function itself: 405 with `Allow: POST`. The first invocation compiles and starts
    /// the instances. Fails early, with the log, when `cargo lambda` or a function instance
    /// exits (a build or configuration error).
    pub async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "`cargo lambda watch` exited ({status}) before the function answered\n{}",
                    self.log_tail(60)
                );
            }
            let log = self.log_text();
            if log.contains("command exited") {
                panic!(
                    "a function instance exited while starting (build or configuration \
                     error)\n{}",
                    self.log_tail(60)
                );
            }
            let probe = http
                .get(self.url())
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let last = match probe {
                Ok(response)
                    if response.status() == 405
                        && response.headers().get("allow").is_some_and(|v| v == "POST") =>
                {
                    eprintln!(
                        "cargo lambda watch ready at {} after {:.1} s",
                        self.url(),
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                Ok(response) => format!("HTTP {}", response.status()),
                Err(error) => error.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "the function did not answer within {} s (last: {last})\n{}",
                READY_TIMEOUT.as_secs(),
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether a function instance has exited (crashed) since the start.
    pub fn instance_exited(&self) -> bool {
        self.log_text().contains("command exited")
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The last `lines` lines of the log (backtrace frames left out), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(256 * 1024)));
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("    ") && !line.trim().is_empty())
            .map(|line| match line.char_indices().nth(600) {
                Some((cut, _)) => &line[..cut],
                None => line,
            })
            .collect();
        let tail = kept[kept.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last lines of {} ---\n{tail}\n--- end ---",
            self.log.display()
        )
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        let root = self.child.id();
        let tree = descendants(root);
        signal("TERM", root);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            signal("KILL", root);
        }
        let _ = self.child.wait();
        // Instances `cargo lambda` did not stop (or spawned after the snapshot, now orphans of
        // the tree): kill what is left.
        let mut left = tree;
        left.extend(descendants(root));
        for pid in left {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
    }
}

/// Sends `SIGname` to `pid` (`kill(1)`: the workspace forbids `unsafe`, so no libc call).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every live descendant of `root`, from `/proc` (Linux; empty elsewhere).
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}
