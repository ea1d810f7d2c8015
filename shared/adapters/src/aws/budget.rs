//! [`ApiBudget`] on the connector's DynamoDB table: one counter item per UTC day.
//!
//! Item: `pk = BUDGET#<YYYY-MM-DD>`, `sk = BUDGET`, `calls` (N, the total the budget admits
//! against), per service `calls_partner_center`, `calls_dataverse`, `calls_salesforce` (N, the
//! calls made, each in its service's unit), `entity = budget`, and the TTL attribute
//! `expiration` a week after the day, so old counters go away by themselves. Counting is one
//! `UpdateItem` with `ADD calls :n, calls_dataverse :d, …` (atomic, creates the item and the
//! attributes on first use) returning the new total, so a settle stays one request; reading is
//! a strongly consistent `GetItem`.

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{Days, NaiveDate};
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::in_memory::InMemoryApiBudget;
use cosell_domain::ports::{ApiBudget, ApiService, ServiceCalls};
use cosell_domain::{PortError, Service};

use crate::aws::item::{get_i64, n, s};
use crate::aws::table::{ENTITY, PK, SK, TTL_ATTRIBUTE, keys};
use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// How long a day's counter is kept after the day.
const KEEP_DAYS: u64 = 7;
/// The counter attribute (the total).
const CALLS: &str = "calls";

/// The attribute counting `service`'s calls.
fn service_attribute(service: ApiService) -> &'static str {
    match service {
        ApiService::PartnerCenter => "calls_partner_center",
        ApiService::Dataverse => "calls_dataverse",
        ApiService::Salesforce => "calls_salesforce",
    }
}

/// A day's counter as read: the total and the calls per service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCount {
    /// The total the budget admits against (open reservations included).
    pub total: u64,
    /// The calls made per service.
    pub by_service: ServiceCalls,
}

fn service() -> Service {
    Service::Other("the API budget counter".to_owned())
}

/// The daily API counter on the connector's table.
#[derive(Debug, Clone)]
pub struct DynamoApiBudget {
    client: Client,
    table: String,
}

impl DynamoApiBudget {
    /// A counter on `table`, using a client built once per cold start.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `day`'s counter: the total and the calls per service, in one read.
    pub async fn try_day(&self, day: NaiveDate) -> Result<DayCount, AwsAdapterError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::budget_pk(day)))
            .key(SK, s(keys::BUDGET_SK))
            .consistent_read(true)
            .send()
            .await
            .on_table(&self.table)?;
        let Some(item) = found.item() else {
            return Ok(DayCount::default());
        };
        let count = |name: &str| {
            get_i64(item, name)
                .and_then(|calls| u64::try_from(calls).ok())
                .unwrap_or_default()
        };
        Ok(DayCount {
            total: count(CALLS),
            by_service: ApiService::ALL
                .into_iter()
                .fold(ServiceCalls::default(), |made, service| {
                    made.with(service, count(service_attribute(service)))
                }),
        })
    }

    /// [`ApiBudget::used`], with the adapter's error.
    pub async fn try_used(&self, day: NaiveDate) -> Result<u64, AwsAdapterError> {
        Ok(self.try_day(day).await?.total)
    }

    /// [`ApiBudget::add`], with the adapter's error.
    pub async fn try_add(&self, day: NaiveDate, delta: i64) -> Result<i64, AwsAdapterError> {
        self.try_record(day, delta, ServiceCalls::default()).await
    }

    /// [`ApiBudget::record`], with the adapter's error: one `UpdateItem` adding `delta` to the
    /// total and each service's calls (those not 0) to its attribute.
    pub async fn try_record(
        &self,
        day: NaiveDate,
        delta: i64,
        made: ServiceCalls,
    ) -> Result<i64, AwsAdapterError> {
        let expires = day
            .checked_add_days(Days::new(KEEP_DAYS + 1))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(i64::MAX, |at| at.and_utc().timestamp());
        let mut adds = vec!["#calls :delta".to_owned()];
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(keys::budget_pk(day)))
            .key(SK, s(keys::BUDGET_SK))
            .expression_attribute_names("#calls", CALLS)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_names("#entity", ENTITY)
            .expression_attribute_values(":delta", n(delta))
            .expression_attribute_values(":ttl", n(expires))
            .expression_attribute_values(":entity", s("budget"));
        for (at, (service, calls)) in made.iter().filter(|(_, calls)| *calls > 0).enumerate() {
            adds.push(format!("#s{at} :s{at}"));
            update = update
                .expression_attribute_names(format!("#s{at}"), service_attribute(service))
                .expression_attribute_values(format!(":s{at}"), n(calls));
        }
        let updated = update
            .update_expression(format!(
                "ADD {} SET #ttl = :ttl, #entity = :entity",
                adds.join(", ")
            ))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .on_table(&self.table)?;
        updated
            .attributes()
            .and_then(|item| get_i64(item, CALLS))
            .ok_or_else(|| AwsAdapterError::MissingOutput {
                action: "dynamodb:UpdateItem",
                resource: AwsResource::Table(self.table.clone()),
                what: "new call count",
            })
    }
}

impl ApiBudget for DynamoApiBudget {
    #[tracing::instrument(skip_all, fields(table = %self.table, %day))]
    async fn used(&self, day: NaiveDate) -> Result<u64, PortError> {
        self.try_used(day)
            .await
            .map_err(|e| e.into_port_error(service()))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, %day))]
    async fn used_by_service(&self, day: NaiveDate) -> Result<ServiceCalls, PortError> {
        self.try_day(day)
            .await
            .map(|count| count.by_service)
            .map_err(|e| e.into_port_error(service()))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, %day, delta))]
    async fn record(
        &self,
        day: NaiveDate,
        delta: i64,
        made: ServiceCalls,
    ) -> Result<i64, PortError> {
        self.try_record(day, delta, made)
            .await
            .map_err(|e| e.into_port_error(service()))
    }
}

/// The configured counter: the table's, or one in memory (`STORE=memory`, tests). Cheap to
/// clone (clones share the count).
#[derive(Debug, Clone)]
pub enum AnyApiBudget {
    /// The DynamoDB counter.
    Dynamo(DynamoApiBudget),
    /// A counter in memory, per instance.
    Memory(Arc<InMemoryApiBudget>),
}

impl AnyApiBudget {
    /// A new counter in memory.
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }
}

/// A function's daily API budget: its counter and its policy (one per cold start).
#[derive(Debug, Clone)]
pub struct Metering {
    /// The daily call counter.
    pub counter: AnyApiBudget,
    /// `DAILY_API_BUDGET` / `WEBHOOK_RESERVED_SHARE`.
    pub policy: BudgetPolicy,
}

impl Metering {
    /// Calls counted by `counter` against `policy`.
    pub fn new(counter: AnyApiBudget, policy: BudgetPolicy) -> Self {
        Self { counter, policy }
    }

    /// The budget syncs are admitted against.
    pub fn budget(&self) -> Budget<'_, AnyApiBudget> {
        Budget {
            counter: &self.counter,
            policy: &self.policy,
        }
    }
}

impl Default for Metering {
    /// A counter in memory and the default policy, until `main` names the table's.
    fn default() -> Self {
        Self::new(AnyApiBudget::memory(), BudgetPolicy::default())
    }
}

impl From<DynamoApiBudget> for AnyApiBudget {
    fn from(budget: DynamoApiBudget) -> Self {
        Self::Dynamo(budget)
    }
}

impl ApiBudget for AnyApiBudget {
    async fn used(&self, day: NaiveDate) -> Result<u64, PortError> {
        let used = match self {
            Self::Dynamo(budget) => budget.used(day).await,
            Self::Memory(budget) => budget.used(day).await,
        }?;
        last_seen::record(day, i64::try_from(used).unwrap_or(i64::MAX));
        Ok(used)
    }

    async fn used_by_service(&self, day: NaiveDate) -> Result<ServiceCalls, PortError> {
        match self {
            Self::Dynamo(budget) => budget.used_by_service(day).await,
            Self::Memory(budget) => budget.used_by_service(day).await,
        }
    }

    async fn record(
        &self,
        day: NaiveDate,
        delta: i64,
        made: ServiceCalls,
    ) -> Result<i64, PortError> {
        let total = match self {
            Self::Dynamo(budget) => budget.record(day, delta, made).await,
            Self::Memory(budget) => budget.record(day, delta, made).await,
        }?;
        last_seen::record(day, total);
        Ok(total)
    }
}

/// The day's call count as this process last read or added it: what the runtime publishes as
/// the `ApiCallsToday` / `ApiBudgetUsedPercent` metrics at the end of an invocation, without a
/// read of its own (docs/aws.md#embedded-metric-format). One per process: a Lambda instance
/// runs one invocation at a time.
pub mod last_seen {
    use std::sync::Mutex;

    use chrono::NaiveDate;

    static LAST: Mutex<Option<(NaiveDate, u64)>> = Mutex::new(None);

    /// Remember `total` as `day`'s count (a newer day replaces an older one; within a day the
    /// latest answer wins).
    pub fn record(day: NaiveDate, total: i64) {
        let total = u64::try_from(total).unwrap_or_default();
        if let Ok(mut last) = LAST.lock()
            && last.is_none_or(|(seen, _)| seen <= day)
        {
            *last = Some((day, total));
        }
    }

    /// `day`'s count as last seen, if this process saw one that day.
    pub fn count(day: NaiveDate) -> Option<u64> {
        LAST.lock()
            .ok()
            .and_then(|last| *last)
            .filter(|(seen, _)| *seen == day)
            .map(|(_, total)| total)
    }
}
