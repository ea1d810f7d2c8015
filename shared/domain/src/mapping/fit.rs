//! A referral's values made to fit the CRM they are written to, before anything compares,
//! fingerprints, matches or writes them.
//!
//! Partner Center sends what a CRM may refuse: a name or notes longer than the column (the
//! referrals API documents no lengths), no closing date where Salesforce requires one, an
//! amount in a currency a single-currency Salesforce org cannot hold. Refused, the whole
//! referral would never reach the CRM. Instead [`referral_to_crm_opportunity`] fits each value
//! and says what it changed, in words that name fields, never values (the Audit column and the
//! log carry no customer data). Every direction maps a referral through it, so the value both
//! sides are compared with is the value the CRM can hold: a cut name read back from the CRM is
//! no change to send back.

use super::config::{MappingConfig, TextField};
use super::partner_center::referral_to_opportunity;
use crate::datetime::WireDateTime;
use crate::ids::CrmKind;
use crate::opportunity::Opportunity;
use crate::referral::Referral;
use chrono::{Days, NaiveDate};

/// The referral mapped to the opportunity the CRM `crm` can hold, and what was changed to make
/// it fit (Audit text, field names only; empty when nothing was).
///
/// - Text longer than its column is cut on a character boundary and ends in `…`; an email,
///   phone number or postal code that long is left out.
/// - A deal value whose currency is not ISO 4217, or absent with no
///   [`MappingConfig::default_currency`], is left out (the mapping never guesses a currency).
/// - Salesforce requires a Close Date: a referral without one gets its creation date plus
///   [`MappingConfig::salesforce_close_date_days`].
/// - A single-currency Salesforce org holds amounts in its one currency
///   ([`MappingConfig::default_currency`]): an amount in another is left out, not relabelled.
pub fn referral_to_crm_opportunity(
    referral: &Referral,
    config: &MappingConfig,
    crm: CrmKind,
) -> (Opportunity, Vec<String>) {
    let mut opportunity = referral_to_opportunity(referral, config);
    let mut notes = Vec::new();

    let limit = |field: TextField| {
        config
            .max_lengths
            .get(&field)
            .copied()
            .unwrap_or_else(|| field.stock_length(crm))
    };
    let mut fit = |field: TextField, value: &mut Option<String>| {
        let max = limit(field);
        let Some(text) = value.as_deref() else {
            return;
        };
        if text.chars().count() <= max {
            return;
        }
        if field.can_be_cut() && max > 1 {
            let cut: String = text.chars().take(max - 1).collect();
            *value = Some(format!("{}…", cut.trim_end()));
            notes.push(format!("{} cut to {max} characters", field.label()));
        } else {
            *value = None;
            notes.push(format!(
                "{} left out: longer than {max} characters",
                field.label()
            ));
        }
    };
    fit(TextField::OpportunityName, &mut opportunity.name);
    fit(TextField::Notes, &mut opportunity.notes);
    let account = &mut opportunity.account;
    fit(TextField::AccountName, &mut account.name);
    fit(TextField::Street, &mut account.address_line1);
    fit(TextField::City, &mut account.city);
    fit(TextField::State, &mut account.state);
    fit(TextField::PostalCode, &mut account.postal_code);
    if let Some(contact) = opportunity.contact.as_mut() {
        fit(TextField::FirstName, &mut contact.first_name);
        fit(TextField::LastName, &mut contact.last_name);
        fit(TextField::Email, &mut contact.email);
        fit(TextField::Phone, &mut contact.phone);
        if contact.is_empty() {
            opportunity.contact = None;
        }
    }

    let details = referral.details.as_ref();
    if details.is_some_and(|d| d.deal_value.is_some()) && opportunity.deal_value.is_none() {
        let given = details
            .and_then(|d| d.currency.as_deref())
            .is_some_and(|c| !c.trim().is_empty());
        notes.push(if given {
            "deal value left out: its currency is not an ISO 4217 code; set the referral's \
             currency in Partner Center"
                .to_owned()
        } else {
            "deal value left out: the referral gives no currency; set it in Partner Center, or \
             set the connector's default_currency"
                .to_owned()
        });
    }

    if crm == CrmKind::Salesforce {
        if let (false, Some(org), Some(value)) = (
            config.salesforce.multi_currency,
            config.default_currency,
            opportunity.deal_value,
        ) && value.currency != org
        {
            opportunity.deal_value = None;
            notes.push(format!(
                "deal value left out: the referral is in {} and this Salesforce org holds \
                 amounts in {org} only; enter the amount in {org}",
                value.currency
            ));
        }
        if opportunity.closing_date.is_none()
            && let Some(date) = fallback_close_date(referral, config.salesforce_close_date_days)
        {
            opportunity.closing_date = Some(date);
            notes.push(format!(
                "Close Date set to {date}, {} days after the referral was created: Partner \
                 Center gives none and Salesforce requires one; change it in Salesforce",
                config.salesforce_close_date_days
            ));
        }
    }
    (opportunity, notes)
}

/// The referral's creation date plus `days`: fixed for a referral, so every sync of it maps
/// the same value (the opportunity's fingerprint stays the same).
fn fallback_close_date(referral: &Referral, days: u32) -> Option<NaiveDate> {
    referral
        .created_date_time
        .as_ref()
        .and_then(WireDateTime::date)
        .and_then(|created| created.checked_add_days(Days::new(u64::from(days))))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::values::{CurrencyCode, Money};

    fn referral(value: serde_json::Value) -> Referral {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn text_longer_than_its_column_is_cut_and_said_by_field_name_only() {
        let long_name = "N".repeat(150);
        let long_notes = "é".repeat(2_500);
        let referral = referral(json!({
            "name": long_name,
            "details": { "notes": long_notes },
            "customerProfile": { "name": "Contoso", "team": [
                { "lastName": "Hansen", "email": format!("{}@contoso.com", "j".repeat(120)) }
            ] }
        }));
        let config = MappingConfig::default();

        let (sf, sf_notes) = referral_to_crm_opportunity(&referral, &config, CrmKind::Salesforce);
        let name = sf.name.unwrap();
        assert_eq!(name.chars().count(), 120);
        assert!(name.ends_with('…'));
        assert_eq!(
            sf.notes.unwrap().chars().count(),
            2_500,
            "Salesforce takes 32,000"
        );
        assert_eq!(
            sf.contact.as_ref().unwrap().email,
            None,
            "an email is never cut"
        );
        assert_eq!(sf.contact.unwrap().last_name.as_deref(), Some("Hansen"));
        assert_eq!(
            sf_notes,
            [
                "name cut to 120 characters",
                "contact email left out: longer than 80 characters"
            ]
        );

        let (dv, dv_notes) = referral_to_crm_opportunity(&referral, &config, CrmKind::Dataverse);
        assert_eq!(dv.name.unwrap().chars().count(), 150, "Dataverse takes 300");
        let notes = dv.notes.unwrap();
        assert_eq!(notes.chars().count(), 2_000);
        assert!(notes.starts_with("éé") && notes.ends_with('…'));
        assert_eq!(
            dv_notes,
            [
                "notes cut to 2000 characters",
                "contact email left out: longer than 100 characters"
            ]
        );
        for note in dv_notes.iter().chain(&sf_notes) {
            assert!(!note.contains("NNN") && !note.contains("jjj"), "{note}");
        }
    }

    #[test]
    fn an_org_that_changed_a_column_length_says_so_in_the_config() {
        let referral = referral(json!({ "details": { "notes": "x".repeat(3_000) } }));
        let mut config = MappingConfig::default();
        config.max_lengths.insert(TextField::Notes, 4_000);
        let (dv, notes) = referral_to_crm_opportunity(&referral, &config, CrmKind::Dataverse);
        assert_eq!(dv.notes.unwrap().len(), 3_000);
        assert!(notes.is_empty());
    }

    #[test]
    fn values_that_fit_are_mapped_as_they_are() {
        let referral = referral(json!({
            "name": "Contoso - Azure migration",
            "createdDateTime": "2026-01-10T08:00:00Z",
            "details": { "notes": "short", "dealValue": 10, "currency": "USD",
                         "closingDateTime": "2026-06-30T00:00:00Z" }
        }));
        let config = MappingConfig::default();
        for crm in [CrmKind::Dataverse, CrmKind::Salesforce] {
            let (fitted, notes) = referral_to_crm_opportunity(&referral, &config, crm);
            assert_eq!(fitted, referral_to_opportunity(&referral, &config), "{crm}");
            assert!(notes.is_empty(), "{notes:?}");
        }
    }

    #[test]
    fn salesforce_gets_a_close_date_from_the_creation_date_and_dataverse_none() {
        let referral = referral(json!({
            "createdDateTime": "2026-01-10T08:00:00Z",
            "details": { "closingDateTime": "0001-01-01T00:00:00" }
        }));
        let config = MappingConfig::default();
        let (sf, notes) = referral_to_crm_opportunity(&referral, &config, CrmKind::Salesforce);
        assert_eq!(sf.closing_date, NaiveDate::from_ymd_opt(2026, 4, 10));
        assert_eq!(
            notes,
            [
                "Close Date set to 2026-04-10, 90 days after the referral was created: Partner \
              Center gives none and Salesforce requires one; change it in Salesforce"
            ]
        );
        let (dv, notes) = referral_to_crm_opportunity(&referral, &config, CrmKind::Dataverse);
        assert_eq!(dv.closing_date, None);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_deal_value_is_never_relabelled_with_another_currency() {
        let mut config = MappingConfig {
            default_currency: Some(CurrencyCode::try_from("EUR").unwrap()),
            ..MappingConfig::default()
        };
        // Not ISO 4217: left out, not taken as the default currency.
        let odd = referral(json!({ "details": { "dealValue": 250000, "currency": "EURO" } }));
        let (opportunity, notes) = referral_to_crm_opportunity(&odd, &config, CrmKind::Dataverse);
        assert_eq!(opportunity.deal_value, None);
        assert!(notes[0].contains("not an ISO 4217 code"), "{notes:?}");

        // Absent: the default stands in.
        let bare = referral(json!({ "details": { "dealValue": 100 } }));
        let (opportunity, notes) = referral_to_crm_opportunity(&bare, &config, CrmKind::Dataverse);
        let eur = CurrencyCode::try_from("EUR").unwrap();
        assert_eq!(opportunity.deal_value.map(|m| m.currency), Some(eur));
        assert!(notes.is_empty());

        // Absent with no default: left out, and said.
        config.default_currency = None;
        let (opportunity, notes) = referral_to_crm_opportunity(&bare, &config, CrmKind::Dataverse);
        assert_eq!(opportunity.deal_value, None);
        assert!(notes[0].contains("gives no currency"), "{notes:?}");
    }

    #[test]
    fn a_single_currency_salesforce_org_takes_only_its_own_currency() {
        let mut config = MappingConfig {
            default_currency: Some(CurrencyCode::try_from("EUR").unwrap()),
            ..MappingConfig::default()
        };
        config.salesforce.multi_currency = false;
        let usd = referral(json!({ "details": { "dealValue": 250000, "currency": "USD" } }));
        let (opportunity, notes) = referral_to_crm_opportunity(&usd, &config, CrmKind::Salesforce);
        assert_eq!(opportunity.deal_value, None);
        assert_eq!(
            notes,
            [
                "deal value left out: the referral is in USD and this Salesforce org holds \
              amounts in EUR only; enter the amount in EUR"
            ]
        );

        let eur = referral(json!({ "details": { "dealValue": 5, "currency": "eur" } }));
        let (opportunity, notes) = referral_to_crm_opportunity(&eur, &config, CrmKind::Salesforce);
        let expected = Money::new(5.into(), CurrencyCode::try_from("EUR").unwrap());
        assert_eq!(opportunity.deal_value, Some(expected));
        assert!(notes.is_empty());

        // A multi-currency org takes any.
        config.salesforce.multi_currency = true;
        let (opportunity, _) = referral_to_crm_opportunity(&usd, &config, CrmKind::Salesforce);
        assert!(opportunity.deal_value.is_some());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::proptest_support::wire_text;

    proptest! {
        /// Whatever text a referral carries, fitting it never panics and every value it keeps
        /// fits its column.
        #[test]
        fn any_referral_text_fits_every_column(
            name in wire_text(),
            notes in wire_text(),
            email in wire_text(),
            long in 0_usize..400,
            repeat in wire_text(),
            date in wire_text(),
        ) {
            let referral: Referral = serde_json::from_value(json!({
                "name": format!("{name}{}", repeat.repeat(long)),
                "createdDateTime": date,
                "details": { "notes": format!("{notes}{}", repeat.repeat(long * 8)),
                             "dealValue": 1, "currency": notes },
                "customerProfile": { "name": repeat.repeat(long), "team": [
                    { "email": format!("{email}{}", repeat.repeat(long)), "lastName": name }
                ] }
            }))
            .unwrap();
            for crm in [CrmKind::Dataverse, CrmKind::Salesforce] {
                let (fitted, _) =
                    referral_to_crm_opportunity(&referral, &MappingConfig::default(), crm);
                let fits = |field: TextField, value: &Option<String>| {
                    value.as_ref().is_none_or(|v| v.chars().count() <= field.stock_length(crm))
                };
                prop_assert!(fits(TextField::OpportunityName, &fitted.name));
                prop_assert!(fits(TextField::Notes, &fitted.notes));
                prop_assert!(fits(TextField::AccountName, &fitted.account.name));
                if let Some(contact) = &fitted.contact {
                    prop_assert!(fits(TextField::Email, &contact.email));
                    prop_assert!(fits(TextField::LastName, &contact.last_name));
                }
            }
        }
    }
}
