//! `cosell demo` as a smoke test: the walk-through's summary for both CRMs in both directions,
//! and what it prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cosell_cli::demo::{self, Crm, DUPLICATES, NEW_DEAL_VALUE, Summary};
use cosell_domain::ports::AuditEvent;
use cosell_sandbox::identities::{DATAVERSE_CLIENT_SECRET, PC_CLIENT_SECRET, PC_REFRESH_TOKEN};

async fn run() -> (Summary, String) {
    let mut out = Vec::new();
    let result = demo::run_demo(&mut out).await;
    let text = String::from_utf8(out).unwrap();
    let summary = result.unwrap_or_else(|error| panic!("the demo failed: {error:#}\n{text}"));
    (summary, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_syncs_one_referral_per_crm_exactly_once_and_follows_the_change() {
    let (summary, text) = run().await;

    let crms: Vec<Crm> = summary.crms.iter().map(|crm| crm.crm).collect();
    assert_eq!(crms, [Crm::Dynamics, Crm::Salesforce], "{text}");
    for crm in &summary.crms {
        let name = crm.crm.label();
        // One opportunity per CRM, linked back to its referral.
        assert_eq!(crm.opportunities, 1, "{name}");
        assert!(!crm.opportunity_id.is_empty(), "{name}");
        assert!(crm.linked_back(), "{name}: {:?}", crm.external_reference_id);
        assert_eq!(crm.first_outcomes, ["created", "echo_skipped"], "{name}");
        // The duplicates were skipped without a single API call.
        assert_eq!(
            crm.duplicate_outcomes,
            vec!["duplicate_skipped"; DUPLICATES],
            "{name}"
        );
        assert_eq!(crm.calls_during_duplicates, 0, "{name}");
        // ...and left no audit entry (the failed write taking the key answers them).
        assert_eq!(crm.audit_count(&AuditEvent::DuplicateSkipped), 0, "{name}");
        assert_eq!(crm.audit_count(&AuditEvent::Created), 1, "{name}");
        // The Partner Center change was applied.
        assert_eq!(crm.update_outcomes, ["updated"], "{name}");
        assert!(crm.update_applied(), "{name}: {crm:?}");
        assert_eq!(crm.amount_after, Some(NEW_DEAL_VALUE), "{name}");
        assert_ne!(crm.amount_before, crm.amount_after, "{name}");
        assert_ne!(crm.close_date_before, crm.close_date_after, "{name}");
        assert_eq!(crm.audit.last(), Some(&AuditEvent::Updated), "{name}");
        // The function's calls went to Partner Center and to this CRM only.
        assert!(crm.api_calls.contains_key("partner-center"), "{name}");
        let (own, other) = match crm.crm {
            Crm::Dynamics => ("dataverse", "salesforce"),
            Crm::Salesforce => ("salesforce", "dataverse"),
        };
        assert!(
            crm.api_calls.contains_key(own),
            "{name}: {:?}",
            crm.api_calls
        );
        assert!(
            !crm.api_calls.contains_key(other),
            "{name}: {:?}",
            crm.api_calls
        );
        // Issue 11's fewest calls, for the new referral, its echo, the duplicates and the
        // update: Partner Center GET + PATCH for the create, GET for the update.
        let calls = |service: &str| -> Vec<(&str, usize)> {
            crm.api_calls[service]
                .iter()
                .map(|(method, count)| (method.as_str(), *count))
                .collect()
        };
        assert_eq!(
            calls("partner-center"),
            [("GET", 2), ("PATCH", 1)],
            "{name}"
        );
        match crm.crm {
            // The account and contact look-ups and the currency (GET 3), one deep insert of the
            // account with its contact (POST 1), the opportunity's upsert and the update,
            // written against the version the create returned without reading the record
            // (PATCH 2).
            Crm::Dynamics => assert_eq!(
                calls("dataverse"),
                [("GET", 3), ("PATCH", 2), ("POST", 1)],
                "{name}"
            ),
            // One Composite request finding the account and contact, one writing them with the
            // opportunity (POST 2); the update reads the record (GET 1) and writes it (PATCH 1).
            Crm::Salesforce => assert_eq!(
                calls("salesforce"),
                [("GET", 1), ("PATCH", 1), ("POST", 2)],
                "{name}"
            ),
        }
    }
    assert_ne!(summary.crms[0].referral_id, summary.crms[1].referral_id);

    // CRM -> Partner Center, with crm-events.
    for crm in &summary.crms {
        let name = crm.crm.label();
        let back = &crm.to_partner_center;
        // Sync on: exactly one referral names the opportunity, its id written back.
        assert_eq!(back.referrals_for_opportunity, 1, "{name}: {back:?}");
        assert!(back.linked_both_ways(crm.crm), "{name}: {back:?}");
        assert_eq!(back.sync_outcomes[0], "created", "{name}: {back:?}");
        // The Dataverse opportunity asks for Microsoft's help: the Shared deal's invitation
        // of Microsoft is a second POST.
        let posts = if crm.crm == Crm::Dynamics { 2 } else { 1 };
        assert_eq!(
            back.partner_center_calls_on_sync.get("POST"),
            Some(&posts),
            "{name}: {back:?}"
        );
        assert_ne!(back.referral_id, crm.referral_id, "{name}");
        // The write-back's own notification: an echo, no Partner Center call.
        assert!(back.sync_outcomes.len() >= 2, "{name}: {back:?}");
        assert!(
            back.sync_outcomes[1..].iter().all(|o| o == "echo_skipped"),
            "{name}: {back:?}"
        );
        assert_eq!(back.partner_center_calls_on_echo, 0, "{name}");
        // No solution: not sent, the audit field names the fix.
        assert_eq!(
            back.invalid_outcomes[0], "needs_attention",
            "{name}: {back:?}"
        );
        assert_eq!(back.partner_center_calls_on_invalid, 0, "{name}");
        assert_eq!(back.referrals_for_invalid, 0, "{name}");
        assert!(back.fix_shown(crm.crm), "{name}: {}", back.invalid_audit);
        assert!(
            back.invalid_audit.contains("Solution ID is required"),
            "{name}"
        );
    }
    assert!(
        summary.elapsed.as_secs() < 10,
        "the demo took {:?}",
        summary.elapsed
    );

    for step in [
        "[1]",
        "[2]",
        "[3]",
        "[4]",
        "[5]",
        "[6]",
        "=== CRM -> Partner Center ===",
        "[7]",
        "[8]",
        "[9]",
        "Demo passed",
    ] {
        assert!(text.contains(step), "{step} missing:\n{text}");
    }
    // No contact data, no credentials.
    for secret in [
        "sue.smith@contoso.com",
        "Sue",
        "Smith",
        "john.doe@microsoft.com",
        "1234567890",
        "Contoso Customer Inc",
        "alex.kim@fabrikam.example",
        "Alex",
        demo::DATAVERSE_WEBHOOK_KEY,
        demo::SALESFORCE_ENDPOINT_SECRET,
        PC_REFRESH_TOKEN,
        PC_CLIENT_SECRET,
        DATAVERSE_CLIENT_SECRET,
        "Bearer",
        "Signature ",
        "PRIVATE KEY",
    ] {
        assert!(!text.contains(secret), "{secret} was printed:\n{text}");
    }
}
