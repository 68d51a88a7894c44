//! Conditional Access policies as we keep them (R3): curation of Graph policy objects, the
//! snapshot hash, the drift diff between two snapshots, the alert throttle and the license
//! capabilities that gate Conditional Access. Pure: the resync workflow does the I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::canonical::{canonical_json, sha256_hex};
use crate::{DomainError, ReasonCode};

/// Condition and control arrays that Conditional Access treats as sets: their order carries
/// no meaning, so they are sorted (and deduplicated) wherever they appear.
const UNORDERED: &[&str] = &[
    "includeUsers",
    "excludeUsers",
    "includeGroups",
    "excludeGroups",
    "includeRoles",
    "excludeRoles",
    "includeApplications",
    "excludeApplications",
    "includeUserActions",
    "includeAuthenticationContextClassReferences",
    "includeServicePrincipals",
    "excludeServicePrincipals",
    "clientAppTypes",
    "includePlatforms",
    "excludePlatforms",
    "includeLocations",
    "excludeLocations",
    "builtInControls",
    "customAuthenticationFactors",
    "termsOfUse",
    "signInRiskLevels",
    "userRiskLevels",
    "servicePrincipalRiskLevels",
];

/// The most changed fields a [`ModifiedPolicy`] lists before it ends with [`MORE_FIELDS`].
pub const MAX_CHANGED_FIELDS: usize = 50;
/// The last entry of a capped `changed_fields` list.
pub const MORE_FIELDS: &str = "…";

/// Why a list of Graph policy objects could not be curated. Messages name the policy by its
/// position in the list and the field, never by the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy #{index} is not a JSON object")]
    NotAnObject { index: usize },
    #[error("policy #{index}: `{field}` is missing or has the wrong type")]
    InvalidField { index: usize, field: &'static str },
    #[error("policies #{first} and #{second} have the same id")]
    DuplicateId { first: usize, second: usize },
}

impl DomainError for PolicyError {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::GraphMalformedResponse
    }
}

/// What we keep of a Graph Conditional Access policy; the raw response is never stored.
///
/// `conditions`, `grantControls` and `sessionControls` are normalized by [`curate`]:
/// OData annotations are dropped, set-like arrays sorted, and members that are `null`,
/// `[]` or `{}` removed (Graph adds new properties to existing policies that way, which is
/// not drift); an absent or empty block is `null`. `modifiedDateTime` is kept for display
/// but is left out of the hash: a re-save in the portal without a change is not drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CuratedPolicy {
    pub id: String,
    pub display_name: String,
    /// `enabled`, `disabled` or `enabledForReportingButNotEnforced`; kept as Graph spells
    /// it so that a state Microsoft adds later does not fail the resync.
    pub state: String,
    pub conditions: Value,
    pub grant_controls: Value,
    pub session_controls: Value,
    pub created_date_time: Option<String>,
    pub modified_date_time: Option<String>,
}

impl CuratedPolicy {
    /// Everything that counts as the policy's content: all but `modifiedDateTime`, in Graph's
    /// camelCase. Normalized again so that a policy not built by [`curate`] hashes the same.
    fn hashed_view(&self) -> Value {
        json!({
            "id": self.id,
            "displayName": self.display_name,
            "state": self.state,
            "createdDateTime": self.created_date_time,
            "conditions": normalize_block(&self.conditions),
            "grantControls": normalize_block(&self.grant_controls),
            "sessionControls": normalize_block(&self.session_controls),
        })
    }
}

/// Curates Graph policy objects (the `value` array of
/// `GET /identity/conditionalAccess/policies`): keeps the known fields, normalizes them and
/// sorts by id. Fails if an entry is not an object, lacks `id`, `displayName` or `state`, has
/// a field of the wrong type, or shares its id with another entry.
pub fn curate(raw: &[Value]) -> Result<Vec<CuratedPolicy>, PolicyError> {
    let mut curated = raw
        .iter()
        .enumerate()
        .map(|(index, policy)| curate_one(index, policy).map(|p| (index, p)))
        .collect::<Result<Vec<_>, _>>()?;
    curated.sort_by(|(_, a), (_, b)| a.id.cmp(&b.id));
    if let Some(pair) = curated.windows(2).find(|w| w[0].1.id == w[1].1.id) {
        let (a, b) = (pair[0].0, pair[1].0);
        return Err(PolicyError::DuplicateId {
            first: a.min(b),
            second: a.max(b),
        });
    }
    Ok(curated.into_iter().map(|(_, p)| p).collect())
}

fn curate_one(index: usize, raw: &Value) -> Result<CuratedPolicy, PolicyError> {
    let obj = raw.as_object().ok_or(PolicyError::NotAnObject { index })?;
    let invalid = |field| PolicyError::InvalidField { index, field };
    let text = |field: &'static str| match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(invalid(field)),
    };
    let timestamp = |field: &'static str| match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field)),
    };
    let block = |field: &'static str| match obj.get(field) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v @ Value::Object(_)) => Ok(normalize_block(v)),
        Some(_) => Err(invalid(field)),
    };
    Ok(CuratedPolicy {
        id: text("id")?,
        display_name: text("displayName")?,
        state: text("state")?,
        conditions: block("conditions")?,
        grant_controls: block("grantControls")?,
        session_controls: block("sessionControls")?,
        created_date_time: timestamp("createdDateTime")?,
        modified_date_time: timestamp("modifiedDateTime")?,
    })
}

/// A top-level block (`conditions`, ...) in normal form; an empty one becomes `null`.
fn normalize_block(value: &Value) -> Value {
    let value = normalize(value.clone(), None);
    if is_vacant(&value) {
        Value::Null
    } else {
        value
    }
}

/// Drops OData annotations (keys with `@`) and vacant members; sorts the set-like arrays.
fn normalize(value: Value, key: Option<&str>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| !k.contains('@'))
                .map(|(k, v)| {
                    let v = normalize(v, Some(&k));
                    (k, v)
                })
                .filter(|(_, v)| !is_vacant(v))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(|v| normalize(v, None)).collect();
            if key.is_some_and(|k| UNORDERED.contains(&k)) {
                items.sort_by_cached_key(canonical_json);
                items.dedup();
            }
            Value::Array(items)
        }
        other => other,
    }
}

fn is_vacant(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// A tenant's curated policies, sorted by id, and their hash (R3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub policies: Vec<CuratedPolicy>,
    /// Lowercase hex SHA-256 of the RFC 8785 canonical JSON of the policies without
    /// `modifiedDateTime`. Equal hashes mean nothing changed.
    pub hash: String,
}

impl PolicySnapshot {
    /// Sorts the policies by id and hashes them; neither the input order nor key order
    /// changes the hash.
    pub fn of(policies: Vec<CuratedPolicy>) -> Self {
        // Each policy is canonicalized once. The content breaks ties, so even duplicate ids
        // (which `curate` refuses) hash stably.
        let mut keyed: Vec<(String, String, CuratedPolicy)> = policies
            .into_iter()
            .map(|p| (p.id.clone(), canonical_json(&p.hashed_view()), p))
            .collect();
        keyed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        // RFC 8785 writes an array as its elements' canonical forms, in order, separated by
        // commas, without whitespace: the same bytes as canonicalizing the array whole.
        let mut text =
            String::with_capacity(keyed.iter().map(|k| k.1.len() + 1).sum::<usize>() + 2);
        text.push('[');
        for (i, (_, canonical, _)) in keyed.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(canonical);
        }
        text.push(']');
        let hash = sha256_hex(text.as_bytes());
        let policies = keyed.into_iter().map(|(_, _, p)| p).collect();
        Self { policies, hash }
    }
}

/// A policy named in a [`PolicyDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub id: String,
    pub display_name: String,
}

/// A policy present in both snapshots whose content differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModifiedPolicy {
    pub id: String,
    /// The current name.
    pub display_name: String,
    /// Dotted camelCase paths of the differing leaves (arrays count as leaves), such as
    /// `conditions.users.excludeUsers`; sorted, at most [`MAX_CHANGED_FIELDS`], then
    /// [`MORE_FIELDS`].
    pub changed_fields: Vec<String>,
}

/// What changed between two snapshots (R3.3); every list is sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    pub added: Vec<PolicyRef>,
    pub removed: Vec<PolicyRef>,
    pub modified: Vec<ModifiedPolicy>,
}

impl PolicyDiff {
    /// True when no policy was added, removed or modified.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// Compares two lists of policies by id. `modifiedDateTime` is ignored, like in the hash.
pub fn diff(previous: &[CuratedPolicy], current: &[CuratedPolicy]) -> PolicyDiff {
    fn by_id(list: &[CuratedPolicy]) -> BTreeMap<&str, &CuratedPolicy> {
        list.iter().map(|p| (p.id.as_str(), p)).collect()
    }
    let (before, after) = (by_id(previous), by_id(current));
    let named = |p: &CuratedPolicy| PolicyRef {
        id: p.id.clone(),
        display_name: p.display_name.clone(),
    };
    let mut result = PolicyDiff {
        added: after
            .values()
            .filter(|p| !before.contains_key(p.id.as_str()))
            .map(|p| named(p))
            .collect(),
        removed: before
            .values()
            .filter(|p| !after.contains_key(p.id.as_str()))
            .map(|p| named(p))
            .collect(),
        modified: Vec::new(),
    };
    for (id, now) in &after {
        let Some(then) = before.get(id) else { continue };
        let mut changed = BTreeSet::new();
        changed_leaves(
            "",
            Some(&then.hashed_view()),
            Some(&now.hashed_view()),
            &mut changed,
        );
        if changed.is_empty() {
            continue;
        }
        let mut changed_fields: Vec<String> =
            changed.into_iter().take(MAX_CHANGED_FIELDS + 1).collect();
        if changed_fields.len() > MAX_CHANGED_FIELDS {
            changed_fields.truncate(MAX_CHANGED_FIELDS);
            changed_fields.push(MORE_FIELDS.to_owned());
        }
        result.modified.push(ModifiedPolicy {
            id: (*id).to_owned(),
            display_name: now.display_name.clone(),
            changed_fields,
        });
    }
    result
}

/// Adds to `out` the paths below `path` at which `a` and `b` differ. Objects are walked,
/// with `null` or absent on one side standing for an empty object; anything else is a leaf.
fn changed_leaves(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut BTreeSet<String>) {
    let (a, b) = (a.filter(|v| !v.is_null()), b.filter(|v| !v.is_null()));
    // Canonical comparison, so that `1.0` and `1` agree here as they do in the hash.
    if a.map(canonical_json) == b.map(canonical_json) {
        return;
    }
    let (ma, mb) = (a.and_then(Value::as_object), b.and_then(Value::as_object));
    if (a.is_none() || ma.is_some()) && (b.is_none() || mb.is_some()) {
        let keys: BTreeSet<&String> = ma.into_iter().chain(mb).flat_map(Map::keys).collect();
        let found = out.len();
        for key in keys {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            changed_leaves(
                &child,
                ma.and_then(|m| m.get(key)),
                mb.and_then(|m| m.get(key)),
                out,
            );
        }
        if out.len() > found {
            return;
        }
    }
    out.insert(path.to_owned());
}

/// The dedupe rule for `policy.changed_in_portal` alerts: at most one per tenant per hour
/// (R3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertThrottle;

impl AlertThrottle {
    /// The kind of alert this throttle guards.
    pub const ALERT: &'static str = "policy.changed_in_portal";
    /// How long after an alert the next one for the same tenant is held back.
    pub const WINDOW: TimeDelta = TimeDelta::hours(1);

    /// Whether an alert may be raised at `now`, given when the tenant's last one was. A last
    /// alert in the future (clock skew between workers) holds alerts back, erring towards
    /// fewer alerts.
    pub fn may_alert(last_alert_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last_alert_at.is_none_or(|last| now - last >= Self::WINDOW)
    }
}

/// Service plan id of Entra ID P1 (`AAD_PREMIUM`), part of E3/E5 and sold alone.
const AAD_PREMIUM: &str = "41781fb2-bc02-4b7c-bd55-b576c07bb09d";
/// Service plan id of Entra ID P2 (`AAD_PREMIUM_P2`), part of E5 and sold alone.
const AAD_PREMIUM_P2: &str = "eec0eb4f-6444-4f95-aba0-50c24d67f998";

/// What a tenant's licenses allow, for capability gating (R3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Conditional Access (Entra ID P1, or P2 which includes it).
    pub ca_p1: bool,
    /// Risk-based Conditional Access (Entra ID P2).
    pub ca_p2: bool,
    /// `skuPartNumber` (or `skuId` if absent) of each usable SKU, sorted.
    pub skus: Vec<String>,
}

/// Reads Graph `subscribedSkus` objects. Only SKUs whose `capabilityStatus` is `Enabled` or
/// `Warning` count; P1/P2 are found through service plans provisioned with `Success`, since
/// bundles such as E3 and E5 carry them.
pub fn capabilities(skus: &[Value]) -> Capabilities {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut caps = Capabilities::default();
    for sku in skus {
        let status = text(sku, "capabilityStatus").unwrap_or_default();
        if !matches!(status.as_str(), "Enabled" | "Warning") {
            continue;
        }
        caps.skus
            .extend(text(sku, "skuPartNumber").or_else(|| text(sku, "skuId")));
        let plans = sku.get("servicePlans").and_then(Value::as_array);
        for plan in plans.into_iter().flatten() {
            if text(plan, "provisioningStatus").as_deref() == Some("Success") {
                // Compared ignoring case: GUIDs are case-insensitive.
                let id = text(plan, "servicePlanId").unwrap_or_default();
                caps.ca_p1 |= id.eq_ignore_ascii_case(AAD_PREMIUM);
                caps.ca_p2 |= id.eq_ignore_ascii_case(AAD_PREMIUM_P2);
            }
        }
    }
    caps.ca_p1 |= caps.ca_p2;
    caps.skus.sort();
    caps.skus.dedup();
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::now;

    fn graph_policy(id: &str, name: &str) -> Value {
        json!({
            "id": id, "displayName": name, "state": "enabled",
            "createdDateTime": "2023-02-01T10:00:00Z", "modifiedDateTime": null,
            "conditions": {
                "clientAppTypes": ["all"], "signInRiskLevels": [], "userRiskLevels": [],
                "applications": {"includeApplications": ["All"], "excludeApplications": [],
                                 "includeUserActions": []},
                "users": {"includeUsers": ["All"], "excludeUsers": ["u-2", "u-1"],
                          "includeGroups": [], "excludeGroups": [],
                          "includeRoles": [], "excludeRoles": []},
                "platforms": null,
                "locations": {"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}
            },
            "grantControls": {"operator": "OR", "builtInControls": ["mfa", "compliantDevice"],
                              "customAuthenticationFactors": [], "termsOfUse": []},
            "sessionControls": null
        })
    }

    /// `policy` with the member at `pointer` (whose parent exists) set to `value`.
    fn with(mut policy: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = policy.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        parent.insert(key.to_owned(), value);
        policy
    }

    /// Policy `a` ("MFA") with one member set.
    fn mfa_with(pointer: &str, value: Value) -> Value {
        with(graph_policy("a", "MFA"), pointer, value)
    }

    fn curated(raw: &[Value]) -> Vec<CuratedPolicy> {
        curate(raw).unwrap()
    }

    fn hash(raw: &[Value]) -> String {
        PolicySnapshot::of(curated(raw)).hash
    }

    fn fields(before: &[Value], after: &[Value]) -> Vec<String> {
        let d = diff(&curated(before), &curated(after));
        d.modified
            .into_iter()
            .flat_map(|m| m.changed_fields)
            .collect()
    }

    #[test]
    fn curation_keeps_the_known_fields_sorted_by_id() {
        let policies = curated(&[graph_policy("b", "Block legacy"), graph_policy("a", "MFA")]);
        let ids: Vec<&str> = policies.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let p = &policies[0];
        assert_eq!((&*p.display_name, &*p.state), ("MFA", "enabled"));
        assert_eq!(p.created_date_time.as_deref(), Some("2023-02-01T10:00:00Z"));
        assert_eq!(p.modified_date_time, None);
        assert_eq!(p.conditions["users"]["excludeUsers"], json!(["u-1", "u-2"]));
        let controls = &p.grant_controls["builtInControls"];
        assert_eq!(controls, &json!(["compliantDevice", "mfa"]));
        assert_eq!(p.session_controls, Value::Null);
    }

    #[test]
    fn unknown_keys_and_odata_annotations_are_dropped() {
        let mut raw = graph_policy("a", "MFA");
        raw["@odata.context"] = json!("https://graph.microsoft.com/v1.0/$metadata#policies");
        raw["templateId"] = json!("tmpl");
        raw["conditions"]["@odata.type"] = json!("#microsoft.graph.conditions");
        raw["grantControls"]["authenticationStrength@odata.context"] = json!("x");
        let policy = &curated(&[raw])[0];
        let stored = serde_json::to_string(policy).unwrap();
        assert!(
            !stored.contains("odata") && !stored.contains("templateId"),
            "{stored}"
        );
        assert_eq!(policy, &curated(&[graph_policy("a", "MFA")])[0]);
    }

    #[test]
    fn a_stored_policy_uses_graph_names_and_hashes_all_but_modified_date_time() {
        let policy = &curated(&[graph_policy("a", "MFA")])[0];
        let stored = serde_json::to_value(policy).unwrap();
        let mut stored_keys: Vec<&String> = stored.as_object().unwrap().keys().collect();
        stored_keys.retain(|k| *k != "modifiedDateTime");
        let hashed = policy.hashed_view();
        let hashed_keys: Vec<&String> = hashed.as_object().unwrap().keys().collect();
        assert_eq!(stored_keys, hashed_keys);
        let back: CuratedPolicy = serde_json::from_value(stored).unwrap();
        assert_eq!(&back, policy);
    }

    #[test]
    fn reordering_policies_arrays_and_keys_keeps_the_hash() {
        let original = hash(&[graph_policy("a", "MFA"), graph_policy("b", "Block")]);
        let shuffled = json!({
            "sessionControls": null, "grantControls": {"termsOfUse": [], "operator": "OR",
                "builtInControls": ["compliantDevice", "mfa", "mfa"]},
            "conditions": {
                "locations": {"excludeLocations": ["AllTrusted"], "includeLocations": ["All"]},
                "users": {"excludeUsers": ["u-1", "u-2"], "includeUsers": ["All"]},
                "applications": {"includeApplications": ["All"]}, "clientAppTypes": ["all"]
            },
            "state": "enabled", "displayName": "MFA", "id": "a",
            "createdDateTime": "2023-02-01T10:00:00Z"
        });
        assert_eq!(hash(&[graph_policy("b", "Block"), shuffled]), original);
    }

    #[test]
    fn the_order_of_an_array_not_known_as_a_set_still_counts() {
        let one_two = mfa_with("/conditions/custom", json!([1, 2]));
        let two_one = mfa_with("/conditions/custom", json!([2, 1]));
        assert_ne!(hash(&[one_two]), hash(&[two_one]));
    }

    #[test]
    fn vacant_members_count_as_absent() {
        let sparse = json!({"id": "a", "displayName": "MFA", "state": "enabled",
            "conditions": {"users": {"includeUsers": ["All"]}, "platforms": {"includePlatforms": []}},
            "grantControls": {}});
        let policy = &curated(&[sparse])[0];
        assert_eq!(
            policy.conditions,
            json!({"users": {"includeUsers": ["All"]}})
        );
        assert_eq!(policy.grant_controls, Value::Null);
    }

    #[test]
    fn modified_date_time_alone_does_not_change_the_hash_but_is_kept() {
        let original = [graph_policy("a", "MFA")];
        let resaved = [mfa_with("/modifiedDateTime", json!("2026-11-20T08:00:00Z"))];
        assert_eq!(hash(&resaved), hash(&original));
        let kept = &curated(&resaved)[0].modified_date_time;
        assert_eq!(kept.as_deref(), Some("2026-11-20T08:00:00Z"));
        assert!(diff(&curated(&original), &curated(&resaved)).is_empty());
    }

    #[test]
    fn a_changed_state_changes_the_hash_and_the_diff_names_state() {
        let before = [graph_policy("a", "MFA")];
        let after = [mfa_with("/state", json!("disabled"))];
        assert_ne!(hash(&before), hash(&after));
        let d = diff(&curated(&before), &curated(&after));
        let expected = ModifiedPolicy {
            id: "a".into(),
            display_name: "MFA".into(),
            changed_fields: vec!["state".into()],
        };
        assert_eq!(d.modified, [expected]);
        assert!(d.added.is_empty() && d.removed.is_empty());
    }

    #[test]
    fn the_hash_is_sha256_hex_of_the_canonical_policies_in_id_order() {
        let mut policies = curated(&[graph_policy("a", "A"), graph_policy("b", "B")]);
        let snapshot = PolicySnapshot::of(policies.clone());
        let views: Vec<Value> = policies.iter().map(CuratedPolicy::hashed_view).collect();
        let expected = sha256_hex(canonical_json(&Value::Array(views)).as_bytes());
        assert_eq!(snapshot.hash, expected);
        policies.reverse();
        assert_eq!(PolicySnapshot::of(policies), snapshot);
        assert_eq!(PolicySnapshot::of(Vec::new()).hash, sha256_hex(b"[]"));
    }

    #[test]
    fn the_diff_reports_added_removed_and_modified_policies_with_their_fields() {
        let before = curated(&[graph_policy("a", "Kept"), graph_policy("b", "Gone")]);
        let changed = with(
            graph_policy("a", "Kept!"),
            "/conditions/users/excludeUsers",
            json!([]),
        );
        let changed = with(changed, "/grantControls/builtInControls", json!(["block"]));
        let changed = with(
            changed,
            "/sessionControls",
            json!({"signInFrequency": {"value": 4}}),
        );
        let after = curated(&[changed, graph_policy("c", "New")]);
        let d = diff(&before, &after);
        let named = |id: &str, name: &str| PolicyRef {
            id: id.into(),
            display_name: name.into(),
        };
        assert_eq!(
            (d.added, d.removed),
            (vec![named("c", "New")], vec![named("b", "Gone")])
        );
        assert_eq!(d.modified.len(), 1);
        assert_eq!(d.modified[0].display_name, "Kept!");
        let expected = [
            "conditions.users.excludeUsers",
            "displayName",
            "grantControls.builtInControls",
            "sessionControls.signInFrequency.value",
        ];
        assert_eq!(d.modified[0].changed_fields, expected);
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn a_leaf_that_became_an_object_is_named_by_its_path() {
        let before = mfa_with("/conditions/devices", json!("x"));
        let after = mfa_with(
            "/conditions/devices",
            json!({"deviceFilter": {"mode": "include"}}),
        );
        assert_eq!(fields(&[before], &[after]), ["conditions.devices"]);
    }

    #[test]
    fn changed_fields_are_capped_with_a_trailing_marker() {
        let many: Map<String, Value> = (0..60).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let after = mfa_with("/sessionControls", Value::Object(many));
        let fields = fields(&[graph_policy("a", "MFA")], &[after]);
        assert_eq!(fields.len(), MAX_CHANGED_FIELDS + 1);
        assert_eq!(fields[0], "sessionControls.k00");
        assert_eq!(fields[MAX_CHANGED_FIELDS], MORE_FIELDS);
    }

    #[test]
    fn malformed_input_errors_name_the_index_without_echoing_the_payload() {
        let secret = "s3cr3t-display-name";
        let invalid = |field| PolicyError::InvalidField { index: 1, field };
        let cases = [
            (
                json!("not an object"),
                PolicyError::NotAnObject { index: 1 },
            ),
            (
                json!({"displayName": secret, "state": "enabled"}),
                invalid("id"),
            ),
            (
                json!({"id": "x", "displayName": " ", "state": "on"}),
                invalid("displayName"),
            ),
            (
                json!({"id": "x", "displayName": secret, "state": 3}),
                invalid("state"),
            ),
            (
                mfa_with("/conditions", json!([secret])),
                invalid("conditions"),
            ),
            (
                mfa_with("/createdDateTime", json!(7)),
                invalid("createdDateTime"),
            ),
        ];
        for (bad, expected) in cases {
            let err = curate(&[graph_policy("z", "Other"), bad]).unwrap_err();
            assert_eq!(err, expected);
            assert!(!err.to_string().contains(secret), "{err}");
            assert_eq!(err.reason_code(), ReasonCode::GraphMalformedResponse);
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let raw = [
            graph_policy("a", "1"),
            graph_policy("b", "2"),
            graph_policy("a", "3"),
        ];
        let expected = PolicyError::DuplicateId {
            first: 0,
            second: 2,
        };
        assert_eq!(curate(&raw), Err(expected));
    }

    fn alert_allowed_minutes_after_the_last(minutes: i64) -> bool {
        AlertThrottle::may_alert(Some(now() - TimeDelta::minutes(minutes)), now())
    }

    #[test]
    fn an_alert_within_the_hour_holds_the_next_one_back() {
        assert!(!alert_allowed_minutes_after_the_last(59));
        assert!(!alert_allowed_minutes_after_the_last(0));
        assert!(!alert_allowed_minutes_after_the_last(-5));
    }

    #[test]
    fn the_first_alert_or_one_an_hour_later_goes_through() {
        assert!(AlertThrottle::may_alert(None, now()));
        assert!(alert_allowed_minutes_after_the_last(60));
        assert!(alert_allowed_minutes_after_the_last(2 * 24 * 60));
    }

    fn sku(part: &str, status: &str, plans: &[(&str, &str)]) -> Value {
        let plans: Vec<Value> = plans
            .iter()
            .map(|(id, state)| json!({"servicePlanId": id, "provisioningStatus": state}))
            .collect();
        json!({"skuPartNumber": part, "capabilityStatus": status, "servicePlans": plans})
    }

    #[test]
    fn e5_grants_p2_through_its_service_plan_and_so_p1() {
        let e5 = sku(
            "SPE_E5",
            "Enabled",
            &[(AAD_PREMIUM_P2, "Success"), ("x", "Success")],
        );
        let expected = Capabilities {
            ca_p1: true,
            ca_p2: true,
            skus: vec!["SPE_E5".into()],
        };
        assert_eq!(capabilities(&[e5]), expected);
    }

    #[test]
    fn e3_grants_p1_only_even_in_warning() {
        let upper = AAD_PREMIUM.to_uppercase();
        let e3 = sku("SPE_E3", "Warning", &[(&upper, "Success")]);
        let caps = capabilities(&[e3, sku("FLOW_FREE", "Enabled", &[])]);
        assert!(caps.ca_p1 && !caps.ca_p2);
        assert_eq!(caps.skus, ["FLOW_FREE", "SPE_E3"]);
    }

    #[test]
    fn a_disabled_plan_grants_nothing() {
        let plans = [(AAD_PREMIUM_P2, "Disabled"), (AAD_PREMIUM, "PendingInput")];
        let caps = capabilities(&[sku("SPE_E5", "Enabled", &plans)]);
        assert!(!caps.ca_p1 && !caps.ca_p2);
        assert_eq!(caps.skus, ["SPE_E5"]);
    }

    #[test]
    fn a_suspended_sku_grants_nothing_and_is_not_listed() {
        let e5 = sku("SPE_E5", "Suspended", &[(AAD_PREMIUM_P2, "Success")]);
        let caps = capabilities(&[e5, json!("junk"), json!({})]);
        assert_eq!(caps, Capabilities::default());
    }
}
