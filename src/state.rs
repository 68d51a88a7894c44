//! `tenantflow state <type>/<id> --at <position|time>`: an aggregate's state as it was at an
//! earlier point of the log (R9.3), printed as JSON.

use sqlx::{PgPool, Postgres, Transaction};
use store::history::{AggregateKind, AsOf, StateAt};

use crate::config::Config;
use crate::serve::Database;

/// An aggregate named on the command line: `<aggregate type>/<id>`, e.g.
/// `tenant/acme:72f988bf-...` or `run/0193...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRef {
    pub kind: AggregateKind,
    pub id: String,
}

impl std::str::FromStr for AggregateRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, id) = s
            .split_once('/')
            .filter(|(_, id)| !id.is_empty())
            .ok_or("expected <aggregate type>/<id>, e.g. tenant/acme:<entra tenant guid>")?;
        Ok(Self {
            kind: kind.parse()?,
            id: id.to_owned(),
        })
    }
}

/// A read-only transaction on the log: confined to `workspace` by row-level security when
/// one is given (as the API reads), else the whole log (an operator with database access).
/// Nothing is committed.
pub async fn read_log(
    pool: &PgPool,
    workspace: Option<&str>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match workspace {
        Some(w) => store::db::workspace_reader(pool, w).await,
        None => pool.begin().await,
    }
}

/// Prints the state of `aggregate` at `at`.
pub async fn run(
    config: Config,
    aggregate: AggregateRef,
    at: AsOf,
    workspace: Option<String>,
) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    let found = state_at(&db.pool, &aggregate, at, workspace.as_deref()).await;
    db.close().await?;
    let state = found?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} {} had no events by then",
            aggregate.kind.stored_type(),
            aggregate.id
        )
    })?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&state)?);
    }
    Ok(())
}

async fn state_at(
    pool: &PgPool,
    aggregate: &AggregateRef,
    at: AsOf,
    workspace: Option<&str>,
) -> anyhow::Result<Option<StateAt<serde_json::Value>>> {
    let mut tx = read_log(pool, workspace).await?;
    Ok(store::history::state_json_at(&mut tx, aggregate.kind, &aggregate.id, at).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_is_named_type_slash_id() {
        let r: AggregateRef = "tenant/acme:72f988bf-86f1-41af-91ab-2d7cd011db47"
            .parse()
            .unwrap();
        assert_eq!(r.kind, AggregateKind::Tenant);
        assert_eq!(r.id, "acme:72f988bf-86f1-41af-91ab-2d7cd011db47");
        let run: AggregateRef = "run/0193".parse().unwrap();
        assert_eq!(run.kind, AggregateKind::Run);
        for bad in ["tenant", "tenant/", "widget/1"] {
            assert!(bad.parse::<AggregateRef>().is_err(), "{bad}");
        }
    }
}
