//! Idempotency keys, outcomes and their HTTP statuses, referral categories, settings, and
//! the futures being `Send`.

use super::*;

#[test]
fn redeliveries_share_a_key_and_other_changes_do_not() {
    let event = webhook("referral-updated", REFERRAL, at(1));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert!(key.as_str().starts_with("pc:") && key.as_str().len() == 3 + 64);

    // The same delivery, in camelCase and with the date written with 7 fractional digits.
    let same: WebhookEvent = serde_json::from_value(json!({
        "eventName": "ReferralUpdated",
        "resourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{REFERRAL}"),
        "resourceChangeUtcDate": "2027-01-15T08:00:01.0000000+00:00"
    }))
    .unwrap();
    assert_eq!(partner_center_event_key(&same, at(999)).unwrap(), key);

    let later = webhook("referral-updated", REFERRAL, at(2));
    let created = webhook("referral-created", REFERRAL, at(1));
    let other = webhook("referral-updated", MICROSOFT_REFERRAL, at(1));
    for different in [later, created, other] {
        assert_ne!(partner_center_event_key(&different, at(100)).unwrap(), key);
    }
}

#[test]
fn outcomes_map_to_http_statuses_and_log_names() {
    let crm = CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap();
    let cases = [
        (Outcome::Acknowledged, 200, "acknowledged"),
        (Outcome::Ignored { reason: "x".into() }, 200, "ignored"),
        (Outcome::DuplicateSkipped, 200, "duplicate_skipped"),
        (Outcome::InProgress, 409, "in_progress"),
        (Outcome::EchoSkipped, 200, "echo_skipped"),
        (Outcome::UnchangedSkipped, 200, "unchanged_skipped"),
        (
            Outcome::HeldUntilAccepted { crm: crm.clone() },
            200,
            "held_until_accepted",
        ),
        (Outcome::Created { crm: crm.clone() }, 200, "created"),
        (Outcome::Updated { crm: crm.clone() }, 200, "updated"),
        (
            Outcome::RetryEnqueued {
                attempt: 2,
                delay: Duration::from_secs(60),
            },
            200,
            "retry_enqueued",
        ),
        (
            Outcome::NeedsAttention {
                code: "rejected",
                message: "m".into(),
            },
            200,
            "needs_attention",
        ),
    ];
    for (outcome, status, name) in cases {
        assert_eq!(outcome.http_status(), status, "{outcome:?}");
        assert_eq!(outcome.log_name(), name);
        assert_eq!(outcome.response()["outcome"], name);
    }
    assert_eq!(
        Outcome::Created { crm: crm.clone() }.response()["crm"],
        json!(crm.to_string())
    );
}

#[test]
fn referral_categories_follow_the_documented_table() {
    use crate::referral::{ReferralQualification as Q, ReferralType as T};
    let referral = |kind: T, qualification: Q, inviter: Option<&str>| {
        let mut r = co_sell_referral();
        r.referral_type = Some(kind);
        r.qualification = Some(qualification);
        r.invite_context = inviter.map(|org| {
            serde_json::from_value(json!({ "invitedBy": { "organizationId": org } })).unwrap()
        });
        r
    };
    let cases = [
        (
            T::Independent,
            Q::Direct,
            Some("msft"),
            ReferralCategory::MarketplaceLead,
        ),
        (
            T::Independent,
            Q::Direct,
            None,
            ReferralCategory::MarketplaceLead,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            Some("msft"),
            ReferralCategory::QualifiedLead,
        ),
        (
            T::Independent,
            Q::MarketingQualified,
            Some("MSFT"),
            ReferralCategory::QualifiedLead,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            Some(PARTNER_ORG),
            ReferralCategory::CoSell,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            None,
            ReferralCategory::CoSell,
        ),
        (
            T::Shared,
            Q::SalesQualified,
            Some("msft"),
            ReferralCategory::CoSell,
        ),
    ];
    for (kind, qualification, inviter, expected) in cases {
        let r = referral(kind.clone(), qualification.clone(), inviter);
        assert_eq!(
            ReferralCategory::of(&r),
            expected,
            "{kind:?} {qualification:?} {inviter:?}"
        );
        assert_eq!(
            ReferralScope::CoSellOnly.includes(&r),
            expected == ReferralCategory::CoSell
        );
        assert!(ReferralScope::All.includes(&r));
    }
}

#[test]
fn the_partners_referrals_are_told_apart_by_organization() {
    let settings = SyncSettings {
        partner_organization_id: Some(PARTNER_ORG.to_uppercase()),
        ..SyncSettings::default()
    };
    assert_eq!(settings.is_partners(&co_sell_referral()), Some(true));
    assert_eq!(settings.is_partners(&microsoft_referral()), Some(false));
    assert_eq!(
        SyncSettings::default().is_partners(&microsoft_referral()),
        None
    );
    assert_eq!(
        SyncSettings::default().idempotency_ttl,
        Duration::from_secs(3600)
    );
}

#[test]
fn the_handler_and_retry_futures_are_send() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let deps = world.deps();
    let meta = World::delivery(at(100));
    let event = webhook("referral-created", REFERRAL, at(1));
    let handled = block_on(assert_send(handle_partner_center_event(
        &deps, &event, &meta,
    )));
    assert!(matches!(handled.unwrap().outcome, Outcome::Created { .. }));
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: "pc:x".into(),
        attempt: 1,
        payload: serde_json::to_value(&event).unwrap(),
    };
    let retried = block_on(assert_send(run_retry_job(&deps, &job, &meta)));
    // A retry job does not trust the echo markers (its earlier attempt may have written the
    // CRM and lost its link to another sync's): it reads the referral, found unchanged.
    assert_eq!(retried.unwrap().outcome, Outcome::UnchangedSkipped);
}

#[test]
fn audit_and_completion_failures_are_reported_as_warnings_not_failures() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let down = transient(Service::AuditLog, None);
    world.audit.fail_next(down.clone());

    let handled = world
        .handle(&webhook("referral-created", REFERRAL, at(1)), at(100))
        .unwrap();

    assert!(matches!(handled.outcome, Outcome::Created { .. }));
    assert_eq!(handled.warnings, vec![down]);
}
