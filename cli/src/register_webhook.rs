//! `cosell register-webhook --url <function url>`: points Partner Center's webhooks at this
//! deployment.
//!
//! 1. reads the current registration; registers (`POST`) when there is none, replaces it
//!    (`PUT`, the old connector's "overwrite") when there is one, with a warning naming the URL
//!    being replaced (only one URL can be registered per event: another environment that had
//!    it stops receiving events);
//! 2. registers the four referral events plus `test-created`;
//! 3. reads the registration back and checks URL and events;
//! 4. sends a validation event and prints its delivery results (bounded wait).
//!
//! Exit: 0 when the registration reads back as asked and the validation event was accepted,
//! 1 when it reads back differently or the validation event was not accepted, 2 when the
//! registration API could not be used.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use cosell_adapters::http::{HttpAdapterError, WebhookRegistrationClient};
use cosell_domain::webhook::{EventName, ValidationEventStatus, WebhookRegistration};
use serde::Serialize;

use crate::context::{Exit, Output};

/// How long to wait for the validation event's delivery results by default.
pub const DEFAULT_VALIDATION_WAIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The events registered: the four referral events and `test-created`.
pub fn events() -> Vec<EventName> {
    let mut events = EventName::REFERRAL_EVENTS.to_vec();
    events.push(EventName::TestCreated);
    events
}

/// What `register-webhook` did.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterReport {
    /// The URL asked for.
    pub url: String,
    /// `register` (POST) or `replace` (PUT).
    pub action: &'static str,
    /// The URL of the registration that was replaced, when there was one.
    pub replaced_url: Option<String>,
    /// Warnings for the operator (e.g. the URL being replaced).
    pub warnings: Vec<String>,
    /// The registration as read back.
    pub registration: WebhookRegistration,
    /// Differences between what was asked and what was read back.
    pub mismatches: Vec<String>,
    /// The validation event's correlation id.
    pub validation_correlation_id: Option<String>,
    /// The validation event's delivery status and attempts.
    pub validation: Option<ValidationEventStatus>,
    /// Why the validation event could not be sent or read, if so.
    pub validation_error: Option<String>,
}

impl RegisterReport {
    /// Whether the validation event was accepted by the receiver.
    pub fn validation_delivered(&self) -> bool {
        self.validation.as_ref().is_some_and(|status| {
            status.status.as_deref() == Some("completed")
                || status
                    .results
                    .iter()
                    .any(|r| r.response_code.as_deref() == Some("OK"))
        })
    }

    /// The exit status.
    pub fn exit(&self) -> Exit {
        if self.mismatches.is_empty() && self.validation_delivered() {
            Exit::Healthy
        } else {
            Exit::Problems
        }
    }
}

/// Registers `url` (POST, or PUT over an existing registration), reads it back, sends a
/// validation event and waits up to `wait` for its delivery results. An error means the
/// registration API could not be used (exit 2).
pub async fn register_webhook(
    client: &WebhookRegistrationClient,
    url: &str,
    wait: Duration,
) -> Result<RegisterReport, HttpAdapterError> {
    let url = url.trim();
    let wanted = WebhookRegistration {
        webhook_url: Some(url.to_owned()),
        webhook_events: events(),
        ..WebhookRegistration::default()
    };
    let existing = client.get().await?;
    let mut warnings = Vec::new();
    let (action, replaced_url) = match existing {
        None => {
            client.register(&wanted).await?;
            ("register", None)
        }
        Some(existing) => {
            let previous = existing.webhook_url.clone();
            match previous.as_deref() {
                Some(previous) if previous != url => warnings.push(format!(
                    "replacing the registration of {previous}: that endpoint stops receiving \
                     Partner Center events (only one URL can be registered per event)"
                )),
                Some(_) => {}
                None => warnings.push("replacing a registration without a URL".to_owned()),
            }
            client.update(&wanted).await?;
            ("replace", previous)
        }
    };

    let registration = client.get().await?.unwrap_or_default();
    let mismatches = registration_mismatches(&registration, url, &wanted.webhook_events);

    let mut report = RegisterReport {
        url: url.to_owned(),
        action,
        replaced_url,
        warnings,
        registration,
        mismatches,
        validation_correlation_id: None,
        validation: None,
        validation_error: None,
    };
    match client.send_validation_event().await {
        Ok(sent) => {
            report.validation_correlation_id = sent.correlation_id.clone();
            match sent.correlation_id {
                Some(id) => match wait_for_delivery(client, &id, wait).await {
                    Ok(status) => report.validation = Some(status),
                    Err(error) => report.validation_error = Some(error.to_string()),
                },
                None => {
                    report.validation_error =
                        Some("the validation event answer carried no correlationId".into());
                }
            }
        }
        Err(error) => report.validation_error = Some(error.to_string()),
    }
    Ok(report)
}

/// What differs between a registration and the URL / events asked for (empty when none).
pub fn registration_mismatches(
    registration: &WebhookRegistration,
    url: &str,
    events: &[EventName],
) -> Vec<String> {
    let mut mismatches = Vec::new();
    match registration.webhook_url.as_deref() {
        Some(found) if found == url => {}
        Some(found) => mismatches.push(format!("the registration points at {found}, not {url}")),
        None => mismatches.push("the registration has no URL".to_owned()),
    }
    let missing: Vec<&str> = events
        .iter()
        .filter(|event| !registration.webhook_events.contains(event))
        .map(EventName::as_str)
        .collect();
    if !missing.is_empty() {
        mismatches.push(format!(
            "the registration lacks the events {}",
            missing.join(", ")
        ));
    }
    mismatches
}

/// Polls the validation event until it is no longer `pending` or `wait` has passed; the last
/// status read.
async fn wait_for_delivery(
    client: &WebhookRegistrationClient,
    correlation_id: &str,
    wait: Duration,
) -> Result<ValidationEventStatus, HttpAdapterError> {
    let deadline = Instant::now() + wait;
    loop {
        let status = client.validation_event_status(correlation_id).await?;
        let pending = status
            .status
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case("pending"));
        if !pending || Instant::now() >= deadline {
            return Ok(status);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Prints the report (human lines or JSON) and returns the exit status.
pub fn print_report(report: &RegisterReport, output: Output, out: &mut dyn Write) -> Result<Exit> {
    let exit = report.exit();
    if output.is_json() {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a RegisterReport,
            validation_delivered: bool,
            exit: Exit,
        }
        Output::write_json(
            out,
            &Json {
                report,
                validation_delivered: report.validation_delivered(),
                exit,
            },
        )?;
        return Ok(exit);
    }
    for warning in &report.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    let verb = if report.action == "register" {
        "registered"
    } else {
        "replaced the registration with"
    };
    writeln!(out, "{verb} {}", report.url)?;
    let events: Vec<&str> = report
        .registration
        .webhook_events
        .iter()
        .map(EventName::as_str)
        .collect();
    writeln!(
        out,
        "read back: {} for {}",
        report
            .registration
            .webhook_url
            .as_deref()
            .unwrap_or("(no URL)"),
        events.join(", ")
    )?;
    for mismatch in &report.mismatches {
        writeln!(out, "problem: {mismatch}")?;
    }
    match (&report.validation, &report.validation_error) {
        (Some(status), _) => {
            writeln!(
                out,
                "validation event {}: {}",
                report.validation_correlation_id.as_deref().unwrap_or("?"),
                status.status.as_deref().unwrap_or("unknown")
            )?;
            for result in &status.results {
                let at = result
                    .date_time_utc
                    .as_ref()
                    .map_or_else(String::new, |at| format!("{at} "));
                let message = result
                    .response_message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map_or_else(String::new, |m| format!(" ({m})"));
                writeln!(
                    out,
                    "  {at}{}{message}",
                    result.response_code.as_deref().unwrap_or("no answer")
                )?;
            }
            if !report.validation_delivered() {
                writeln!(
                    out,
                    "problem: the validation event was not accepted; check that {} is the \
                     partner-center-events Function URL and that the function is deployed",
                    report.url
                )?;
            }
        }
        (None, Some(error)) => writeln!(out, "problem: validation event: {error}")?,
        (None, None) => {}
    }
    Ok(exit)
}

/// `cosell register-webhook` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// This deployment's partner-center-events Function URL.
    #[arg(long)]
    pub url: String,
    /// How long to wait for the validation event's delivery results, in seconds.
    #[arg(long, default_value_t = DEFAULT_VALIDATION_WAIT.as_secs())]
    pub wait_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cosell register-webhook` against the deployment configured in the environment.
pub async fn main(args: Args) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let exit = match run(&args, &mut out).await {
        Ok(exit) => exit,
        Err(error) => {
            let _ = out.flush();
            eprintln!("register-webhook could not run: {error:#}");
            Exit::CouldNotCheck
        }
    };
    exit.into()
}

async fn run(args: &Args, out: &mut dyn Write) -> Result<Exit> {
    let deployment = crate::context::Deployment::from_env().await?;
    let client = deployment.registration_client()?;
    let report = register_webhook(&client, &args.url, Duration::from_secs(args.wait_secs)).await?;
    print_report(&report, Output::from_flag(args.json), out)
}
