//! The org's sObject schema: the four objects the connector touches, their fields (types,
//! lengths, createable/updateable, External ID), the Opportunity stage table that drives
//! `IsClosed` / `IsWon` / `Probability`, and the active currencies.
//!
//! Field lists follow the Salesforce field reference for the standard fields and the
//! co-sell custom fields of the brief. Where a custom field's type is not documented
//! (UNKNOWN: `How_can_Microsoft_help__c`, `Microsoft_Referral_Visibility__c`,
//! `Microsoft_Solutions__c`, `Microsoft_CRM_Identifier__c`) the sandbox uses an
//! unrestricted text type: it accepts whatever the connector writes instead of inventing
//! picklist values.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::ids;

/// A field's data type, named as `describe` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Id,
    String,
    TextArea,
    Picklist,
    Boolean,
    Date,
    DateTime,
    Currency,
    Percent,
    Double,
    Reference,
    Email,
    Phone,
    Url,
}

impl FieldType {
    /// The `type` in a describe result.
    pub fn describe_name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::String => "string",
            Self::TextArea => "textarea",
            Self::Picklist => "picklist",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::DateTime => "datetime",
            Self::Currency => "currency",
            Self::Percent => "percent",
            Self::Double => "double",
            Self::Reference => "reference",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Url => "url",
        }
    }

    /// Text-valued types (compared case-insensitively, quoted in SOQL).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Self::Id
                | Self::String
                | Self::TextArea
                | Self::Picklist
                | Self::Reference
                | Self::Email
                | Self::Phone
                | Self::Url
        )
    }

    pub fn is_number(self) -> bool {
        matches!(self, Self::Currency | Self::Percent | Self::Double)
    }
}

/// Restricted picklists whose values come from org configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picklist {
    /// `OpportunityStage` rows.
    Stages,
    /// Active currencies of a multi-currency org.
    Currencies,
}

/// One field of an sObject.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub label: String,
    pub kind: FieldType,
    /// Maximum length of text fields (0 otherwise).
    pub length: u32,
    pub external_id: bool,
    pub unique: bool,
    pub createable: bool,
    pub updateable: bool,
    pub nillable: bool,
    /// The server fills the field on create when absent (Id, OwnerId, checkboxes, ...).
    pub defaulted_on_create: bool,
    pub custom: bool,
    /// Object a reference field points to.
    pub reference_to: Option<&'static str>,
    pub picklist: Option<Picklist>,
}

impl Field {
    fn new(name: &str, label: &str, kind: FieldType) -> Self {
        let length = match kind {
            FieldType::Id | FieldType::Reference => 18,
            FieldType::String | FieldType::Picklist | FieldType::Url | FieldType::Email => 255,
            FieldType::Phone => 40,
            FieldType::TextArea => 32_000,
            _ => 0,
        };
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
            kind,
            length,
            external_id: false,
            unique: false,
            createable: true,
            updateable: true,
            nillable: kind != FieldType::Boolean,
            defaulted_on_create: kind == FieldType::Boolean,
            custom: name.ends_with("__c"),
            reference_to: None,
            picklist: None,
        }
    }

    fn len(mut self, length: u32) -> Self {
        self.length = length;
        self
    }

    /// Required on create and may not be set to null.
    fn required(mut self) -> Self {
        self.nillable = false;
        self
    }

    /// System-maintained: neither createable nor updateable.
    fn read_only(mut self) -> Self {
        self.createable = false;
        self.updateable = false;
        self
    }

    /// Set on create only.
    fn create_only(mut self) -> Self {
        self.updateable = false;
        self
    }

    fn defaulted(mut self) -> Self {
        self.defaulted_on_create = true;
        self
    }

    fn reference(mut self, object: &'static str) -> Self {
        self.reference_to = Some(object);
        self
    }

    fn restricted(mut self, picklist: Picklist) -> Self {
        self.picklist = Some(picklist);
        self
    }

    fn external_id(mut self) -> Self {
        self.external_id = true;
        self
    }

    /// The child-to-parent relationship name of a reference field, as SOQL paths name it:
    /// a standard `AccountId` is `Account`, a custom `Partner__c` is `Partner__r`.
    pub fn relationship_name(&self) -> Option<String> {
        if self.kind != FieldType::Reference {
            return None;
        }
        if self.custom {
            return self
                .name
                .strip_suffix("__c")
                .map(|base| format!("{base}__r"));
        }
        self.name.strip_suffix("Id").map(str::to_owned)
    }

    /// Must be present (non-null) in a create request.
    pub fn required_on_create(&self) -> bool {
        self.createable && !self.nillable && !self.defaulted_on_create
    }

    /// Long text areas cannot be used in a SOQL `WHERE` or `ORDER BY`.
    pub fn filterable(&self) -> bool {
        !(self.kind == FieldType::TextArea && self.length > 255)
    }
}

/// One sObject type.
#[derive(Debug, Clone)]
pub struct ObjectSchema {
    pub name: &'static str,
    pub label: &'static str,
    pub label_plural: &'static str,
    pub key_prefix: &'static str,
    pub createable: bool,
    pub updateable: bool,
    pub fields: Vec<Field>,
}

impl ObjectSchema {
    /// A field by name (case-insensitive, like the API).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// One `OpportunityStage` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    #[serde(default)]
    pub closed: bool,
    #[serde(default)]
    pub won: bool,
    /// Default probability (percent) applied when the stage changes.
    #[serde(default)]
    pub probability: u8,
}

/// The org's schema and picklist configuration.
#[derive(Debug, Clone)]
pub struct Schema {
    pub objects: Vec<ObjectSchema>,
    pub stages: Vec<Stage>,
    pub currencies: Vec<String>,
    /// The corporate currency, the default `CurrencyIsoCode` of new records.
    pub default_currency: String,
}

fn system_fields() -> Vec<Field> {
    use FieldType::*;
    vec![
        Field::new("IsDeleted", "Deleted", Boolean).read_only(),
        Field::new("CreatedById", "Created By ID", Reference)
            .reference("User")
            .read_only(),
        Field::new("CreatedDate", "Created Date", DateTime).read_only(),
        Field::new("LastModifiedById", "Last Modified By ID", Reference)
            .reference("User")
            .read_only(),
        Field::new("LastModifiedDate", "Last Modified Date", DateTime).read_only(),
        Field::new("SystemModstamp", "System Modstamp", DateTime).read_only(),
    ]
}

fn id_field() -> Field {
    Field::new("Id", "Record ID", FieldType::Id)
        .required()
        .read_only()
        .defaulted()
}

fn owner_field() -> Field {
    Field::new("OwnerId", "Owner ID", FieldType::Reference)
        .reference("User")
        .required()
        .defaulted()
}

fn currency_field() -> Field {
    Field::new("CurrencyIsoCode", "Currency ISO Code", FieldType::Picklist)
        .len(3)
        .restricted(Picklist::Currencies)
        .required()
        .defaulted()
}

fn opportunity() -> ObjectSchema {
    use FieldType::*;
    let mut fields = vec![
        id_field(),
        Field::new("AccountId", "Account ID", Reference).reference("Account"),
        // The primary contact (API v46.0 and later): set on create, derived from the
        // opportunity's primary contact role afterwards, so not updateable.
        Field::new("ContactId", "Contact ID", Reference)
            .reference("Contact")
            .create_only(),
        Field::new("Name", "Name", String).len(120).required(),
        Field::new("Description", "Description", TextArea),
        Field::new("StageName", "Stage", Picklist)
            .restricted(self::Picklist::Stages)
            .required(),
        Field::new("Amount", "Amount", Currency),
        Field::new("Probability", "Probability (%)", Percent),
        Field::new("CloseDate", "Close Date", Date).required(),
        Field::new("IsClosed", "Closed", Boolean).read_only(),
        Field::new("IsWon", "Won", Boolean).read_only(),
        currency_field(),
        owner_field(),
    ];
    fields.extend(system_fields());
    fields.extend([
        Field::new(
            "Sync_with_Partner_Center__c",
            "Sync with Partner Center",
            Boolean,
        ),
        // Not unique: an External ID may hold duplicates, which is what makes the
        // documented 300 Multiple Choices upsert answer possible.
        Field::new("Referral_Identifier__c", "Referral Identifier", String).external_id(),
        Field::new("Referral_Link__c", "Referral Link", Url),
        Field::new("Audit__c", "Audit", TextArea).len(131_072),
        Field::new(
            "How_can_Microsoft_help__c",
            "How can Microsoft help?",
            String,
        ),
        Field::new(
            "Microsoft_Referral_Visibility__c",
            "Microsoft Partner Center Referral Visibility",
            String,
        ),
        Field::new(
            "Microsoft_Solutions__c",
            "Microsoft Partner Center Solutions",
            TextArea,
        )
        .len(32_768),
        Field::new(
            "Microsoft_CRM_Identifier__c",
            "Microsoft CRM Identifier",
            String,
        ),
        // The co-sell taxonomy of a referral created from the opportunity
        // (docs/partner-center.md#solution-area-solution-play-and-partner-role). Its values are
        // configuration, so unrestricted text rather than invented picklists.
        Field::new("Solution_Area__c", "Solution Area", String),
        Field::new("Solution_Play__c", "Solution Play", String),
        Field::new("Partner_Role__c", "Partner Role", String),
    ]);
    ObjectSchema {
        name: "Opportunity",
        label: "Opportunity",
        label_plural: "Opportunities",
        key_prefix: ids::OPPORTUNITY_PREFIX,
        createable: true,
        updateable: true,
        fields,
    }
}

fn account() -> ObjectSchema {
    use FieldType::*;
    let mut fields = vec![
        id_field(),
        Field::new("Name", "Account Name", String).required(),
        Field::new("Type", "Account Type", String).len(255),
        Field::new("BillingStreet", "Billing Street", TextArea).len(255),
        Field::new("BillingCity", "Billing City", String).len(40),
        Field::new("BillingState", "Billing State/Province", String).len(80),
        Field::new("BillingPostalCode", "Billing Zip/Postal Code", String).len(20),
        Field::new("BillingCountry", "Billing Country", String).len(80),
        Field::new("Phone", "Account Phone", Phone),
        Field::new("Website", "Website", Url),
        Field::new("Industry", "Industry", String).len(255),
        Field::new("Description", "Account Description", TextArea),
        currency_field(),
        owner_field(),
    ];
    fields.extend(system_fields());
    ObjectSchema {
        name: "Account",
        label: "Account",
        label_plural: "Accounts",
        key_prefix: ids::ACCOUNT_PREFIX,
        createable: true,
        updateable: true,
        fields,
    }
}

fn contact() -> ObjectSchema {
    use FieldType::*;
    let mut fields = vec![
        id_field(),
        Field::new("AccountId", "Account ID", Reference).reference("Account"),
        Field::new("FirstName", "First Name", String).len(40),
        Field::new("LastName", "Last Name", String)
            .len(80)
            .required(),
        Field::new("Name", "Full Name", String).len(121).read_only(),
        Field::new("Title", "Title", String).len(128),
        Field::new("Email", "Email", Email).len(80),
        Field::new("Phone", "Business Phone", Phone),
        Field::new("MobilePhone", "Mobile Phone", Phone),
        currency_field(),
        owner_field(),
    ];
    fields.extend(system_fields());
    ObjectSchema {
        name: "Contact",
        label: "Contact",
        label_plural: "Contacts",
        key_prefix: ids::CONTACT_PREFIX,
        createable: true,
        updateable: true,
        fields,
    }
}

fn user() -> ObjectSchema {
    use FieldType::*;
    let mut fields = vec![
        id_field(),
        Field::new("Username", "Username", String)
            .len(80)
            .required(),
        Field::new("FirstName", "First Name", String).len(40),
        Field::new("LastName", "Last Name", String)
            .len(80)
            .required(),
        Field::new("Name", "Full Name", String).len(121).read_only(),
        Field::new("Email", "Email", Email).len(128).required(),
        Field::new("IsActive", "Active", Boolean),
    ];
    fields.extend(system_fields());
    ObjectSchema {
        name: "User",
        label: "User",
        label_plural: "Users",
        key_prefix: ids::USER_PREFIX,
        // Users are provisioned by an admin (or the control API), not by the connector.
        createable: false,
        updateable: false,
        fields,
    }
}

/// The default sales process of a new org (community schemas; configurable through
/// `PUT /_sandbox/salesforce/stages` because real orgs rename stages).
pub fn default_stages() -> Vec<Stage> {
    let open = |name: &str, probability| Stage {
        name: name.to_owned(),
        closed: false,
        won: false,
        probability,
    };
    vec![
        open("Prospecting", 10),
        open("Qualification", 10),
        open("Needs Analysis", 20),
        open("Value Proposition", 50),
        open("Proposal/Price Quote", 75),
        open("Negotiation/Review", 90),
        Stage {
            name: "Closed Won".into(),
            closed: true,
            won: true,
            probability: 100,
        },
        Stage {
            name: "Closed Lost".into(),
            closed: true,
            won: false,
            probability: 0,
        },
    ]
}

impl Default for Schema {
    fn default() -> Self {
        Self {
            objects: vec![opportunity(), account(), contact(), user()],
            stages: default_stages(),
            currencies: ["USD", "EUR", "GBP", "CAD", "AUD", "JPY"]
                .map(str::to_owned)
                .to_vec(),
            default_currency: "USD".into(),
        }
    }
}

impl Schema {
    /// An object by API name (case-insensitive).
    pub fn object(&self, name: &str) -> Option<&ObjectSchema> {
        self.objects
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    pub fn object_mut(&mut self, name: &str) -> Option<&mut ObjectSchema> {
        self.objects
            .iter_mut()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The object whose ids start with `prefix`.
    pub fn object_by_prefix(&self, prefix: &str) -> Option<&ObjectSchema> {
        self.objects.iter().find(|o| o.key_prefix == prefix)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        // Picklist values match exactly in a restricted picklist.
        self.stages.iter().find(|s| s.name == name)
    }

    /// Values of a restricted picklist.
    pub fn picklist_values(&self, picklist: Picklist) -> Vec<String> {
        match picklist {
            Picklist::Stages => self.stages.iter().map(|s| s.name.clone()).collect(),
            Picklist::Currencies => self.currencies.clone(),
        }
    }

    /// The describe result of `object`.
    pub fn describe(&self, object: &ObjectSchema, version: &str) -> Value {
        let fields: Vec<Value> = object
            .fields
            .iter()
            .map(|f| {
                let mut field = json!({
                    "name": f.name,
                    "label": f.label,
                    "type": f.kind.describe_name(),
                    "length": f.length,
                    "custom": f.custom,
                    "externalId": f.external_id,
                    "idLookup": f.kind == FieldType::Id || f.external_id,
                    "unique": f.unique,
                    "createable": f.createable,
                    "updateable": f.updateable,
                    "nillable": f.nillable,
                    "defaultedOnCreate": f.defaulted_on_create,
                    "filterable": f.filterable(),
                    "sortable": f.filterable(),
                    "restrictedPicklist": f.picklist.is_some(),
                    "referenceTo": f.reference_to.map_or_else(Vec::new, |o| vec![o]),
                    "relationshipName": f.relationship_name(),
                    "picklistValues": [],
                });
                if let Some(picklist) = f.picklist {
                    field["picklistValues"] = self
                        .picklist_values(picklist)
                        .into_iter()
                        .map(|value| {
                            json!({
                                "active": true,
                                "defaultValue": picklist == Picklist::Currencies
                                    && value == self.default_currency,
                                "label": value,
                                "validFor": null,
                                "value": value,
                            })
                        })
                        .collect();
                }
                field
            })
            .collect();
        let base = format!("/services/data/v{version}/sobjects/{}", object.name);
        json!({
            "name": object.name,
            "label": object.label,
            "labelPlural": object.label_plural,
            "keyPrefix": object.key_prefix,
            "custom": false,
            "createable": object.createable,
            "updateable": object.updateable,
            "queryable": true,
            "fields": fields,
            "urls": {
                "sobject": base,
                "describe": format!("{base}/describe"),
                "rowTemplate": format!("{base}/{{ID}}"),
            },
        })
    }
}

/// `2013-05-20T20:49:32.000+0000`, the REST API's date-time format.
pub fn format_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Parses the date-time forms the API accepts: RFC 3339 (`Z`, `+01:00`) and the
/// colon-less offset Salesforce itself writes (`+0000`), with or without fractions.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"]
        .iter()
        .find_map(|format| DateTime::parse_from_str(text, format).ok())
        .map(|at| at.with_timezone(&Utc))
}

pub fn parse_date(text: &str) -> Option<NaiveDate> {
    if text.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Jackson-style message for a value of the wrong JSON type.
fn cannot_deserialize(kind: &str, value: &Value) -> ApiError {
    let token = match value {
        Value::String(_) => "VALUE_STRING",
        Value::Number(_) => "VALUE_NUMBER",
        Value::Bool(true) => "VALUE_TRUE",
        Value::Bool(false) => "VALUE_FALSE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
        Value::Null => "VALUE_NULL",
    };
    let shown = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "JSON_PARSER_ERROR",
        format!(
            "Cannot deserialize instance of {kind} from {token} value {shown} or request may be missing a required field"
        ),
    )
}

impl Field {
    /// Checks and normalises a value written to this field (type coercions the API
    /// performs, length limits, restricted picklists, id formats). `null` passes through;
    /// the caller decides whether null is allowed.
    pub fn coerce(&self, value: &Value, schema: &Schema) -> Result<Value, ApiError> {
        use axum::http::StatusCode;
        if value.is_null() {
            return Ok(Value::Null);
        }
        let bad = |code: &'static str, message: String| {
            ApiError::new(StatusCode::BAD_REQUEST, code, message).with_fields([self.name.clone()])
        };
        match self.kind {
            FieldType::Boolean => match value {
                Value::Bool(b) => Ok(Value::Bool(*b)),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                other => Err(cannot_deserialize("boolean", other)),
            },
            FieldType::Currency | FieldType::Percent | FieldType::Double => {
                let number = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .filter(|n| n.is_finite())
                .ok_or_else(|| cannot_deserialize("double", value))?;
                Ok(json!(number))
            }
            FieldType::Date => value
                .as_str()
                .and_then(parse_date)
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .ok_or_else(|| cannot_deserialize("date", value)),
            FieldType::DateTime => value
                .as_str()
                .and_then(parse_datetime)
                .map(|at| Value::String(format_datetime(at)))
                .ok_or_else(|| cannot_deserialize("datetime", value)),
            FieldType::Id | FieldType::Reference => {
                let text = value
                    .as_str()
                    .ok_or_else(|| cannot_deserialize("String", value))?;
                let invalid = || {
                    bad(
                        "MALFORMED_ID",
                        format!("{}: id value of incorrect type: {text}", self.label),
                    )
                };
                let id = ids::normalize(text).ok_or_else(invalid)?;
                if let Some(target) = self.reference_to.and_then(|o| schema.object(o))
                    && !id.starts_with(target.key_prefix)
                {
                    return Err(bad(
                        "FIELD_INTEGRITY_EXCEPTION",
                        format!("{}: id value of incorrect type: {text}", self.label),
                    ));
                }
                Ok(Value::String(id))
            }
            FieldType::String
            | FieldType::TextArea
            | FieldType::Picklist
            | FieldType::Email
            | FieldType::Phone
            | FieldType::Url => {
                // Jackson coerces scalars to text; structures are parser errors.
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => return Err(cannot_deserialize("String", other)),
                };
                if text.chars().count() > self.length as usize {
                    return Err(bad(
                        "STRING_TOO_LONG",
                        format!(
                            "{}: data value too large: {text} (max length={})",
                            self.label, self.length
                        ),
                    ));
                }
                if let Some(picklist) = self.picklist
                    && !schema.picklist_values(picklist).contains(&text)
                {
                    return Err(bad(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        format!(
                            "{}: bad value for restricted picklist field: {text}",
                            self.label
                        ),
                    ));
                }
                if self.kind == FieldType::Email && !looks_like_email(&text) {
                    return Err(bad(
                        "INVALID_EMAIL_ADDRESS",
                        format!("{}: invalid email address: {text}", self.label),
                    ));
                }
                Ok(Value::String(text))
            }
        }
    }
}

fn looks_like_email(text: &str) -> bool {
    text.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !text.contains(char::is_whitespace)
    })
}

/// Fields of `row` as the REST API returns them: `attributes` first, then every schema
/// field (absent ones as `null`), or only `only` when given.
pub fn rest_record(
    object: &ObjectSchema,
    version: &str,
    row: &Map<String, Value>,
    only: Option<&[&Field]>,
) -> Value {
    let id = row.get("Id").and_then(Value::as_str).unwrap_or_default();
    let mut out = Map::new();
    out.insert(
        "attributes".into(),
        json!({
            "type": object.name,
            "url": format!("/services/data/v{version}/sobjects/{}/{id}", object.name),
        }),
    );
    let all: Vec<&Field> = object.fields.iter().collect();
    for field in only.unwrap_or(&all) {
        out.insert(
            field.name.clone(),
            row.get(&field.name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_parse_in_every_accepted_form() {
        let expected = parse_datetime("2026-01-01T00:00:00Z").expect("rfc3339");
        for text in [
            "2026-01-01T00:00:00.000+0000",
            "2026-01-01T00:00:00+0000",
            "2026-01-01T01:00:00+01:00",
            "2026-01-01T00:00:00.000Z",
        ] {
            assert_eq!(parse_datetime(text), Some(expected), "{text}");
        }
        assert_eq!(format_datetime(expected), "2026-01-01T00:00:00.000+0000");
        assert_eq!(parse_datetime("2026-01-01"), None);
    }

    #[test]
    fn coercion_follows_the_field_type() {
        let schema = Schema::default();
        let opp = schema.object("opportunity").expect("schema");
        let field = |n: &str| opp.field(n).expect("field");
        assert_eq!(
            field("Amount").coerce(&json!("1500.5"), &schema),
            Ok(json!(1500.5))
        );
        assert_eq!(
            field("Sync_with_Partner_Center__c").coerce(&json!("TRUE"), &schema),
            Ok(json!(true))
        );
        assert_eq!(
            field("CloseDate")
                .coerce(&json!("2026-02-30"), &schema)
                .map_err(|e| e.code),
            Err("JSON_PARSER_ERROR".into())
        );
        assert_eq!(
            field("StageName")
                .coerce(&json!("Won"), &schema)
                .map_err(|e| e.code),
            Err("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST".into())
        );
        assert_eq!(
            field("AccountId")
                .coerce(&json!("0065g0000000001"), &schema)
                .map_err(|e| e.code),
            Err("FIELD_INTEGRITY_EXCEPTION".into())
        );
        assert_eq!(
            field("Name")
                .coerce(&json!("x".repeat(121)), &schema)
                .map_err(|e| e.code),
            Err("STRING_TOO_LONG".into())
        );
        assert!(!field("Audit__c").filterable());
        assert!(field("Name").required_on_create());
        assert!(!field("OwnerId").required_on_create());
        assert!(!field("Sync_with_Partner_Center__c").required_on_create());
    }
}
