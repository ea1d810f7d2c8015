//! `cosell soak`: the whole stack under load ([`crate::stack`]: the real function binaries on
//! the local Lambda, the sandbox, moto), then a count of what was lost, duplicated or diverged.
//!
//! The load, drawn from one seed: Microsoft-initiated referrals (Partner Center → CRM), updates
//! of them in Partner Center, sellers turning sync on for new CRM opportunities (CRM → Partner
//! Center), and re-sent webhooks (duplicates). Sent several at a time, so deliveries arrive out
//! of order. Faults on the way: the CRM answering 503 and 429, Entra ID 503, access tokens
//! expiring every [`TOKEN_LIFETIME`] (the sandbox's token lifetime), an instance of each
//! function killed mid-invocation.
//!
//! Then: wait until nothing moves (every webhook delivery finished, the retry queue empty),
//! redrive the dead-letter queue and wait again, run `reconcile` until its pass has covered
//! both sides, waiting again after each run. What reconcile had to queue is the webhook path's
//! shortfall. Finally compare both sides:
//! - **lost**: a referral with no opportunity, an opportunity with sync on and no referral, or a
//!   link not written back;
//! - **duplicated**: a referral with two opportunities, an opportunity with two referrals;
//! - **diverged**: an opportunity whose deal value is not its referral's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cosell_adapters::SqsQueue;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::demo::{Crm, SandboxClient};
use crate::stack::{CRM_EVENTS, PARTNER_CENTER_EVENTS, RETRY_WORKER, Stack, StackOptions};

/// The Dataverse column and Salesforce field holding the referral id on an opportunity.
const DATAVERSE_REFERRAL_FIELD: &str = "msft_microsoftpartnercenterreferralidentifier";
/// See [`DATAVERSE_REFERRAL_FIELD`].
const SALESFORCE_REFERRAL_FIELD: &str = "Referral_Identifier__c";
/// A solution the sandbox's Partner Center knows.
const SOLUTION: &str = "SOL-34104-EBB";

/// The sandbox's access token lifetime during a soak: every token expires many times.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(20);

/// The stack a soak runs on: [`StackOptions::new`] with tokens that expire every
/// [`TOKEN_LIFETIME`], and a daily API budget a soak of 10,000 changes does not use up (the
/// default, 10,000 calls, would defer the rest of the run's syncs to the next day).
pub fn stack_options(crm: Crm, bin_dir: PathBuf, log_dir: PathBuf, moto: String) -> StackOptions {
    let mut options = StackOptions::new(crm, bin_dir, log_dir, moto);
    soak_settings(&mut options);
    options
}

fn soak_settings(options: &mut StackOptions) {
    options.sandbox.token_lifetime = TOKEN_LIFETIME;
    options
        .env
        .insert("DAILY_API_BUDGET".to_owned(), "100000000".to_owned());
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Changes to send (each one webhook delivery or more).
    pub events: usize,
    /// The seed of the mix.
    pub seed: u64,
    /// Changes sent at once.
    pub concurrency: usize,
    /// Inject faults, expire tokens and kill instances on the way.
    pub faults: bool,
    /// How long the stack may take to come to rest after each phase.
    pub settle_timeout: Duration,
}

/// What the soak found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// Changes sent.
    pub events: usize,
    /// Of which: new Microsoft-initiated referrals.
    pub referrals_created: usize,
    /// Of which: referral updates in Partner Center.
    pub referrals_updated: usize,
    /// Of which: opportunities a seller turned sync on for.
    pub opportunities_synced: usize,
    /// Of which: synced opportunities a seller closed as won or lost (a Dataverse close in the
    /// app raises its `Win` / `Lose` message).
    pub opportunities_closed: usize,
    /// Of which: webhooks sent again (duplicates).
    pub duplicates: usize,
    /// Webhook deliveries the sandbox made, and how many the functions never accepted.
    pub deliveries: usize,
    /// See [`Self::deliveries`].
    pub deliveries_refused: usize,
    /// The deliveries never accepted: what was delivered and how each attempt was answered (the
    /// first 20).
    pub refused: Vec<String>,
    /// Retry jobs found in the dead-letter queue and redriven.
    pub redriven: usize,
    /// Syncs reconcile had to queue (the webhook path's shortfall).
    pub reconcile_enqueued: u64,
    /// Share of changes the webhook path (with its retries) synced without reconcile.
    pub webhook_share: f64,
    /// Instances that crashed (not counting the kills).
    pub crashes: usize,
    /// Dataverse opportunities closed before their first sync: their referral was created and
    /// closed, but a closed row cannot take the referral id.
    pub closed_before_write_back: usize,
    /// Records lost, duplicated, diverged (each must be 0).
    pub lost: usize,
    /// See [`Self::lost`].
    pub duplicated: usize,
    /// See [`Self::lost`].
    pub diverged: usize,
    /// One line per problem found (the first 20).
    pub problems: Vec<String>,
    /// Seconds from the first change to the end of the checks.
    pub seconds: f64,
}

impl SoakReport {
    /// Nothing lost, duplicated or diverged.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.diverged == 0
    }
}

/// One change of the mix.
#[derive(Debug, Clone, Copy)]
enum Change {
    NewReferral,
    UpdateReferral,
    Duplicate,
    SyncOpportunity,
    CloseOpportunity,
}

/// Runs the soak on a started `stack`.
pub async fn run(stack: &Stack, options: &SoakOptions) -> Result<SoakReport> {
    let started = Instant::now();
    let client = stack.client.clone();
    let crm = stack.crm;
    let mut report = SoakReport {
        events: options.events,
        ..SoakReport::default()
    };
    seed_account(&client, crm).await?;

    let mut rng = fastrand::Rng::with_seed(options.seed);
    let referrals: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    // The synced opportunities by change number, and the closes sent (id → won).
    let mut synced: Vec<usize> = Vec::new();
    let mut closes: HashMap<String, bool> = HashMap::new();
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut running = JoinSet::new();
    for n in 0..options.events {
        // Webhooks arrive as fast as the stack takes them, a bounded backlog ahead: Lambda
        // would start more instances, the local one has a fixed number.
        while Deliveries::read(&client).await?.running() > MAX_BACKLOG {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if options.faults {
            fault_at(stack, n, options.events).await?;
        }
        let known = referrals.lock().map(|ids| ids.len()).unwrap_or(0);
        let roll = rng.f64();
        let change = if known == 0 || roll < 0.40 {
            Change::NewReferral
        } else if roll < 0.70 {
            Change::UpdateReferral
        } else if roll < 0.85 {
            Change::Duplicate
        } else if roll < 0.95 || synced.is_empty() {
            Change::SyncOpportunity
        } else {
            Change::CloseOpportunity
        };
        match change {
            Change::NewReferral => report.referrals_created += 1,
            Change::UpdateReferral => report.referrals_updated += 1,
            Change::Duplicate => report.duplicates += 1,
            Change::SyncOpportunity => report.opportunities_synced += 1,
            Change::CloseOpportunity => report.opportunities_closed += 1,
        }
        let pick = rng.usize(..known.max(1));
        // A close: one of the synced opportunities not closed yet (each closed at most once),
        // won or lost as the seed says.
        let close = match change {
            Change::SyncOpportunity => {
                synced.push(n);
                None
            }
            Change::CloseOpportunity => {
                let open: Vec<usize> = synced
                    .iter()
                    .copied()
                    .filter(|m| !closes.contains_key(&opportunity_id(crm, *m)))
                    .collect();
                open.get(rng.usize(..open.len().max(1))).map(|m| {
                    let won = rng.bool();
                    closes.insert(opportunity_id(crm, *m), won);
                    (*m, won)
                })
            }
            _ => None,
        };
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let client = client.clone();
        let referrals = Arc::clone(&referrals);
        running.spawn(async move {
            let _permit = permit;
            send(&client, crm, change, n, pick, close, &referrals)
                .await
                .with_context(|| format!("change {n} ({change:?})"))
        });
        while let Some(done) = running.try_join_next() {
            done??;
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }

    settle(stack, options.settle_timeout).await?;
    let dlq = SqsQueue::new(stack.aws.sqs.clone(), &stack.queues.dlq_url);
    let dead = dlq.depth().await?.visible;
    if dead > 0 {
        let redrive = crate::redrive::redrive(
            &stack.aws.sqs,
            &stack.queues.dlq_url,
            &stack.queues.queue_url,
            &crate::redrive::Options::default(),
        )
        .await?;
        report.redriven = redrive.moved;
        settle(stack, options.settle_timeout).await?;
    }
    report.reconcile_enqueued = reconcile_whole_pass(stack, options.settle_timeout).await?;

    let deliveries = Deliveries::read(&client).await?;
    report.deliveries = deliveries.total;
    report.deliveries_refused = deliveries.total - deliveries.delivered;
    if report.deliveries_refused > 0 {
        report.refused = refused_deliveries(&client).await?;
    }
    report.crashes = [PARTNER_CENTER_EVENTS, CRM_EVENTS, RETRY_WORKER]
        .iter()
        .map(|function| stack.lambda.crashes(function))
        .sum();
    let changes = report.referrals_created + report.referrals_updated + report.opportunities_synced;
    report.webhook_share = if changes == 0 {
        1.0
    } else {
        1.0 - (report.reconcile_enqueued as f64 / changes as f64).min(1.0)
    };
    compare(&client, crm, &closes, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The most `reconcile` runs one soak makes to cover both sides (a run reads at most a few
/// pages per side; its checkpoint keeps the position for the next).
const MAX_RECONCILE_RUNS: usize = 100;

/// Runs `reconcile` until its pass has covered both sides (each run continues where the last
/// one stopped), letting what it queued settle after each run; returns how many syncs it
/// queued in all. One run is not enough when more changed than one run reads: the records it
/// did not reach would be counted lost although the next scheduled run queues them.
async fn reconcile_whole_pass(stack: &Stack, settle_timeout: Duration) -> Result<u64> {
    let mut enqueued = 0;
    for _ in 0..MAX_RECONCILE_RUNS {
        let summary = stack.reconcile().await?;
        enqueued += summary["enqueued"].as_u64().unwrap_or_default();
        settle(stack, settle_timeout).await?;
        if pass_finished(&summary) {
            return Ok(enqueued);
        }
    }
    bail!("reconcile did not cover both sides in {MAX_RECONCILE_RUNS} runs")
}

/// Whether a `reconcile` answer says its pass reached the end of both sides.
fn pass_finished(summary: &Value) -> bool {
    ["referrals", "opportunities"]
        .iter()
        .all(|side| summary[side]["finished"].as_bool() == Some(true))
}

/// Sends one change.
async fn send(
    client: &SandboxClient,
    crm: Crm,
    change: Change,
    n: usize,
    pick: usize,
    close: Option<(usize, bool)>,
    referrals: &std::sync::Mutex<Vec<String>>,
) -> Result<()> {
    let picked = || referrals.lock().ok().and_then(|ids| ids.get(pick).cloned());
    match change {
        Change::NewReferral => {
            let referral = client
                .post(
                    "/_sandbox/partner-center/referrals/microsoft-initiated",
                    &json!({"name": format!("Soak referral {n}")}),
                )
                .await?;
            if let (Some(id), Ok(mut ids)) = (referral["id"].as_str(), referrals.lock()) {
                ids.push(id.to_owned());
            }
        }
        Change::UpdateReferral => {
            let Some(id) = picked() else { return Ok(()) };
            let path = format!("/_sandbox/partner-center/referrals/{id}");
            let mut referral = client.get(&path).await?;
            let value = referral["details"]["dealValue"].as_f64().unwrap_or(0.0);
            referral["details"]["dealValue"] = json!(value + 1000.0);
            if let Some(fields) = referral.as_object_mut() {
                // New ones are stamped: this is a change.
                fields.remove("eTag");
                fields.remove("updatedDateTime");
            }
            client.put(&path, &referral).await?;
        }
        Change::Duplicate => {
            let Some(id) = picked() else { return Ok(()) };
            client
                .post(
                    "/_sandbox/partner-center/events",
                    &json!({"eventName": "referral-updated", "referralId": id}),
                )
                .await?;
        }
        Change::SyncOpportunity => seed_opportunity(client, crm, n).await?,
        Change::CloseOpportunity => {
            if let Some((m, won)) = close {
                close_opportunity(client, crm, m, won).await?;
            }
        }
    }
    Ok(())
}

/// The id of the opportunity change `n` seeded.
fn opportunity_id(crm: Crm, n: usize) -> String {
    match crm {
        Crm::Dynamics => format!("5a000000-0000-4000-8000-{n:012x}"),
        Crm::Salesforce => format!("0060000000{n:05}"),
    }
}

/// A seller closes the opportunity change `m` seeded as won or lost: in Dataverse as in the
/// app (the `Win` / `Lose` message), in Salesforce by its stage (read, then saved with it).
async fn close_opportunity(client: &SandboxClient, crm: Crm, m: usize, won: bool) -> Result<()> {
    let id = opportunity_id(crm, m);
    match crm {
        Crm::Dynamics => {
            let outcome = if won { "win" } else { "lose" };
            client
                .post(
                    &format!("/_sandbox/dataverse/opportunities/{id}/{outcome}"),
                    &json!({}),
                )
                .await?;
        }
        Crm::Salesforce => {
            let path = format!("/_sandbox/salesforce/Opportunity/{id}");
            let mut record = client.get(&path).await?;
            record["StageName"] = json!(if won { "Closed Won" } else { "Closed Lost" });
            client.put(&path, &record).await?;
        }
    }
    Ok(())
}

const DATAVERSE_ACCOUNT: &str = "5a000000-0000-4000-8000-0000000000a1";
const DATAVERSE_CONTACT: &str = "5a000000-0000-4000-8000-0000000000c1";
const SALESFORCE_ACCOUNT: &str = "001000000005001";

/// The account (and in Dataverse the contact) of every synced opportunity.
async fn seed_account(client: &SandboxClient, crm: Crm) -> Result<()> {
    match crm {
        Crm::Dynamics => {
            client
                .put(
                    &format!("/_sandbox/dataverse/accounts/{DATAVERSE_ACCOUNT}"),
                    &json!({"name": "Soak Account", "address1_city": "Redmond",
                            "address1_country": "US"}),
                )
                .await?;
            client
                .put(
                    &format!("/_sandbox/dataverse/contacts/{DATAVERSE_CONTACT}"),
                    &json!({"firstname": "Sam", "lastname": "Soak",
                            "emailaddress1": "sam.soak@example.com"}),
                )
                .await?;
        }
        Crm::Salesforce => {
            client
                .put(
                    &format!("/_sandbox/salesforce/Account/{SALESFORCE_ACCOUNT}"),
                    &json!({"Name": "Soak Account", "BillingCity": "Redmond",
                            "BillingCountry": "US"}),
                )
                .await?;
        }
    }
    Ok(())
}

/// The seller's `n`th opportunity with sync on (the CRM then notifies `crm-events`).
async fn seed_opportunity(client: &SandboxClient, crm: Crm, n: usize) -> Result<()> {
    match crm {
        Crm::Dynamics => {
            let id = opportunity_id(crm, n);
            client
                .put(
                    &format!("/_sandbox/dataverse/opportunities/{id}"),
                    &json!({
                        "name": format!("Soak opportunity {n}"), "estimatedvalue": 10_000 + n,
                        "estimatedclosedate": "2027-06-30",
                        "_parentaccountid_value": DATAVERSE_ACCOUNT,
                        "_parentcontactid_value": DATAVERSE_CONTACT,
                        "msft_microsoftpartnercenterreferralsync": true,
                        "msft_microsoftpartnercentersolutions": SOLUTION,
                        "msft_solutionarea": "Security", "msft_solutionplay": "Data Security",
                        "msft_partnerrole": "Implementation",
                    }),
                )
                .await?;
        }
        Crm::Salesforce => {
            let id = opportunity_id(crm, n);
            client
                .put(
                    &format!("/_sandbox/salesforce/Opportunity/{id}"),
                    &json!({
                        "Name": format!("Soak opportunity {n}"), "StageName": "Prospecting",
                        "CloseDate": "2027-06-30", "Amount": 10_000 + n,
                        "CurrencyIsoCode": "USD", "AccountId": SALESFORCE_ACCOUNT,
                        "Sync_with_Partner_Center__c": true,
                        "Microsoft_Solutions__c": SOLUTION,
                        "Solution_Area__c": "Security", "Solution_Play__c": "Data Security",
                        "Partner_Role__c": "Implementation",
                    }),
                )
                .await?;
        }
    }
    Ok(())
}

/// The faults of the run, at fixed points of it.
async fn fault_at(stack: &Stack, n: usize, total: usize) -> Result<()> {
    let at = |share: usize| n == total * share / 100;
    let crm_service = match stack.crm {
        Crm::Dynamics => "dataverse",
        Crm::Salesforce => "salesforce",
    };
    if at(20) {
        stack
            .client
            .post(
                "/_sandbox/faults",
                &json!({"service": crm_service, "status": 503, "count": 5}),
            )
            .await?;
    }
    if at(35) {
        stack
            .client
            .post(
                "/_sandbox/faults",
                &json!({"service": crm_service, "status": 429, "count": 5, "retry_after": 1}),
            )
            .await?;
    }
    if at(50) {
        stack
            .client
            .post(
                "/_sandbox/faults",
                &json!({"service": "entra", "status": 503, "count": 3}),
            )
            .await?;
    }
    if at(70) {
        stack.lambda.kill_instance(PARTNER_CENTER_EVENTS, 0);
        stack.lambda.kill_instance(CRM_EVENTS, 0);
        stack.lambda.kill_instance(RETRY_WORKER, 0);
    }
    Ok(())
}

/// Waits until nothing moves: every webhook delivery finished and the retry queue empty (no
/// message visible, in flight or delayed), twice in a row.
async fn settle(stack: &Stack, timeout: Duration) -> Result<()> {
    let queue = SqsQueue::new(stack.aws.sqs.clone(), &stack.queues.queue_url);
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        let pending = Deliveries::read(&stack.client).await?.running();
        let depth = queue.depth().await?;
        let jobs = depth.visible + depth.in_flight + depth.delayed;
        quiet = if pending == 0 && jobs == 0 {
            quiet + 1
        } else {
            0
        };
        if quiet >= 2 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the stack did not come to rest within {timeout:?}: {pending} webhook deliveries \
                 running, {jobs} retry jobs queued"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Webhook deliveries not yet finished beyond which the soak waits before sending more.
const MAX_BACKLOG: usize = 48;

/// The sandbox's webhook delivery counts.
#[derive(Debug, Clone, Copy)]
struct Deliveries {
    total: usize,
    finished: usize,
    delivered: usize,
}

impl Deliveries {
    async fn read(client: &SandboxClient) -> Result<Self> {
        let counts = client.get("/_sandbox/deliveries?summary=true").await?;
        let count = |name: &str| {
            counts[name]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or_default()
        };
        Ok(Self {
            total: count("total"),
            finished: count("finished"),
            delivered: count("delivered"),
        })
    }

    /// Deliveries still being attempted.
    fn running(self) -> usize {
        self.total.saturating_sub(self.finished)
    }
}

/// The functions' log lines about the records of `report`'s problems (the ids its lines
/// name), for a failure message.
pub fn problem_logs(stack: &Stack, report: &SoakReport) -> String {
    let mut ids: Vec<&str> = report
        .problems
        .iter()
        .flat_map(|problem| problem.split(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|word| word.len() >= 15 && word.chars().any(|c| c.is_ascii_digit()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return String::new();
    }
    [PARTNER_CENTER_EVENTS, CRM_EVENTS, RETRY_WORKER]
        .iter()
        .map(|function| stack.lambda.log_lines_with(function, &ids, 40))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The deliveries never accepted, one line each: the delivery, then each attempt's status or
/// error.
async fn refused_deliveries(client: &SandboxClient) -> Result<Vec<String>> {
    let all = client.get("/_sandbox/deliveries").await?;
    Ok(as_array(&all, "deliveries")
        .iter()
        .filter(|delivery| delivery["delivered"] != true)
        .take(20)
        .map(|delivery| {
            let attempts: Vec<String> = as_array(&delivery["attempts"], "attempts")
                .iter()
                .map(|attempt| {
                    let status = attempt["status"]
                        .as_u64()
                        .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
                    match attempt["error"].as_str() {
                        Some(error) => format!("{status} at {} ({error})", attempt["at"]),
                        None => format!("{status} at {}", attempt["at"]),
                    }
                })
                .collect();
            format!(
                "delivery {} ({}): {}",
                delivery["id"],
                delivery["label"].as_str().unwrap_or_default(),
                attempts.join("; ")
            )
        })
        .collect())
}

/// Compares both sides and counts what is lost, duplicated or diverged.
async fn compare(
    client: &SandboxClient,
    crm: Crm,
    closes: &HashMap<String, bool>,
    report: &mut SoakReport,
) -> Result<()> {
    let referrals = client.get("/_sandbox/partner-center/referrals").await?;
    let referrals = as_array(&referrals, "referrals");
    let (path, member, id_field, referral_field, value_field, sync_field) = match crm {
        Crm::Dynamics => (
            "/_sandbox/dataverse/opportunities",
            "value",
            "opportunityid",
            DATAVERSE_REFERRAL_FIELD,
            "estimatedvalue",
            "msft_microsoftpartnercenterreferralsync",
        ),
        Crm::Salesforce => (
            "/_sandbox/salesforce/Opportunity",
            "records",
            "Id",
            SALESFORCE_REFERRAL_FIELD,
            "Amount",
            "Sync_with_Partner_Center__c",
        ),
    };
    let opportunities = client.get(path).await?;
    let opportunities = as_array(&opportunities, member);
    let mut by_referral: HashMap<String, Vec<&Value>> = HashMap::new();
    for opportunity in &opportunities {
        if let Some(referral) = opportunity[referral_field]
            .as_str()
            .filter(|id| !id.is_empty())
        {
            by_referral
                .entry(referral.to_lowercase())
                .or_default()
                .push(opportunity);
        }
    }
    let mut by_external: HashMap<String, Vec<&Value>> = HashMap::new();
    for referral in &referrals {
        if let Some(external) = referral["externalReferenceId"]
            .as_str()
            .filter(|id| !id.is_empty())
        {
            by_external
                .entry(external.to_lowercase())
                .or_default()
                .push(referral);
        }
    }
    let problem = |report: &mut SoakReport, text: String| {
        if report.problems.len() < 20 {
            report.problems.push(text);
        }
    };
    for referral in &referrals {
        let id = referral["id"].as_str().unwrap_or_default();
        let linked = by_referral
            .get(&id.to_lowercase())
            .map_or(&[][..], Vec::as_slice);
        match linked {
            // A Dataverse opportunity closed before its first sync: its referral was created
            // and closed, but a closed row is read-only and cannot take the referral id (the
            // link table and the referral's external reference link them; the audit log says
            // so). Counted apart, not lost.
            [] if crm == Crm::Dynamics
                && referral["status"] == "Closed"
                && referral["externalReferenceId"]
                    .as_str()
                    .is_some_and(|external| {
                        opportunities.iter().any(|o| {
                            o[id_field].as_str() == Some(external) && o["statecode"] != json!(0)
                        })
                    }) =>
            {
                report.closed_before_write_back += 1;
            }
            [] => {
                report.lost += 1;
                let external = referral["externalReferenceId"].as_str().unwrap_or("none");
                problem(
                    report,
                    format!("referral {id}: no opportunity (its external reference: {external})"),
                );
            }
            [opportunity] => {
                let opportunity_id = opportunity[id_field].as_str().unwrap_or_default();
                if !referral["externalReferenceId"]
                    .as_str()
                    .is_some_and(|external| external.eq_ignore_ascii_case(opportunity_id))
                {
                    report.lost += 1;
                    problem(
                        report,
                        format!("referral {id}: opportunity {opportunity_id} not written back"),
                    );
                }
                let theirs = referral["details"]["dealValue"].as_f64();
                let ours = opportunity[value_field].as_f64();
                if theirs.is_some() && ours.is_some() && theirs != ours {
                    report.diverged += 1;
                    problem(
                        report,
                        format!(
                            "referral {id}: deal value {theirs:?}, opportunity {opportunity_id} {ours:?}"
                        ),
                    );
                }
            }
            more => {
                report.duplicated += 1;
                problem(
                    report,
                    format!("referral {id}: {} opportunities", more.len()),
                );
            }
        }
    }
    for opportunity in &opportunities {
        if opportunity[sync_field] != true {
            continue;
        }
        let id = opportunity[id_field].as_str().unwrap_or_default();
        let referrals = by_external.get(&id.to_lowercase());
        match referrals.map_or(0, Vec::len) {
            1 => {
                // A seller's close stays in the CRM and reaches its referral.
                let Some(&won) = closes.get(id) else { continue };
                let closed_in_crm = match crm {
                    Crm::Dynamics => opportunity["statecode"] == json!(if won { 1 } else { 2 }),
                    Crm::Salesforce => {
                        opportunity["StageName"]
                            == json!(if won { "Closed Won" } else { "Closed Lost" })
                    }
                };
                let referral = referrals
                    .and_then(|r| r.first())
                    .copied()
                    .unwrap_or(&Value::Null);
                let closed_in_pc = referral["status"] == "Closed"
                    && referral["substatus"] == json!(if won { "Won" } else { "Lost" });
                if !closed_in_crm || !closed_in_pc {
                    report.diverged += 1;
                    problem(
                        report,
                        format!(
                            "opportunity {id} closed as {}: closed in the CRM {closed_in_crm}, \
                             referral {} / {}",
                            if won { "won" } else { "lost" },
                            referral["status"],
                            referral["substatus"]
                        ),
                    );
                }
            }
            0 => {
                report.lost += 1;
                problem(report, format!("opportunity {id}: sync on, no referral"));
            }
            more => {
                report.duplicated += 1;
                problem(report, format!("opportunity {id}: {more} referrals"));
            }
        }
    }
    Ok(())
}

fn as_array(value: &Value, member: &str) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        other => other[member].as_array().cloned().unwrap_or_default(),
    }
}

/// `cosell soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub stack: crate::stack::StackArgs,
    /// Changes to send.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// The seed of the mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Changes sent at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// No injected faults or killed instances (tokens still expire).
    #[arg(long)]
    pub no_faults: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cosell soak`: exit 0 when nothing was lost, duplicated or diverged; 1 otherwise; 2 when
/// the stack could not run.
pub async fn main(args: Args) -> std::process::ExitCode {
    let run = async {
        let (mut options, _moto) = args.stack.options().await?;
        soak_settings(&mut options);
        let stack = Stack::start(options).await?;
        let soak = SoakOptions {
            events: args.events,
            seed: args.seed,
            concurrency: args.concurrency,
            faults: !args.no_faults,
            settle_timeout: Duration::from_secs(600),
        };
        let report = run(&stack, &soak).await?;
        let logs = problem_logs(&stack, &report);
        anyhow::Ok((report, logs))
    };
    match run.await {
        Ok((report, logs)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print(&report);
                if !report.passed() {
                    println!("{logs}");
                }
            }
            if report.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("cosell soak: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The report, for people.
pub fn print(report: &SoakReport) {
    println!(
        "changes sent: {} ({} new referrals, {} referral updates, {} opportunities synced from the \
         CRM, {} of them closed, {} duplicate webhooks)",
        report.events,
        report.referrals_created,
        report.referrals_updated,
        report.opportunities_synced,
        report.opportunities_closed,
        report.duplicates
    );
    println!(
        "webhook deliveries: {} ({} never accepted); dead-lettered and redriven: {}; instance \
         crashes: {}",
        report.deliveries, report.deliveries_refused, report.redriven, report.crashes
    );
    for refused in &report.refused {
        println!("  never accepted: {refused}");
    }
    println!(
        "reconcile queued {} syncs: the webhook path synced {:.2}% of changes",
        report.reconcile_enqueued,
        report.webhook_share * 100.0
    );
    if report.closed_before_write_back > 0 {
        println!(
            "closed before their first sync (referral created and closed; a closed Dataverse row \
             takes no referral id): {}",
            report.closed_before_write_back
        );
    }
    println!(
        "lost: {}, duplicated: {}, diverged: {}  ({:.0} s)",
        report.lost, report.duplicated, report.diverged, report.seconds
    );
    for problem in &report.problems {
        println!("  {problem}");
    }
}

#[cfg(test)]
mod tests {
    use cosell_domain::reconcile::ReconcileReport;

    use super::pass_finished;

    /// The reconcile function's own answer, with each side finished or not.
    fn answer(referrals: bool, opportunities: bool) -> serde_json::Value {
        let mut report = ReconcileReport::default();
        report.referrals.finished = referrals;
        report.opportunities.finished = opportunities;
        reconcile::handler::summary(&report)
    }

    #[test]
    fn the_pass_is_over_only_when_both_sides_reached_their_end() {
        assert!(pass_finished(&answer(true, true)));
        assert!(!pass_finished(&answer(true, false)));
        assert!(!pass_finished(&answer(false, true)));
        assert!(!pass_finished(&answer(false, false)));
        assert!(!pass_finished(&serde_json::Value::Null));
    }
}
