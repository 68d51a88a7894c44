//! The simulator's shared state and the gate every Graph request passes: bearer token,
//! permission, injected faults.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::response::Response;
use serde_json::{json, Value};
use url::Url;
use uuid::Uuid;

use super::faults::{Fault, Faults};
use super::fleet::seed_world;
use super::http::{Incoming, Tag};
use super::wire::{json_response, malformed_response, Failure, GONE_PAGE};
use super::world::{Audience, World};
use super::{RequestRecord, SimConfig};
use crate::{Endpoint, Host};

pub(crate) struct Sim {
    /// `http://host:port/`; Graph lives below `graph/v1.0`, the token service below `login`.
    pub(crate) base: Url,
    world: Mutex<World>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<RequestRecord>>,
    /// For validation handshakes and change notifications.
    pub(crate) http: reqwest::Client,
}

/// A request that passed the gate, with the fault (if any) still to apply to its answer.
pub(crate) struct Admitted {
    pub(crate) tenant: Uuid,
    endpoint: Endpoint,
    fault: Option<Fault>,
}

/// The answer a handler produced: status and JSON (`Null` for no body), or a Graph failure.
pub(crate) type Reply = Result<(u16, Value), Failure>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks a response with what was called for whom, for the request log.
pub(crate) fn tagged(mut response: Response, endpoint: Endpoint, tenant: Option<Uuid>) -> Response {
    response.extensions_mut().insert(Tag {
        endpoint: Some(endpoint),
        tenant,
    });
    response
}

impl Sim {
    pub(crate) fn new(config: &SimConfig, base: Url) -> Self {
        Self {
            base,
            world: Mutex::new(seed_world(config)),
            faults: Mutex::default(),
            requests: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub(crate) fn log(&self, record: RequestRecord) {
        lock(&self.requests).push(record);
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    pub(crate) fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    /// Checks the bearer token and permission, then draws faults (sleeping for a delay).
    pub(crate) async fn admit(
        &self,
        endpoint: Endpoint,
        incoming: &Incoming,
    ) -> Result<Admitted, Response> {
        let audience = match endpoint.host() {
            Host::Cipp => Audience::Cipp,
            Host::Graph | Host::Login => Audience::Graph,
        };
        let bearer = incoming
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let checked = {
            let world = self.world();
            match bearer {
                None => Err(Failure::new(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token is empty.",
                )),
                Some(token) => world.check_token(token, audience).and_then(|tenant| {
                    let revoked = endpoint.required_permission().is_some_and(|p| {
                        world
                            .tenants
                            .get(&tenant)
                            .is_some_and(|t| t.revoked_permissions.contains(p))
                    });
                    if revoked {
                        Err(denied(endpoint))
                    } else {
                        Ok(tenant)
                    }
                }),
            }
        };
        let tenant = match checked {
            Ok(tenant) => tenant,
            Err(failure) => {
                let tenant = bearer.and_then(|t| self.world().check_token(t, audience).ok());
                return Err(tagged(failure.render(incoming), endpoint, tenant));
            }
        };
        let drawn = self.faults().draw(Some(tenant), endpoint);
        if let Some(delay_ms) = drawn.delay_ms {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let refusal = match &drawn.fault {
            Some(Fault::Unauthorized) => Some(Failure::new(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )),
            Some(Fault::Forbidden) => Some(denied(endpoint)),
            Some(Fault::Throttled { retry_after_secs }) => {
                Some(throttled(endpoint, *retry_after_secs))
            }
            Some(Fault::ServerError { status }) => Some(server_error(*status)),
            _ => None,
        };
        match refusal {
            Some(failure) => Err(tagged(failure.render(incoming), endpoint, Some(tenant))),
            None => Ok(Admitted {
                tenant,
                endpoint,
                fault: drawn.fault,
            }),
        }
    }

    /// Renders a handler's reply, spoiled by the admitted request's fault if it has one.
    pub(crate) fn reply(&self, admitted: Admitted, incoming: &Incoming, reply: Reply) -> Response {
        let response = match reply {
            Err(failure) => failure.render(incoming),
            Ok((status, mut body)) => {
                match admitted.fault {
                    Some(Fault::Malformed) => {
                        return tagged(
                            malformed_response(),
                            admitted.endpoint,
                            Some(admitted.tenant),
                        );
                    }
                    Some(Fault::MissingValue) => match body.as_object_mut() {
                        Some(fields) => {
                            fields.remove("value");
                        }
                        None => body = json!({}),
                    },
                    Some(Fault::PagingNotFound) if body.get("value").is_some() => {
                        body["@odata.nextLink"] = json!(incoming.link("$skiptoken", GONE_PAGE));
                    }
                    Some(Fault::PagingCut) => {
                        if let Some(fields) = body.as_object_mut() {
                            fields.remove("@odata.nextLink");
                        }
                    }
                    _ => {}
                }
                json_response(status, &body)
            }
        };
        tagged(response, admitted.endpoint, Some(admitted.tenant))
    }

    /// Admits the request, lets `produce` answer it under the lock, and renders the reply.
    pub(crate) async fn serve(
        &self,
        endpoint: Endpoint,
        incoming: &Incoming,
        produce: impl FnOnce(&mut World, Uuid) -> Reply,
    ) -> Response {
        let admitted = match self.admit(endpoint, incoming).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
        let reply = produce(&mut self.world(), admitted.tenant);
        self.reply(admitted, incoming, reply)
    }
}

/// Directory, policy and mail APIs each have their own way of saying no.
fn is_mail(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::GetInbox
            | Endpoint::GetMessage
            | Endpoint::ListAttachments
            | Endpoint::SetMessageCategories
            | Endpoint::MoveMessage
            | Endpoint::CreateSubscription
            | Endpoint::RenewSubscription
            | Endpoint::DeleteSubscription
    )
}

pub(crate) fn denied(endpoint: Endpoint) -> Failure {
    match endpoint {
        Endpoint::ListConditionalAccessPolicies => Failure::new(
            403,
            "AccessDenied",
            "You cannot perform the requested operation, required scopes are missing in the token.",
        ),
        e if is_mail(e) => Failure::new(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
        _ => Failure::new(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
    }
}

fn throttled(endpoint: Endpoint, retry_after: Option<u64>) -> Failure {
    let mut failure = if is_mail(endpoint) {
        Failure::new(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        )
    } else {
        Failure::new(429, "TooManyRequests", "Too many requests.")
    };
    failure.retry_after = retry_after;
    failure
}

fn server_error(status: u16) -> Failure {
    match status {
        503 => Failure::new(
            503,
            "serviceNotAvailable",
            "Service is temporarily unavailable.",
        ),
        504 => Failure::new(
            504,
            "GatewayTimeout",
            "The gateway did not receive a timely response.",
        ),
        502 => Failure::new(502, "BadGateway", "Bad gateway."),
        status => Failure::new(
            status,
            "generalException",
            "General exception while processing.",
        ),
    }
}
