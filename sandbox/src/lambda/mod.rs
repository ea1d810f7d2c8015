//! A local stand-in for AWS Lambda, for the stack soak and `cosell dev`: the real function
//! binaries run as processes ("instances", several per function) that fetch their invocations
//! from this module's Runtime API exactly as they do on Lambda, and three triggers invoke them
//! as the SAM template wires them (docs/aws.md#the-local-lambda):
//!
//! - **Function URLs** (`/lambda-url/<function>/…`): the HTTP request becomes a payload of
//!   format 2.0 and the function's answer the HTTP response ([`function_url`]). A burst waits for
//!   a free instance instead of being refused.
//! - **An SQS event source** ([`LocalLambda::poll_sqs`]): batches of up to ten messages, partial
//!   batch responses (`ReportBatchItemFailures`): the messages the function did not name are
//!   deleted, the others come back after the visibility timeout, and the queue's redrive policy
//!   moves a message received `maxReceiveCount` times to the dead-letter queue.
//! - **A schedule** ([`LocalLambda::schedule`]): an EventBridge "Scheduled Event" at a fixed rate.
//!
//! As on Lambda, an invocation that outlives the function's timeout stops its instance, and an
//! instance that dies (crash, [`LocalLambda::kill_instance`]) fails its invocation and is
//! started again.

mod event_sources;
mod function_url;
mod runtime_api;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use event_sources::SqsSource;

/// One function to run: which binary, how many instances, with what environment.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The function's name (its Function URL path, its log file).
    pub name: String,
    /// The compiled function binary.
    pub binary: PathBuf,
    /// The instances' environment (configuration), on top of the Lambda variables this module
    /// sets; nothing else of this process's environment reaches them but `PATH`.
    pub env: BTreeMap<String, String>,
    /// How many instances run at once (the function's concurrency).
    pub instances: usize,
    /// The function's timeout: an invocation still running then stops its instance.
    pub timeout: Duration,
}

/// Why an invocation has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No such function.
    #[error("no function named {0}")]
    UnknownFunction(String),
    /// The function reported an error (`/runtime/invocation/{id}/error`).
    #[error("the function failed: {error_type}: {message}")]
    Function {
        /// `errorType` of the report.
        error_type: String,
        /// `errorMessage` of the report.
        message: String,
    },
    /// The invocation outlived the function's timeout; its instance was stopped.
    #[error("the invocation timed out after {0:?}")]
    TimedOut(Duration),
    /// The instance running it exited (crashed or was killed) first.
    #[error("the instance running the invocation exited")]
    InstanceExited,
    /// The local Lambda is shutting down.
    #[error("the local Lambda is shutting down")]
    ShuttingDown,
}

/// One queued invocation.
#[derive(Debug)]
struct Invocation {
    id: String,
    payload: Bytes,
    answer: oneshot::Sender<Result<Bytes, InvokeError>>,
}

/// A function's shared state: its invocation queue and the invocations its instances run.
#[derive(Debug)]
struct Function {
    spec: FunctionSpec,
    queue: mpsc::UnboundedSender<Invocation>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    /// Request id → (instance, where the answer goes).
    running: Mutex<HashMap<String, Running>>,
    /// One per instance: set once the instance asked for its first invocation.
    polled: Vec<AtomicBool>,
    /// Exits not asked for (crashes, init errors, timeouts' stops count separately).
    crashes: AtomicUsize,
    /// One per instance: stops its process (timeout, [`LocalLambda::kill_instance`]).
    kill: Vec<Notify>,
    changed: Notify,
    log: PathBuf,
}

#[derive(Debug)]
struct Running {
    instance: usize,
    answer: oneshot::Sender<Result<Bytes, InvokeError>>,
}

impl Function {
    fn take(&self, id: &str) -> Option<Running> {
        self.running.lock().ok()?.remove(id)
    }

    /// Fails whatever `instance` was running (it exited).
    fn fail_instance(&self, instance: usize) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let ids: Vec<String> = running
            .iter()
            .filter(|(_, run)| run.instance == instance)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(run) = running.remove(&id) {
                let _ = run.answer.send(Err(InvokeError::InstanceExited));
            }
        }
    }
}

/// The running local Lambda; stops every instance and trigger when dropped.
#[derive(Debug)]
pub struct LocalLambda {
    functions: Arc<HashMap<String, Arc<Function>>>,
    url_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl LocalLambda {
    /// Starts the Function URL front end and every instance of `functions`; each function's
    /// instances write their output to `<log_dir>/<name>.log`.
    pub async fn start(functions: Vec<FunctionSpec>, log_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let (stop, stopped) = watch::channel(false);
        let mut table = HashMap::new();
        for spec in functions {
            let (queue, next) = mpsc::unbounded_channel();
            let function = Arc::new(Function {
                polled: (0..spec.instances)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
                kill: (0..spec.instances).map(|_| Notify::new()).collect(),
                log: log_dir.join(format!("{}.log", spec.name)),
                spec,
                queue,
                next: tokio::sync::Mutex::new(next),
                running: Mutex::new(HashMap::new()),
                crashes: AtomicUsize::new(0),
                changed: Notify::new(),
            });
            std::fs::File::create(&function.log)?;
            for instance in 0..function.spec.instances {
                let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
                let api = listener.local_addr()?;
                tokio::spawn(runtime_api::serve(
                    listener,
                    Arc::clone(&function),
                    instance,
                    stopped.clone(),
                ));
                tokio::spawn(supervise(
                    Arc::clone(&function),
                    instance,
                    api,
                    stopped.clone(),
                ));
            }
            table.insert(function.spec.name.clone(), function);
        }
        let functions = Arc::new(table);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url_addr = listener.local_addr()?;
        let lambda = Self {
            functions,
            url_addr,
            stop,
        };
        tokio::spawn(function_url::serve(listener, lambda.invoker(), stopped));
        Ok(lambda)
    }

    /// The Function URL of `function` (ends with `/`).
    pub fn function_url(&self, function: &str) -> String {
        format!("http://{}/lambda-url/{function}/", self.url_addr)
    }

    /// A handle that invokes the functions (for triggers running on their own).
    pub fn invoker(&self) -> Invoker {
        Invoker {
            functions: Arc::clone(&self.functions),
        }
    }

    /// Invokes `function` with `payload` and waits for its answer (a synchronous invocation).
    pub async fn invoke(&self, function: &str, payload: Bytes) -> Result<Bytes, InvokeError> {
        self.invoker().invoke(function, payload).await
    }

    /// Waits until every instance of `function` asked for its first invocation (started and
    /// initialised), or fails with the log's tail when an instance exits first or `within`
    /// passes.
    pub async fn wait_ready(&self, function: &str, within: Duration) -> Result<(), String> {
        let f = self
            .functions
            .get(function)
            .ok_or_else(|| format!("no function named {function}"))?;
        let deadline = Instant::now() + within;
        loop {
            let changed = f.changed.notified();
            if f.crashes.load(Ordering::SeqCst) > 0 {
                return Err(format!(
                    "an instance of {function} exited while starting\n{}",
                    self.log_tail(function, 40)
                ));
            }
            if f.polled.iter().all(|p| p.load(Ordering::SeqCst)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return Err(format!(
                    "{function} was not ready within {within:?}\n{}",
                    self.log_tail(function, 40)
                ));
            }
        }
    }

    /// Stops instance `instance` of `function` at once (SIGKILL), as a crash would; what it
    /// was running fails and the instance starts again.
    pub fn kill_instance(&self, function: &str, instance: usize) {
        if let Some(kill) = self
            .functions
            .get(function)
            .and_then(|f| f.kill.get(instance))
        {
            kill.notify_one();
        }
    }

    /// How many times an instance of `function` exited without being asked to (crashes,
    /// failed starts); kills and timeouts do not count.
    pub fn crashes(&self, function: &str) -> usize {
        self.functions
            .get(function)
            .map_or(0, |f| f.crashes.load(Ordering::SeqCst))
    }

    /// The log file of `function`'s instances.
    pub fn log_path(&self, function: &str) -> Option<PathBuf> {
        self.functions.get(function).map(|f| f.log.clone())
    }

    /// `function`'s whole log (empty when there is none yet).
    fn log_text(&self, function: &str) -> String {
        self.log_path(function)
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of `function`'s log, for failure messages.
    pub fn log_tail(&self, function: &str, lines: usize) -> String {
        let text = self.log_text(function);
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("    ") && !line.trim().is_empty())
            .collect();
        let tail = kept[kept.len().saturating_sub(lines)..].join("\n");
        format!("--- last lines of the {function} log ---\n{tail}\n--- end ---")
    }

    /// The lines of `function`'s log that mention any of `needles` (at most `max`), for
    /// failure messages.
    pub fn log_lines_with(&self, function: &str, needles: &[&str], max: usize) -> String {
        let text = self.log_text(function);
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| needles.iter().any(|needle| line.contains(needle)))
            .take(max)
            .collect();
        format!(
            "--- {function} log lines of {} ---\n{}\n--- end ---",
            needles.join(", "),
            kept.join("\n")
        )
    }

    /// Polls `source`'s queue and invokes `function` with its batches until dropped.
    pub fn poll_sqs(&self, function: &str, source: SqsSource) {
        for _ in 0..source.pollers.max(1) {
            tokio::spawn(event_sources::poll_sqs(
                self.invoker(),
                function.to_owned(),
                source.clone(),
                self.stop.subscribe(),
            ));
        }
    }

    /// Invokes `function` with a "Scheduled Event" every `every` until dropped.
    pub fn schedule(&self, function: &str, every: Duration) {
        tokio::spawn(event_sources::schedule(
            self.invoker(),
            function.to_owned(),
            every,
            self.stop.subscribe(),
        ));
    }
}

impl Drop for LocalLambda {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Invokes the functions of a [`LocalLambda`].
#[derive(Debug, Clone)]
pub struct Invoker {
    functions: Arc<HashMap<String, Arc<Function>>>,
}

impl Invoker {
    /// Invokes `function` with `payload` and waits for its answer: at most the function's
    /// timeout once an instance took it (queued time does not count, as on Lambda).
    pub async fn invoke(&self, function: &str, payload: Bytes) -> Result<Bytes, InvokeError> {
        let f = self
            .functions
            .get(function)
            .ok_or_else(|| InvokeError::UnknownFunction(function.to_owned()))?;
        let (answer, answered) = oneshot::channel();
        f.queue
            .send(Invocation {
                id: uuid::Uuid::new_v4().to_string(),
                payload,
                answer,
            })
            .map_err(|_| InvokeError::ShuttingDown)?;
        answered.await.unwrap_or(Err(InvokeError::ShuttingDown))
    }
}

/// Runs instance `instance` of `function` until the local Lambda stops: starts the binary,
/// waits for it to exit (or stops it when asked), fails what it was running, starts it again.
async fn supervise(
    function: Arc<Function>,
    instance: usize,
    api: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) {
    let mut quick_failures = 0u32;
    while !*stopped.borrow() {
        let started = Instant::now();
        let child = spawn_instance(&function, instance, api);
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(function = %function.spec.name, %error, "could not start an instance");
                function.crashes.fetch_add(1, Ordering::SeqCst);
                function.changed.notify_waiters();
                return;
            }
        };
        let asked = tokio::select! {
            _ = child.wait() => false,
            () = function.kill[instance].notified() => true,
            _ = stopped.changed() => true,
        };
        if asked {
            let _ = child.start_kill();
            let _ = child.wait().await;
        } else {
            function.crashes.fetch_add(1, Ordering::SeqCst);
        }
        function.polled[instance].store(false, Ordering::SeqCst);
        function.fail_instance(instance);
        function.changed.notify_waiters();
        // An instance that keeps failing at start-up (a configuration error) is started again
        // less and less often, as Lambda does.
        quick_failures = if !asked && started.elapsed() < Duration::from_secs(2) {
            quick_failures.saturating_add(1)
        } else {
            0
        };
        let pause = Duration::from_millis(50u64 << quick_failures.min(7));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => {}
        }
    }
}

fn spawn_instance(
    function: &Function,
    instance: usize,
    api: SocketAddr,
) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&function.log)?;
    let spec = &function.spec;
    let mut command = tokio::process::Command::new(&spec.binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.name),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/{instance}"))
        // The template's `LoggingConfig: {LogFormat: JSON}` (`spec.env` may say otherwise).
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command.spawn()
}
