//! The adapters' own error type, and its translation into the domain's [`PortError`].
//!
//! [`AwsAdapterError`] wraps AWS SDK failures (`From<SdkError<…>>` lives here, never in the
//! domain) with what an operator needs: the IAM action (`dynamodb:PutItem`), the resource
//! (`table cosell`), the AWS error code and a [`FailureKind`] that decides the [`PortError`]
//! variant and so whether the caller retries:
//!
//! | Failure | [`FailureKind`] | [`PortError`] |
//! |---|---|---|
//! | throttling codes (`ThrottlingException`, `ProvisionedThroughputExceededException`, `RequestLimitExceeded`, …), HTTP 429 | `Throttled` | `Transient` |
//! | HTTP 5xx, `InternalServerError`, `ServiceUnavailable`, … | `ServerError` | `Transient` |
//! | SDK timeouts, `RequestTimeout` | `Timeout` | `Transient` |
//! | connection / IO failures, unreadable responses | `Network` | `Transient` |
//! | `AccessDenied(Exception)`, HTTP 403 | `AccessDenied` | `AccessDenied` naming the IAM action and resource |
//! | rejected or missing credentials | `Credentials` | `AccessDenied` saying how to provide credentials |
//! | `ConditionalCheckFailedException` | `ConditionFailed` | `PreconditionFailed` |
//! | `ResourceNotFoundException`, `QueueDoesNotExist` | `ResourceNotFound` | `Permanent` (deploy or provision it) |
//! | validation errors, other 4xx, requests the SDK could not build | `Invalid` | `Permanent` |
//!
//! The SDK already retried throttling and transient failures with backoff before it returned
//! the error, so `Transient` carries no `retry_after`: the caller's own backoff applies.

use std::error::Error as StdError;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use cosell_domain::{PortError, Service};

/// A boxed error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong with an AWS call, as far as retrying and fixing it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The service throttled the request (after the SDK's own retries).
    Throttled,
    /// The service failed (5xx).
    ServerError,
    /// The request timed out.
    Timeout,
    /// The connection failed, or the response could not be read.
    Network,
    /// The caller's IAM identity lacks the permission.
    AccessDenied,
    /// No valid credentials: none found, rejected, or expired.
    Credentials,
    /// A conditional write's condition did not hold.
    ConditionFailed,
    /// The table or queue does not exist.
    ResourceNotFound,
    /// The request is invalid and will fail again unchanged.
    Invalid,
}

impl FailureKind {
    /// Whether an unchanged retry may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::ServerError | Self::Timeout | Self::Network
        )
    }

    /// Classify a service error by its AWS error code and HTTP status (the pure rule).
    pub fn classify(code: Option<&str>, status: Option<u16>) -> Self {
        if let Some(kind) = code.and_then(Self::from_code) {
            return kind;
        }
        match status {
            Some(429) => Self::Throttled,
            Some(403) => Self::AccessDenied,
            Some(401) => Self::Credentials,
            Some(404) => Self::ResourceNotFound,
            Some(408) => Self::Timeout,
            Some(500..=599) => Self::ServerError,
            // Other 4xx, and a service error without any status (never seen in practice).
            _ => Self::Invalid,
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        // SQS (JSON protocol) also reports some codes with an `AWS.SimpleQueueService.` prefix.
        let code = code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code);
        Some(match code {
            "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "TransactionInProgressException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "KmsThrottled"
            | "KMS.ThrottlingException"
            | "ReplicatedWriteConflictException"
            | "TransactionConflictException" => Self::Throttled,
            "InternalServerError"
            | "InternalFailure"
            | "InternalError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "ServiceUnavailableError" => Self::ServerError,
            "RequestTimeout" | "RequestTimeoutException" => Self::Timeout,
            "AccessDenied" | "AccessDeniedException" | "KmsAccessDenied" | "NotAuthorized" => {
                Self::AccessDenied
            }
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "MissingAuthenticationTokenException"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidSecurity" => Self::Credentials,
            "ConditionalCheckFailedException" => Self::ConditionFailed,
            "ResourceNotFoundException" | "QueueDoesNotExist" | "NonExistentQueue" => {
                Self::ResourceNotFound
            }
            _ => return None,
        })
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::ServerError => "service error",
            Self::Timeout => "timed out",
            Self::Network => "network failure",
            Self::AccessDenied => "access denied",
            Self::Credentials => "no valid AWS credentials",
            Self::ConditionFailed => "condition not met",
            Self::ResourceNotFound => "not found",
            Self::Invalid => "invalid request",
        })
    }
}

/// The AWS resource a call was about, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AwsResource {
    /// A DynamoDB table, by name.
    Table(String),
    /// An SQS queue, by URL or name.
    Queue(String),
    /// Not known at the point of failure.
    Unknown,
}

impl fmt::Display for AwsResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(name) => write!(f, "table {name}"),
            Self::Queue(queue) => write!(f, "queue {queue}"),
            Self::Unknown => f.write_str("an unnamed resource"),
        }
    }
}

/// An SDK operation error type, and the IAM action that authorises the operation.
///
/// Implemented for the operations the adapters call; it lets `From<SdkError<E, _>>` name the
/// refused IAM action in access-denied messages.
pub trait AwsOperation {
    /// The IAM action, e.g. `dynamodb:PutItem`.
    const IAM_ACTION: &'static str;
}

macro_rules! aws_operations {
    ($($error:ty => $action:literal),* $(,)?) => {
        $(impl AwsOperation for $error {
            const IAM_ACTION: &'static str = $action;
        })*
    };
}

aws_operations! {
    aws_sdk_dynamodb::operation::put_item::PutItemError => "dynamodb:PutItem",
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError => "dynamodb:TransactWriteItems",
    aws_sdk_dynamodb::operation::get_item::GetItemError => "dynamodb:GetItem",
    aws_sdk_dynamodb::operation::update_item::UpdateItemError => "dynamodb:UpdateItem",
    aws_sdk_dynamodb::operation::delete_item::DeleteItemError => "dynamodb:DeleteItem",
    aws_sdk_dynamodb::operation::query::QueryError => "dynamodb:Query",
    aws_sdk_dynamodb::operation::scan::ScanError => "dynamodb:Scan",
    aws_sdk_dynamodb::operation::create_table::CreateTableError => "dynamodb:CreateTable",
    aws_sdk_dynamodb::operation::describe_table::DescribeTableError => "dynamodb:DescribeTable",
    aws_sdk_dynamodb::operation::update_time_to_live::UpdateTimeToLiveError => "dynamodb:UpdateTimeToLive",
    aws_sdk_dynamodb::operation::describe_time_to_live::DescribeTimeToLiveError => "dynamodb:DescribeTimeToLive",
    aws_sdk_sqs::operation::send_message::SendMessageError => "sqs:SendMessage",
    aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError => "sqs:SendMessage",
    aws_sdk_sqs::operation::receive_message::ReceiveMessageError => "sqs:ReceiveMessage",
    aws_sdk_sqs::operation::delete_message::DeleteMessageError => "sqs:DeleteMessage",
    aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchError => "sqs:DeleteMessage",
    aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError => "sqs:ChangeMessageVisibility",
    aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError => "sqs:GetQueueUrl",
    aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesError => "sqs:GetQueueAttributes",
    aws_sdk_sqs::operation::set_queue_attributes::SetQueueAttributesError => "sqs:SetQueueAttributes",
    aws_sdk_sqs::operation::create_queue::CreateQueueError => "sqs:CreateQueue",
    aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskError => "sqs:StartMessageMoveTask",
}

/// An error of the AWS adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsAdapterError {
    /// An AWS API call failed.
    #[error("{action} on {resource} failed ({kind}{}): {detail}", code_hint(code))]
    Call {
        /// The IAM action, e.g. `dynamodb:PutItem`.
        action: &'static str,
        /// The table or queue.
        resource: AwsResource,
        /// The classification.
        kind: FailureKind,
        /// The AWS error code, when the service sent one.
        code: Option<String>,
        /// The service's message, or the SDK's description of the failure.
        detail: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
    /// A stored item could not be read back (written by something else, or corrupted).
    #[error("{resource}: item {key} is not a valid {what}: {reason}")]
    CorruptItem {
        /// The table.
        resource: AwsResource,
        /// The item's key (`pk`/`sk`).
        key: String,
        /// What the item should have been.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value could not be turned into an item or message.
    #[error("could not serialise {what}: {source}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A successful response lacked a value the adapter needs.
    #[error("{action} on {resource} returned no {what}")]
    MissingOutput {
        /// The IAM action.
        action: &'static str,
        /// The table or queue.
        resource: AwsResource,
        /// The missing value.
        what: &'static str,
    },
    /// An existing table or queue does not have the shape the adapters need.
    #[error("{resource} exists but {problem}. Fix: {fix}")]
    Misconfigured {
        /// The table or queue.
        resource: AwsResource,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn code_hint(code: &Option<String>) -> String {
    code.as_ref()
        .map_or_else(String::new, |code| format!(", {code}"))
}

impl AwsAdapterError {
    /// The classification of this error.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Call { kind, .. } => *kind,
            Self::CorruptItem { .. }
            | Self::Serialize { .. }
            | Self::MissingOutput { .. }
            | Self::Misconfigured { .. } => FailureKind::Invalid,
        }
    }

    /// Whether an unchanged retry may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The AWS error code, when the service sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Call { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Name the table the failed call was about.
    pub fn on_table(self, table: &str) -> Self {
        self.with_resource(AwsResource::Table(table.to_owned()))
    }

    /// Name the queue the failed call was about.
    pub fn on_queue(self, queue: &str) -> Self {
        self.with_resource(AwsResource::Queue(queue.to_owned()))
    }

    fn with_resource(mut self, named: AwsResource) -> Self {
        if let Self::Call { resource, .. }
        | Self::CorruptItem { resource, .. }
        | Self::MissingOutput { resource, .. }
        | Self::Misconfigured { resource, .. } = &mut self
        {
            *resource = named;
        }
        self
    }

    /// The domain error for the port that `service` names, with an actionable message.
    pub fn into_port_error(self, service: Service) -> PortError {
        let Self::Call {
            action,
            resource,
            kind,
            code,
            detail,
            ..
        } = &self
        else {
            return PortError::Permanent {
                service,
                message: self.to_string(),
            };
        };
        let code = code.as_deref().unwrap_or("no error code");
        match kind {
            FailureKind::Throttled
            | FailureKind::ServerError
            | FailureKind::Timeout
            | FailureKind::Network => PortError::Transient {
                service,
                reason: self.to_string(),
                retry_after: None,
            },
            FailureKind::AccessDenied => PortError::AccessDenied {
                service,
                missing_role: None,
                message: format!(
                    "{action} on {resource} was refused ({code}: {detail}). Fix: allow \
                     {action} on {resource} (and its indexes) in the IAM role the connector \
                     runs as"
                ),
            },
            FailureKind::Credentials => PortError::AccessDenied {
                service,
                missing_role: None,
                message: format!(
                    "{action} on {resource} could not be authenticated ({code}: {detail}). \
                     Fix: give the connector valid AWS credentials (its Lambda execution role, \
                     or AWS_PROFILE / AWS_ACCESS_KEY_ID locally) for the table's account and \
                     region"
                ),
            },
            FailureKind::ConditionFailed => PortError::PreconditionFailed { service },
            FailureKind::ResourceNotFound => PortError::Permanent {
                service,
                message: format!(
                    "{resource} does not exist in the configured account and region ({action}: \
                     {code}: {detail}). Fix: deploy the stack, or check the table / queue \
                     name and AWS_REGION the connector is configured with"
                ),
            },
            FailureKind::Invalid => PortError::Permanent {
                service,
                message: self.to_string(),
            },
        }
    }

    fn from_sdk<E>(action: &'static str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let (kind, code, detail) = match &err {
            SdkError::ServiceError(service_err) => {
                let code = service_err.err().code().map(str::to_owned);
                let status = service_err.raw().status().as_u16();
                let detail = service_err
                    .err()
                    .message()
                    .map_or_else(|| format!("HTTP {status}"), str::to_owned);
                (
                    FailureKind::classify(code.as_deref(), Some(status)),
                    code,
                    detail,
                )
            }
            SdkError::TimeoutError(_) => (FailureKind::Timeout, None, describe(&err)),
            SdkError::DispatchFailure(dispatch) => {
                let kind = if let Some(kind) = credentials_failure(&err) {
                    kind
                } else if dispatch.is_timeout() {
                    FailureKind::Timeout
                } else if dispatch.is_user() {
                    FailureKind::Invalid
                } else {
                    // IO and unclassified connector failures: the endpoint may come back.
                    FailureKind::Network
                };
                (kind, None, describe(&err))
            }
            SdkError::ResponseError(_) => (FailureKind::Network, None, describe(&err)),
            // A request the SDK could not build will not build on a retry either.
            _ => (
                credentials_failure(&err).unwrap_or(FailureKind::Invalid),
                None,
                describe(&err),
            ),
        };
        Self::Call {
            action,
            resource: AwsResource::Unknown,
            kind,
            code,
            detail,
            source: Box::new(err),
        }
    }
}

/// The SDK's own error text with its cause chain (`DisplayErrorContext`).
fn describe(err: &(dyn StdError + 'static)) -> String {
    DisplayErrorContext(err).to_string()
}

/// Credential provider failures surface as dispatch (or construction) failures whose cause
/// chain holds a [`CredentialsError`].
fn credentials_failure(err: &(dyn StdError + 'static)) -> Option<FailureKind> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(credentials) = current.downcast_ref::<CredentialsError>() {
            return Some(match credentials {
                CredentialsError::ProviderTimedOut(_) => FailureKind::Timeout,
                CredentialsError::ProviderError(_) => FailureKind::Network,
                _ => FailureKind::Credentials,
            });
        }
        cause = current.source();
    }
    None
}

impl<E> From<SdkError<E, HttpResponse>> for AwsAdapterError
where
    E: AwsOperation + ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    fn from(err: SdkError<E, HttpResponse>) -> Self {
        Self::from_sdk(E::IAM_ACTION, err)
    }
}

/// `.on_table(name)` / `.on_queue(url)` on an SDK call's result: converts the error and names
/// the resource.
pub trait SdkResultExt<T> {
    /// Convert the error, naming the table.
    fn on_table(self, table: &str) -> Result<T, AwsAdapterError>;
    /// Convert the error, naming the queue.
    fn on_queue(self, queue: &str) -> Result<T, AwsAdapterError>;
}

impl<T, E> SdkResultExt<T> for Result<T, SdkError<E, HttpResponse>>
where
    E: AwsOperation + ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    fn on_table(self, table: &str) -> Result<T, AwsAdapterError> {
        self.map_err(|err| AwsAdapterError::from(err).on_table(table))
    }

    fn on_queue(self, queue: &str) -> Result<T, AwsAdapterError> {
        self.map_err(|err| AwsAdapterError::from(err).on_queue(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_sqs::operation::send_message::SendMessageError;
    use aws_smithy_types::body::SdkBody;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn put_item_error(code: &str, status: u16) -> AwsAdapterError {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message(format!("{code} message"))
            .build();
        AwsAdapterError::from(SdkError::service_error(
            PutItemError::generic(meta),
            response(status),
        ))
        .on_table("cosell")
    }

    fn port(err: AwsAdapterError) -> PortError {
        err.into_port_error(Service::LinkStore)
    }

    #[test]
    fn throttling_server_errors_and_timeouts_are_transient() {
        for (code, status) in [
            ("ProvisionedThroughputExceededException", 400),
            ("ThrottlingException", 400),
            ("RequestLimitExceeded", 400),
            ("InternalServerError", 500),
            ("SomethingNew", 503),
            ("SomethingNew", 429),
        ] {
            let err = put_item_error(code, status);
            assert!(err.is_retryable(), "{code} {status}");
            let port = port(err);
            assert!(
                matches!(
                    port,
                    PortError::Transient {
                        retry_after: None,
                        ..
                    }
                ),
                "{code} {status}: {port:?}"
            );
            assert!(port.is_retryable());
            assert!(
                port.to_string()
                    .contains("dynamodb:PutItem on table cosell"),
                "{port}"
            );
        }
    }

    #[test]
    fn access_denied_names_the_refused_iam_action_and_resource() {
        let port = port(put_item_error("AccessDeniedException", 400));
        let PortError::AccessDenied { message, .. } = &port else {
            panic!("expected AccessDenied, got {port:?}");
        };
        assert!(
            message.contains("dynamodb:PutItem on table cosell was refused"),
            "{message}"
        );
        assert!(message.contains("Fix: allow dynamodb:PutItem"), "{message}");
        assert!(!port.is_retryable());

        let sqs = AwsAdapterError::from(SdkError::service_error(
            SendMessageError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("not authorized")
                    .build(),
            ),
            response(403),
        ))
        .on_queue("https://sqs.us-east-1.amazonaws.com/1/cosell-retry");
        assert!(
            port_message(sqs.into_port_error(Service::RetryQueue)).contains(
                "sqs:SendMessage on queue https://sqs.us-east-1.amazonaws.com/1/cosell-retry \
                 was refused"
            )
        );
    }

    fn port_message(err: PortError) -> String {
        err.to_string()
    }

    #[test]
    fn validation_errors_and_other_4xx_are_permanent() {
        for (code, status) in [
            ("ValidationException", 400),
            ("ItemCollectionSizeLimitExceededException", 400),
            ("SomethingNew", 400),
        ] {
            let port = port(put_item_error(code, status));
            assert!(
                matches!(port, PortError::Permanent { .. }),
                "{code}: {port:?}"
            );
            assert!(port.to_string().contains(code), "{port}");
        }
        let missing = port(put_item_error("ResourceNotFoundException", 400));
        assert!(
            missing
                .to_string()
                .contains("table cosell does not exist in the configured account and region"),
            "{missing}"
        );
    }

    #[test]
    fn rejected_credentials_are_access_denied_with_a_credentials_fix() {
        for code in ["UnrecognizedClientException", "ExpiredTokenException"] {
            let port = port(put_item_error(code, 400));
            assert!(
                matches!(&port, PortError::AccessDenied { message, .. }
                    if message.contains("give the connector valid AWS credentials")),
                "{code}: {port:?}"
            );
        }
    }

    #[test]
    fn a_failed_condition_is_a_precondition_failure() {
        assert_eq!(
            port(put_item_error("ConditionalCheckFailedException", 400)),
            PortError::PreconditionFailed {
                service: Service::LinkStore
            }
        );
    }

    #[test]
    fn transport_failures_are_classified_by_their_kind() {
        let cases: Vec<(SdkError<PutItemError, HttpResponse>, FailureKind)> = vec![
            (
                SdkError::timeout_error("operation timed out"),
                FailureKind::Timeout,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::io("connection reset".into())),
                FailureKind::Network,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into())),
                FailureKind::Timeout,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::user("bad endpoint URL".into())),
                FailureKind::Invalid,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::other(
                    Box::new(CredentialsError::not_loaded("no providers in chain")),
                    None,
                )),
                FailureKind::Credentials,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::other(
                    Box::new(CredentialsError::provider_error("IMDS returned 500")),
                    None,
                )),
                FailureKind::Network,
            ),
            (
                SdkError::response_error("truncated body", response(200)),
                FailureKind::Network,
            ),
            (
                SdkError::construction_failure("missing table name"),
                FailureKind::Invalid,
            ),
        ];
        for (sdk, expected) in cases {
            let err = AwsAdapterError::from(sdk).on_table("cosell");
            assert_eq!(err.kind(), expected, "{err}");
            assert_eq!(
                port(err).is_retryable(),
                expected.is_retryable(),
                "{expected:?}"
            );
        }
    }

    #[test]
    fn classification_falls_back_to_the_http_status() {
        assert_eq!(
            FailureKind::classify(None, Some(503)),
            FailureKind::ServerError
        );
        assert_eq!(
            FailureKind::classify(None, Some(403)),
            FailureKind::AccessDenied
        );
        assert_eq!(FailureKind::classify(None, Some(400)), FailureKind::Invalid);
        assert_eq!(
            FailureKind::classify(Some("AWS.SimpleQueueService.NonExistentQueue"), Some(400)),
            FailureKind::ResourceNotFound
        );
        assert_eq!(
            FailureKind::classify(Some("QueueDoesNotExist"), Some(400)),
            FailureKind::ResourceNotFound
        );
    }

    #[test]
    fn corrupt_items_are_permanent_and_name_the_item() {
        let err = AwsAdapterError::CorruptItem {
            resource: AwsResource::Unknown,
            key: "IDEMPOTENCY#pc:1 / IDEMPOTENCY".into(),
            what: "idempotency record",
            reason: "missing status".into(),
        }
        .on_table("cosell");
        let port = port(err);
        assert!(!port.is_retryable());
        assert!(
            port.to_string().contains(
                "table cosell: item IDEMPOTENCY#pc:1 / IDEMPOTENCY is not a valid idempotency \
                 record: missing status"
            ),
            "{port}"
        );
    }
}
