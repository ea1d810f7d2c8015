//! `crm-access`, `crm-fields`, `currency`, `stages`, `crm-concurrency`: the CRM (Dataverse or
//! Salesforce) lets the connector's user read and write what it syncs, with the fields,
//! currency and stages the mapping names, and refuses an update over a save made since.

use cosell_adapters::http::{HttpAdapterError, RequestContext};
use cosell_domain::ports::Service;
use cosell_runtime::config::CrmConfig;
use reqwest::Method;
use serde_json::{Value, json};

use super::request::{
    call, crm_client, dataverse_root, describe_object, get, names, picklist, salesforce_describe,
};
use super::{Check, Status, lacking};
use crate::context::Deployment;

/// A Dataverse row id that does not exist (see [`check_crm_access`]).
const PROBE_DATAVERSE_ID: &str = "00000000-0000-0000-0000-000000000000";

/// `crm-access`: the CRM user can read and write opportunities, accounts and contacts.
///
/// Dataverse: a `$top=1` read of each table, and an update-only PATCH (`If-Match: *`) of a
/// row that does not exist, which answers 404 to a user allowed to write and 403 (naming the
/// `prvWrite…` privilege) otherwise; nothing is written either way. (Whether Dataverse checks
/// the privilege before the row's existence is UNKNOWN: a 404 is read as "allowed".) Salesforce: the objects' describe (`queryable`,
/// `createable`, `updateable` for the integration user).
pub async fn check_crm_access(deployment: &Deployment) -> Check {
    const NAME: &str = "crm-access";
    let client = crm_client(deployment);
    let mapping = &deployment.config.sync.mapping;
    match &deployment.config.sync.crm {
        CrmConfig::Dataverse { url, .. } => {
            let root = dataverse_root(url);
            let fields = &mapping.dataverse;
            let tables = [
                (&fields.opportunity.entity_set, &fields.opportunity.id),
                (&fields.account.entity_set, &fields.account.id),
                (&fields.contact.entity_set, &fields.contact.id),
            ];
            let fix = |set: &str| {
                format!(
                    "give the connector's application user a security role with organization-level \
                     Read, Create and Write on {set} (Power Platform admin center → Environments → \
                     Settings → Users + permissions → Application users → Manage security roles)"
                )
            };
            for (set, id) in tables {
                let read = RequestContext::new(Service::Dataverse, format!("read {set}"));
                if let Err(error) =
                    get(&client, &read, &format!("{root}/{set}?$select={id}&$top=1")).await
                {
                    return access_check(NAME, &error, &fix(set));
                }
                let write = RequestContext::new(Service::Dataverse, format!("write {set}"))
                    .with_resource("the probe row");
                match call(
                    &client,
                    &write,
                    Method::PATCH,
                    &format!("{root}/{set}({PROBE_DATAVERSE_ID})"),
                    Some(&json!({})),
                    &[("If-Match", "*")],
                )
                .await
                {
                    Ok(_) | Err(HttpAdapterError::NotFound { .. }) => {}
                    Err(error) => return access_check(NAME, &error, &fix(set)),
                }
            }
            Check::ok(
                NAME,
                "the application user can read and write opportunities, accounts and contacts",
            )
        }
        CrmConfig::Salesforce { .. } => {
            let fields = &mapping.salesforce;
            for object in [
                &fields.opportunity.object,
                &fields.account.object,
                &fields.contact.object,
            ] {
                let fix = format!(
                    "give the integration user Read, Create and Edit on {object} (a permission \
                     set: Setup → Permission Sets → Object Settings)"
                );
                let ctx = RequestContext::new(Service::Salesforce, format!("describe {object}"));
                let describe = match salesforce_describe(&client, &ctx, object).await {
                    Ok(describe) => describe,
                    Err(error) => return access_check(NAME, &error, &fix),
                };
                let flags = lacking(
                    ["queryable", "createable", "updateable"],
                    |flag| describe[*flag] == Value::Bool(true),
                    str::to_owned,
                );
                if !flags.is_empty() {
                    return Check::problem(
                        NAME,
                        format!(
                            "{object} is not {} for the integration user",
                            flags.join(" / ")
                        ),
                        fix,
                    );
                }
            }
            Check::ok(
                NAME,
                "the integration user can read, create and edit opportunities, accounts and \
                 contacts",
            )
        }
    }
}

fn access_check(name: &'static str, error: &HttpAdapterError, fix: &str) -> Check {
    match error {
        HttpAdapterError::AccessDenied { missing_role, .. } => Check::problem(
            name,
            match missing_role {
                Some(role) => format!("{error} (missing: {role})"),
                None => error.to_string(),
            },
            fix,
        ),
        other => Check::from_error(name, other, fix),
    }
}

/// The custom fields of an opportunity mapping (Dataverse or Salesforce: the same names), as
/// (mapping key, column).
macro_rules! custom_fields {
    ($opportunity:expr, $($field:ident),+ $(,)?) => {
        vec![$((stringify!($field), $opportunity.$field.as_str())),+]
    };
    ($opportunity:expr) => {
        custom_fields!(
            $opportunity,
            sync,
            referral_identifier,
            referral_link,
            audit,
            help,
            visibility,
            solutions,
            microsoft_crm_identifier,
            solution_area,
            solution_play,
            partner_role,
        )
    };
}

/// `crm-fields`: the configured custom fields exist on the opportunity, the Solution Area,
/// Solution Play and Partner Role every referral created from the CRM carries included
/// (docs/partner-center.md#solution-area-solution-play-and-partner-role).
///
/// Dataverse: `EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName`;
/// Salesforce: `sobjects/Opportunity/describe`.
pub async fn check_crm_fields(deployment: &Deployment) -> Check {
    const NAME: &str = "crm-fields";
    let client = crm_client(deployment);
    let mapping = &deployment.config.sync.mapping;
    // The custom fields wanted (mapping key, column), the columns present, the table, the fix.
    let (wanted, present, table, fix): (Vec<(&str, &str)>, _, &str, &str) =
        match &deployment.config.sync.crm {
            CrmConfig::Dataverse { url, .. } => {
                let o = &mapping.dataverse.opportunity;
                let ctx = RequestContext::new(Service::Dataverse, "read the opportunity columns")
                    .with_resource(format!("the table {}", o.entity));
                let url = format!(
                    "{}/EntityDefinitions(LogicalName='{}')/Attributes?$select=LogicalName",
                    dataverse_root(url),
                    o.entity
                );
                (
                    custom_fields!(o),
                    get(&client, &ctx, &url)
                        .await
                        .map(|body| names(&body["value"], "LogicalName")),
                    &o.entity,
                    "install Microsoft's Partner Center co-sell solution in the environment (it \
                     adds the msft_ columns), or create the column, or map the field to an \
                     existing column in MAPPING_CONFIG_JSON (dataverse.opportunity.<field>)",
                )
            }
            CrmConfig::Salesforce { .. } => {
                let o = &mapping.salesforce.opportunity;
                let ctx = RequestContext::new(Service::Salesforce, "describe the opportunity")
                    .with_resource(format!("the object {}", o.object));
                (
                    custom_fields!(o),
                    salesforce_describe(&client, &ctx, &o.object)
                        .await
                        .map(|body| names(&body["fields"], "name")),
                    &o.object,
                    "create the custom field on Opportunity (Setup → Object Manager → \
                     Opportunity → Fields & Relationships → New) and give the integration user \
                     edit access to it, or map the field to an existing one in \
                     MAPPING_CONFIG_JSON (salesforce.opportunity.<field>)",
                )
            }
        };
    let present = match present {
        Ok(present) => present,
        Err(error) => return Check::from_error(NAME, &error, fix),
    };
    let missing = lacking(
        &wanted,
        |(_, column)| present.iter().any(|p| p == column),
        |(field, column)| format!("{column} ({field})"),
    );
    Check::unless_missing(
        NAME,
        &missing,
        || format!("the {} custom fields exist on {table}", wanted.len()),
        |missing| {
            (
                format!("missing on {table}: {missing}"),
                format!("{missing}: {fix}"),
            )
        },
    )
}

/// `currency`: the configured currency (`default_currency` of the mapping) is ISO 4217 (the
/// configuration refuses anything else) and active in the CRM (Dataverse
/// `transactioncurrencies`, Salesforce the `CurrencyIsoCode` picklist).
pub async fn check_currency(deployment: &Deployment) -> Check {
    const NAME: &str = "currency";
    let Some(code) = deployment.config.sync.mapping.default_currency else {
        return Check::ok(
            NAME,
            "no default currency configured: each record's own currency is used",
        );
    };
    let code = code.as_str();
    match &deployment.config.sync.crm {
        CrmConfig::Dataverse { url, .. } => {
            let o = &deployment.config.sync.mapping.dataverse.opportunity;
            let fix = format!(
                "add and activate {code} in Dataverse (Settings → Business Management → \
                 Currencies → New), or configure a currency the environment has in \
                 MAPPING_CONFIG_JSON (default_currency)"
            );
            let ctx = RequestContext::new(Service::Dataverse, "read the currencies");
            let found = get(
                &crm_client(deployment),
                &ctx,
                &format!(
                    "{}/{}?$select={}&$filter={} eq '{code}'",
                    dataverse_root(url),
                    o.currency_entity_set,
                    o.currency_iso_code,
                    o.currency_iso_code
                ),
            )
            .await;
            match found {
                Ok(body) if body["value"].as_array().is_some_and(|v| !v.is_empty()) => {
                    Check::ok(NAME, format!("{code} is ISO 4217 and a Dataverse currency"))
                }
                Ok(_) => Check::problem(
                    NAME,
                    format!("{code} is ISO 4217 but not a currency of the Dataverse environment"),
                    fix,
                ),
                Err(error) => Check::from_error(NAME, &error, &fix),
            }
        }
        CrmConfig::Salesforce { .. } => {
            let o = &deployment.config.sync.mapping.salesforce.opportunity;
            let fix = format!(
                "activate {code} in Salesforce (Setup → Company Information → Currencies → New), \
                 or configure an active currency in MAPPING_CONFIG_JSON (default_currency)"
            );
            match describe_object(deployment, &o.object).await {
                Ok(describe) => match picklist(&describe, &o.currency_iso_code) {
                    Some(codes) if codes.iter().any(|c| c == code) => Check::ok(
                        NAME,
                        format!("{code} is ISO 4217 and an active Salesforce currency"),
                    ),
                    Some(codes) => Check::problem(
                        NAME,
                        format!(
                            "{code} is ISO 4217 but not an active Salesforce currency (active: {})",
                            codes.join(", ")
                        ),
                        fix,
                    ),
                    None => Check::with_fix(
                        NAME,
                        Status::Warn,
                        format!(
                            "the org has no {} field (multi-currency is off): every amount is \
                             in the corporate currency",
                            o.currency_iso_code
                        ),
                        format!(
                            "make sure {code} is the org's corporate currency (Setup → Company \
                             Information)"
                        ),
                    ),
                },
                Err(error) => Check::from_error(NAME, &error, &fix),
            }
        }
    }
}

/// `stages`: the on-hold / active (and won / lost) stages exist. Salesforce: the `StageName`
/// picklist; Dataverse: the `statuscode` options of the opportunity.
pub async fn check_stages(deployment: &Deployment) -> Check {
    const NAME: &str = "stages";
    let mapping = &deployment.config.sync.mapping;
    match &deployment.config.sync.crm {
        CrmConfig::Salesforce { .. } => {
            let o = &mapping.salesforce.opportunity;
            let fix = "add the stage to the Opportunity Stage picklist (Setup → Object Manager → \
                       Opportunity → Fields & Relationships → Stage), or configure an existing \
                       stage in MAPPING_CONFIG_JSON (stages.on_hold / stages.active / \
                       stages.won / stages.lost)";
            let describe = match describe_object(deployment, &o.object).await {
                Ok(describe) => describe,
                Err(error) => return Check::from_error(NAME, &error, fix),
            };
            let stages = picklist(&describe, &o.stage_name).unwrap_or_default();
            let s = &mapping.stages;
            let missing = lacking(
                [
                    ("on-hold", &s.on_hold),
                    ("active", &s.active),
                    ("won", &s.won),
                    ("lost", &s.lost),
                ],
                |(_, name)| stages.contains(name),
                |(role, name)| format!("{role} stage '{name}'"),
            );
            Check::unless_missing(
                NAME,
                &missing,
                || {
                    format!(
                        "the on-hold ('{}') and active ('{}') stages exist",
                        s.on_hold, s.active
                    )
                },
                |missing| {
                    (
                        format!(
                            "{missing} not in the {} picklist (stages: {})",
                            o.stage_name,
                            stages.join(", ")
                        ),
                        fix.to_owned(),
                    )
                },
            )
        }
        CrmConfig::Dataverse { url, .. } => {
            let o = &mapping.dataverse.opportunity;
            let codes = &mapping.dataverse.status_codes;
            let fix = "add the status reason to the opportunity's Status Reason column (Power \
                       Apps → Tables → Opportunity → Columns → Status Reason), or configure an \
                       existing one in MAPPING_CONFIG_JSON (dataverse.status_codes.on_hold / \
                       in_progress)";
            let ctx = RequestContext::new(Service::Dataverse, "read the status reasons")
                .with_resource(format!("the table {}", o.entity));
            let body = match get(
                &crm_client(deployment),
                &ctx,
                &format!(
                    "{}/EntityDefinitions(LogicalName='{}')/Attributes?$filter=LogicalName eq '{}'",
                    dataverse_root(url),
                    o.entity,
                    o.status_code
                ),
            )
            .await
            {
                Ok(body) => body,
                Err(error) => return Check::from_error(NAME, &error, fix),
            };
            let Some(options) = body["value"][0]["OptionSet"]["Options"].as_array() else {
                return Check::with_fix(
                    NAME,
                    Status::Warn,
                    format!("the options of {} could not be read", o.status_code),
                    format!(
                        "check by hand that status reasons {} (on hold) and {} (in progress) \
                         exist",
                        codes.on_hold, codes.in_progress
                    ),
                );
            };
            let values: Vec<i64> = options.iter().filter_map(|o| o["Value"].as_i64()).collect();
            let missing = lacking(
                [
                    ("on-hold", codes.on_hold),
                    ("active", codes.in_progress),
                    ("won", codes.won),
                    ("lost", codes.out_sold),
                ],
                |(_, value)| values.contains(value),
                |(role, value)| format!("{role} status reason {value}"),
            );
            Check::unless_missing(
                NAME,
                &missing,
                || {
                    format!(
                        "the on-hold ({}) and active ({}) status reasons exist",
                        codes.on_hold, codes.in_progress
                    )
                },
                |missing| {
                    (
                        format!("{missing} not among the {} options", o.status_code),
                        fix.to_owned(),
                    )
                },
            )
        }
    }
}

/// `crm-concurrency`: Dataverse refuses an opportunity update sent with `If-Match` on a version
/// the row has moved past (412). The connector relies on it: a Partner Center change is
/// written against the version the link kept or the sync read, and a seller's save made since
/// must be merged, not overwritten (docs/conflicts.md#what-it-costs). Dataverse honours
/// `If-Match` only on tables with optimistic concurrency enabled
/// (docs/dataverse.md#etags-and-concurrency); whether `opportunity` has it in every environment
/// is UNKNOWN, so it is read: `EntityDefinitions(LogicalName='opportunity')?$select=IsOptimisticConcurrencyEnabled`.
/// Salesforce has no record versions: the record is read before each update.
pub async fn check_crm_concurrency(deployment: &Deployment) -> Check {
    const NAME: &str = "crm-concurrency";
    let CrmConfig::Dataverse { url, .. } = &deployment.config.sync.crm else {
        return Check::ok(
            NAME,
            "Salesforce reports no record version: each Partner Center change reads the record \
             before writing it",
        );
    };
    let entity = &deployment.config.sync.mapping.dataverse.opportunity.entity;
    let ctx = RequestContext::new(Service::Dataverse, "read the table definition")
        .with_resource(format!("the table {entity}"));
    let url = format!(
        "{}/EntityDefinitions(LogicalName='{entity}')?$select=IsOptimisticConcurrencyEnabled",
        dataverse_root(url)
    );
    match get(&crm_client(deployment), &ctx, &url).await {
        Ok(body) => concurrency_verdict(entity, &body),
        Err(error) => Check::from_error(NAME, &error, CONCURRENCY_FIX),
    }
}

/// What to do when the table takes no `If-Match`.
const CONCURRENCY_FIX: &str = "ask Microsoft support to enable optimistic concurrency on the \
     table (its definition's IsOptimisticConcurrencyEnabled); until then a seller's save made \
     while a Partner Center change is written can be overwritten, and the Audit column does not \
     record the conflict";

/// [`check_crm_concurrency`]'s verdict on the table definition `body`.
fn concurrency_verdict(entity: &str, body: &Value) -> Check {
    const NAME: &str = "crm-concurrency";
    match body["IsOptimisticConcurrencyEnabled"].as_bool() {
        Some(true) => Check::ok(
            NAME,
            format!("{entity} refuses an update over a save made since (If-Match, 412)"),
        ),
        Some(false) => Check::with_fix(
            NAME,
            Status::Problem,
            format!("optimistic concurrency is off on {entity}: Dataverse ignores If-Match"),
            CONCURRENCY_FIX,
        ),
        None => Check::with_fix(
            NAME,
            Status::Warn,
            format!("the definition of {entity} does not say whether it takes If-Match"),
            "check IsOptimisticConcurrencyEnabled of the table by hand (GET \
             EntityDefinitions(LogicalName='opportunity')?$select=IsOptimisticConcurrencyEnabled)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_without_optimistic_concurrency_is_a_problem_with_its_fix() {
        let off = concurrency_verdict(
            "opportunity",
            &json!({ "IsOptimisticConcurrencyEnabled": false }),
        );
        assert_eq!(off.status, Status::Problem);
        assert!(off.detail.contains("ignores If-Match"), "{off:#?}");
        assert!(
            off.fix
                .as_deref()
                .is_some_and(|fix| fix.contains("IsOptimisticConcurrencyEnabled")),
            "{off:#?}"
        );
        let on = concurrency_verdict(
            "opportunity",
            &json!({ "IsOptimisticConcurrencyEnabled": true }),
        );
        assert_eq!(on.status, Status::Ok);
        let unsaid = concurrency_verdict("opportunity", &json!({ "LogicalName": "opportunity" }));
        assert_eq!(unsaid.status, Status::Warn);
    }
}
