//! `cosell register-webhook` against the in-process sandbox: creates, then overwrites (with a
//! warning naming the replaced URL), reads back, and shows the validation event delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use cosell_cli::context::{Deployment, Exit, OpsConfig, Output};
use cosell_cli::register_webhook::{self, print_report, register_webhook};
use cosell_domain::webhook::EventName;
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::identities::{PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN, TENANT_ID};

/// A receiver answering 200 to every POST, counting them; its URL.
async fn receiver(path: &'static str) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let app = Router::new().route(
        path,
        post(move || {
            let seen = Arc::clone(&seen);
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}{path}"), count)
}

fn deployment(base_url: &str) -> Deployment {
    let vars = [
        ("CRM_KIND", "dataverse"),
        ("DATAVERSE_URL", base_url),
        ("DATAVERSE_CLIENT_ID", "unused"),
        ("DATAVERSE_CLIENT_SECRET", "unused"),
        ("PC_API_BASE_URL", base_url),
        ("PC_WEBHOOKS_BASE_URL", base_url),
        ("ENTRA_AUTHORITY", base_url),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "memory"),
    ];
    let config = OpsConfig::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    Deployment::new(config, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_then_overwrites_with_a_warning_and_the_validation_event_is_delivered() {
    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();
    let client = deployment(&sandbox.base_url).registration_client().unwrap();
    let (first_url, first_hits) = receiver("/first").await;
    let (second_url, second_hits) = receiver("/second").await;
    let wait = Duration::from_secs(10);

    // 1. No registration yet: POST.
    let report = register_webhook(&client, &first_url, wait).await.unwrap();
    assert_eq!(report.action, "register");
    assert_eq!(report.replaced_url, None);
    assert!(report.warnings.is_empty(), "{report:#?}");
    assert_eq!(
        report.registration.webhook_url.as_deref(),
        Some(first_url.as_str())
    );
    assert_eq!(
        report.registration.webhook_events,
        register_webhook::events()
    );
    assert!(report.mismatches.is_empty(), "{report:#?}");
    assert!(report.validation_delivered(), "{report:#?}");
    assert_eq!(report.exit(), Exit::Healthy);
    assert_eq!(first_hits.load(Ordering::SeqCst), 1);
    let mut out = Vec::new();
    let exit = print_report(&report, Output::Human, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(exit, Exit::Healthy);
    assert!(text.contains(&format!("registered {first_url}")), "{text}");
    assert!(
        text.contains("referral-created, referral-updated, related-referral-created, related-referral-updated, test-created"),
        "{text}"
    );
    assert!(text.contains(": completed"), "{text}");
    assert!(text.contains("  OK") || text.contains(" OK"), "{text}");

    // 2. A registration exists: PUT, with a warning naming the URL being replaced.
    let report = register_webhook(&client, &second_url, wait).await.unwrap();
    assert_eq!(report.action, "replace");
    assert_eq!(report.replaced_url.as_deref(), Some(first_url.as_str()));
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].contains(&format!("replacing the registration of {first_url}")));
    assert_eq!(
        report.registration.webhook_url.as_deref(),
        Some(second_url.as_str())
    );
    assert!(report.validation_delivered(), "{report:#?}");
    assert_eq!(second_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        first_hits.load(Ordering::SeqCst),
        1,
        "the old URL got nothing more"
    );

    let mut out = Vec::new();
    print_report(&report, Output::Json, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["action"], "replace");
    assert_eq!(json["replaced_url"], first_url.as_str());
    assert_eq!(json["validation_delivered"], true);
    assert_eq!(json["validation"]["results"][0]["responseCode"], "OK");
    assert_eq!(
        json["registration"]["WebhookEvents"][4],
        EventName::TestCreated.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_the_validation_event_is_a_problem() {
    let sandbox = cosell_sandbox::spawn(SandboxConfig {
        pc_delivery_attempts: 1,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let client = deployment(&sandbox.base_url).registration_client().unwrap();
    // Nothing listens at this path of the receiver: 404 / 405.
    let (url, _) = receiver("/listening").await;
    let url = url.replace("/listening", "/elsewhere");
    let report = register_webhook(&client, &url, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!report.validation_delivered(), "{report:#?}");
    assert_eq!(report.exit(), Exit::Problems);
    let mut out = Vec::new();
    print_report(&report, Output::Human, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("problem: the validation event was not accepted"),
        "{text}"
    );
}
