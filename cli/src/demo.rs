//! `cosell demo`: a self-contained walk-through with no AWS account and no Partner Center
//! tenant. Everything runs in this process against the local sandbox (`cosell-sandbox`), with
//! the sandbox's built-in identities as embedded defaults:
//!
//! 1. the sandbox (Entra ID, Partner Center, Dataverse, Salesforce) on a free loopback port;
//! 2. the `partner-center-events` function twice — for Dynamics 365 (Dataverse) and for
//!    Salesforce — each with in-memory stores, behind a local HTTP bridge that hands every
//!    request to the function's real `handler::handle` ([`bridge`]);
//! 3. per CRM: Microsoft shares a co-sell referral, the signed webhook arrives, the
//!    opportunity is created and its id written back into the referral;
//! 4. the same delivery arrives three more times: skipped, no call made;
//! 5. the deal changes in Partner Center: the opportunity follows;
//! 6. the referral's audit timeline and the function's API calls per service;
//! 7. the other direction, with the `crm-events` function behind a bridge per CRM (the
//!    sandbox's Dataverse webhook and Salesforce Outbound Message point at it): a seller turns
//!    sync on for an opportunity, a co-sell referral appears in Partner Center and its id is
//!    written back ([`to_partner_center`]);
//! 8. the write-back's own notification is skipped as an echo, with no Partner Center call;
//! 9. an opportunity without a solution is not sent: its audit field names the fix.
//!
//! Partner Center allows one webhook URL per event and a referral holds one
//! `externalReferenceId`, so the scenario runs once per CRM, each with its own referral; the
//! registration is made with `POST` for the first CRM and switched with `PUT` for the second.
//!
//! Any unexpected state ends the demo with an error saying what was expected and what was
//! found ([`run_demo`] returns `Err`; `cosell demo` exits 1): it doubles as a smoke test.

mod bridge;
mod function;
mod sandbox;

pub use bridge::{Call, Exchange};
pub use function::{
    Crm, DATAVERSE_WEBHOOK_KEY, SALESFORCE_ENDPOINT_SECRET, crm_events_environment, environment,
};

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Days, NaiveDate};
use cosell_domain::ports::{AuditEntry, AuditEvent};
use cosell_sandbox::SandboxConfig;
use reqwest::Method;
use serde_json::{Value, json};

use bridge::{Bridge, Function};
pub use sandbox::SandboxClient;

/// How often step 4 delivers the first event again.
pub const DUPLICATES: usize = 3;
/// The deal value Partner Center changes to in step 5.
pub const NEW_DEAL_VALUE: f64 = 72_500.0;
/// How many days step 5 moves the closing date.
const CLOSING_DATE_SHIFT_DAYS: u64 = 30;

/// What the demo found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Per CRM, in the order they ran.
    pub crms: Vec<CrmSummary>,
    /// Wall time of the whole walk-through.
    pub elapsed: Duration,
}

/// What the walk-through found for one CRM.
#[derive(Debug, Clone)]
pub struct CrmSummary {
    pub crm: Crm,
    /// The Microsoft-initiated co-sell referral.
    pub referral_id: String,
    /// The CRM opportunity created for it.
    pub opportunity_id: String,
    /// Opportunities carrying the referral id at the end.
    pub opportunities: usize,
    /// The referral's `externalReferenceId` after the sync.
    pub external_reference_id: Option<String>,
    /// The function's answers to the webhooks of step 3 (outcome names).
    pub first_outcomes: Vec<String>,
    /// The function's answers to the re-deliveries of step 4.
    pub duplicate_outcomes: Vec<String>,
    /// API requests the sandbox received while step 4 ran.
    pub calls_during_duplicates: usize,
    /// The function's answers to the webhooks of step 5.
    pub update_outcomes: Vec<String>,
    /// The opportunity's amount before and after step 5, and what step 5 asked for.
    pub amount_before: Option<f64>,
    pub amount_after: Option<f64>,
    pub expected_amount: f64,
    /// The opportunity's close date before and after step 5, and what step 5 asked for.
    pub close_date_before: String,
    pub close_date_after: String,
    pub expected_close_date: String,
    /// The referral's audit events, oldest first.
    pub audit: Vec<AuditEvent>,
    /// The function's API calls from its first delivery on: service → method → count.
    pub api_calls: BTreeMap<String, BTreeMap<String, usize>>,
    /// The other direction (steps 7 to 9), with `crm-events`.
    pub to_partner_center: ToPartnerCenterSummary,
}

impl CrmSummary {
    /// The referral carries the opportunity's id.
    pub fn linked_back(&self) -> bool {
        self.external_reference_id.as_deref() == Some(self.opportunity_id.as_str())
    }

    /// The change of step 5 reached the opportunity.
    pub fn update_applied(&self) -> bool {
        self.amount_after == Some(self.expected_amount)
            && self.close_date_after == self.expected_close_date
    }

    /// How many audit entries are `event`.
    pub fn audit_count(&self, event: &AuditEvent) -> usize {
        self.audit.iter().filter(|seen| *seen == event).count()
    }
}

macro_rules! say {
    ($out:expr) => { writeln!($out)? };
    ($out:expr, $($arg:tt)*) => { writeln!($out, $($arg)*)? };
}

pub mod to_partner_center;

pub use to_partner_center::ToPartnerCenterSummary;

/// Runs the walk-through, writing its steps to `out`; the summary, or what was not as
/// expected.
pub async fn run_demo<W: Write>(out: &mut W) -> Result<Summary> {
    let started = Instant::now();
    say!(
        out,
        "cosell-sync demo: Partner Center co-sell referrals <-> Dynamics 365 and Salesforce"
    );
    say!(
        out,
        "No AWS account, no Partner Center tenant: embedded defaults and the local sandbox."
    );
    say!(out);

    let running = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .context("starting the sandbox")?;
    let sandbox = SandboxClient::new(&running.base_url);
    say!(
        out,
        "[1] Sandbox (Entra ID, Partner Center, Dataverse, Salesforce) at {}",
        running.base_url
    );

    let mut instances = Vec::new();
    for crm in Crm::ALL {
        let app = function::build(&running, crm)?;
        let function = Function::PartnerCenterEvents(app);
        let bridge = Bridge::start(function, crm.request_prefix(), sandbox.clone()).await?;
        instances.push((crm, bridge));
    }
    say!(
        out,
        "[2] partner-center-events started twice (in-memory stores, the sandbox's built-in"
    );
    say!(
        out,
        "    credentials and trust anchor; each local URL turns the request into a"
    );
    say!(
        out,
        "    lambda_http::Request for handler::handle: verify -> parse -> sync):"
    );
    for (crm, bridge) in &instances {
        say!(out, "      {:<26} {}", crm.label(), bridge.url);
    }
    say!(
        out,
        "    Partner Center allows one webhook URL per event and a referral holds one"
    );
    say!(
        out,
        "    externalReferenceId, so the scenario runs once per CRM, each with its own"
    );
    say!(
        out,
        "    referral; the webhook registration is switched with PUT in between."
    );

    let mut crms = Vec::new();
    for (index, (crm, bridge)) in instances.iter().enumerate() {
        let method = if index == 0 {
            Method::POST
        } else {
            Method::PUT
        };
        let summary = walk_through(out, &sandbox, *crm, bridge, method)
            .await
            .with_context(|| format!("{} walk-through", crm.label()))?;
        crms.push(summary);
    }

    let order: Vec<Crm> = crms.iter().map(|summary| summary.crm).collect();
    let back = to_partner_center::run(out, &sandbox, &running.base_url, &order).await?;
    for (summary, back) in crms.iter_mut().zip(back) {
        summary.to_partner_center = back;
    }

    let elapsed = started.elapsed();
    say!(out);
    say!(
        out,
        "Demo passed in {:.1} s: one opportunity per CRM, linked back to its referral;",
        elapsed.as_secs_f64()
    );
    say!(
        out,
        "{DUPLICATES} duplicate deliveries per CRM made no call; the Partner Center change reached both CRMs;"
    );
    say!(
        out,
        "a seller's sync created one referral per CRM, linked both ways; the echo made no Partner"
    );
    say!(
        out,
        "Center call; the opportunity without a solution shows the fix and was not sent."
    );
    Ok(Summary { crms, elapsed })
}

/// Steps 3 to 6 for one CRM.
async fn walk_through<W: Write>(
    out: &mut W,
    sandbox: &SandboxClient,
    crm: Crm,
    bridge: &Bridge,
    registration: Method,
) -> Result<CrmSummary> {
    say!(out);
    say!(out, "=== {} ===", crm.label());
    sandbox
        .register_webhook(registration.clone(), &bridge.url)
        .await?;
    say!(
        out,
        "    Webhook registration: {registration} /webhooks/v1/registration (app-only Entra token)"
    );
    say!(
        out,
        "      -> {} for referral-created/-updated, related-referral-created/-updated",
        bridge.url
    );
    let function_calls_from = sandbox.last_request_seq().await?;

    // 3. A Microsoft-initiated co-sell referral.
    let deliveries = sandbox.deliveries().await?.len();
    let exchanges = bridge.exchanges().len();
    let referral = sandbox
        .post(
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            &json!({}),
        )
        .await?;
    let referral_id = text(&referral["id"]);
    say!(
        out,
        "[3] Microsoft shares a co-sell referral: {referral_id} (\"{}\", {} {})",
        text(&referral["name"]),
        money(&referral["details"]["dealValue"]),
        text(&referral["details"]["currency"])
    );
    sandbox.settled_deliveries(deliveries + 1).await?;
    let first = bridge.exchanges().split_off(exchanges);
    show_exchanges(out, &first)?;
    expect_outcomes(
        "the answers to the first webhooks",
        &first,
        &["created", "echo_skipped"],
    )?;
    let rows = sandbox::poll("the opportunity in the CRM", || async {
        let rows = opportunities(sandbox, crm, &referral_id).await?;
        Ok((!rows.is_empty()).then_some(rows))
    })
    .await?;
    expect("opportunities for the referral", 1, rows.len())?;
    let before = Opportunity::read(sandbox, crm, &rows[0]).await?;
    say!(out, "    The {} opportunity:", crm.label());
    before.show(out)?;
    let referral_path = format!("/_sandbox/partner-center/referrals/{referral_id}");
    let linked = sandbox.get(&referral_path).await?;
    let external_reference_id = linked["externalReferenceId"].as_str().map(str::to_owned);
    expect(
        "the referral's externalReferenceId",
        &before.id,
        external_reference_id.as_deref().unwrap_or("(none)"),
    )?;
    say!(
        out,
        "    Written back: the referral's externalReferenceId = {} (the opportunity's id)",
        before.id
    );

    // 4. The same delivery again.
    let Some(created) = first
        .iter()
        .find(|exchange| exchange.event_name == "referral-created")
    else {
        bail!("expected a referral-created delivery, found none");
    };
    say!(
        out,
        "[4] Partner Center delivers the same referral-created event {DUPLICATES} more times."
    );
    let sent_change = serde_json::from_slice::<Value>(&created.body)
        .ok()
        .map(|event| text(&event["ResourceChangeUtcDate"]))
        .unwrap_or_default();
    let current_change = text(&linked["updatedDateTime"]);
    if same_instant(&sent_change, &current_change) {
        say!(
            out,
            "    The exact signed request as received is replayed through the function URL."
        );
    } else {
        say!(
            out,
            "    The sandbox's re-send (POST /_sandbox/partner-center/events) would stamp the"
        );
        say!(
            out,
            "    referral's current updatedDateTime ({current_change}), which our write-back"
        );
        say!(
            out,
            "    changed: a new change, not a redelivery. So the signed request as received"
        );
        say!(
            out,
            "    (ResourceChangeUtcDate {sent_change}) is replayed byte for byte instead."
        );
    }
    let calls_from = sandbox.last_request_seq().await?;
    let replays_from = bridge.exchanges().len();
    for _ in 0..DUPLICATES {
        replay(&bridge.url, created).await?;
    }
    let replays = bridge.exchanges().split_off(replays_from);
    show_exchanges(out, &replays)?;
    expect_outcomes(
        "the answers to the re-deliveries",
        &replays,
        &["duplicate_skipped"; DUPLICATES],
    )?;
    let calls = sandbox.requests_since(calls_from).await?;
    let count = opportunities(sandbox, crm, &referral_id).await?.len();
    say!(
        out,
        "    Opportunities for the referral: {count}; API calls made meanwhile \
         (/_sandbox/requests): {}",
        calls.len()
    );
    expect("opportunities after the re-deliveries", 1, count)?;
    expect(
        "Partner Center / CRM calls during the re-deliveries",
        0,
        calls.len(),
    )?;

    // 5. The deal changes in Partner Center.
    let mut changed = sandbox.get(&referral_path).await?;
    let closing = text(&changed["details"]["closingDateTime"]);
    let closing_date = NaiveDate::parse_from_str(closing.get(..10).unwrap_or_default(), "%Y-%m-%d")
        .with_context(|| format!("the referral's closingDateTime {closing:?}"))?;
    let new_closing = closing_date
        .checked_add_days(Days::new(CLOSING_DATE_SHIFT_DAYS))
        .context("the new closing date")?;
    changed["details"]["dealValue"] = json!(NEW_DEAL_VALUE);
    changed["details"]["closingDateTime"] = json!(format!("{new_closing}T00:00:00Z"));
    if let Some(object) = changed.as_object_mut() {
        // New ones are assigned, as for any change.
        object.remove("eTag");
        object.remove("updatedDateTime");
    }
    say!(
        out,
        "[5] The deal changes in Partner Center: value {} -> {}, closing date {} -> {new_closing}",
        money(&referral["details"]["dealValue"]),
        money(&json!(NEW_DEAL_VALUE)),
        closing_date
    );
    let deliveries = sandbox.deliveries().await?.len();
    let exchanges = bridge.exchanges().len();
    sandbox.put(&referral_path, &changed).await?;
    sandbox.settled_deliveries(deliveries + 1).await?;
    let updates = bridge.exchanges().split_off(exchanges);
    show_exchanges(out, &updates)?;
    expect_outcomes("the answers to the change", &updates, &["updated"])?;
    let rows = opportunities(sandbox, crm, &referral_id).await?;
    expect("opportunities after the change", 1, rows.len())?;
    let after = Opportunity::read(sandbox, crm, &rows[0]).await?;
    say!(
        out,
        "    The opportunity now: amount {} {}, close date {}",
        after.amount_text,
        after.currency,
        after.close_date
    );
    expect("the opportunity's id", &before.id, &after.id)?;
    expect(
        "the opportunity's amount",
        &money(&json!(NEW_DEAL_VALUE)),
        &after.amount_text,
    )?;
    expect(
        "the opportunity's close date",
        &new_closing.to_string(),
        &after.close_date,
    )?;

    // 6. Audit timeline and API calls.
    let referral_key = referral_id.to_ascii_lowercase();
    let entries: Vec<AuditEntry> = bridge
        .function()
        .audit_entries()
        .into_iter()
        .filter(|entry| {
            entry
                .referral_id
                .is_some_and(|id| id.to_string().to_ascii_lowercase() == referral_key)
        })
        .collect();
    say!(
        out,
        "[6] Audit timeline of the referral (in-memory audit log, UTC, newest last):"
    );
    for entry in &entries {
        say!(
            out,
            "      {}  {:<5} {}",
            entry.at.format("%H:%M:%S%.3f"),
            entry.correlation_id.as_deref().unwrap_or("-"),
            describe(&entry.event)
        );
    }
    let api_calls = sandbox.calls_by_service_since(function_calls_from).await?;
    say!(
        out,
        "    API calls by the function, per service (/_sandbox/requests?service=...):"
    );
    for service in sandbox::SERVICES {
        let Some(methods) = api_calls.get(service) else {
            continue;
        };
        let total: usize = methods.values().sum();
        let methods: Vec<String> = methods
            .iter()
            .map(|(method, count)| format!("{method} {count}"))
            .collect();
        say!(
            out,
            "      {service:<16} {total:>2}  ({})",
            methods.join(", ")
        );
    }

    let summary = CrmSummary {
        crm,
        referral_id,
        opportunity_id: before.id.clone(),
        opportunities: rows.len(),
        external_reference_id,
        first_outcomes: outcomes(&first),
        duplicate_outcomes: outcomes(&replays),
        calls_during_duplicates: calls.len(),
        update_outcomes: outcomes(&updates),
        amount_before: before.amount,
        amount_after: after.amount,
        expected_amount: NEW_DEAL_VALUE,
        close_date_before: before.close_date,
        close_date_after: after.close_date,
        expected_close_date: new_closing.to_string(),
        audit: entries.into_iter().map(|entry| entry.event).collect(),
        api_calls,
        to_partner_center: ToPartnerCenterSummary::default(),
    };
    for (event, count) in [
        (AuditEvent::Created, 1),
        (AuditEvent::WrittenBack, 1),
        // A duplicate is answered by the failed write taking its key: no audit entry (the
        // `DuplicateSkipped` metric counts it).
        (AuditEvent::DuplicateSkipped, 0),
        (AuditEvent::Updated, 1),
    ] {
        expect(
            &format!("{event:?} audit entries"),
            count,
            summary.audit_count(&event),
        )?;
    }
    Ok(summary)
}

/// The opportunity fields the demo shows, read the CRM's way.
#[derive(Debug, Clone)]
struct Opportunity {
    id: String,
    name: String,
    amount: Option<f64>,
    amount_text: String,
    currency: String,
    close_date: String,
    status: String,
    referral_id: String,
}

impl Opportunity {
    /// From a raw row (`/_sandbox/dataverse/opportunities`, `/_sandbox/salesforce/Opportunity`).
    async fn read(sandbox: &SandboxClient, crm: Crm, row: &Value) -> Result<Self> {
        Ok(match crm {
            Crm::Dynamics => {
                let currency_id = text(&row["_transactioncurrencyid_value"]);
                let currency = if currency_id.is_empty() {
                    "(no currency)".to_owned()
                } else {
                    let currency = sandbox
                        .get(&format!(
                            "/_sandbox/dataverse/transactioncurrencies/{currency_id}"
                        ))
                        .await?;
                    text(&currency["isocurrencycode"])
                };
                Self {
                    id: text(&row["opportunityid"]),
                    name: text(&row["name"]),
                    amount: row["estimatedvalue"].as_f64(),
                    amount_text: money(&row["estimatedvalue"]),
                    currency,
                    close_date: text(&row["estimatedclosedate"]),
                    status: dataverse_status(&row["statecode"], &row["statuscode"]),
                    referral_id: text(&row[DATAVERSE_REFERRAL_FIELD]),
                }
            }
            Crm::Salesforce => Self {
                id: text(&row["Id"]),
                name: text(&row["Name"]),
                amount: row["Amount"].as_f64(),
                amount_text: money(&row["Amount"]),
                currency: text(&row["CurrencyIsoCode"]),
                close_date: text(&row["CloseDate"]),
                status: format!("stage {}", text(&row["StageName"])),
                referral_id: text(&row[SALESFORCE_REFERRAL_FIELD]),
            },
        })
    }

    fn show<W: Write>(&self, out: &mut W) -> Result<()> {
        for (label, value) in [
            ("id", self.id.as_str()),
            ("name", &self.name),
            ("amount", &format!("{} {}", self.amount_text, self.currency)),
            ("close date", &self.close_date),
            ("status", &self.status),
            ("referral id", &self.referral_id),
        ] {
            say!(out, "      {label:<12} {value}");
        }
        Ok(())
    }
}

const DATAVERSE_REFERRAL_FIELD: &str = "msft_microsoftpartnercenterreferralidentifier";
const SALESFORCE_REFERRAL_FIELD: &str = "Referral_Identifier__c";

/// The CRM's opportunities carrying `referral_id` (raw control reads).
async fn opportunities(sandbox: &SandboxClient, crm: Crm, referral_id: &str) -> Result<Vec<Value>> {
    let (path, member, field) = match crm {
        Crm::Dynamics => (
            "/_sandbox/dataverse/opportunities",
            "value",
            DATAVERSE_REFERRAL_FIELD,
        ),
        Crm::Salesforce => (
            "/_sandbox/salesforce/Opportunity",
            "records",
            SALESFORCE_REFERRAL_FIELD,
        ),
    };
    let all = sandbox.get(path).await?;
    Ok(all[member]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|row| {
            row[field]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(referral_id))
        })
        .cloned()
        .collect())
}

/// Sends a captured request again, byte for byte (the headers Partner Center sent, the same
/// body), to the function URL.
async fn replay(url: &str, exchange: &Exchange) -> Result<()> {
    let mut request = reqwest::Client::new().post(url).body(exchange.body.clone());
    for (name, value) in &exchange.headers {
        if !matches!(name.as_str(), "host" | "content-length") {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    request
        .send()
        .await
        .context("replaying the referral-created request")?;
    Ok(())
}

fn show_exchanges<W: Write>(out: &mut W, exchanges: &[Exchange]) -> Result<()> {
    for exchange in exchanges {
        say!(
            out,
            "      {:<5} {:<18} -> {} {}{}",
            exchange.request_id,
            exchange.event_name,
            exchange.status,
            exchange.outcome,
            match exchange.outcome.as_str() {
                "echo_skipped" => "  (the event our own write-back raised)",
                "duplicate_skipped" => "  (already handled: no call)",
                _ => "",
            }
        );
    }
    Ok(())
}

fn outcomes(exchanges: &[Exchange]) -> Vec<String> {
    exchanges
        .iter()
        .map(|exchange| exchange.outcome.clone())
        .collect()
}

fn expect_outcomes(what: &str, exchanges: &[Exchange], expected: &[&str]) -> Result<()> {
    let found = outcomes(exchanges);
    let answered_200 = exchanges.iter().all(|exchange| exchange.status == 200);
    if found != expected || !answered_200 {
        let found: Vec<String> = exchanges
            .iter()
            .map(|exchange| {
                format!(
                    "{} {} {}",
                    exchange.event_name, exchange.status, exchange.outcome
                )
            })
            .collect();
        bail!(
            "{what}: expected 200 {}, found [{}]",
            expected.join(", "),
            found.join(", ")
        );
    }
    Ok(())
}

/// Fails with "`what`: expected …, found …" unless they are equal.
fn expect<E, F>(what: &str, expected: E, found: F) -> Result<()>
where
    E: PartialEq<F> + Display,
    F: Display,
{
    if expected == found {
        Ok(())
    } else {
        bail!("{what}: expected {expected}, found {found}")
    }
}

fn describe(event: &AuditEvent) -> String {
    match event {
        AuditEvent::Received => "event received".to_owned(),
        AuditEvent::DuplicateSkipped => "same delivery again: skipped".to_owned(),
        AuditEvent::UnchangedSkipped => "nothing mapped changed: skipped".to_owned(),
        AuditEvent::HeldUntilAccepted { reason, fix } => {
            format!("not sent until accepted: {reason} Fix: {fix}")
        }
        AuditEvent::EchoSkipped => "own write-back came back: skipped".to_owned(),
        AuditEvent::Created => "opportunity created".to_owned(),
        AuditEvent::Updated => "opportunity updated".to_owned(),
        AuditEvent::WrittenBack => "opportunity id written back to the referral".to_owned(),
        AuditEvent::Failed { reason, fix } => format!("FAILED: {reason} Fix: {fix}"),
        AuditEvent::RetryEnqueued { attempt } => format!("retry {attempt} enqueued"),
        AuditEvent::Redriven => "redriven by an operator".to_owned(),
        AuditEvent::ConflictResolved { fields } => {
            cosell_domain::sync::conflict_text(fields).to_lowercase()
        }
    }
}

/// A string member, or empty.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A money amount without a needless `.0`.
fn money(value: &Value) -> String {
    match value.as_f64() {
        Some(amount) if amount.fract() == 0.0 && amount.abs() < 1e15 => format!("{amount:.0}"),
        Some(amount) => amount.to_string(),
        None => "(none)".to_owned(),
    }
}

/// Dataverse `statecode` / `statuscode` of an opportunity, in words.
fn dataverse_status(state: &Value, status: &Value) -> String {
    let words = match (state.as_i64(), status.as_i64()) {
        (Some(0), Some(1)) => "Open, In Progress",
        (Some(0), Some(2)) => "Open, On Hold",
        (Some(1), Some(3)) => "Won",
        (Some(2), Some(4)) => "Lost, Canceled",
        (Some(2), Some(5)) => "Lost, Out-Sold",
        _ => "",
    };
    format!(
        "statecode {} / statuscode {}{}",
        text(state),
        text(status),
        if words.is_empty() {
            String::new()
        } else {
            format!(" ({words})")
        }
    )
}

/// Whether two RFC 3339 times are the same instant.
fn same_instant(a: &str, b: &str) -> bool {
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_state_says_what_was_expected_and_what_was_found() {
        assert!(expect("opportunities", 1, 1).is_ok());
        let error = expect("opportunities for the referral", 1, 2).unwrap_err();
        assert_eq!(
            error.to_string(),
            "opportunities for the referral: expected 1, found 2"
        );
    }

    #[test]
    fn amounts_statuses_and_times_read_as_people_write_them() {
        assert_eq!(money(&json!(50000)), "50000");
        assert_eq!(money(&json!(72500.0)), "72500");
        assert_eq!(money(&json!(12.5)), "12.5");
        assert_eq!(money(&Value::Null), "(none)");
        assert_eq!(
            dataverse_status(&json!(0), &json!(2)),
            "statecode 0 / statuscode 2 (Open, On Hold)"
        );
        assert_eq!(
            dataverse_status(&json!(0), &json!(7)),
            "statecode 0 / statuscode 7"
        );
        assert!(same_instant(
            "2026-01-05T10:00:00.1234567Z",
            "2026-01-05T10:00:00.1234567+00:00"
        ));
        assert!(!same_instant(
            "2026-01-05T10:00:00.1234567Z",
            "2026-01-05T10:00:00.1234568+00:00"
        ));
        assert!(!same_instant("", "2026-01-05T10:00:00Z"));
    }
}
