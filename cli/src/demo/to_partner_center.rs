//! The demo's second part: CRM → Partner Center. The `crm-events` function runs behind a
//! bridge per CRM; the sandbox's Dataverse webhook and Salesforce Outbound Message point at
//! it, so each seller change is delivered by the sandbox itself. Per CRM:
//!
//! 7. a seller turns "Sync with Partner Center" on for an opportunity → a co-sell referral
//!    appears in Partner Center with the opportunity's id as `externalReferenceId`, and the
//!    referral's id is written back to the opportunity;
//! 8. that write-back raises a notification of its own: skipped as an echo, no Partner Center
//!    call;
//! 9. an opportunity without a solution (with "How can Microsoft help?" set) is not sent:
//!    its audit field names the fix, and Partner Center is not called.
//!
//! Partner Center's own webhooks are switched off for this part, so `partner-center-events`
//! does not also react to the referrals created here: the part shows `crm-events` alone.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context as _, Result, bail};
use cosell_adapters::crm_wire::salesforce::same_salesforce_id;
use serde_json::{Value, json};

use super::bridge::{Bridge, Exchange, Function};
use super::function::{Crm, DATAVERSE_WEBHOOK_KEY, SALESFORCE_ENDPOINT_SECRET, build_crm_events};
use super::sandbox::SandboxClient;
use super::{expect, text};

/// The solution the synced opportunity names.
const SOLUTION: &str = "SOL-34104-EBB";
/// "How can Microsoft help?" on the opportunity without a solution.
const HELP: &str = "Proof of concept or demo";
/// The seeded opportunities' name and value.
const OPPORTUNITY_NAME: &str = "Fabrikam Data Platform";
const DEAL_VALUE: u32 = 48_000;

/// What the CRM → Partner Center part found for one CRM.
#[derive(Debug, Clone, Default)]
pub struct ToPartnerCenterSummary {
    /// The opportunity the seller turned sync on for.
    pub opportunity_id: String,
    /// The referral created for it.
    pub referral_id: String,
    /// Referrals whose `externalReferenceId` names the opportunity.
    pub referrals_for_opportunity: usize,
    /// The referral's `externalReferenceId`.
    pub external_reference_id: Option<String>,
    /// The referral id on the opportunity afterwards.
    pub written_back_referral_id: Option<String>,
    /// The function's answers to the sync-on notification and its echoes.
    pub sync_outcomes: Vec<String>,
    /// Partner Center calls while the sync-on notification was handled: method → count.
    pub partner_center_calls_on_sync: BTreeMap<String, usize>,
    /// Partner Center calls while the echoes of the write-back were handled.
    pub partner_center_calls_on_echo: usize,
    /// The opportunity without a solution.
    pub invalid_opportunity_id: String,
    /// The function's answers to its notification (and the echo of its audit write).
    pub invalid_outcomes: Vec<String>,
    /// Partner Center calls while they were handled.
    pub partner_center_calls_on_invalid: usize,
    /// Referrals whose `externalReferenceId` names it.
    pub referrals_for_invalid: usize,
    /// Its audit field afterwards.
    pub invalid_audit: String,
}

impl ToPartnerCenterSummary {
    /// The referral names the opportunity and the opportunity names the referral.
    pub fn linked_both_ways(&self, crm: Crm) -> bool {
        let named = self
            .external_reference_id
            .as_deref()
            .is_some_and(|id| same_record(crm, id, &self.opportunity_id));
        named
            && self
                .written_back_referral_id
                .as_deref()
                .is_some_and(|id| id.eq_ignore_ascii_case(&self.referral_id))
    }

    /// The audit field of the opportunity without a solution names the field to fill in.
    pub fn fix_shown(&self, crm: Crm) -> bool {
        self.invalid_audit.contains(solutions_field(crm))
            && self.invalid_audit.to_lowercase().contains("fix")
    }
}

/// Steps 7 to 9 for every CRM, after `[6]`.
pub(super) async fn run<W: Write>(
    out: &mut W,
    sandbox: &SandboxClient,
    base_url: &str,
    crms: &[Crm],
) -> Result<Vec<ToPartnerCenterSummary>> {
    say!(out);
    say!(out, "=== CRM -> Partner Center ===");
    let mut bridges = Vec::new();
    for crm in crms {
        let app = build_crm_events(base_url, *crm)?;
        let bridge = Bridge::start(
            Function::CrmEvents(app),
            crm.crm_events_prefix(),
            sandbox.clone(),
        )
        .await?;
        bridges.push((*crm, bridge));
    }
    say!(
        out,
        "    crm-events started twice (in-memory stores, embedded WebhookKey / endpoint secret,"
    );
    say!(
        out,
        "    org id and connector users); the sandbox's notifications point at it:"
    );
    for (crm, bridge) in &bridges {
        let target = match crm {
            Crm::Dynamics => {
                let url = format!("{}dataverse", bridge.url);
                sandbox
                    .put(
                        "/_sandbox/dataverse/webhook",
                        &json!({"url": url, "authtype": "WebhookKey",
                                "authvalue": DATAVERSE_WEBHOOK_KEY}),
                    )
                    .await?;
                format!("{url}?code=<WebhookKey>  (Dataverse webhook)")
            }
            Crm::Salesforce => {
                let mut definition = sandbox.get("/_sandbox/salesforce/outbound-message").await?;
                definition["url"] = json!(format!(
                    "{}salesforce/{SALESFORCE_ENDPOINT_SECRET}",
                    bridge.url
                ));
                sandbox
                    .put("/_sandbox/salesforce/outbound-message", &definition)
                    .await?;
                format!(
                    "{}salesforce/<secret>  (Salesforce Outbound Message)",
                    bridge.url
                )
            }
        };
        say!(out, "      {:<26} {target}", crm.label());
    }
    sandbox
        .post(
            "/_sandbox/webhooks",
            &json!({"service": "partner-center", "enabled": false}),
        )
        .await?;
    say!(
        out,
        "    Partner Center's webhooks are switched off for this part: it shows crm-events alone."
    );

    let mut summaries = Vec::new();
    for (crm, bridge) in &bridges {
        let summary = walk_through(out, sandbox, *crm, bridge)
            .await
            .with_context(|| format!("{} CRM -> Partner Center", crm.label()))?;
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Steps 7 to 9 for one CRM.
async fn walk_through<W: Write>(
    out: &mut W,
    sandbox: &SandboxClient,
    crm: Crm,
    bridge: &Bridge,
) -> Result<ToPartnerCenterSummary> {
    say!(out);
    say!(out, "--- {} -> Partner Center ---", crm.label());

    // 7. Sync on.
    let opportunity_id = opportunity_id_of(crm, 1);
    say!(
        out,
        "[7] A seller turns \"Sync with Partner Center\" on for opportunity {opportunity_id}"
    );
    say!(
        out,
        "    (\"{OPPORTUNITY_NAME}\", {DEAL_VALUE} USD, solution {SOLUTION}); the sandbox delivers:"
    );
    let exchanges = seed_and_deliver(sandbox, crm, bridge, 1, true).await?;
    let Some((sync, echoes)) = exchanges.split_first() else {
        bail!("expected the notification of the seller's change, found none");
    };
    show(out, &exchanges)?;
    expect(
        "the answer to the seller's change",
        "200 created",
        answer(sync),
    )?;
    let pc_on_sync = methods(sync, "partner-center");
    // The Dataverse opportunity asks Microsoft for help: a Shared deal, whose second step
    // invites Microsoft with a referral of its own in the same engagement.
    let shared = crm == Crm::Dynamics;
    expect(
        "referrals POSTed to Partner Center",
        1 + usize::from(shared),
        pc_on_sync.get("POST").copied().unwrap_or_default(),
    )?;
    let referrals = referrals_for(sandbox, crm, &opportunity_id).await?;
    expect(
        "referrals naming the opportunity as externalReferenceId",
        1,
        referrals.len(),
    )?;
    let referral = &referrals[0];
    let referral_id = text(&referral["id"]);
    let record = read_record(sandbox, crm, &opportunity_id).await?;
    let written_back = record[referral_field(crm)].as_str().map(str::to_owned);
    say!(
        out,
        "    Partner Center: referral {referral_id} (\"{}\", {}, {})",
        text(&referral["name"]),
        text(&referral["type"]),
        text(&referral["status"])
    );
    say!(
        out,
        "      externalReferenceId {} (the opportunity's id)",
        text(&referral["externalReferenceId"])
    );
    if shared {
        say!(
            out,
            "    \"How can Microsoft help?\" is set (a Shared deal): a second POST invited Microsoft"
        );
        say!(
            out,
            "    to the same engagement (that referral names no opportunity)."
        );
    }
    say!(
        out,
        "    Written back: the opportunity's referral id = {}",
        written_back.as_deref().unwrap_or("(none)")
    );
    expect(
        "the referral id on the opportunity",
        referral_id.as_str(),
        written_back.as_deref().unwrap_or("(none)"),
    )?;

    // 8. The echo of the write-back.
    say!(
        out,
        "[8] The connector's own write-back raised {} notification(s) of its own:",
        echoes.len()
    );
    if echoes.is_empty() {
        bail!("expected the write-back's own notification (an echo), found none");
    }
    for echo in echoes {
        expect(
            "the answer to the write-back's echo",
            "200 echo_skipped",
            answer(echo),
        )?;
    }
    let pc_on_echo: usize = echoes
        .iter()
        .map(|echo| echo.calls_to("partner-center"))
        .sum();
    say!(
        out,
        "    skipped as echoes (written by the connector's user); Partner Center calls: {pc_on_echo}"
    );
    expect("Partner Center calls for the echo", 0, pc_on_echo)?;

    // 9. No solution.
    let invalid_id = opportunity_id_of(crm, 2);
    say!(
        out,
        "[9] Opportunity {invalid_id} turns sync on without a solution (\"How can Microsoft"
    );
    say!(out, "    help?\" = {HELP}):");
    let invalid = seed_and_deliver(sandbox, crm, bridge, 2, false).await?;
    show(out, &invalid)?;
    let Some(first) = invalid.first() else {
        bail!("expected the notification of the change without a solution, found none");
    };
    expect(
        "the answer to the change without a solution",
        "200 needs_attention",
        answer(first),
    )?;
    let pc_on_invalid: usize = invalid
        .iter()
        .map(|exchange| exchange.calls_to("partner-center"))
        .sum();
    expect(
        "Partner Center calls for the change without a solution",
        0,
        pc_on_invalid,
    )?;
    let referrals_for_invalid = referrals_for(sandbox, crm, &invalid_id).await?.len();
    expect(
        "referrals for the opportunity without a solution",
        0,
        referrals_for_invalid,
    )?;
    let invalid_audit = text(&read_record(sandbox, crm, &invalid_id).await?[audit_field(crm)]);
    say!(
        out,
        "    Partner Center calls: {pc_on_invalid}; the opportunity's audit field ({}):",
        audit_field(crm)
    );
    for line in invalid_audit
        .lines()
        .flat_map(|line| wrap(line, AUDIT_WIDTH))
    {
        say!(out, "      {line}");
    }

    let summary = ToPartnerCenterSummary {
        opportunity_id,
        referral_id,
        referrals_for_opportunity: referrals.len(),
        external_reference_id: referral["externalReferenceId"].as_str().map(str::to_owned),
        written_back_referral_id: written_back,
        sync_outcomes: exchanges.iter().map(|e| e.outcome.clone()).collect(),
        partner_center_calls_on_sync: pc_on_sync,
        partner_center_calls_on_echo: pc_on_echo,
        invalid_opportunity_id: invalid_id,
        invalid_outcomes: invalid.iter().map(|e| e.outcome.clone()).collect(),
        partner_center_calls_on_invalid: pc_on_invalid,
        referrals_for_invalid,
        invalid_audit,
    };
    if !summary.linked_both_ways(crm) {
        bail!(
            "expected the referral and the opportunity linked both ways, found {:?} / {:?}",
            summary.external_reference_id,
            summary.written_back_referral_id
        );
    }
    if !summary.fix_shown(crm) {
        bail!(
            "expected the audit field to name {} and the fix, found {:?}",
            solutions_field(crm),
            summary.invalid_audit
        );
    }
    Ok(summary)
}

/// Seeds the `n`th demo opportunity (see [`seed`]) and waits until the CRM's notifications
/// it caused have settled; the bridge's new exchanges, oldest first. The write-backs a
/// notification causes are delivered while it is handled (one at a time), so they are part
/// of the same wait.
async fn seed_and_deliver(
    sandbox: &SandboxClient,
    crm: Crm,
    bridge: &Bridge,
    n: u8,
    with_solution: bool,
) -> Result<Vec<Exchange>> {
    let service = delivery_service(crm);
    let deliveries = sandbox.deliveries_of(service).await?.len();
    let exchanges = bridge.exchanges().len();
    seed(sandbox, crm, n, with_solution).await?;
    sandbox
        .settled_deliveries_of(service, deliveries + 1)
        .await?;
    // In arrival order (the bridge numbers requests as they arrive; a write-back's own
    // notification may finish before the change that caused it).
    let mut new = bridge.exchanges().split_off(exchanges);
    new.sort_by_key(|exchange| arrival(&exchange.request_id));
    Ok(new)
}

/// The arrival number of a bridge request id (`<prefix>-<n>`).
fn arrival(request_id: &str) -> u64 {
    request_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The `n`th demo opportunity's id.
fn opportunity_id_of(crm: Crm, n: u8) -> String {
    match crm {
        Crm::Dynamics => format!("de300000-0000-4000-8000-{:012x}", 0xe0 + u32::from(n)),
        Crm::Salesforce => format!("00600000000{:04}", 9900 + u32::from(n)),
    }
}

/// Seeds the `n`th demo opportunity of `crm` as the seller with sync on — with a solution
/// when `with_solution`, else without one and with "How can Microsoft help?" — and its
/// account (for Dataverse also its contact), through the control API.
async fn seed(sandbox: &SandboxClient, crm: Crm, n: u8, with_solution: bool) -> Result<()> {
    let id = opportunity_id_of(crm, n);
    match crm {
        Crm::Dynamics => {
            let (account, contact) = (
                "de300000-0000-4000-8000-0000000000a1",
                "de300000-0000-4000-8000-0000000000c1",
            );
            sandbox
                .put(
                    &format!("/_sandbox/dataverse/accounts/{account}"),
                    &json!({"name": "Fabrikam Inc", "address1_city": "Redmond",
                            "address1_country": "US"}),
                )
                .await?;
            sandbox
                .put(
                    &format!("/_sandbox/dataverse/contacts/{contact}"),
                    &json!({"firstname": "Alex", "lastname": "Kim",
                            "emailaddress1": "alex.kim@fabrikam.example"}),
                )
                .await?;
            let mut row = json!({
                "name": OPPORTUNITY_NAME, "estimatedvalue": DEAL_VALUE,
                "estimatedclosedate": "2027-06-30",
                "_parentaccountid_value": account, "_parentcontactid_value": contact,
                "msft_microsoftpartnercenterreferralsync": true,
                "msft_microsoftpartnercenterhelpneed": HELP,
                "msft_microsoftpartnercentersolutions": SOLUTION,
                "msft_solutionarea": "Security", "msft_solutionplay": "Data Security",
                "msft_partnerrole": "Implementation",
            });
            if !with_solution && let Some(row) = row.as_object_mut() {
                row.remove(solutions_field(crm));
            }
            sandbox
                .put(&format!("/_sandbox/dataverse/opportunities/{id}"), &row)
                .await?;
        }
        Crm::Salesforce => {
            // The sandbox's Opportunity has no contact: the synced one asks for no help.
            let account = "001000000009901";
            sandbox
                .put(
                    &format!("/_sandbox/salesforce/Account/{account}"),
                    &json!({"Name": "Fabrikam Inc", "BillingCity": "Redmond",
                            "BillingCountry": "US"}),
                )
                .await?;
            let mut record = json!({
                "Name": OPPORTUNITY_NAME, "StageName": "Prospecting",
                "CloseDate": "2027-06-30", "Amount": DEAL_VALUE, "CurrencyIsoCode": "USD",
                "AccountId": account, "Sync_with_Partner_Center__c": true,
                "Microsoft_Solutions__c": SOLUTION,
                "Solution_Area__c": "Security", "Solution_Play__c": "Data Security",
                "Partner_Role__c": "Implementation",
            });
            if !with_solution && let Some(fields) = record.as_object_mut() {
                fields.remove(solutions_field(crm));
                fields.insert("How_can_Microsoft_help__c".to_owned(), json!(HELP));
            }
            sandbox
                .put(&format!("/_sandbox/salesforce/Opportunity/{id}"), &record)
                .await?;
        }
    }
    Ok(())
}

/// The sandbox's delivery log service of the CRM's notifications.
fn delivery_service(crm: Crm) -> &'static str {
    match crm {
        Crm::Dynamics => "dataverse",
        Crm::Salesforce => "salesforce",
    }
}

/// The width the audit field is wrapped to.
const AUDIT_WIDTH: usize = 90;

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stays
/// whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn show<W: Write>(out: &mut W, exchanges: &[Exchange]) -> Result<()> {
    for exchange in exchanges {
        say!(
            out,
            "      {:<8} {:<18} -> {} {:<17} calls: {}",
            exchange.request_id,
            exchange.event_name,
            exchange.status,
            exchange.outcome,
            exchange.describe_calls()
        );
    }
    Ok(())
}

/// `200 created`.
fn answer(exchange: &Exchange) -> String {
    format!("{} {}", exchange.status, exchange.outcome)
}

/// The calls to `service`: method → count.
fn methods(exchange: &Exchange, service: &str) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for call in exchange.calls.iter().filter(|call| call.service == service) {
        *tally.entry(call.method.clone()).or_default() += 1;
    }
    tally
}

fn same_record(crm: Crm, a: &str, b: &str) -> bool {
    match crm {
        Crm::Dynamics => a.eq_ignore_ascii_case(b),
        Crm::Salesforce => same_salesforce_id(a, b),
    }
}

/// The referrals whose `externalReferenceId` names `opportunity_id`.
async fn referrals_for(
    sandbox: &SandboxClient,
    crm: Crm,
    opportunity_id: &str,
) -> Result<Vec<Value>> {
    let all = sandbox.get("/_sandbox/partner-center/referrals").await?;
    Ok(all["referrals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|referral| {
            referral["externalReferenceId"]
                .as_str()
                .is_some_and(|id| same_record(crm, id, opportunity_id))
        })
        .cloned()
        .collect())
}

async fn read_record(sandbox: &SandboxClient, crm: Crm, id: &str) -> Result<Value> {
    sandbox
        .get(&match crm {
            Crm::Dynamics => format!("/_sandbox/dataverse/opportunities/{id}"),
            Crm::Salesforce => format!("/_sandbox/salesforce/Opportunity/{id}"),
        })
        .await
}

fn referral_field(crm: Crm) -> &'static str {
    match crm {
        Crm::Dynamics => super::DATAVERSE_REFERRAL_FIELD,
        Crm::Salesforce => super::SALESFORCE_REFERRAL_FIELD,
    }
}

fn audit_field(crm: Crm) -> &'static str {
    match crm {
        Crm::Dynamics => "msft_microsoftpartnercenterreferralsyncaudit",
        Crm::Salesforce => "Audit__c",
    }
}

fn solutions_field(crm: Crm) -> &'static str {
    match crm {
        Crm::Dynamics => "msft_microsoftpartnercentersolutions",
        Crm::Salesforce => "Microsoft_Solutions__c",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_field_is_wrapped_at_spaces() {
        assert_eq!(
            wrap("Sync failed: Solution ID is required. Fix: add one.", 20),
            [
                "Sync failed:",
                "Solution ID is",
                "required. Fix: add",
                "one."
            ]
        );
        assert_eq!(wrap("", 20), Vec::<String>::new());
        assert_eq!(
            wrap("averyveryverylongword x", 5),
            ["averyveryverylongword", "x"]
        );
    }

    #[test]
    fn the_demo_opportunities_have_valid_ids_and_are_compared_the_crm_s_way() {
        assert_eq!(
            opportunity_id_of(Crm::Dynamics, 1),
            "de300000-0000-4000-8000-0000000000e1"
        );
        let salesforce = opportunity_id_of(Crm::Salesforce, 2);
        assert_eq!(salesforce, "006000000009902");
        assert!(same_record(
            Crm::Salesforce,
            "006000000009902AAA",
            &salesforce
        ));
        assert!(same_record(
            Crm::Dynamics,
            "DE300000-0000-4000-8000-0000000000E1",
            "de300000-0000-4000-8000-0000000000e1"
        ));
        assert!(!same_record(
            Crm::Salesforce,
            "006000000009901AAA",
            &salesforce
        ));
    }
}
