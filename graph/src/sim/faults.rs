//! Fault injection: what goes wrong, for which tenant and endpoint, how often.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Endpoint;

/// Something the simulator does wrong on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 401: `InvalidAuthenticationToken` on Graph, `invalid_client` on the token endpoint.
    Unauthorized,
    /// 403: Graph's access-denied code for the endpoint; `unauthorized_client` (400) on the
    /// token endpoint.
    Forbidden,
    /// 429 `TooManyRequests`, with `Retry-After` when given.
    Throttled {
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// 500, 502, 503 or 504 with Graph's code for it.
    ServerError { status: u16 },
    /// Answers normally after a delay; combines with one other fault.
    Slow { delay_ms: u64 },
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with the collection's `value` (or the token's `access_token`) left out.
    MissingValue,
    /// The first page's `@odata.nextLink` points at a page that answers 404.
    PagingNotFound,
    /// The first page's `@odata.nextLink` is left out, so the collection looks complete.
    PagingCut,
}

impl Fault {
    /// This fault on one endpoint (for every tenant, every time, until narrowed).
    pub fn on(self, endpoint: Endpoint) -> FaultSpec {
        FaultSpec {
            tenant: None,
            endpoint: Some(endpoint),
            fault: self,
            times: None,
        }
    }

    /// This fault on every endpoint.
    pub fn everywhere(self) -> FaultSpec {
        FaultSpec {
            tenant: None,
            endpoint: None,
            fault: self,
            times: None,
        }
    }
}

/// Where and how often a fault applies. JSON:
/// `{"tenant":"<guid>","endpoint":"list_users","fault":{"kind":"throttled","retry_after_secs":1},"times":2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Only for this tenant; every tenant when absent.
    #[serde(default)]
    pub tenant: Option<Uuid>,
    /// Only for this endpoint; every endpoint when absent.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    pub fault: Fault,
    /// Applied this many times, then dropped; persistent when absent.
    #[serde(default)]
    pub times: Option<u32>,
}

impl FaultSpec {
    /// Narrows the fault to one tenant.
    pub fn for_tenant(mut self, tenant: Uuid) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Applies the fault `n` times, then stops.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, tenant: Option<Uuid>, endpoint: Endpoint) -> bool {
        self.endpoint.is_none_or(|e| e == endpoint) && self.tenant.is_none_or(|t| Some(t) == tenant)
    }
}

/// An injected fault as listed by the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveFault {
    pub id: u64,
    #[serde(flatten)]
    pub spec: FaultSpec,
}

/// Injected faults, in the order they were added.
#[derive(Default)]
pub(crate) struct Faults {
    next_id: u64,
    active: Vec<ActiveFault>,
}

/// The faults a request meets: at most one delay and one other fault.
#[derive(Debug, Default)]
pub(crate) struct Drawn {
    pub(crate) delay_ms: Option<u64>,
    pub(crate) fault: Option<Fault>,
}

impl Faults {
    pub(crate) fn add(&mut self, spec: FaultSpec) -> u64 {
        self.next_id += 1;
        self.active.push(ActiveFault {
            id: self.next_id,
            spec,
        });
        self.next_id
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    pub(crate) fn list(&self) -> Vec<ActiveFault> {
        self.active.clone()
    }

    /// Picks the first matching delay and the first matching other fault, spending one use
    /// of each.
    pub(crate) fn draw(&mut self, tenant: Option<Uuid>, endpoint: Endpoint) -> Drawn {
        let mut drawn = Drawn::default();
        for active in &mut self.active {
            let spec = &mut active.spec;
            if spec.times == Some(0) || !spec.matches(tenant, endpoint) {
                continue;
            }
            let taken = match spec.fault {
                Fault::Slow { delay_ms } if drawn.delay_ms.is_none() => {
                    drawn.delay_ms = Some(delay_ms);
                    true
                }
                Fault::Slow { .. } => false,
                ref fault if drawn.fault.is_none() => {
                    drawn.fault = Some(fault.clone());
                    true
                }
                _ => false,
            };
            if taken {
                spec.times = spec.times.map(|n| n.saturating_sub(1));
            }
        }
        self.active.retain(|a| a.spec.times != Some(0));
        drawn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_fault_stops_after_its_uses() {
        let mut faults = Faults::default();
        faults.add(Fault::Malformed.on(Endpoint::ListUsers).times(2));
        let mut drawn = || faults.draw(None, Endpoint::ListUsers).fault;
        assert_eq!(drawn(), Some(Fault::Malformed));
        assert_eq!(drawn(), Some(Fault::Malformed));
        assert_eq!(drawn(), None);
    }

    #[test]
    fn a_fault_for_one_tenant_spares_the_others() {
        let mut faults = Faults::default();
        let tenant = Uuid::from_u128(7);
        faults.add(Fault::Forbidden.everywhere().for_tenant(tenant));
        assert_eq!(
            faults.draw(Some(tenant), Endpoint::GetUser).fault,
            Some(Fault::Forbidden)
        );
        assert_eq!(
            faults
                .draw(Some(Uuid::from_u128(8)), Endpoint::GetUser)
                .fault,
            None
        );
    }

    #[test]
    fn a_delay_combines_with_another_fault() {
        let mut faults = Faults::default();
        faults.add(Fault::Slow { delay_ms: 5 }.everywhere());
        faults.add(Fault::ServerError { status: 503 }.everywhere());
        let drawn = faults.draw(None, Endpoint::ListUsers);
        assert_eq!(drawn.delay_ms, Some(5));
        assert_eq!(drawn.fault, Some(Fault::ServerError { status: 503 }));
    }

    #[test]
    fn specs_read_and_write_the_documented_json() {
        let json = serde_json::json!({"tenant": null, "endpoint": "list_users",
            "fault": {"kind": "throttled", "retry_after_secs": 1}, "times": 2});
        let spec: FaultSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            spec,
            Fault::Throttled {
                retry_after_secs: Some(1)
            }
            .on(Endpoint::ListUsers)
            .times(2)
        );
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);
    }
}
