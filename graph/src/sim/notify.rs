//! Change notifications beyond the first delivery: Graph delivers a notification more than
//! once, a forger can post one with the wrong `clientState`, and Graph sends lifecycle
//! notifications (`subscriptionRemoved`, `reauthorizationRequired`, `missed`) and lets
//! subscriptions expire. Tests drive these through [`SimHandle`](super::SimHandle).

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::state::Sim;
use super::world::SubscriptionState;
use super::{Delivery, SimError};

impl Sim {
    fn subscription(&self, tenant: Uuid, id: &str) -> Result<SubscriptionState, SimError> {
        let world = self.world();
        let t = world
            .tenants
            .get(&tenant)
            .ok_or(SimError::UnknownTenant(tenant))?;
        t.subscriptions
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| SimError::Invalid(format!("no subscription {id}")))
    }

    async fn post(&self, url: &str, subscription_id: &str, body: &Value) -> Delivery {
        let outcome = self.http.post(url).json(body).send().await;
        Delivery {
            subscription_id: subscription_id.to_owned(),
            status: outcome.as_ref().ok().map(|r| r.status().as_u16()),
            error: outcome.err().map(|_| "could not connect".to_owned()),
        }
    }

    /// Posts the `created` notification of a stored message again, to subscription `id`,
    /// with `client_state` instead of the registered one when given.
    pub(crate) async fn notify_message(
        &self,
        tenant: Uuid,
        id: &str,
        message_id: &str,
        client_state: Option<&str>,
    ) -> Result<Delivery, SimError> {
        let s = self.subscription(tenant, id)?;
        let resource = format!("Users/{}/Messages/{message_id}", s.user_id);
        let body = json!({"value": [{
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": s.expiration.to_rfc3339(),
            "clientState": client_state.map(str::to_owned).or(s.client_state.clone()),
            "changeType": "created",
            "tenantId": tenant,
            "resource": resource,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": resource,
                "id": message_id,
            },
        }]});
        Ok(self.post(&s.notification_url, &s.id, &body).await)
    }

    /// Posts a lifecycle notification (`subscriptionRemoved`, `reauthorizationRequired`,
    /// `missed`) for subscription `id` to its lifecycle URL (else its notification URL).
    pub(crate) async fn notify_lifecycle(
        &self,
        tenant: Uuid,
        id: &str,
        event: &str,
    ) -> Result<Delivery, SimError> {
        let s = self.subscription(tenant, id)?;
        let body = json!({"value": [{
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": s.expiration.to_rfc3339(),
            "clientState": s.client_state,
            "tenantId": tenant,
            "lifecycleEvent": event,
        }]});
        let url = s
            .lifecycle_notification_url
            .clone()
            .unwrap_or(s.notification_url.clone());
        Ok(self.post(&url, &s.id, &body).await)
    }

    /// Graph drops a subscription: it is gone, and `subscriptionRemoved` is posted.
    pub(crate) async fn remove_subscription(
        &self,
        tenant: Uuid,
        id: &str,
    ) -> Result<Delivery, SimError> {
        let delivery = self.notify_lifecycle(tenant, id, "subscriptionRemoved").await;
        let mut world = self.world();
        let t = world.tenant_mut(tenant)?;
        t.subscriptions.retain(|s| s.id != id);
        delivery
    }

    /// A subscription runs out now (as if nobody renewed it in time).
    pub(crate) fn expire_subscription(&self, tenant: Uuid, id: &str) -> Result<(), SimError> {
        let mut world = self.world();
        let t = world.tenant_mut(tenant)?;
        let s = t
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| SimError::Invalid(format!("no subscription {id}")))?;
        s.expiration = Utc::now() - chrono::Duration::seconds(1);
        Ok(())
    }
}
