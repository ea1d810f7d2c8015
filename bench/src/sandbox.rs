//! The sandbox as a separate process ([`SandboxProcess`], so the benchmark's CPU time is the
//! handler's, not the sandbox's) and its control API ([`Control`]: seeding referrals, the
//! request log, the CRM's opportunities).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cosell_domain::ids::CrmKind;
use serde_json::{Value, json};

use crate::stats::ExternalCalls;

/// The sandbox binary's name.
pub const SANDBOX_BIN: &str = "cosell-sandbox";

/// How long the sandbox may take to answer after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The build profile directory this executable runs from (`release` / `debug`) and the
/// target directory above it, when it sits in one.
fn target_layout(exe: &Path) -> Option<(PathBuf, String)> {
    let profile_dir = exe.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    Some((profile_dir.parent()?.to_path_buf(), profile))
}

/// Where the sandbox binary is: `explicit`, else next to this executable (cargo puts every
/// binary of the workspace in the same `target/<profile>/`). When it is missing there, or when
/// the benchmark runs under `cargo run` (so it is never stale), it is built with cargo into
/// the same target directory and profile first.
pub fn locate_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--sandbox-bin {}: no such file", path.display());
    }
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    let sibling = exe.with_file_name(format!("{SANDBOX_BIN}{}", std::env::consts::EXE_SUFFIX));
    let under_cargo = std::env::var_os("CARGO").is_some();
    if sibling.is_file() && !under_cargo {
        return Ok(sibling);
    }
    build_sandbox(&exe)?;
    if sibling.is_file() {
        Ok(sibling)
    } else {
        bail!(
            "built {SANDBOX_BIN} but it is not at {}; build it (`cargo build --release -p \
             cosell-sandbox`) and pass --sandbox-bin",
            sibling.display()
        )
    }
}

/// `cargo build -p cosell-sandbox --bin cosell-sandbox` for this executable's target
/// directory and profile, from the workspace this crate was built in.
fn build_sandbox(exe: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the benchmark crate has no parent directory")?;
    let mut command = Command::new(&cargo);
    command.current_dir(workspace).args([
        "build",
        "--quiet",
        "-p",
        "cosell-sandbox",
        "--bin",
        SANDBOX_BIN,
    ]);
    match target_layout(exe) {
        Some((target_dir, profile)) if profile == "release" || profile == "debug" => {
            command.arg("--target-dir").arg(target_dir);
            if profile == "release" {
                command.arg("--release");
            }
        }
        Some((target_dir, profile)) => {
            command
                .arg("--target-dir")
                .arg(target_dir)
                .args(["--profile", &profile]);
        }
        None if cfg!(debug_assertions) => {}
        None => {
            command.arg("--release");
        }
    }
    eprintln!("building {SANDBOX_BIN} ({command:?}) …");
    let status = command
        .status()
        .with_context(|| format!("running {} to build {SANDBOX_BIN}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("building {SANDBOX_BIN} failed ({status})");
    }
    Ok(())
}

/// A running sandbox process, killed when dropped.
#[derive(Debug)]
pub struct SandboxProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its address (the verifier's plain-http certificate host).
    pub addr: SocketAddr,
}

impl SandboxProcess {
    /// Start `binary` on a free loopback port, its output appended to `log`, and wait until it
    /// answers. A port taken between choosing and binding is retried on another.
    pub async fn start(binary: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(binary, log).await {
                Ok(sandbox) => return Ok(sandbox),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the sandbox did not start")))
    }

    async fn try_start(binary: &Path, log: &Path) -> anyhow::Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free loopback port")?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(binary)
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut sandbox = Self {
            child,
            base_url: format!("http://{addr}"),
            addr,
        };
        sandbox.wait_ready(log).await?;
        Ok(sandbox)
    }

    async fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/_sandbox/clock", self.base_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the sandbox exited at start-up ({status}); see {}",
                    log.display()
                );
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the sandbox did not answer within {} s; see {}",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        // The child we started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sandbox's control API (never counted in its request log).
#[derive(Debug, Clone)]
pub struct Control {
    http: reqwest::Client,
    base_url: String,
}

impl Control {
    /// The control API of the sandbox at `base_url`.
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// `method path` with an optional JSON body; the JSON answer (`null` when none). A non-2xx
    /// answer is an error naming the call.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create an incoming Microsoft co-sell referral `id` for a customer of its own (name,
    /// postal code and contact email unique to `tag`), so its sync finds no account or contact
    /// and creates both: the most expensive new referral.
    pub async fn seed_referral(&self, id: &str, tag: &str) -> anyhow::Result<()> {
        let overrides = json!({
            "id": id,
            "name": format!("Bench referral {tag}"),
            "customerProfile": {
                "name": format!("Bench Customer {tag}"),
                "address": { "postalCode": postal_code(tag) },
                "team": [ {
                    "contactPreference": { "locale": "en-us", "disableNotifications": false },
                    "firstName": "Bench",
                    "lastName": format!("Contact {tag}"),
                    "phoneNumber": "1234567890",
                    "email": format!("contact.{tag}@bench.example")
                } ]
            }
        });
        self.call(
            reqwest::Method::POST,
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            Some(&overrides),
        )
        .await?;
        Ok(())
    }

    /// Change referral `id` in Partner Center (deal value and notes; a new `eTag` and
    /// `updatedDateTime`), as a seller editing it would.
    pub async fn change_referral(&self, id: &str, revision: u64) -> anyhow::Result<()> {
        let path = format!("/_sandbox/partner-center/referrals/{id}");
        let mut referral = self.call(reqwest::Method::GET, &path, None).await?;
        referral["details"]["dealValue"] = json!(60_000 + revision);
        referral["details"]["notes"] = json!(format!("Revised scope, revision {revision}."));
        if let Some(object) = referral.as_object_mut() {
            object.remove("eTag");
            object.remove("updatedDateTime");
        }
        self.call(reqwest::Method::PUT, &path, Some(&referral))
            .await?;
        Ok(())
    }

    /// The referral's `updatedDateTime` as the sandbox's Partner Center holds it (read through
    /// the control API, which is not in the request log).
    pub async fn referral_updated(
        &self,
        id: &str,
    ) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        let path = format!("/_sandbox/partner-center/referrals/{id}");
        let referral = self.call(reqwest::Method::GET, &path, None).await?;
        let updated = referral["updatedDateTime"]
            .as_str()
            .with_context(|| format!("referral {id} has no updatedDateTime"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(updated)
            .with_context(|| format!("referral {id}: updatedDateTime {updated:?}"))?
            .to_utc())
    }

    /// Forget the request log.
    pub async fn clear_requests(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "/_sandbox/requests", None)
            .await?;
        Ok(())
    }

    /// The API requests logged since the last clear, classified; then clear the log.
    pub async fn take_requests(&self, crm: CrmKind) -> anyhow::Result<ExternalCalls> {
        let log = self
            .call(reqwest::Method::GET, "/_sandbox/requests", None)
            .await?;
        self.clear_requests().await?;
        let requests = log["requests"].as_array().cloned().unwrap_or_default();
        Ok(ExternalCalls::from_log(&requests, crm_service(crm)))
    }

    /// How many opportunities the CRM holds per referral identifier.
    pub async fn opportunities_per_referral(
        &self,
        crm: CrmKind,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let (path, list, field) = match crm {
            CrmKind::Dataverse => (
                "/_sandbox/dataverse/opportunities",
                "value",
                "msft_microsoftpartnercenterreferralidentifier",
            ),
            CrmKind::Salesforce => (
                "/_sandbox/salesforce/Opportunity",
                "records",
                "Referral_Identifier__c",
            ),
        };
        let rows = self.call(reqwest::Method::GET, path, None).await?;
        let mut counts = BTreeMap::new();
        for row in rows[list].as_array().into_iter().flatten() {
            if let Some(referral) = row[field].as_str() {
                *counts.entry(referral.to_owned()).or_default() += 1;
            }
        }
        Ok(counts)
    }
}

/// The sandbox request log's service name of a CRM's API.
pub fn crm_service(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Dataverse => "dataverse",
        CrmKind::Salesforce => "salesforce",
    }
}

/// A five-digit postal code derived from `tag`.
fn postal_code(tag: &str) -> String {
    let sum = tag.bytes().fold(0_u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    format!("{:05}", sum % 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_layout_is_read_from_the_executable_path() {
        let (dir, profile) =
            target_layout(Path::new("/w/target/release/cosell-bench")).expect("a layout");
        assert_eq!(dir, Path::new("/w/target"));
        assert_eq!(profile, "release");
    }

    #[test]
    fn postal_codes_are_five_digits() {
        for tag in ["a", "run-1-000199", ""] {
            let code = postal_code(tag);
            assert_eq!(code.len(), 5, "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
        assert_eq!(postal_code("x"), postal_code("x"));
    }
}
