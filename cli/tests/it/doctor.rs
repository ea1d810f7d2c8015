//! `cosell doctor` against the in-process sandbox and moto: a healthy setup is all ok, and
//! each check, with its fault injected, names the exact fix. One test per check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::ops;

use chrono::{Days, Utc};
use cosell_cli::context::{Deployment, Exit, OpsConfig, Output};
use cosell_cli::doctor::{self, Check, Status};
use cosell_domain::webhook::{EventName, WebhookRegistration};
use ops::{Crm, OUR_URL, World};
use reqwest::Method;
use serde_json::json;

/// A world whose webhook registration points at this deployment.
async fn healthy(crm: Crm) -> World {
    let world = World::start(crm).await;
    register(&world, OUR_URL, EventName::REFERRAL_EVENTS.to_vec()).await;
    world
}

async fn register(world: &World, url: &str, events: Vec<EventName>) {
    let config = OpsConfig::from_lookup(world.lookup()).unwrap();
    let deployment = Deployment::new(config, None).unwrap();
    let client = deployment.registration_client().unwrap();
    let registration = WebhookRegistration {
        webhook_url: Some(url.to_owned()),
        webhook_events: events,
        ..WebhookRegistration::default()
    };
    match client.get().await.unwrap() {
        None => client.register(&registration).await.unwrap(),
        Some(_) => client.update(&registration).await.unwrap(),
    };
}

async fn run(world: &World) -> Vec<Check> {
    doctor::run_doctor_with(world.lookup(), Some(world.aws.clone()), None).await
}

fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

/// The named check has `status`, and its fix contains every one of `needles`.
fn assert_fix(checks: &[Check], name: &str, status: Status, needles: &[&str]) {
    let found = check(checks, name);
    assert_eq!(found.status, status, "{found:#?}");
    let fix = found.fix.as_deref().unwrap_or_default();
    for needle in needles {
        assert!(
            fix.contains(needle),
            "{name}: fix lacks '{needle}': {found:#?}"
        );
    }
}

/// Every check except `except` is ok.
fn others_ok(checks: &[Check], except: &[&str]) {
    for c in checks {
        if !except.contains(&c.name) {
            assert_eq!(c.status, Status::Ok, "{c:#?}");
        }
    }
}

fn text(checks: &[Check]) -> (String, Exit) {
    let mut out = Vec::new();
    let exit = doctor::print_checks(checks, Output::Human, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), exit)
}

#[tokio::test]
async fn a_healthy_salesforce_deployment_is_all_ok_and_exits_0() {
    let world = healthy(Crm::Salesforce).await;
    let checks = run(&world).await;
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "configuration",
            "token-partner-center",
            "token-webhooks",
            "token-crm",
            "partner-center-role",
            "crm-access",
            "crm-fields",
            "currency",
            "stages",
            "crm-concurrency",
            "webhook-registration",
            "dynamodb-table",
            "retry-queue",
            "dead-letter-queue",
            "api-budget",
        ]
    );
    others_ok(&checks, &[]);
    let (printed, exit) = text(&checks);
    assert_eq!(exit, Exit::Healthy, "{printed}");
    assert_eq!(exit.code(), 0);
    assert!(
        printed.contains("15 ok, 0 warning(s), 0 problem(s)"),
        "{printed}"
    );

    let mut out = Vec::new();
    doctor::print_checks(&checks, Output::Json, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["code"], 0);
    assert_eq!(json["checks"][0]["status"], "ok");
}

#[tokio::test]
async fn a_healthy_dataverse_deployment_is_all_ok_and_exits_0() {
    let world = healthy(Crm::Dataverse).await;
    let checks = run(&world).await;
    others_ok(&checks, &[]);
    assert_eq!(checks.len(), 15);
    assert!(
        check(&checks, "crm-concurrency")
            .detail
            .contains("opportunity refuses an update over a save made since"),
        "the sandbox's table definition says IsOptimisticConcurrencyEnabled"
    );
    assert!(
        check(&checks, "api-budget")
            .detail
            .contains("of the connector's 10000 daily API calls left")
    );
    assert_eq!(doctor::exit_of(&checks), Exit::Healthy);
}

#[tokio::test]
async fn configuration_names_the_missing_variable() {
    let mut world = World::start(Crm::Dataverse).await;
    world.unset("DATAVERSE_CLIENT_SECRET");
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "configuration",
        Status::Problem,
        &["set DATAVERSE_CLIENT_SECRET"],
    );
    assert_eq!(doctor::exit_of(&checks), Exit::Problems);

    // A currency that is not ISO 4217 is refused with the configuration.
    world.set("DATAVERSE_CLIENT_SECRET", "x");
    world.set("MAPPING_CONFIG_JSON", r#"{"default_currency":"XYZ"}"#);
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "configuration",
        Status::Problem,
        &["MAPPING_CONFIG_JSON"],
    );
    assert!(
        check(&checks, "configuration").detail.contains("XYZ"),
        "{checks:#?}"
    );
}

#[tokio::test]
async fn token_partner_center_names_the_re_consent_after_a_password_reset() {
    let world = healthy(Crm::Dataverse).await;
    world
        .control(
            Method::POST,
            "/_sandbox/entra/revoke-refresh-tokens",
            Some(json!({})),
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "token-partner-center",
        Status::Problem,
        &["revoked or has expired", "re-consent", "PC_REFRESH_TOKEN"],
    );
    // What needs the delegated token is not checked; the rest still is.
    assert_eq!(
        check(&checks, "partner-center-role").status,
        Status::CouldNotCheck
    );
    others_ok(&checks, &["token-partner-center", "partner-center-role"]);
}

#[tokio::test]
async fn token_expiry_is_warned_14_days_ahead() {
    let mut world = healthy(Crm::Dataverse).await;
    let soon = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(5))
        .unwrap();
    world.set("DATAVERSE_CLIENT_SECRET_EXPIRES_ON", &soon.to_string());
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "token-crm",
        Status::Warn,
        &[&format!("before {soon}"), "DATAVERSE_CLIENT_SECRET"],
    );
    assert!(check(&checks, "token-crm").detail.contains("in 5 days"));
    others_ok(&checks, &["token-crm"]);
    assert_ne!(doctor::exit_of(&checks), Exit::Problems);
}

#[tokio::test]
async fn token_webhooks_names_the_wrong_client_secret() {
    let mut world = healthy(Crm::Dataverse).await;
    world.set("PC_CLIENT_SECRET", "an-expired-secret");
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "token-webhooks",
        Status::Problem,
        &[
            "client secret",
            "wrong or expired",
            "create a new client secret",
        ],
    );
    assert_eq!(
        check(&checks, "webhook-registration").status,
        Status::CouldNotCheck
    );
}

#[tokio::test]
async fn token_crm_names_the_salesforce_key() {
    let mut world = healthy(Crm::Salesforce).await;
    world.set("SALESFORCE_USERNAME", "someone.else@partner.sandbox");
    let checks = run(&world).await;
    let found = check(&checks, "token-crm");
    assert_eq!(found.status, Status::Problem, "{found:#?}");
    assert!(found.fix.is_some(), "{found:#?}");
    assert!(
        found.detail.contains("SALESFORCE_PRIVATE_KEY"),
        "{found:#?}"
    );
    for skipped in [
        "crm-access",
        "crm-fields",
        "currency",
        "stages",
        "crm-concurrency",
        "api-budget",
    ] {
        assert_eq!(check(&checks, skipped).status, Status::CouldNotCheck);
    }
}

#[tokio::test]
async fn partner_center_role_names_referrals_admin() {
    let world = healthy(Crm::Dataverse).await;
    world
        .control(
            Method::PUT,
            "/_sandbox/partner-center/users/referrals.admin@partner.sandbox",
            Some(json!({"roles": ["ReferralUser"]})),
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "partner-center-role",
        Status::Problem,
        &["assign the Referrals admin role", "User management"],
    );
    assert!(
        check(&checks, "partner-center-role")
            .detail
            .contains("Referrals admin role is missing")
    );
    others_ok(&checks, &["partner-center-role"]);
}

#[tokio::test]
async fn crm_access_names_the_missing_privilege() {
    let world = healthy(Crm::Dataverse).await;
    world
        .control(
            Method::POST,
            "/_sandbox/faults",
            Some(json!({
                "service": "dataverse",
                "method": "PATCH",
                "path_prefix": "/api/data/v9.2/accounts",
                "status": 403,
                "count": 1,
                "error_code": "0x80040220",
                "message": "Principal user (Id=4444, type=8) is missing prvWriteAccount privilege (Id=1) on OTC=1 for entity 'account'."
            })),
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "crm-access",
        Status::Problem,
        &["Write on accounts", "Application users"],
    );
    assert!(
        check(&checks, "crm-access")
            .detail
            .contains("prvWriteAccount")
    );
    others_ok(&checks, &["crm-access"]);
}

#[tokio::test]
async fn crm_fields_checks_the_taxonomy_fields_of_both_crms() {
    let world = healthy(Crm::Dataverse).await;
    assert!(
        check(&run(&world).await, "crm-fields")
            .detail
            .contains("the 11 custom fields exist"),
    );
    world
        .control(
            Method::DELETE,
            "/_sandbox/dataverse/schema/opportunity/msft_solutionplay",
            None,
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "crm-fields",
        Status::Problem,
        &[
            "msft_solutionplay (solution_play)",
            "dataverse.opportunity.<field>",
        ],
    );
    others_ok(&checks, &["crm-fields"]);

    let world = healthy(Crm::Salesforce).await;
    for field in ["Solution_Area__c", "Partner_Role__c"] {
        world
            .control(
                Method::DELETE,
                &format!("/_sandbox/salesforce/schema/Opportunity/{field}"),
                None,
            )
            .await;
    }
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "crm-fields",
        Status::Problem,
        &[
            "Solution_Area__c (solution_area)",
            "Partner_Role__c (partner_role)",
            "salesforce.opportunity.<field>",
        ],
    );
    others_ok(&checks, &["crm-fields"]);
}

#[tokio::test]
async fn crm_fields_names_the_missing_custom_field() {
    let world = healthy(Crm::Dataverse).await;
    world
        .control(
            Method::DELETE,
            "/_sandbox/dataverse/schema/opportunity/msft_microsoftpartnercenterhelpneed",
            None,
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "crm-fields",
        Status::Problem,
        &[
            "msft_microsoftpartnercenterhelpneed (help)",
            "MAPPING_CONFIG_JSON",
        ],
    );
    others_ok(&checks, &["crm-fields"]);

    let world = healthy(Crm::Salesforce).await;
    world
        .control(
            Method::DELETE,
            "/_sandbox/salesforce/schema/Opportunity/Audit__c",
            None,
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "crm-fields",
        Status::Problem,
        &["Audit__c (audit)", "Object Manager"],
    );
}

#[tokio::test]
async fn currency_names_the_currency_to_add() {
    let mut world = healthy(Crm::Dataverse).await;
    world.set("MAPPING_CONFIG_JSON", r#"{"default_currency":"SEK"}"#);
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "currency",
        Status::Problem,
        &["add and activate SEK in Dataverse", "Currencies"],
    );
    others_ok(&checks, &["currency"]);
    world.set("MAPPING_CONFIG_JSON", r#"{"default_currency":"EUR"}"#);
    assert_eq!(check(&run(&world).await, "currency").status, Status::Ok);

    let mut world = healthy(Crm::Salesforce).await;
    world.set("MAPPING_CONFIG_JSON", r#"{"default_currency":"INR"}"#);
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "currency",
        Status::Problem,
        &["activate INR in Salesforce"],
    );
}

#[tokio::test]
async fn stages_names_the_missing_stage() {
    let world = healthy(Crm::Salesforce).await;
    world
        .control(
            Method::PUT,
            "/_sandbox/salesforce/stages",
            Some(json!([
                {"name": "Discovery", "closed": false, "won": false, "probability": 10},
                {"name": "Qualification", "closed": false, "won": false, "probability": 20},
                {"name": "Closed Won", "closed": true, "won": true, "probability": 100},
                {"name": "Closed Lost", "closed": true, "won": false, "probability": 0}
            ])),
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "stages",
        Status::Problem,
        &["stages.on_hold", "Stage picklist"],
    );
    assert!(
        check(&checks, "stages")
            .detail
            .contains("on-hold stage 'Prospecting'")
    );
    others_ok(&checks, &["stages"]);

    let mut world = healthy(Crm::Dataverse).await;
    world.set(
        "MAPPING_CONFIG_JSON",
        r#"{"dataverse":{"status_codes":{"on_hold":7}}}"#,
    );
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "stages",
        Status::Problem,
        &["dataverse.status_codes.on_hold"],
    );
    assert!(
        check(&checks, "stages")
            .detail
            .contains("on-hold status reason 7")
    );
}

#[tokio::test]
async fn webhook_registration_names_the_takeover_and_the_command() {
    let world = healthy(Crm::Dataverse).await;
    register(
        &world,
        "https://other-environment.example/hook",
        EventName::REFERRAL_EVENTS.to_vec(),
    )
    .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "webhook-registration",
        Status::Problem,
        &[&format!("cosell register-webhook --url {OUR_URL}")],
    );
    assert!(
        check(&checks, "webhook-registration")
            .detail
            .contains("points at https://other-environment.example/hook")
    );
    others_ok(&checks, &["webhook-registration"]);

    // Ours, but without the related-referral events.
    register(
        &world,
        OUR_URL,
        vec![EventName::ReferralCreated, EventName::ReferralUpdated],
    )
    .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "webhook-registration",
        Status::Problem,
        &["cosell register-webhook"],
    );
    assert!(
        check(&checks, "webhook-registration")
            .detail
            .contains("related-referral-created")
    );
}

#[tokio::test]
async fn dynamodb_table_names_the_missing_table() {
    let mut world = healthy(Crm::Dataverse).await;
    world.set("TABLE_NAME", &ops::unique("missing"));
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "dynamodb-table",
        Status::Problem,
        &["deploy the stack", "TABLE_NAME"],
    );
    // The API budget counter lives in the table too.
    assert_eq!(check(&checks, "api-budget").status, Status::CouldNotCheck);
    others_ok(&checks, &["dynamodb-table", "api-budget"]);
}

#[tokio::test]
async fn retry_queue_names_the_missing_queue() {
    let mut world = healthy(Crm::Dataverse).await;
    let missing = world
        .queues
        .queue_url
        .replace("cosell-cli-retry", "cosell-cli-gone");
    world.set("RETRY_QUEUE_URL", &missing);
    world.set("DLQ_URL", &world.queues.dlq_url.clone());
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "retry-queue",
        Status::Problem,
        &["RETRY_QUEUE_URL"],
    );
    others_ok(&checks, &["retry-queue"]);
}

#[tokio::test]
async fn dead_letter_queue_names_audit_and_redrive() {
    let world = healthy(Crm::Dataverse).await;
    cosell_adapters::SqsQueue::new(world.aws.sqs.clone(), &world.queues.dlq_url)
        .send(&cosell_adapters::aws::OutgoingMessage {
            body: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "dead-letter-queue",
        Status::Problem,
        &["cosell audit --needs-attention", "cosell redrive"],
    );
    assert!(
        check(&checks, "dead-letter-queue")
            .detail
            .starts_with("1 message(s)")
    );
    others_ok(&checks, &["dead-letter-queue"]);
}

#[tokio::test]
async fn api_budget_names_the_exhausted_allowance() {
    let world = healthy(Crm::Salesforce).await;
    world
        .control(
            Method::POST,
            "/_sandbox/salesforce/limits",
            Some(json!({"daily": 1000, "used": 990})),
        )
        .await;
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "api-budget",
        Status::Problem,
        &["daily API allowance"],
    );
    others_ok(&checks, &["api-budget"]);
}

#[tokio::test]
async fn api_budget_names_the_connectors_spent_daily_budget() {
    let mut world = healthy(Crm::Dataverse).await;
    world.set("DAILY_API_BUDGET", "1000");
    cosell_adapters::aws::DynamoApiBudget::new(world.aws.dynamodb.clone(), &world.table)
        .try_add(cosell_domain::budget::utc_day(Utc::now()), 800)
        .await
        .unwrap();
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "api-budget",
        Status::Warn,
        &["raise DAILY_API_BUDGET"],
    );
    assert!(
        check(&checks, "api-budget")
            .detail
            .starts_with("200 of the connector's 1000")
    );

    cosell_adapters::aws::DynamoApiBudget::new(world.aws.dynamodb.clone(), &world.table)
        .try_add(cosell_domain::budget::utc_day(Utc::now()), 199)
        .await
        .unwrap();
    let checks = run(&world).await;
    assert_fix(
        &checks,
        "api-budget",
        Status::Problem,
        &["next UTC day", "raise DAILY_API_BUDGET"],
    );
    others_ok(&checks, &["api-budget"]);
}
