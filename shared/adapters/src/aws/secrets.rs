//! Secrets read once per cold start from AWS Secrets Manager or SSM Parameter Store.
//!
//! A function's configuration reads plain variables (`PC_REFRESH_TOKEN`, …). For any variable
//! `X`, the deployment may instead name where its value is kept:
//!
//! | Variable | Value | Read with |
//! |---|---|---|
//! | `X_SECRET_ARN` | a Secrets Manager secret ARN (or name); `<arn>#<key>` picks `key` of a JSON secret | `secretsmanager:GetSecretValue` (its `SecretString`) |
//! | `X_SSM_PARAMETER` | an SSM parameter name or ARN (a `SecureString` is decrypted) | `ssm:GetParameter` with decryption |
//! | neither | `X` itself | |
//!
//! A reference wins over `X`; naming both sources for one variable is an error. Each secret is
//! fetched once per resolution (several keys of one JSON secret cost one call), and
//! [`resolve_process_env`] makes no AWS call at all when no reference is set (local runs).
//!
//! Values are held as [`SecretString`] and are never logged: [`ResolvedSecrets`]' `Debug`
//! shows the variable names only, and every [`SecretError`] names the variable and the
//! ARN / parameter, never a value.
//!
//! Wiring in a function's `main` (the configuration code stays synchronous):
//!
//! ```no_run
//! # async fn example() -> Result<(), cosell_adapters::aws::secrets::SecretError> {
//! let secrets = cosell_adapters::aws::secrets::resolve_process_env().await?;
//! let refresh_token = secrets.var("PC_REFRESH_TOKEN"); // the secret, else the variable
//! # let _ = refresh_token;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use secrecy::{ExposeSecret, SecretString};

/// The suffix naming a Secrets Manager secret: `X_SECRET_ARN` holds `X`.
pub const SECRET_ARN_SUFFIX: &str = "_SECRET_ARN";
/// The suffix naming an SSM parameter: `X_SSM_PARAMETER` holds `X`.
pub const SSM_PARAMETER_SUFFIX: &str = "_SSM_PARAMETER";

/// Where a variable's value is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// A Secrets Manager secret's `SecretString`, or one key of it when it is a JSON object.
    SecretsManager {
        /// The secret's ARN (or name).
        secret_id: String,
        /// The JSON key after `#`, if any.
        json_key: Option<String>,
    },
    /// An SSM parameter (`String`, `StringList` or decrypted `SecureString`).
    SsmParameter {
        /// The parameter's name or ARN.
        name: String,
    },
}

impl SecretSource {
    /// The source a `X_SECRET_ARN` value names: `arn` or `arn#key`.
    pub fn secrets_manager(reference: &str) -> Self {
        match reference.split_once('#') {
            Some((secret_id, key)) if !key.trim().is_empty() => Self::SecretsManager {
                secret_id: secret_id.trim().to_owned(),
                json_key: Some(key.trim().to_owned()),
            },
            Some((secret_id, _)) => Self::SecretsManager {
                secret_id: secret_id.trim().to_owned(),
                json_key: None,
            },
            None => Self::SecretsManager {
                secret_id: reference.trim().to_owned(),
                json_key: None,
            },
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretsManager {
                secret_id,
                json_key: None,
            } => write!(f, "the Secrets Manager secret {secret_id}"),
            Self::SecretsManager {
                secret_id,
                json_key: Some(key),
            } => write!(f, "the key {key} of the Secrets Manager secret {secret_id}"),
            Self::SsmParameter { name } => write!(f, "the SSM parameter {name}"),
        }
    }
}

/// One variable whose value is kept in Secrets Manager or SSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    /// The variable the value stands for (`PC_REFRESH_TOKEN` for `PC_REFRESH_TOKEN_SECRET_ARN`).
    pub variable: String,
    /// Where the value is kept.
    pub source: SecretSource,
}

impl SecretReference {
    /// The references among `vars` (name → value pairs, e.g. the process environment), in
    /// variable order. Blank values count as unset.
    pub fn scan<I, K, V>(vars: I) -> Result<Vec<Self>, SecretError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut found: BTreeMap<String, SecretSource> = BTreeMap::new();
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref().trim());
            if value.is_empty() {
                continue;
            }
            let (variable, source) = if let Some(variable) = name.strip_suffix(SECRET_ARN_SUFFIX) {
                (variable, SecretSource::secrets_manager(value))
            } else if let Some(variable) = name.strip_suffix(SSM_PARAMETER_SUFFIX) {
                (
                    variable,
                    SecretSource::SsmParameter {
                        name: value.to_owned(),
                    },
                )
            } else {
                continue;
            };
            if variable.is_empty() {
                continue;
            }
            if found.insert(variable.to_owned(), source).is_some() {
                return Err(SecretError::Ambiguous {
                    variable: variable.to_owned(),
                });
            }
        }
        Ok(found
            .into_iter()
            .map(|(variable, source)| Self { variable, source })
            .collect())
    }
}

/// Why a secret could not be read. Every variant names the variable and where its value was
/// looked for, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Both `X_SECRET_ARN` and `X_SSM_PARAMETER` are set.
    #[error(
        "{variable}: both {variable}{SECRET_ARN_SUFFIX} and {variable}{SSM_PARAMETER_SUFFIX} \
         are set; keep one"
    )]
    Ambiguous {
        /// The variable.
        variable: String,
    },
    /// A changed value could not be written back.
    #[error("{variable}: could not write the new value to {reference}: {problem}")]
    Unwritable {
        /// The variable.
        variable: String,
        /// Where the value is kept.
        reference: String,
        /// The service's error code and message, and what to check.
        problem: String,
        /// Whether a later write may succeed (throttling, a 5xx, the network) rather than
        /// needing a person (access denied, no such secret).
        retryable: bool,
    },
    /// A value that is written back (the rotated refresh token) is configured as one key of a
    /// JSON secret. Writing it would rewrite the whole secret and could revert its other keys
    /// (an operator's new CRM credential), so it must have a secret of its own. Permanent.
    #[error(
        "{variable}{SECRET_ARN_SUFFIX} names {reference}, but {variable} is written back when it \
         rotates and must be the whole value of a secret of its own (writing one key rewrites the \
         whole JSON secret and could revert its other keys): create a secret holding only the \
         value (the template's PcRefreshTokenSecret) and set {variable}{SECRET_ARN_SUFFIX} to its \
         ARN without #key"
    )]
    SharedSecret {
        /// The variable.
        variable: String,
        /// The configured reference.
        reference: String,
    },
    /// The service call failed (missing secret or parameter, access denied, network).
    #[error("{variable}: could not read {reference}: {problem}")]
    Unreadable {
        /// The variable.
        variable: String,
        /// Where its value was looked for.
        reference: String,
        /// The service's error code and message, and what to check.
        problem: String,
    },
    /// The secret holds no text (`SecretBinary` only) or the parameter no value.
    #[error("{variable}: {reference} has no text value")]
    NotText {
        /// The variable.
        variable: String,
        /// Where its value was looked for.
        reference: String,
    },
    /// A `#key` was given but the secret is not a JSON object holding a string under it.
    #[error("{variable}: {reference} is missing: {problem}")]
    MissingKey {
        /// The variable.
        variable: String,
        /// Where its value was looked for.
        reference: String,
        /// What is wrong (never the secret's content).
        problem: String,
    },
    /// The value is empty or blank (a secret created but never given its value).
    #[error(
        "{variable}: {reference} is empty; put the value (aws secretsmanager put-secret-value, \
         or aws ssm put-parameter --overwrite) and start the function again"
    )]
    Empty {
        /// The variable.
        variable: String,
        /// Where its value was looked for.
        reference: String,
    },
}

/// The values of the referenced variables. `Debug` shows the variable names only.
#[derive(Default, Clone)]
pub struct ResolvedSecrets {
    values: BTreeMap<String, SecretString>,
}

impl fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedSecrets")
            .field("variables", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvedSecrets {
    /// The secret resolved for `variable`, if it had a reference.
    pub fn get(&self, variable: &str) -> Option<&SecretString> {
        self.values.get(variable)
    }

    /// The variables that were resolved, in order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// How many variables were resolved.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no variable had a reference.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `variable`'s value as configuration code reads it: the resolved secret, else the
    /// process environment's `variable`. Pass `|name| secrets.var(name)` as a configuration
    /// lookup.
    pub fn var(&self, variable: &str) -> Option<String> {
        self.lookup(variable, |name| std::env::var(name).ok())
    }

    /// `variable`'s value: the resolved secret, else `fallback(variable)` (tests pass a map).
    pub fn lookup<F>(&self, variable: &str, fallback: F) -> Option<String>
    where
        F: FnOnce(&str) -> Option<String>,
    {
        match self.values.get(variable) {
            Some(secret) => Some(secret.expose_secret().to_owned()),
            None => fallback(variable),
        }
    }
}

/// Reads secrets from Secrets Manager and SSM. Build it once per cold start.
#[derive(Debug, Clone)]
pub struct SecretResolver {
    secrets_manager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

impl SecretResolver {
    /// Clients from the standard AWS configuration ([`super::sdk_config_from_env`]).
    pub async fn from_env() -> Self {
        Self::from_conf(&super::sdk_config_from_env().await)
    }

    /// Clients from a loaded configuration.
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        Self {
            secrets_manager: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }

    /// The references among `vars` ([`SecretReference::scan`]), resolved.
    pub async fn resolve_vars<I, K, V>(&self, vars: I) -> Result<ResolvedSecrets, SecretError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        self.resolve(&SecretReference::scan(vars)?).await
    }

    /// Every reference's value; the first failure stops and is returned.
    pub async fn resolve(
        &self,
        references: &[SecretReference],
    ) -> Result<ResolvedSecrets, SecretError> {
        // One call per secret or parameter, however many variables (JSON keys) use it.
        let mut fetched: HashMap<FetchKey, Option<SecretString>> = HashMap::new();
        let mut values = BTreeMap::new();
        for reference in references {
            let variable = &reference.variable;
            let described = reference.source.to_string();
            let key = FetchKey::of(&reference.source);
            let text = match fetched.get(&key) {
                Some(text) => text.clone(),
                None => {
                    let text = self.fetch(&key, variable, &described).await?;
                    fetched.insert(key, text.clone());
                    text
                }
            };
            let text = text.ok_or_else(|| SecretError::NotText {
                variable: variable.clone(),
                reference: described.clone(),
            })?;
            let value = match &reference.source {
                SecretSource::SecretsManager {
                    json_key: Some(json_key),
                    ..
                } => json_value(&text, json_key).map_err(|problem| SecretError::MissingKey {
                    variable: variable.clone(),
                    reference: described.clone(),
                    problem,
                })?,
                _ => text,
            };
            if value.expose_secret().trim().is_empty() {
                return Err(SecretError::Empty {
                    variable: variable.clone(),
                    reference: described,
                });
            }
            values.insert(variable.clone(), value);
        }
        tracing::info!(
            variables = ?values.keys().collect::<Vec<_>>(),
            "secrets resolved"
        );
        Ok(ResolvedSecrets { values })
    }

    async fn fetch(
        &self,
        key: &FetchKey,
        variable: &str,
        described: &str,
    ) -> Result<Option<SecretString>, SecretError> {
        let unreadable = |problem: String| SecretError::Unreadable {
            variable: variable.to_owned(),
            reference: described.to_owned(),
            problem,
        };
        match key {
            FetchKey::Secret(secret_id) => {
                // AWSCURRENT is the default; named, because moto answers a request without a
                // stage from the version last *put*, not the one the label was moved to.
                let output = self
                    .secrets_manager
                    .get_secret_value()
                    .secret_id(secret_id)
                    .version_stage(CURRENT_STAGE)
                    .send()
                    .await
                    .map_err(|err| unreadable(problem(&err, "secretsmanager:GetSecretValue")))?;
                Ok(output.secret_string().map(SecretString::from))
            }
            FetchKey::Parameter(name) => {
                let output = self
                    .ssm
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|err| unreadable(problem(&err, "ssm:GetParameter")))?;
                Ok(output
                    .parameter()
                    .and_then(|parameter| parameter.value())
                    .map(SecretString::from))
            }
        }
    }
}

/// What one service call fetches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FetchKey {
    Secret(String),
    Parameter(String),
}

impl FetchKey {
    fn of(source: &SecretSource) -> Self {
        match source {
            SecretSource::SecretsManager { secret_id, .. } => Self::Secret(secret_id.clone()),
            SecretSource::SsmParameter { name } => Self::Parameter(name.clone()),
        }
    }
}

/// `key`'s string value in the JSON object `text`; the error never quotes the text.
fn json_value(text: &SecretString, key: &str) -> Result<SecretString, String> {
    let parsed: serde_json::Value = serde_json::from_str(text.expose_secret())
        .map_err(|_| format!("the secret is not JSON, so it has no key {key}"))?;
    let object = parsed
        .as_object()
        .ok_or_else(|| format!("the secret is not a JSON object, so it has no key {key}"))?;
    match object.get(key) {
        Some(serde_json::Value::String(value)) => Ok(SecretString::from(value.as_str())),
        Some(_) => Err(format!("the value under {key} is not a string")),
        None => Err(format!("the secret has no key {key}")),
    }
}

/// The SDK's error code and message, plus what to check for the common cases.
fn problem<E, R>(err: &SdkError<E, R>, action: &str) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let code = err.code().unwrap_or_default();
    let hint = match code {
        "ResourceNotFoundException" | "ParameterNotFound" => {
            " (check the ARN / name and the region; create it before deploying)".to_owned()
        }
        "AccessDeniedException" | "AccessDenied" => {
            format!(" (allow {action} on it in the function's role)")
        }
        "DecryptionFailure" | "KMSAccessDeniedException" => {
            " (allow kms:Decrypt on the key that encrypts it)".to_owned()
        }
        _ => String::new(),
    };
    let detail = match err.as_service_error() {
        // The service's code and message only: the raw response adds nothing an operator needs.
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => DisplayErrorContext(err).to_string(),
    };
    format!("{detail}{hint}")
}

/// The staging label of a version [`SecretWriter::write_rotated`] put and then tries to make
/// current; it stays on the newest such version (a version left without labels is removed by
/// Secrets Manager in time).
pub const ROTATED_STAGE: &str = "COSELL_ROTATED";
/// The staging label of a secret's current version.
const CURRENT_STAGE: &str = "AWSCURRENT";

/// What [`SecretWriter::write_rotated`] did.
#[derive(Debug, Clone)]
pub enum RotatedWrite {
    /// The rotated value is the secret's current version now.
    Stored,
    /// The secret no longer held the value this instance rotated from: another instance stored
    /// its own rotation, or an operator put a new value. That value was left as it is; here it
    /// is, for the caller to continue from.
    Superseded(SecretString),
}

/// Writes a value that changes while the function runs (Entra's rotated refresh token) back to
/// the Secrets Manager secret it came from, so the next cold start begins with the newest one.
///
/// The secret holds that value alone ([`SecretWriter::for_reference`] refuses `arn#key`): a
/// write never touches another credential. Each write is version-checked, so it never reverts
/// a newer value ([`Self::write_rotated`]):
///
/// 1. `GetSecretValue` reads the current version; if its value is not the one this instance
///    rotated from, someone else wrote since → [`RotatedWrite::Superseded`], nothing written;
/// 2. `PutSecretValue` adds the rotated value as a new version labelled [`ROTATED_STAGE`],
///    *not* `AWSCURRENT`;
/// 3. `UpdateSecretVersionStage` moves `AWSCURRENT` to it with `RemoveFromVersionId` = the
///    version read in step 1: Secrets Manager refuses the move when `AWSCURRENT` is no longer
///    on that version (another write in between), so exactly one of two concurrent writers
///    wins and the other gets [`RotatedWrite::Superseded`].
///
/// The client is built on the first write (a function that never rotates never loads it).
/// SSM parameters are not written back.
#[derive(Debug)]
pub struct SecretWriter {
    variable: String,
    secret_id: String,
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
}

impl SecretWriter {
    /// A writer for `variable`'s `X_SECRET_ARN` value; `None` for a blank one. A reference to
    /// one key of a JSON secret (`arn#key`) is refused with [`SecretError::SharedSecret`]:
    /// writing it would rewrite the secret's other keys too.
    pub fn for_reference(variable: &str, reference: &str) -> Result<Option<Self>, SecretError> {
        match SecretSource::secrets_manager(reference) {
            SecretSource::SecretsManager {
                secret_id,
                json_key: None,
            } if !secret_id.is_empty() => Ok(Some(Self {
                variable: variable.to_owned(),
                secret_id,
                client: tokio::sync::OnceCell::new(),
            })),
            source @ SecretSource::SecretsManager {
                json_key: Some(_), ..
            } => Err(SecretError::SharedSecret {
                variable: variable.to_owned(),
                reference: source.to_string(),
            }),
            _ => Ok(None),
        }
    }

    /// The same, with a client from `config` instead of the standard AWS configuration.
    pub fn with_sdk_config(self, config: &aws_config::SdkConfig) -> Self {
        let client =
            tokio::sync::OnceCell::new_with(Some(aws_sdk_secretsmanager::Client::new(config)));
        Self { client, ..self }
    }

    /// Where it writes, in words (no value).
    pub fn describe(&self) -> String {
        SecretSource::SecretsManager {
            secret_id: self.secret_id.clone(),
            json_key: None,
        }
        .to_string()
    }

    /// Store `rotated`, obtained with `previous`, unless the secret holds another value than
    /// `previous` by now (see the type's docs for the three calls).
    pub async fn write_rotated(
        &self,
        previous: &SecretString,
        rotated: &SecretString,
    ) -> Result<RotatedWrite, SecretError> {
        let client = self
            .client
            .get_or_init(|| async {
                aws_sdk_secretsmanager::Client::new(&super::sdk_config_from_env().await)
            })
            .await;
        let unwritable = |problem: String, retryable: bool| SecretError::Unwritable {
            variable: self.variable.clone(),
            reference: self.describe(),
            problem,
            retryable,
        };
        let sdk_failure = |action: &'static str| {
            move |err: &dyn SdkFailure| unwritable(err.problem(action), err.retryable())
        };

        let (read_version, stored) = self
            .current(client)
            .await
            .map_err(|err| sdk_failure("secretsmanager:GetSecretValue")(&err))?;
        let Some(read_version) = read_version else {
            return Err(unwritable(
                "the secret has no current version with a text value (put one with aws \
                 secretsmanager put-secret-value)"
                    .to_owned(),
                false,
            ));
        };
        if stored.expose_secret() != previous.expose_secret() {
            return Ok(RotatedWrite::Superseded(stored));
        }

        let put = client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(rotated.expose_secret())
            .version_stages(ROTATED_STAGE)
            .send()
            .await
            .map_err(|err| sdk_failure("secretsmanager:PutSecretValue")(&err))?;
        let new_version = put.version_id().unwrap_or_default().to_owned();

        let moved = client
            .update_secret_version_stage()
            .secret_id(&self.secret_id)
            .version_stage(CURRENT_STAGE)
            .move_to_version_id(&new_version)
            .remove_from_version_id(&read_version)
            .send()
            .await;
        match moved {
            Ok(_) => Ok(RotatedWrite::Stored),
            Err(err) => {
                // Refused because AWSCURRENT moved on since step 1? Then the newer value stays.
                let (now_version, now) = self
                    .current(client)
                    .await
                    .map_err(|err| sdk_failure("secretsmanager:GetSecretValue")(&err))?;
                if now_version.as_deref() != Some(read_version.as_str()) {
                    Ok(RotatedWrite::Superseded(now))
                } else {
                    Err(sdk_failure("secretsmanager:UpdateSecretVersionStage")(&err))
                }
            }
        }
    }

    /// The current version's id (when it has a text value) and value.
    async fn current(
        &self,
        client: &aws_sdk_secretsmanager::Client,
    ) -> Result<
        (Option<String>, SecretString),
        SdkError<
            aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError,
            aws_sdk_secretsmanager::config::http::HttpResponse,
        >,
    > {
        let output = client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage(CURRENT_STAGE)
            .send()
            .await?;
        let text = output.secret_string().map(ToOwned::to_owned);
        let version = output
            .version_id()
            .filter(|_| text.is_some())
            .map(ToOwned::to_owned);
        Ok((version, SecretString::from(text.unwrap_or_default())))
    }
}

/// An SDK call's failure, whatever the operation.
trait SdkFailure {
    /// The service's code and message, plus what to check.
    fn problem(&self, action: &str) -> String;
    /// Whether trying again later may succeed.
    fn retryable(&self) -> bool;
}

impl<E, R> SdkFailure for SdkError<E, R>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    fn problem(&self, action: &str) -> String {
        problem(self, action)
    }

    fn retryable(&self) -> bool {
        match self {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            _ => matches!(
                self.code(),
                Some(
                    "ThrottlingException"
                        | "TooManyRequestsException"
                        | "InternalServiceError"
                        | "InternalFailure"
                        | "ServiceUnavailable"
                )
            ),
        }
    }
}

impl SecretError {
    /// Whether trying again later may succeed (a throttled or failed write); every other error
    /// needs a person and its message names the variable and the fix.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unwritable {
                retryable: true,
                ..
            }
        )
    }
}

/// The references in the process environment, resolved; no AWS configuration is even loaded
/// when there is none. Call once per cold start, before reading the configuration.
pub async fn resolve_process_env() -> Result<ResolvedSecrets, SecretError> {
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let references = SecretReference::scan(vars)?;
    if references.is_empty() {
        return Ok(ResolvedSecrets::default());
    }
    SecretResolver::from_env().await.resolve(&references).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_by_suffix_and_blank_ones_ignored() {
        let refs = SecretReference::scan([
            (
                "PC_REFRESH_TOKEN_SECRET_ARN",
                "arn:aws:secretsmanager:r:1:secret:pc-Ab12#refresh",
            ),
            (
                "PC_CLIENT_SECRET_SECRET_ARN",
                " arn:aws:secretsmanager:r:1:secret:pc-Ab12 ",
            ),
            ("SALESFORCE_PRIVATE_KEY_SSM_PARAMETER", "/cosell/sf-key"),
            ("DATAVERSE_CLIENT_SECRET_SECRET_ARN", "  "),
            ("_SECRET_ARN", "arn:x"),
            ("PC_CLIENT_ID", "client"),
        ])
        .unwrap();
        assert_eq!(
            refs,
            vec![
                SecretReference {
                    variable: "PC_CLIENT_SECRET".into(),
                    source: SecretSource::SecretsManager {
                        secret_id: "arn:aws:secretsmanager:r:1:secret:pc-Ab12".into(),
                        json_key: None,
                    },
                },
                SecretReference {
                    variable: "PC_REFRESH_TOKEN".into(),
                    source: SecretSource::SecretsManager {
                        secret_id: "arn:aws:secretsmanager:r:1:secret:pc-Ab12".into(),
                        json_key: Some("refresh".into()),
                    },
                },
                SecretReference {
                    variable: "SALESFORCE_PRIVATE_KEY".into(),
                    source: SecretSource::SsmParameter {
                        name: "/cosell/sf-key".into(),
                    },
                },
            ]
        );
    }

    #[test]
    fn naming_two_sources_for_one_variable_is_refused() {
        let error = SecretReference::scan([
            ("PC_REFRESH_TOKEN_SECRET_ARN", "arn:1"),
            ("PC_REFRESH_TOKEN_SSM_PARAMETER", "/p"),
        ])
        .unwrap_err();
        assert_eq!(
            error,
            SecretError::Ambiguous {
                variable: "PC_REFRESH_TOKEN".into()
            }
        );
        assert!(error.to_string().contains("PC_REFRESH_TOKEN_SSM_PARAMETER"));
    }

    #[test]
    fn a_trailing_hash_means_the_whole_secret() {
        assert_eq!(
            SecretSource::secrets_manager("arn:1#"),
            SecretSource::SecretsManager {
                secret_id: "arn:1".into(),
                json_key: None
            }
        );
    }

    #[test]
    fn json_keys_are_read_without_quoting_the_secret_in_errors() {
        let text = SecretString::from(r#"{"a":"alpha-value","n":1}"#);
        assert_eq!(
            json_value(&text, "a").unwrap().expose_secret(),
            "alpha-value"
        );
        for key in ["n", "missing"] {
            let problem = json_value(&text, key).unwrap_err();
            assert!(
                !problem.contains("alpha-value") && problem.contains(key),
                "{problem}"
            );
        }
        let plain = SecretString::from("plain-secret-value");
        let problem = json_value(&plain, "a").unwrap_err();
        assert!(!problem.contains("plain-secret-value"), "{problem}");
    }

    #[test]
    fn the_resolved_value_wins_over_the_variable_and_debug_shows_names_only() {
        let secrets = ResolvedSecrets {
            values: [(
                "PC_REFRESH_TOKEN".to_owned(),
                SecretString::from("rt-value"),
            )]
            .into_iter()
            .collect(),
        };
        let fallback = |name: &str| Some(format!("env:{name}"));
        assert_eq!(
            secrets.lookup("PC_REFRESH_TOKEN", fallback).as_deref(),
            Some("rt-value")
        );
        assert_eq!(
            secrets.lookup("PC_CLIENT_ID", fallback).as_deref(),
            Some("env:PC_CLIENT_ID")
        );
        let debug = format!("{secrets:?}");
        assert!(
            debug.contains("PC_REFRESH_TOKEN") && !debug.contains("rt-value"),
            "{debug}"
        );
    }
}
