//! `aws::secrets` against moto (Secrets Manager and SSM Parameter Store).
//!
//! Like `moto.rs`: `scripts/test.sh` starts moto and exports `COSELL_MOTO_ENDPOINT`;
//! without it every test fails with instructions. Each test creates its own secrets.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cosell_adapters::aws::secrets::{RotatedWrite, SecretError, SecretResolver, SecretWriter};
use cosell_adapters::aws::{aws_sdk_secretsmanager, aws_sdk_ssm};
use cosell_adapters::http::tokens::PARTNER_CENTER_REFERRALS_SCOPE;
use cosell_adapters::http::{EntraRefreshToken, EntraRefreshTokenConfig};
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::identities::{PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN, TENANT_ID};
use secrecy::ExposeSecret;

struct Moto {
    config: cosell_adapters::aws::aws_config::SdkConfig,
    resolver: SecretResolver,
    secrets_manager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

/// moto's Secrets Manager and SSM (the test kit's configuration: never a real account).
async fn moto() -> Moto {
    let config = cosell_testkit::moto::sdk_config().await;
    Moto {
        resolver: SecretResolver::from_conf(&config),
        config: config.clone(),
        secrets_manager: aws_sdk_secretsmanager::Client::new(&config),
        ssm: aws_sdk_ssm::Client::new(&config),
    }
}

fn unique(what: &str) -> String {
    cosell_testkit::unique(&format!("cosell-it-{what}"))
}

impl Moto {
    /// A new secret holding `value`; its ARN.
    async fn secret(&self, value: &str) -> String {
        let created = self
            .secrets_manager
            .create_secret()
            .name(unique("secret"))
            .secret_string(value)
            .send()
            .await
            .unwrap();
        created.arn().unwrap().to_owned()
    }

    /// A new SecureString parameter holding `value`; its name.
    async fn secure_parameter(&self, value: &str) -> String {
        let name = format!("/{}/value", unique("param"));
        self.ssm
            .put_parameter()
            .name(&name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
        name
    }
}

#[tokio::test]
async fn a_secret_by_arn_replaces_the_variable_and_others_fall_back() {
    let moto = moto().await;
    let arn = moto.secret("pc-refresh-token-value").await;
    let resolved = moto
        .resolver
        .resolve_vars([("PC_REFRESH_TOKEN_SECRET_ARN", arn.as_str())])
        .await
        .unwrap();
    assert_eq!(
        resolved.get("PC_REFRESH_TOKEN").unwrap().expose_secret(),
        "pc-refresh-token-value"
    );
    let env = |name: &str| (name == "PC_CLIENT_ID").then(|| "client-from-env".to_owned());
    assert_eq!(
        resolved.lookup("PC_REFRESH_TOKEN", env).as_deref(),
        Some("pc-refresh-token-value")
    );
    assert_eq!(
        resolved.lookup("PC_CLIENT_ID", env).as_deref(),
        Some("client-from-env")
    );
    assert_eq!(
        resolved.variables().collect::<Vec<_>>(),
        ["PC_REFRESH_TOKEN"]
    );
}

#[tokio::test]
async fn json_keys_of_one_secret_feed_several_variables() {
    let moto = moto().await;
    let arn = moto
        .secret(r#"{"client_secret":"cs-value","refresh_token":"rt-value","empty":""}"#)
        .await;
    let resolved = moto
        .resolver
        .resolve_vars([
            (
                "PC_CLIENT_SECRET_SECRET_ARN",
                format!("{arn}#client_secret"),
            ),
            (
                "PC_REFRESH_TOKEN_SECRET_ARN",
                format!("{arn}#refresh_token"),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(resolved.len(), 2);
    assert_eq!(
        resolved.get("PC_CLIENT_SECRET").unwrap().expose_secret(),
        "cs-value"
    );
    assert_eq!(
        resolved.get("PC_REFRESH_TOKEN").unwrap().expose_secret(),
        "rt-value"
    );

    // A key the secret lacks, and a key whose value was never filled in, are named.
    let error = moto
        .resolver
        .resolve_vars([("PC_CLIENT_SECRET_SECRET_ARN", format!("{arn}#nope"))])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SecretError::MissingKey { variable, .. } if variable == "PC_CLIENT_SECRET")
    );
    let text = error.to_string();
    assert!(text.contains("nope") && text.contains(&arn), "{text}");
    assert!(
        !text.contains("cs-value") && !text.contains("rt-value"),
        "{text}"
    );

    let error = moto
        .resolver
        .resolve_vars([("PC_CLIENT_SECRET_SECRET_ARN", format!("{arn}#empty"))])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SecretError::Empty { variable, .. } if variable == "PC_CLIENT_SECRET")
    );
    assert!(error.to_string().contains("put-secret-value"), "{error}");
}

#[tokio::test]
async fn an_ssm_secure_string_is_decrypted() {
    let moto = moto().await;
    let pem = "-----BEGIN PRIVATE KEY-----\nsf-key-value\n-----END PRIVATE KEY-----\n";
    let name = moto.secure_parameter(pem).await;
    let resolved = moto
        .resolver
        .resolve_vars([("SALESFORCE_PRIVATE_KEY_SSM_PARAMETER", name.as_str())])
        .await
        .unwrap();
    assert_eq!(
        resolved
            .get("SALESFORCE_PRIVATE_KEY")
            .unwrap()
            .expose_secret(),
        pem
    );
}

#[tokio::test]
async fn a_missing_secret_or_parameter_names_the_variable_and_the_reference() {
    let moto = moto().await;
    let missing_arn = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}-AbCdEf",
        unique("missing")
    );
    let error = moto
        .resolver
        .resolve_vars([("DATAVERSE_CLIENT_SECRET_SECRET_ARN", missing_arn.as_str())])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SecretError::Unreadable { variable, .. } if variable == "DATAVERSE_CLIENT_SECRET"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("DATAVERSE_CLIENT_SECRET") && text.contains(&missing_arn),
        "{text}"
    );

    let missing_parameter = format!("/{}/nothing", unique("missing"));
    let error = moto
        .resolver
        .resolve_vars([("PC_REFRESH_TOKEN_SSM_PARAMETER", missing_parameter.as_str())])
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("PC_REFRESH_TOKEN") && text.contains(&missing_parameter),
        "{text}"
    );
}

#[tokio::test]
async fn values_never_appear_in_debug_or_display() {
    let moto = moto().await;
    let arn = moto.secret(r#"{"key":"json-secret-value"}"#).await;
    let plain = moto.secret("plain-secret-value").await;
    let parameter = moto.secure_parameter("ssm-secret-value").await;
    let resolved = moto
        .resolver
        .resolve_vars([
            ("A_SECRET_ARN", format!("{arn}#key")),
            ("B_SECRET_ARN", plain.clone()),
            ("C_SSM_PARAMETER", parameter),
        ])
        .await
        .unwrap();
    let texts = [
        format!("{resolved:?}"),
        format!("{:?}", resolved.get("A").unwrap()),
        format!("{:?}", resolved.get("B").unwrap()),
        format!("{:?}", resolved.get("C").unwrap()),
        // Errors about a secret that exists: a key it lacks, a plain secret read as JSON.
        moto.resolver
            .resolve_vars([("A_SECRET_ARN", format!("{arn}#other"))])
            .await
            .unwrap_err()
            .to_string(),
        format!(
            "{:?}",
            moto.resolver
                .resolve_vars([("B_SECRET_ARN", format!("{plain}#key"))])
                .await
                .unwrap_err()
        ),
    ];
    for text in &texts {
        for value in [
            "json-secret-value",
            "plain-secret-value",
            "ssm-secret-value",
        ] {
            assert!(!text.contains(value), "{value} leaked: {text}");
        }
    }
    assert!(
        texts[0].contains('A') && texts[0].contains('C'),
        "{}",
        texts[0]
    );
}

/// The sandbox's Entra answers every refresh with a rotated refresh token.
fn refresh_tokens(
    authority: &str,
    refresh_token: &str,
    keep: Option<SecretWriter>,
) -> EntraRefreshToken {
    EntraRefreshToken::new(
        reqwest::Client::new(),
        EntraRefreshTokenConfig {
            authority: authority.to_owned(),
            tenant: TENANT_ID.to_owned(),
            client_id: PC_CLIENT_ID.to_owned(),
            client_secret: secrecy::SecretString::from(PC_CLIENT_SECRET),
            refresh_token: secrecy::SecretString::from(refresh_token.to_owned()),
            scope: PARTNER_CENTER_REFERRALS_SCOPE.to_owned(),
            credential_label: None,
            keep_rotated_in: keep.map(Arc::new),
        },
    )
    .unwrap()
}

/// A writer of `arn` (a secret of its own) with moto's client.
async fn writer(moto: &Moto, arn: &str) -> SecretWriter {
    SecretWriter::for_reference("PC_REFRESH_TOKEN", arn)
        .unwrap()
        .unwrap()
        .with_sdk_config(&moto.config)
}

impl Moto {
    /// The secret's current value.
    async fn current(&self, arn: &str) -> String {
        self.secrets_manager
            .get_secret_value()
            .secret_id(arn)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .unwrap()
            .secret_string()
            .unwrap()
            .to_owned()
    }

    /// How many versions the secret has.
    async fn versions(&self, arn: &str) -> usize {
        self.secrets_manager
            .list_secret_version_ids()
            .secret_id(arn)
            .include_deprecated(true)
            .send()
            .await
            .unwrap()
            .versions()
            .len()
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_written_back_to_its_own_secret() {
    let moto = moto().await;
    let arn = moto.secret(PC_REFRESH_TOKEN).await;
    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();
    let writer = writer(&moto, &arn).await;
    assert!(!format!("{writer:?}").contains(PC_REFRESH_TOKEN));

    let tokens = refresh_tokens(&sandbox.base_url, PC_REFRESH_TOKEN, Some(writer));
    tokens.token().await.unwrap();

    let rotated = moto.current(&arn).await;
    assert_ne!(
        rotated, PC_REFRESH_TOKEN,
        "the rotated token replaced the first one"
    );

    // A new instance reads the rotated one from the secret, and it works.
    let resolved = moto
        .resolver
        .resolve_vars([("PC_REFRESH_TOKEN_SECRET_ARN", arn.as_str())])
        .await
        .unwrap();
    let next = resolved
        .get("PC_REFRESH_TOKEN")
        .unwrap()
        .expose_secret()
        .to_owned();
    assert_eq!(next, rotated);
    refresh_tokens(&sandbox.base_url, &next, None)
        .token()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_rotation_never_writes_the_operators_credential_secret() {
    let moto = moto().await;
    let credentials = moto
        .secret(r#"{"pc_client_secret":"first","dataverse_client_secret":"first"}"#)
        .await;
    let refresh_token = moto.secret(PC_REFRESH_TOKEN).await;
    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();

    // The refresh token as one key of the credential secret is refused, with the fix.
    let error = SecretWriter::for_reference(
        "PC_REFRESH_TOKEN",
        &format!("{credentials}#pc_refresh_token"),
    )
    .unwrap_err();
    assert!(
        matches!(&error, SecretError::SharedSecret { variable, .. } if variable == "PC_REFRESH_TOKEN")
    );
    assert!(
        !error.is_retryable() && error.to_string().contains("secret of its own"),
        "{error}"
    );

    // The operator puts new CRM credentials while the instance runs; its rotation leaves them.
    let instance = refresh_tokens(
        &sandbox.base_url,
        PC_REFRESH_TOKEN,
        Some(writer(&moto, &refresh_token).await),
    );
    let operators = r#"{"pc_client_secret":"second","dataverse_client_secret":"second"}"#;
    moto.secrets_manager
        .put_secret_value()
        .secret_id(&credentials)
        .secret_string(operators)
        .send()
        .await
        .unwrap();
    instance.token().await.unwrap();

    assert_eq!(moto.current(&credentials).await, operators);
    assert_eq!(
        moto.versions(&credentials).await,
        2,
        "no version but the operator's"
    );
    assert_ne!(moto.current(&refresh_token).await, PC_REFRESH_TOKEN);
}

#[tokio::test]
async fn an_operators_new_refresh_token_is_never_reverted_by_a_running_instances_rotation() {
    let moto = moto().await;
    let arn = moto.secret(PC_REFRESH_TOKEN).await;
    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();
    let instance = refresh_tokens(
        &sandbox.base_url,
        PC_REFRESH_TOKEN,
        Some(writer(&moto, &arn).await),
    );
    // The operator re-consents and puts the new refresh token while the instance runs on the
    // one it read at its cold start.
    let reconsented = reqwest::Client::new()
        .post(format!(
            "{}/_sandbox/entra/refresh-tokens",
            sandbox.base_url
        ))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    moto.secrets_manager
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(&reconsented)
        .send()
        .await
        .unwrap();

    let first = instance.token().await.unwrap();
    assert_eq!(
        moto.current(&arn).await,
        reconsented,
        "the operator's token stays"
    );

    // The instance continues from the operator's token: its next rotation is stored.
    instance.invalidate(&first).await;
    instance.token().await.unwrap();
    let stored = moto.current(&arn).await;
    assert!(
        stored != reconsented && stored != PC_REFRESH_TOKEN,
        "rotated from the operator's"
    );
    refresh_tokens(&sandbox.base_url, &stored, None)
        .token()
        .await
        .unwrap();
}

#[tokio::test]
async fn of_concurrent_rotations_from_one_token_exactly_one_is_stored_and_the_others_keep_it() {
    let moto = moto().await;
    let arn = moto.secret("rt-0").await;
    let writers: Vec<SecretWriter> =
        futures::future::join_all((0..8).map(|_| writer(&moto, &arn))).await;
    let previous = secrecy::SecretString::from("rt-0");
    let results = futures::future::join_all(writers.iter().enumerate().map(|(i, writer)| {
        let rotated = secrecy::SecretString::from(format!("rt-1-from-instance-{i}"));
        let previous = previous.clone();
        async move { writer.write_rotated(&previous, &rotated).await.unwrap() }
    }))
    .await;

    let stored = moto.current(&arn).await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, result)| matches!(result, RotatedWrite::Stored))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one write is current: {results:?}"
    );
    assert_eq!(stored, format!("rt-1-from-instance-{}", winners[0]));
    for result in &results {
        if let RotatedWrite::Superseded(kept) = result {
            assert_eq!(
                kept.expose_secret(),
                stored,
                "a loser learns the stored token"
            );
        }
    }

    // The next rotation, from the stored token, is stored; one from the lost branch is not.
    let loser = (winners[0] + 1) % writers.len();
    let lost = secrecy::SecretString::from(format!("rt-1-from-instance-{loser}"));
    let late = writers[loser]
        .write_rotated(&lost, &secrecy::SecretString::from("rt-2-late"))
        .await
        .unwrap();
    assert!(matches!(late, RotatedWrite::Superseded(_)), "{late:?}");
    let next = writers[loser]
        .write_rotated(
            &secrecy::SecretString::from(stored.clone()),
            &secrecy::SecretString::from("rt-2"),
        )
        .await
        .unwrap();
    assert!(matches!(next, RotatedWrite::Stored), "{next:?}");
    assert_eq!(moto.current(&arn).await, "rt-2");
}

#[test]
fn only_whole_secrets_manager_secrets_are_written_back() {
    assert!(
        SecretWriter::for_reference("PC_REFRESH_TOKEN", "  ")
            .unwrap()
            .is_none()
    );
    let writer = SecretWriter::for_reference("PC_REFRESH_TOKEN", "arn:aws:x:secret:pc")
        .unwrap()
        .unwrap();
    assert_eq!(
        writer.describe(),
        "the Secrets Manager secret arn:aws:x:secret:pc"
    );
    assert!(SecretWriter::for_reference("PC_REFRESH_TOKEN", "arn:aws:x:secret:pc#rt").is_err());
}
