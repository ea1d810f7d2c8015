//! `cosell audit <referral id | CRM record id>`: the timeline of one referral across both
//! directions, newest last — events received, skipped and why, writes made, failures with
//! their fix, retries, redrives; `cosell audit --needs-attention`: every record whose latest
//! outcome is a failure.
//!
//! The audit log files an entry under its referral when known, else under its CRM record, and
//! indexes it by CRM record too. The timeline starts from the id given and follows every
//! referral / CRM record its entries name (a CRM change logged before the referral existed,
//! the write-back that linked them), so both directions appear whichever id is given.
//!
//! Ids: a referral id (GUID), `dataverse:<GUID>`, `salesforce:<id>`, or a bare Salesforce id;
//! a bare GUID is looked up as a referral and as a Dataverse row.
//!
//! Exit: 0 when the timeline was found and its latest outcome is not a failure (or, with
//! `--needs-attention`, nothing needs attention); 1 when a problem is open or nothing was
//! found; 2 when the audit log could not be read.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{Result, bail};
use cosell_domain::ids::{DataverseId, SalesforceId};
use cosell_domain::ports::{AuditEntry, AuditEvent, AuditLog, PortError, SyncDirection};
use cosell_domain::{CrmRecordId, ReferralId};
use serde::Serialize;
use serde_json::json;

use crate::context::{Exit, Output};

/// Entries read per referral / CRM record.
pub const DEFAULT_LIMIT: usize = 500;

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    /// Referrals to read.
    pub referrals: Vec<ReferralId>,
    /// CRM records to read.
    pub crm_records: Vec<CrmRecordId>,
}

/// Reads an id as typed by an operator (module doc).
pub fn parse_target(text: &str) -> Result<Target> {
    let text = text.trim();
    if text.contains(':') {
        let crm = CrmRecordId::try_from(text)?;
        return Ok(Target {
            referrals: Vec::new(),
            crm_records: vec![crm],
        });
    }
    if let Ok(referral) = ReferralId::try_from(text) {
        let mut target = Target {
            referrals: vec![referral],
            crm_records: Vec::new(),
        };
        if let Ok(row) = DataverseId::try_from(text) {
            target.crm_records.push(CrmRecordId::Dataverse(row));
        }
        return Ok(target);
    }
    if let Ok(record) = SalesforceId::try_from(text) {
        return Ok(Target {
            referrals: Vec::new(),
            crm_records: vec![CrmRecordId::Salesforce(record)],
        });
    }
    bail!(
        "'{text}' is neither a referral id (GUID) nor a CRM record id (dataverse:<GUID>, \
         salesforce:<id>, or a Salesforce id)"
    )
}

/// The timeline of `target`, oldest first (entries of one invocation in the order the sync
/// writes them), following every referral / CRM record its entries
/// name. Each entry appears once.
pub async fn timeline<A: AuditLog>(
    log: &A,
    target: &Target,
    limit: usize,
) -> Result<Vec<AuditEntry>, PortError> {
    let mut referrals: Vec<ReferralId> = target.referrals.clone();
    let mut records: Vec<CrmRecordId> = target.crm_records.clone();
    let (mut read_referrals, mut read_records) = (0, 0);
    let mut seen = BTreeSet::new();
    let mut entries = Vec::new();
    while read_referrals < referrals.len() || read_records < records.len() {
        let mut found = Vec::new();
        while read_referrals < referrals.len() {
            found.extend(log.by_referral(&referrals[read_referrals], limit).await?);
            read_referrals += 1;
        }
        while read_records < records.len() {
            found.extend(log.by_crm_record(&records[read_records], limit).await?);
            read_records += 1;
        }
        for entry in found {
            if let Some(referral) = entry.referral_id
                && !referrals.contains(&referral)
            {
                referrals.push(referral);
            }
            if let Some(crm) = &entry.crm
                && !records.contains(crm)
            {
                records.push(crm.clone());
            }
            let key = serde_json::to_string(&entry).unwrap_or_default();
            if seen.insert(key) {
                entries.push(entry);
            }
        }
    }
    entries.sort_by_key(|entry| (entry.at, step(&entry.event)));
    Ok(entries)
}

/// Where an event comes within one function invocation, whose entries may share a timestamp:
/// an operator's redrive, the change received, a skip or the write, the write-back, then a
/// failure or the retry it schedules.
fn step(event: &AuditEvent) -> u8 {
    match event {
        AuditEvent::Redriven => 0,
        AuditEvent::Received => 1,
        AuditEvent::DuplicateSkipped
        | AuditEvent::EchoSkipped
        | AuditEvent::UnchangedSkipped
        | AuditEvent::HeldUntilAccepted { .. } => 2,
        AuditEvent::Created | AuditEvent::Updated | AuditEvent::ConflictResolved { .. } => 3,
        AuditEvent::WrittenBack => 4,
        AuditEvent::Failed { .. } => 5,
        AuditEvent::RetryEnqueued { .. } => 6,
    }
}

/// One line's text for an event.
pub fn describe(entry: &AuditEntry) -> String {
    let (source, target) = match entry.direction {
        Some(SyncDirection::ToCrm) => ("Partner Center", "the CRM opportunity"),
        Some(SyncDirection::ToPartnerCenter) => ("the CRM", "the Partner Center referral"),
        None => ("a source", "the other side"),
    };
    match &entry.event {
        AuditEvent::Received => format!("change received from {source}"),
        AuditEvent::DuplicateSkipped => "skipped: the same delivery arrived again".to_owned(),
        AuditEvent::UnchangedSkipped => "skipped: no mapped field changed".to_owned(),
        AuditEvent::HeldUntilAccepted { reason, .. } => format!("not sent yet: {reason}"),
        AuditEvent::EchoSkipped => "skipped: the connector's own write came back".to_owned(),
        AuditEvent::Created => format!("created {target}"),
        AuditEvent::Updated => format!("updated {target}"),
        AuditEvent::WrittenBack => format!("wrote the ids and link back to {source}"),
        AuditEvent::Failed { reason, .. } => format!("FAILED: {reason}"),
        AuditEvent::RetryEnqueued { attempt } => format!("retry enqueued (attempt {attempt})"),
        AuditEvent::Redriven => "redriven from the dead-letter queue by an operator".to_owned(),
        AuditEvent::ConflictResolved { fields } => {
            let kept: Vec<String> = fields
                .iter()
                .map(|c| format!("{} ({} kept)", c.field.name(), c.winner))
                .collect();
            format!(
                "conflict: changed on both sides since the last sync: {}",
                kept.join(", ")
            )
        }
    }
}

fn direction_label(entry: &AuditEntry) -> &'static str {
    match entry.direction {
        Some(SyncDirection::ToCrm) => "PC → CRM",
        Some(SyncDirection::ToPartnerCenter) => "CRM → PC",
        None => "",
    }
}

fn fix_of(entry: &AuditEntry) -> Option<&str> {
    match &entry.event {
        AuditEvent::Failed { fix, .. } | AuditEvent::HeldUntilAccepted { fix, .. } => Some(fix),
        _ => None,
    }
}

/// Whether the latest outcome (success or failure) of a timeline is a failure.
pub fn has_open_problem(entries: &[AuditEntry]) -> bool {
    entries
        .iter()
        .rev()
        .find(|entry| {
            matches!(
                entry.event,
                AuditEvent::Failed { .. }
                    | AuditEvent::Created
                    | AuditEvent::Updated
                    | AuditEvent::WrittenBack
                    | AuditEvent::UnchangedSkipped
            )
        })
        .is_some_and(AuditEntry::needs_attention)
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    #[serde(flatten)]
    entry: &'a AuditEntry,
    text: String,
}

/// Prints a timeline (oldest first, newest last) and returns the exit status.
pub fn print_timeline(
    id: &str,
    entries: &[AuditEntry],
    output: Output,
    out: &mut dyn Write,
) -> Result<Exit> {
    let open = has_open_problem(entries);
    let exit = if entries.is_empty() || open {
        Exit::Problems
    } else {
        Exit::Healthy
    };
    if output.is_json() {
        let items: Vec<JsonEntry<'_>> = entries
            .iter()
            .map(|entry| JsonEntry {
                entry,
                text: describe(entry),
            })
            .collect();
        Output::write_json(
            out,
            &json!({ "id": id, "entries": items, "open_problem": open, "exit": exit }),
        )?;
        return Ok(exit);
    }
    if entries.is_empty() {
        writeln!(
            out,
            "no audit entries for {id}: the connector never saw this record (check the id, \
             the webhook registration with `cosell doctor`, and the record's Sync with Partner \
             Center flag)"
        )?;
        return Ok(exit);
    }
    writeln!(out, "timeline of {id} (oldest first, newest last):")?;
    for entry in entries {
        let at = entry
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut ids = Vec::new();
        if let Some(referral) = entry.referral_id {
            ids.push(format!("referral {referral}"));
        }
        if let Some(crm) = &entry.crm {
            ids.push(crm.to_string());
        }
        writeln!(
            out,
            "{at}  {:<9} {}  [{}]",
            direction_label(entry),
            describe(entry),
            ids.join(", ")
        )?;
        if let Some(fix) = fix_of(entry) {
            writeln!(out, "{:<36}fix: {fix}", "")?;
        }
    }
    if open {
        writeln!(
            out,
            "\nopen problem: the latest outcome is the failure above"
        )?;
    }
    Ok(exit)
}

/// Prints the records that need attention and returns the exit status.
pub fn print_needs_attention(
    entries: &[AuditEntry],
    output: Output,
    out: &mut dyn Write,
) -> Result<Exit> {
    let exit = if entries.is_empty() {
        Exit::Healthy
    } else {
        Exit::Problems
    };
    if output.is_json() {
        let items: Vec<JsonEntry<'_>> = entries
            .iter()
            .map(|entry| JsonEntry {
                entry,
                text: describe(entry),
            })
            .collect();
        Output::write_json(
            out,
            &json!({ "needs_attention": items, "count": items.len(), "exit": exit }),
        )?;
        return Ok(exit);
    }
    if entries.is_empty() {
        writeln!(out, "nothing needs attention")?;
        return Ok(exit);
    }
    writeln!(out, "{} record(s) need attention:", entries.len())?;
    for entry in entries {
        let record = entry
            .referral_id
            .map(|r| format!("referral {r}"))
            .or_else(|| entry.crm.as_ref().map(ToString::to_string))
            .unwrap_or_else(|| "(unattributed)".to_owned());
        let at = entry.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        writeln!(out, "{record}  since {at}  {}", describe(entry))?;
        if let Some(fix) = fix_of(entry) {
            writeln!(out, "    fix: {fix}")?;
        }
    }
    Ok(exit)
}

/// `cosell audit` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A referral id, or a CRM record id (`dataverse:<GUID>`, `salesforce:<id>`).
    #[arg(required_unless_present = "needs_attention")]
    pub id: Option<String>,
    /// List every record whose latest outcome is a failure.
    #[arg(long, conflicts_with = "id")]
    pub needs_attention: bool,
    /// Entries read per record.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cosell audit` against the audit log of the deployment configured in the environment.
pub async fn main(args: Args) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    match run(&args, &mut out).await {
        Ok(exit) => exit.into(),
        Err(error) => {
            let _ = out.flush();
            eprintln!("audit could not run: {error:#}");
            Exit::CouldNotCheck.into()
        }
    }
}

async fn run(args: &Args, out: &mut dyn Write) -> Result<Exit> {
    let config = crate::context::OpsConfig::from_env()?;
    let cosell_runtime::StoreConfig::DynamoDb { table_name, .. } = &config.sync.store else {
        bail!(
            "STORE=memory keeps no audit log outside the function; set STORE=dynamodb and TABLE_NAME"
        );
    };
    let aws = cosell_adapters::aws::AwsClients::from_env().await;
    let log = cosell_adapters::aws::DynamoAuditLog::new(aws.dynamodb, table_name.clone());
    run_with(&log, args, out).await
}

/// `cosell audit` against `log`.
pub async fn run_with<A: AuditLog>(log: &A, args: &Args, out: &mut dyn Write) -> Result<Exit> {
    let output = Output::from_flag(args.json);
    if args.needs_attention {
        let entries = log.needs_attention(args.limit).await?;
        return print_needs_attention(&entries, output, out);
    }
    let Some(id) = args.id.as_deref() else {
        bail!("give a referral id or CRM record id, or --needs-attention");
    };
    let target = parse_target(id)?;
    let entries = timeline(log, &target, args.limit).await?;
    print_timeline(id, &entries, output, out)
}
