//! The seeded fleet: the same seed always yields the same tenants, ids and credentials.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration as Days, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

use super::world::{new_mailbox, proxy_addresses, timestamp, TenantState, UserState, World};
use super::SimConfig;

const COMPANIES: [&str; 12] = [
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Tailspin Toys",
    "Wingtip Toys",
    "Adventure Works",
    "Litware",
    "Proseware",
    "Woodgrove Bank",
    "Alpine Ski House",
    "Coho Winery",
    "Trey Research",
];
const GIVEN_NAMES: [&str; 12] = [
    "Adele",
    "Alex",
    "Diego",
    "Grady",
    "Henrietta",
    "Isaiah",
    "Johanna",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Nestor",
];
const SURNAMES: [&str; 10] = [
    "Vance",
    "Wilber",
    "Siciliani",
    "Archie",
    "Mueller",
    "Langer",
    "Lorenz",
    "Gu",
    "Holloway",
    "Robbins",
];
const JOB_TITLES: [&str; 5] = [
    "Accountant",
    "Sales Manager",
    "Engineer",
    "Office Manager",
    "Consultant",
];
const GLOBAL_ADMIN_ROLE: &str = "62e90394-69f5-4237-9190-012177145e10";

/// A SKU or service plan: name and id.
type Named = (&'static str, &'static str);

const SPE_E5: Named = ("SPE_E5", "06ebc4ee-1bb5-47dd-8120-11324bc54e06");
const SPE_E3: Named = ("SPE_E3", "05e9a617-0261-4cee-bb44-138d3ef5d965");
const AAD_PREMIUM_P2: Named = ("AAD_PREMIUM_P2", "84a661c4-e949-4bd2-a560-ed7766fcaf2b");
const BUSINESS_BASIC: Named = (
    "O365_BUSINESS_ESSENTIALS",
    "3b555118-da6a-4418-894f-7df1e2096870",
);
const PLAN_P1: Named = ("AAD_PREMIUM", "41781fb2-bc02-4b7c-bd55-b576c07bb09d");
const PLAN_P2: Named = ("AAD_PREMIUM_P2", "eec0eb4f-6444-4f95-aba0-50c24d67f998");
const PLAN_EXCHANGE: Named = (
    "EXCHANGE_S_ENTERPRISE",
    "efb87545-963c-4e0d-99df-69c6916d9eb0",
);
const PLAN_EXCHANGE_BASIC: Named = (
    "EXCHANGE_S_STANDARD",
    "9aaf7827-d63c-4b61-89c3-182f06f82e5c",
);

const DEPARTMENTS: [&str; 4] = ["Finance", "Sales", "Operations", "IT"];

struct Seeder {
    rng: StdRng,
    epoch: DateTime<Utc>,
    users_per_tenant: Option<usize>,
    shared_surname_users: usize,
}

/// Builds the fleet for the configuration's seed and size.
pub(crate) fn seed_world(config: &SimConfig) -> World {
    let mut seeder = Seeder {
        rng: StdRng::seed_from_u64(config.seed),
        epoch: Utc
            .with_ymd_and_hms(2024, 1, 8, 9, 0, 0)
            .single()
            .unwrap_or_default(),
        users_per_tenant: config.users_per_tenant,
        shared_surname_users: config.shared_surname_users,
    };
    let mut tenants = HashMap::new();
    let mut customers = Vec::new();
    for index in 0..config.tenants {
        let tenant = seeder.customer(index);
        customers.push(tenant.id);
        tenants.insert(tenant.id, tenant);
    }
    let mut partner = seeder.tenant("Lakeshore MSP", "lakeshoremsp.onmicrosoft.com", 3, 0);
    for customer in &customers {
        let customer = &tenants[customer];
        let id = seeder.uuid();
        partner.contracts.push(json!({
            "id": id,
            "contractType": "ResellerPartner",
            "customerId": customer.id,
            "defaultDomainName": customer.domain,
            "displayName": customer.display_name,
        }));
        partner.customers.push(json!({
            "@odata.type": "#microsoft.graph.delegatedAdminCustomer",
            "@odata.etag": format!("W/\"JyIwMDAw{}\"", &customer.id.simple().to_string()[..8]),
            "id": customer.id,
            "tenantId": customer.id,
            "displayName": customer.display_name,
        }));
    }
    let partner_id = partner.id;
    tenants.insert(partner_id, partner);
    let cipp_api_client_id = seeder.uuid().to_string();
    World {
        refresh_tokens: HashMap::new(),
        delegated: HashMap::new(),
        page_size: config.page_size.max(1),
        subscription_max_minutes: config.subscription_max_minutes,
        token_lifetime: config.token_lifetime,
        partner: partner_id,
        customers,
        cipp_api_client_id,
        tenants,
        tokens: HashMap::new(),
        prune_tokens_at: 0,
        rng: seeder.rng,
    }
}

impl Seeder {
    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }

    fn secret(&mut self) -> String {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
        (0..40)
            .map(|_| char::from(ALPHABET[self.rng.gen_range(0..ALPHABET.len())]))
            .collect()
    }

    fn date(&mut self, max_days: i64) -> String {
        timestamp(self.epoch + Days::days(self.rng.gen_range(0..max_days)))
    }

    fn customer(&mut self, index: usize) -> TenantState {
        let company = COMPANIES[index % COMPANIES.len()];
        let round = index / COMPANIES.len();
        let (name, slug) = match round {
            0 => (company.to_owned(), company.replace(' ', "").to_lowercase()),
            n => (
                format!("{company} {}", n + 1),
                format!("{}{}", company.replace(' ', "").to_lowercase(), n + 1),
            ),
        };
        let users = match self.users_per_tenant {
            Some(count) => count,
            None => 5 + self.rng.gen_range(0..4),
        };
        let shared = self.shared_surname_users;
        let mut tenant = self.tenant(&name, &format!("{slug}.onmicrosoft.com"), users, shared);
        tenant.policies = self.policies(&tenant);
        tenant.skus = self.skus(tenant.id, index);
        tenant
    }

    fn tenant(
        &mut self,
        name: &str,
        domain: &str,
        user_count: usize,
        shared_surname: usize,
    ) -> TenantState {
        let id = self.uuid();
        let client_id = self.uuid().to_string();
        let client_secret = self.secret();
        let mut tenant = TenantState {
            id,
            display_name: name.to_owned(),
            domain: domain.to_owned(),
            client_id,
            client_secret,
            consented: true,
            revoked_permissions: BTreeSet::new(),
            policies: Vec::new(),
            skus: Vec::new(),
            users: Vec::new(),
            version: 0,
            contracts: Vec::new(),
            customers: Vec::new(),
            subscriptions: Vec::new(),
        };
        tenant.users = self.users(domain, user_count, shared_surname);
        tenant
    }

    /// The first user is the shared helpdesk mailbox; the third is disabled and the fourth has
    /// no mailbox, so every tenant shows both cases. Users 1..=`shared_surname` share one
    /// surname (with given names in turn), for contacts that share a surname.
    fn users(&mut self, domain: &str, count: usize, shared_surname: usize) -> Vec<UserState> {
        let mut names: Vec<(&str, &str)> = GIVEN_NAMES
            .iter()
            .flat_map(|g| SURNAMES.iter().map(move |s| (*g, *s)))
            .collect();
        names.shuffle(&mut self.rng);
        (0..count)
            .map(|index| {
                let id = self.uuid();
                let (given, surname, display, local) = match index {
                    0 => (None, None, "Helpdesk".to_owned(), "helpdesk".to_owned()),
                    _ => {
                        // Suffixes keep UPNs unique: `.n` for the surname sharers, a
                        // round number past the name pairs.
                        let (given, surname, suffix) = if index <= shared_surname {
                            let given = GIVEN_NAMES[(index - 1) % GIVEN_NAMES.len()];
                            (given, names[1].1, format!(".{index}"))
                        } else {
                            let (given, surname) = names[index % names.len()];
                            let round = index / names.len();
                            let suffix = if round == 0 {
                                String::new()
                            } else {
                                round.to_string()
                            };
                            (given, surname, suffix)
                        };
                        (
                            Some(given),
                            Some(surname),
                            format!("{given} {surname}"),
                            format!(
                                "{}.{}{suffix}",
                                given.to_lowercase(),
                                surname.to_lowercase()
                            ),
                        )
                    }
                };
                let upn = format!("{local}@{domain}");
                let enabled = index != 2 && (index < 4 || self.rng.gen_bool(0.8));
                let has_mailbox = index != 3 && (index < 4 || self.rng.gen_bool(0.75));
                let office = ["Redmond", "Seattle", "Remote"][self.rng.gen_range(0..3)];
                let json = json!({
                    "id": id,
                    "displayName": display,
                    "givenName": given,
                    "surname": surname,
                    "mail": has_mailbox.then(|| upn.clone()),
                    "userPrincipalName": upn,
                    "jobTitle": given.map(|_| JOB_TITLES[self.rng.gen_range(0..JOB_TITLES.len())]),
                    "department": given.map(|_| DEPARTMENTS[index % DEPARTMENTS.len()]),
                    "businessPhones": [format!("+1 425 555 01{:02}", self.rng.gen_range(0..100))],
                    "mobilePhone": null,
                    "officeLocation": office,
                    "preferredLanguage": "en-US",
                    "proxyAddresses": proxy_addresses(has_mailbox, &upn),
                    "accountEnabled": enabled,
                });
                UserState {
                    json,
                    changed_at: 0,
                    removed: None,
                    mailbox: has_mailbox.then(|| new_mailbox(&id.simple().to_string())),
                }
            })
            .collect()
    }

    fn policies(&mut self, tenant: &TenantState) -> Vec<Value> {
        let break_glass = tenant
            .users
            .first()
            .map(|u| u.id().to_owned())
            .unwrap_or_default();
        let mut chosen = vec![0, 1];
        let mut optional = vec![2, 3, 4, 5];
        optional.shuffle(&mut self.rng);
        chosen.extend(optional.into_iter().take(self.rng.gen_range(1..=3)));
        chosen.sort_unstable();
        chosen
            .into_iter()
            .map(|template| {
                let mut policy = policy_template(template, &break_glass);
                policy["id"] = json!(self.uuid());
                policy["createdDateTime"] = json!(self.date(300));
                policy["modifiedDateTime"] = if self.rng.gen_bool(0.5) {
                    json!(self.date(600))
                } else {
                    Value::Null
                };
                policy
            })
            .collect()
    }

    /// Profiles by position: E5 (P2 in the bundle), E3 (P1), Business Basic with standalone
    /// P2, Business Basic alone (no Conditional Access capability).
    fn skus(&mut self, tenant: Uuid, index: usize) -> Vec<Value> {
        let profile: Vec<(Named, Vec<Named>)> = match index % 4 {
            0 => vec![(SPE_E5, vec![PLAN_EXCHANGE, PLAN_P1, PLAN_P2])],
            1 => vec![(SPE_E3, vec![PLAN_EXCHANGE, PLAN_P1])],
            2 => vec![
                (BUSINESS_BASIC, vec![PLAN_EXCHANGE_BASIC]),
                (AAD_PREMIUM_P2, vec![PLAN_P1, PLAN_P2]),
            ],
            _ => vec![(BUSINESS_BASIC, vec![PLAN_EXCHANGE_BASIC])],
        };
        profile
            .into_iter()
            .map(|((part, sku_id), plans)| {
                let enabled = self.rng.gen_range(10..60);
                json!({
                    "id": format!("{tenant}_{sku_id}"),
                    "skuId": sku_id,
                    "skuPartNumber": part,
                    "appliesTo": "User",
                    "capabilityStatus": "Enabled",
                    "consumedUnits": self.rng.gen_range(1..=enabled),
                    "prepaidUnits": {"enabled": enabled, "suspended": 0, "warning": 0, "lockedOut": 0},
                    "servicePlans": plans.iter().map(|(name, id)| json!({
                        "servicePlanId": id,
                        "servicePlanName": name,
                        "provisioningStatus": "Success",
                        "appliesTo": "User",
                    })).collect::<Vec<_>>(),
                    "subscriptionIds": [self.uuid()],
                })
            })
            .collect()
    }
}

fn users(include: Value, exclude: Value, include_roles: Value) -> Value {
    json!({"includeUsers": include, "excludeUsers": exclude, "includeGroups": [], "excludeGroups": [],
           "includeRoles": include_roles, "excludeRoles": []})
}

fn apps(include: &str) -> Value {
    json!({"includeApplications": [include], "excludeApplications": [], "includeUserActions": []})
}

fn grant(operator: &str, controls: &[&str]) -> Value {
    json!({"operator": operator, "builtInControls": controls, "customAuthenticationFactors": [], "termsOfUse": []})
}

/// Realistic policies with nested conditions and controls.
fn policy_template(template: usize, break_glass: &str) -> Value {
    let (name, state, conditions, grant_controls, session_controls) = match template {
        0 => (
            "Require MFA for administrators",
            "enabled",
            json!({"clientAppTypes": ["all"], "signInRiskLevels": [], "userRiskLevels": [],
                   "applications": apps("All"),
                   "users": users(json!([]), json!([break_glass]), json!([GLOBAL_ADMIN_ROLE])),
                   "platforms": null, "locations": null}),
            grant("OR", &["mfa"]),
            Value::Null,
        ),
        1 => (
            "Block legacy authentication",
            "enabled",
            json!({"clientAppTypes": ["exchangeActiveSync", "other"], "signInRiskLevels": [], "userRiskLevels": [],
                   "applications": apps("All"),
                   "users": users(json!(["All"]), json!([break_glass]), json!([])),
                   "platforms": null, "locations": null}),
            grant("OR", &["block"]),
            Value::Null,
        ),
        2 => (
            "Require compliant device for Office 365",
            "enabledForReportingButNotEnforced",
            json!({"clientAppTypes": ["browser", "mobileAppsAndDesktopClients"], "signInRiskLevels": [], "userRiskLevels": [],
                   "applications": apps("Office365"),
                   "users": users(json!(["All"]), json!([]), json!([])),
                   "platforms": {"includePlatforms": ["android", "iOS", "windows", "macOS"], "excludePlatforms": []},
                   "locations": null}),
            grant("OR", &["compliantDevice", "domainJoinedDevice"]),
            Value::Null,
        ),
        3 => (
            "Risky sign-ins require MFA and password change",
            "enabled",
            json!({"clientAppTypes": ["all"], "signInRiskLevels": ["high", "medium"], "userRiskLevels": ["high"],
                   "applications": apps("All"),
                   "users": users(json!(["All"]), json!([break_glass]), json!([])),
                   "platforms": null, "locations": null}),
            grant("AND", &["mfa", "passwordChange"]),
            json!({"applicationEnforcedRestrictions": null, "cloudAppSecurity": null, "persistentBrowser": null,
                   "disableResilienceDefaults": null,
                   "signInFrequency": {"value": 1, "type": "hours", "isEnabled": true,
                                       "authenticationType": "primaryAndSecondaryAuthentication",
                                       "frequencyInterval": "timeBased"}}),
        ),
        4 => (
            "Block access outside trusted locations",
            "disabled",
            json!({"clientAppTypes": ["all"], "signInRiskLevels": [], "userRiskLevels": [],
                   "applications": apps("All"),
                   "users": users(json!(["All"]), json!([break_glass]), json!([])),
                   "platforms": {"includePlatforms": ["all"], "excludePlatforms": ["iOS"]},
                   "locations": {"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}}),
            grant("OR", &["block"]),
            Value::Null,
        ),
        _ => (
            "Session limits on unmanaged devices",
            "enabled",
            json!({"clientAppTypes": ["browser"], "signInRiskLevels": [], "userRiskLevels": [],
                   "applications": apps("Office365"),
                   "users": users(json!(["All"]), json!([]), json!([])),
                   "platforms": null, "locations": null}),
            Value::Null,
            json!({"applicationEnforcedRestrictions": {"isEnabled": true}, "cloudAppSecurity": null,
                   "persistentBrowser": {"mode": "never", "isEnabled": true},
                   "disableResilienceDefaults": false, "signInFrequency": null}),
        ),
    };
    json!({
        "id": null,
        "displayName": name,
        "state": state,
        "createdDateTime": null,
        "modifiedDateTime": null,
        "conditions": conditions,
        "grantControls": grant_controls,
        "sessionControls": session_controls,
    })
}
