//! Table definitions of the sandbox's Dataverse environment: columns and their types,
//! alternate keys and state/status pairs, plus value validation for writes.
//!
//! Column types follow the Dataverse attribute types (`String`, `Memo`, `Integer`,
//! `Money`, `DateTime`, `Picklist`, `State`, `Status`, `Lookup`, …) because they decide
//! both the Web API validation and the webhook encoding (`Money`, `OptionSetValue`,
//! `EntityReference`, `/Date(ms)/`).

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The type of a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Kind {
    /// `Edm.Guid` (primary keys and plain GUID columns).
    Uniqueidentifier,
    String {
        max_length: usize,
    },
    /// Multi-line text.
    Memo {
        max_length: usize,
    },
    Integer {
        min: i64,
        max: i64,
    },
    /// `Edm.Int64` (`versionnumber`).
    BigInt,
    Decimal,
    Money,
    Boolean,
    /// `Edm.DateTimeOffset`, read back in UTC with a `Z`.
    DateTime,
    /// `Edm.Date` (`DateOnly` behaviour), e.g. `estimatedclosedate`.
    DateOnly,
    /// Choice column. An empty option list accepts any integer.
    Picklist {
        #[serde(default)]
        options: Vec<(i64, String)>,
    },
    State {
        options: Vec<(i64, String)>,
    },
    Status {
        options: Vec<(i64, String)>,
    },
    /// Lookup / Customer / Owner column; targets are table logical names.
    Lookup {
        targets: Vec<String>,
    },
}

impl Kind {
    /// The `AttributeType` name in the metadata API.
    pub fn attribute_type(&self) -> &'static str {
        match self {
            Kind::Uniqueidentifier => "Uniqueidentifier",
            Kind::String { .. } => "String",
            Kind::Memo { .. } => "Memo",
            Kind::Integer { .. } => "Integer",
            Kind::BigInt => "BigInt",
            Kind::Decimal => "Decimal",
            Kind::Money => "Money",
            Kind::Boolean => "Boolean",
            Kind::DateTime | Kind::DateOnly => "DateTime",
            Kind::Picklist { .. } => "Picklist",
            Kind::State { .. } => "State",
            Kind::Status { .. } => "Status",
            Kind::Lookup { targets } if targets.len() > 1 => {
                if targets.iter().any(|t| t == "team") {
                    "Owner"
                } else {
                    "Customer"
                }
            }
            Kind::Lookup { .. } => "Lookup",
        }
    }

    /// The OData primitive type, for conversion errors.
    fn edm(&self) -> &'static str {
        match self {
            Kind::Uniqueidentifier | Kind::Lookup { .. } => "Edm.Guid",
            Kind::String { .. } | Kind::Memo { .. } => "Edm.String",
            Kind::Integer { .. } | Kind::Picklist { .. } | Kind::State { .. } => "Edm.Int32",
            Kind::Status { .. } => "Edm.Int32",
            Kind::BigInt => "Edm.Int64",
            Kind::Decimal | Kind::Money => "Edm.Decimal",
            Kind::Boolean => "Edm.Boolean",
            Kind::DateTime => "Edm.DateTimeOffset",
            Kind::DateOnly => "Edm.Date",
        }
    }

    /// Option labels of a choice / state / status column.
    pub fn options(&self) -> Option<&[(i64, String)]> {
        match self {
            Kind::Picklist { options } | Kind::State { options } | Kind::Status { options } => {
                Some(options)
            }
            _ => None,
        }
    }
}

/// How the Web API treats a column in writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The primary key: may be given on create, never changes.
    Key,
    /// Valid for create, update and read.
    ReadWrite,
    /// Maintained by the platform (`createdon`, `modifiedby`, `versionnumber`, …): values
    /// sent in a write are ignored, as Dataverse ignores attributes that are not valid
    /// for create/update.
    ReadOnly,
    /// Valid for create/update but never returned (`serviceendpoint.authvalue`).
    WriteOnly,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub access: Access,
    pub custom: bool,
}

impl Column {
    fn new(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            access: Access::ReadWrite,
            custom: name.starts_with("msft_"),
        }
    }

    fn read_only(mut self) -> Self {
        self.access = Access::ReadOnly;
        self
    }

    /// The property name in Web API reads: `_<name>_value` for lookups.
    pub fn read_name(&self) -> String {
        if self.is_lookup() {
            format!("_{}_value", self.name)
        } else {
            self.name.clone()
        }
    }

    pub fn is_lookup(&self) -> bool {
        matches!(self.kind, Kind::Lookup { .. })
    }

    pub fn readable(&self) -> bool {
        self.access != Access::WriteOnly
    }

    /// Lookup targets (empty for other kinds).
    pub fn targets(&self) -> &[String] {
        match &self.kind {
            Kind::Lookup { targets } => targets,
            _ => &[],
        }
    }
}

/// An alternate key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AltKey {
    pub name: String,
    pub columns: Vec<String>,
}

/// A state (`statecode`) and the status reasons (`statuscode`) valid with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateDef {
    pub state: i64,
    pub label: &'static str,
    pub statuses: Vec<i64>,
    pub default_status: i64,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableDef {
    pub logical: &'static str,
    pub set: &'static str,
    pub pk: &'static str,
    pub primary_name: &'static str,
    pub columns: Vec<Column>,
    pub keys: Vec<AltKey>,
    pub states: Vec<StateDef>,
    /// User-owned tables get `ownerid`/`owningbusinessunit` and a default owner.
    pub user_owned: bool,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The column behind a read property name (`name`, `_parentaccountid_value`).
    pub fn column_by_read_name(&self, read_name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.readable() && c.read_name() == read_name)
    }

    /// `Microsoft.Dynamics.CRM.<logical>`, as error messages name the entity type.
    pub fn entity_type(&self) -> String {
        format!("Microsoft.Dynamics.CRM.{}", self.logical)
    }

    pub fn state(&self, state: i64) -> Option<&StateDef> {
        self.states.iter().find(|s| s.state == state)
    }

    /// The storage key of a column (its read name).
    pub fn storage_key(&self, column: &str) -> Option<String> {
        self.column(column).map(Column::read_name)
    }
}

fn options(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
    pairs.iter().map(|(v, l)| (*v, (*l).to_owned())).collect()
}

fn string(name: &str, max_length: usize) -> Column {
    Column::new(name, Kind::String { max_length })
}

fn memo(name: &str, max_length: usize) -> Column {
    Column::new(name, Kind::Memo { max_length })
}

fn integer(name: &str, min: i64, max: i64) -> Column {
    Column::new(name, Kind::Integer { min, max })
}

fn money(name: &str) -> Column {
    Column::new(name, Kind::Money)
}

fn boolean(name: &str) -> Column {
    Column::new(name, Kind::Boolean)
}

fn date_only(name: &str) -> Column {
    Column::new(name, Kind::DateOnly)
}

fn date_time(name: &str) -> Column {
    Column::new(name, Kind::DateTime)
}

fn picklist(name: &str, pairs: &[(i64, &str)]) -> Column {
    Column::new(
        name,
        Kind::Picklist {
            options: options(pairs),
        },
    )
}

fn lookup(name: &str, targets: &[&str]) -> Column {
    Column::new(
        name,
        Kind::Lookup {
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        },
    )
}

fn key(name: &str) -> Column {
    let mut column = Column::new(name, Kind::Uniqueidentifier);
    column.access = Access::Key;
    column
}

const ACTIVE_STATES: &[(i64, &str)] = &[(0, "Active"), (1, "Inactive")];
const ACTIVE_STATUSES: &[(i64, &str)] = &[(1, "Active"), (2, "Inactive")];

fn active_inactive() -> Vec<StateDef> {
    vec![
        StateDef {
            state: 0,
            label: "Active",
            statuses: vec![1],
            default_status: 1,
        },
        StateDef {
            state: 1,
            label: "Inactive",
            statuses: vec![2],
            default_status: 2,
        },
    ]
}

fn state_columns(states: &[(i64, &str)], statuses: &[(i64, &str)]) -> Vec<Column> {
    vec![
        Column::new(
            "statecode",
            Kind::State {
                options: options(states),
            },
        ),
        Column::new(
            "statuscode",
            Kind::Status {
                options: options(statuses),
            },
        ),
    ]
}

/// `createdon`, `modifiedby`, `versionnumber`, … (every table).
fn audit_columns() -> Vec<Column> {
    vec![
        date_time("createdon").read_only(),
        date_time("modifiedon").read_only(),
        lookup("createdby", &["systemuser"]).read_only(),
        lookup("modifiedby", &["systemuser"]).read_only(),
        lookup("createdonbehalfby", &["systemuser"]).read_only(),
        lookup("modifiedonbehalfby", &["systemuser"]).read_only(),
        Column::new("versionnumber", Kind::BigInt).read_only(),
    ]
}

/// Owner, business unit and currency columns of user-owned business tables.
fn ownership_columns() -> Vec<Column> {
    vec![
        lookup("ownerid", &["systemuser", "team"]),
        lookup("owningbusinessunit", &["businessunit"]).read_only(),
        lookup("transactioncurrencyid", &["transactioncurrency"]),
        Column::new("exchangerate", Kind::Decimal).read_only(),
    ]
}

/// The opportunity table: the documented standard columns (docs/dataverse.md#opportunity-table) and
/// the Partner Center co-sell custom columns. The custom columns' types are not documented
/// (UNKNOWN): `…referralsync` and `…referralvisible` are Yes/No (their labels are
/// questions), the identifier and CRM identifier are short strings, the link a URL
/// string, and "How can Microsoft help?", the solutions list and the audit trail are
/// multi-line text — the forgiving choice (a choice column would reject labels).
fn opportunity() -> TableDef {
    let mut columns = vec![
        key("opportunityid"),
        string("name", 300),
        money("estimatedvalue"),
        date_only("estimatedclosedate"),
        money("actualvalue"),
        date_only("actualclosedate"),
        memo("description", 2000),
        picklist(
            "salesstage",
            &[(0, "Qualify"), (1, "Develop"), (2, "Propose"), (3, "Close")],
        ),
        string("stepname", 200),
        integer("closeprobability", 0, 100),
        picklist(
            "msdyn_forecastcategory",
            &[
                (100_000_001, "Pipeline"),
                (100_000_002, "Best case"),
                (100_000_003, "Committed"),
                (100_000_004, "Omitted"),
                (100_000_005, "Won"),
                (100_000_006, "Lost"),
            ],
        ),
        lookup("customerid", &["account", "contact"]),
        lookup("parentaccountid", &["account"]),
        lookup("parentcontactid", &["contact"]),
        boolean("msft_microsoftpartnercenterreferralsync"),
        string("msft_microsoftpartnercenterreferralidentifier", 100),
        string("msft_microsoftpartnercenterreferrallink", 1000),
        memo("msft_microsoftpartnercenterreferralsyncaudit", 1_048_576),
        memo("msft_microsoftpartnercenterhelpneed", 4000),
        boolean("msft_microsoftpartnercenterreferralvisible"),
        memo("msft_microsoftpartnercentersolutions", 4000),
        string("msft_microsoftcrmidentifier", 100),
        // The co-sell taxonomy of a referral created from the opportunity
        // (docs/partner-center.md#solution-area-solution-play-and-partner-role): text columns.
        string("msft_solutionarea", 200),
        string("msft_solutionplay", 200),
        string("msft_partnerrole", 200),
    ];
    columns.extend(state_columns(
        &[(0, "Open"), (1, "Won"), (2, "Lost")],
        &[
            (1, "In Progress"),
            (2, "On Hold"),
            (3, "Won"),
            (4, "Canceled"),
            (5, "Out-Sold"),
        ],
    ));
    columns.extend(ownership_columns());
    columns.extend(audit_columns());
    TableDef {
        logical: "opportunity",
        set: "opportunities",
        pk: "opportunityid",
        primary_name: "name",
        columns,
        keys: vec![AltKey {
            name: "msft_referralidentifier_key".into(),
            columns: vec!["msft_microsoftpartnercenterreferralidentifier".into()],
        }],
        states: vec![
            StateDef {
                state: 0,
                label: "Open",
                statuses: vec![1, 2],
                default_status: 1,
            },
            StateDef {
                state: 1,
                label: "Won",
                statuses: vec![3],
                default_status: 3,
            },
            StateDef {
                state: 2,
                label: "Lost",
                statuses: vec![4, 5],
                default_status: 4,
            },
        ],
        user_owned: true,
    }
}

fn account() -> TableDef {
    let mut columns = vec![
        key("accountid"),
        string("name", 160),
        string("accountnumber", 20),
        string("address1_line1", 250),
        string("address1_line2", 250),
        string("address1_city", 80),
        string("address1_stateorprovince", 50),
        string("address1_postalcode", 20),
        string("address1_country", 80),
        string("telephone1", 50),
        string("emailaddress1", 100),
        string("websiteurl", 200),
        memo("description", 2000),
        integer("numberofemployees", 0, 1_000_000_000),
        money("revenue"),
        picklist("industrycode", &[]),
        lookup("primarycontactid", &["contact"]),
        lookup("parentaccountid", &["account"]),
    ];
    columns.extend(state_columns(ACTIVE_STATES, ACTIVE_STATUSES));
    columns.extend(ownership_columns());
    columns.extend(audit_columns());
    TableDef {
        logical: "account",
        set: "accounts",
        pk: "accountid",
        primary_name: "name",
        columns,
        keys: vec![AltKey {
            name: "accountnumber_key".into(),
            columns: vec!["accountnumber".into()],
        }],
        states: active_inactive(),
        user_owned: true,
    }
}

fn contact() -> TableDef {
    let mut columns = vec![
        key("contactid"),
        string("firstname", 50),
        string("lastname", 50),
        // Computed by the platform from firstname + lastname.
        string("fullname", 160).read_only(),
        string("emailaddress1", 100),
        string("telephone1", 50),
        string("mobilephone", 50),
        string("jobtitle", 100),
        memo("description", 2000),
        lookup("parentcustomerid", &["account", "contact"]),
    ];
    columns.extend(state_columns(ACTIVE_STATES, ACTIVE_STATUSES));
    columns.extend(ownership_columns());
    columns.extend(audit_columns());
    TableDef {
        logical: "contact",
        set: "contacts",
        pk: "contactid",
        primary_name: "fullname",
        columns,
        keys: vec![AltKey {
            name: "emailaddress1_key".into(),
            columns: vec!["emailaddress1".into()],
        }],
        states: active_inactive(),
        user_owned: true,
    }
}

fn transaction_currency() -> TableDef {
    let mut columns = vec![
        key("transactioncurrencyid"),
        string("isocurrencycode", 5),
        string("currencyname", 100),
        string("currencysymbol", 10),
        Column::new("exchangerate", Kind::Decimal),
        integer("currencyprecision", 0, 4),
    ];
    columns.extend(state_columns(ACTIVE_STATES, ACTIVE_STATUSES));
    columns.extend(audit_columns());
    TableDef {
        logical: "transactioncurrency",
        set: "transactioncurrencies",
        pk: "transactioncurrencyid",
        primary_name: "currencyname",
        columns,
        keys: Vec::new(),
        states: active_inactive(),
        user_owned: false,
    }
}

fn system_user() -> TableDef {
    let mut columns = vec![
        key("systemuserid"),
        string("fullname", 200).read_only(),
        string("firstname", 64),
        string("lastname", 64),
        string("domainname", 1024),
        string("internalemailaddress", 100),
        Column::new("applicationid", Kind::Uniqueidentifier),
        Column::new("azureactivedirectoryobjectid", Kind::Uniqueidentifier),
        picklist(
            "accessmode",
            &[
                (0, "Read-Write"),
                (1, "Administrative"),
                (2, "Read"),
                (3, "Support User"),
                (4, "Non-interactive"),
                (5, "Delegated Admin"),
            ],
        ),
        boolean("isdisabled"),
        lookup("businessunitid", &["businessunit"]),
    ];
    columns.extend(audit_columns());
    TableDef {
        logical: "systemuser",
        set: "systemusers",
        pk: "systemuserid",
        primary_name: "fullname",
        columns,
        keys: Vec::new(),
        states: Vec::new(),
        user_owned: false,
    }
}

fn service_endpoint() -> TableDef {
    let mut authvalue = string("authvalue", 2048);
    authvalue.access = Access::WriteOnly;
    let mut columns = vec![
        key("serviceendpointid"),
        string("name", 256),
        memo("description", 2000),
        picklist(
            "contract",
            &[
                (1, "OneWay"),
                (2, "Queue"),
                (3, "Rest"),
                (4, "TwoWay"),
                (5, "Topic"),
                (6, "Queue (Persistent)"),
                (7, "Event Hub"),
                (8, "Webhook"),
                (9, "Event Grid"),
                (10, "Managed Data Lake"),
            ],
        ),
        picklist(
            "authtype",
            &[
                (1, "ACS"),
                (2, "SAS Key"),
                (3, "SAS Token"),
                (4, "Webhook Key"),
                (5, "Http Header"),
                (6, "Http Query String"),
                (7, "Connection String"),
                (8, "Access Key"),
            ],
        ),
        string("url", 2000),
        authvalue,
        picklist(
            "messageformat",
            &[(1, "Binary XML"), (2, "Json"), (3, "Text XML")],
        ),
        picklist("messagecharset", &[(0, "Default"), (1, "UTF8")]),
        picklist("userclaim", &[(1, "None"), (2, "UserId"), (3, "UserInfo")]),
        string("namespaceaddress", 255),
        string("path", 160),
    ];
    columns.extend(audit_columns());
    TableDef {
        logical: "serviceendpoint",
        set: "serviceendpoints",
        pk: "serviceendpointid",
        primary_name: "name",
        columns,
        keys: Vec::new(),
        states: Vec::new(),
        user_owned: false,
    }
}

/// Every table of the sandbox environment, as first configured.
pub fn default_tables() -> Vec<TableDef> {
    vec![
        opportunity(),
        account(),
        contact(),
        transaction_currency(),
        system_user(),
        service_endpoint(),
    ]
}

/// The original definition of a column (to restore one removed through the control API).
pub fn default_column(table: &str, column: &str) -> Option<Column> {
    default_tables()
        .into_iter()
        .find(|t| t.logical == table)?
        .columns
        .into_iter()
        .find(|c| c.name == column)
}

/// `2024-05-01T10:00:00Z`: how Dataverse returns date-times (UTC, whole seconds).
pub fn format_instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A write value that does not fit its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Wrong JSON type / unparsable literal (OData conversion error).
    Conversion(String),
    /// Valid type, but outside the column's range / length / options.
    Validation(String),
}

fn literal(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks and normalises a value written to `column` of `table` (dates to UTC `Z`,
/// GUIDs to lower case).
pub fn normalise(table: &str, column: &Column, value: Value) -> Result<Value, ValueError> {
    if value.is_null() {
        return Ok(value);
    }
    let conversion = || {
        ValueError::Conversion(format!(
            "Cannot convert the literal '{}' to the expected type '{}'.",
            literal(&value),
            column.kind.edm()
        ))
    };
    let name = &column.name;
    match &column.kind {
        Kind::String { max_length } | Kind::Memo { max_length } => {
            let text = value.as_str().ok_or_else(conversion)?;
            if text.chars().count() > *max_length {
                return Err(ValueError::Validation(format!(
                    "A validation error occurred. The length of the '{name}' attribute of the \
                     '{table}' entity exceeded the maximum allowed length of '{max_length}'."
                )));
            }
            Ok(value)
        }
        Kind::Integer { min, max } => {
            let n = value.as_i64().ok_or_else(conversion)?;
            if n < *min || n > *max {
                return Err(ValueError::Validation(format!(
                    "A validation error occurred. The value {n} of '{name}' on record of type \
                     '{table}' is outside the valid range. Accepted Values: {min} to {max}"
                )));
            }
            Ok(value)
        }
        Kind::BigInt => value.as_i64().map(|_| value.clone()).ok_or_else(conversion),
        Kind::Decimal | Kind::Money => value.as_f64().map(|_| value.clone()).ok_or_else(conversion),
        Kind::Boolean => value
            .as_bool()
            .map(|_| value.clone())
            .ok_or_else(conversion),
        Kind::DateTime => {
            let text = value.as_str().ok_or_else(conversion)?;
            let at = parse_date_time(text).ok_or_else(conversion)?;
            Ok(json!(format_instant(at)))
        }
        Kind::DateOnly => {
            let text = value.as_str().ok_or_else(conversion)?;
            let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| conversion())?;
            Ok(json!(day.format("%Y-%m-%d").to_string()))
        }
        Kind::Picklist { options } | Kind::State { options } | Kind::Status { options } => {
            let n = value.as_i64().ok_or_else(conversion)?;
            if !options.is_empty() && !options.iter().any(|(v, _)| *v == n) {
                return Err(ValueError::Validation(format!(
                    "A validation error occurred. The value {n} of '{name}' on record of type \
                     '{table}' is outside the valid range."
                )));
            }
            Ok(value)
        }
        Kind::Uniqueidentifier | Kind::Lookup { .. } => {
            let text = value.as_str().ok_or_else(conversion)?;
            let id = uuid::Uuid::try_parse(text).map_err(|_| conversion())?;
            Ok(json!(id.hyphenated().to_string()))
        }
    }
}

/// An `Edm.DateTimeOffset` literal: RFC 3339 (any offset), or without offset as UTC.
pub fn parse_date_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// Milliseconds since the epoch of a stored date / date-time value (`/Date(ms)/`).
pub fn epoch_millis(kind: &Kind, text: &str) -> Option<i64> {
    match kind {
        Kind::DateOnly => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|n| n.and_utc().timestamp_millis()),
        _ => parse_date_time(text).map(|d| d.timestamp_millis()),
    }
}

/// A stable, GUID-shaped `MetadataId` for a table or column name (FNV-1a based).
pub fn metadata_id(name: &str) -> String {
    fn fnv(seed: u64, text: &str) -> u64 {
        text.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }
    let a = fnv(0xcbf2_9ce4_8422_2325, name);
    let b = fnv(0x84222325_cbf29ce4, name);
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects_values_by_column_type() {
        let table = opportunity();
        let column = |name: &str| table.column(name).cloned().expect("column");
        assert_eq!(
            normalise(
                "opportunity",
                &column("estimatedclosedate"),
                json!("2024-02-29")
            ),
            Ok(json!("2024-02-29"))
        );
        assert!(matches!(
            normalise(
                "opportunity",
                &column("estimatedclosedate"),
                json!("2024-02-29T00:00:00Z")
            ),
            Err(ValueError::Conversion(_))
        ));
        assert_eq!(
            normalise(
                "opportunity",
                &column("createdon"),
                json!("2024-02-29T10:00:00+02:00")
            ),
            Ok(json!("2024-02-29T08:00:00Z"))
        );
        assert!(matches!(
            normalise("opportunity", &column("estimatedvalue"), json!("12")),
            Err(ValueError::Conversion(_))
        ));
        assert!(matches!(
            normalise("opportunity", &column("closeprobability"), json!(101)),
            Err(ValueError::Validation(_))
        ));
        assert!(matches!(
            normalise("opportunity", &column("salesstage"), json!(9)),
            Err(ValueError::Validation(_))
        ));
        assert!(matches!(
            normalise("opportunity", &column("name"), json!("x".repeat(301))),
            Err(ValueError::Validation(_))
        ));
    }

    #[test]
    fn metadata_ids_are_stable_guids() {
        let id = metadata_id("opportunity.name");
        assert_eq!(id, metadata_id("opportunity.name"));
        assert_ne!(id, metadata_id("opportunity.description"));
        assert!(uuid::Uuid::try_parse(&id).is_ok(), "{id}");
    }
}
