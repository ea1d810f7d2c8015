//! Plumbing of the functions' end-to-end tests (`functions/*/tests/it/e2e_lambda.rs`): the
//! prerequisites check, a scratch directory, and [`LocalFunction`], a function's real binary
//! on the sandbox's local Lambda (`cosell_sandbox::lambda`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cosell_sandbox::lambda::{FunctionSpec, LocalLambda};

/// How long the instances may take to start (they are built already: `cargo test` builds the
/// package's binaries before its integration tests).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// moto's endpoint; panics (never skips) with instructions when the environment lacks it.
pub fn require_prerequisites() -> String {
    crate::moto::endpoint()
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

/// One function's real binary on the sandbox's local Lambda ([`LocalLambda`]): five instances
/// behind its Function URL, as Lambda would run for concurrent deliveries.
#[derive(Debug)]
pub struct LocalFunction {
    lambda: LocalLambda,
    function: &'static str,
}

impl LocalFunction {
    /// Starts five instances of `binary` (the test's `env!("CARGO_BIN_EXE_<function>")`) with
    /// `env` as their whole configuration (plus `RUST_BACKTRACE`); their output goes to
    /// `<log_dir>/<function>.log`. Waits until every instance is ready; panics with the log when
    /// one exits first (a configuration error).
    pub async fn start(
        function: &'static str,
        binary: &str,
        env: &HashMap<String, String>,
        log_dir: &Path,
    ) -> Self {
        let mut env: BTreeMap<String, String> = env.clone().into_iter().collect();
        env.entry("RUST_BACKTRACE".into())
            .or_insert_with(|| "1".into());
        let spec = FunctionSpec {
            name: function.to_owned(),
            binary: PathBuf::from(binary),
            env,
            instances: 5,
            timeout: Duration::from_secs(30),
        };
        let lambda = LocalLambda::start(vec![spec], log_dir)
            .await
            .unwrap_or_else(|error| panic!("could not start the local Lambda: {error}"));
        if let Err(problem) = lambda.wait_ready(function, READY_TIMEOUT).await {
            panic!("{problem}");
        }
        Self { lambda, function }
    }

    /// The Function URL of the function (ends with `/`).
    pub fn url(&self) -> String {
        self.lambda.function_url(self.function)
    }

    /// Whether an instance has exited (crashed) since the start.
    pub fn instance_exited(&self) -> bool {
        self.lambda.crashes(self.function) > 0
    }

    /// Everything the instances printed so far (stdout and stderr, as CloudWatch Logs receives
    /// it on AWS): the JSON log lines and the metrics documents ([`crate::emf::documents`]).
    pub fn output(&self) -> String {
        self.lambda
            .log_path(self.function)
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The CloudWatch Embedded Metric Format documents the instances printed so far.
    pub fn emf_documents(&self) -> Vec<serde_json::Value> {
        crate::emf::documents(&self.output())
    }

    /// The last `lines` lines of the instances' log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.lambda.log_tail(self.function, lines)
    }
}

impl Drop for LocalFunction {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
    }
}
