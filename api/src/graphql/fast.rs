//! The run list and the tenant list, answered without async-graphql's future per field when
//! their selection is flat: every object asked for is one of the page's own (the page, its
//! `pageInfo`, its edges, their rows), each row asks only for its own scalar fields, aliases
//! and `__typename` are allowed; no fragments, no directives left after `@skip`/`@include`
//! are applied, no key twice. Anything else takes async-graphql's own way, whole (a page
//! whose rows are flat but whose page is not still gets its rows in one pass). The answer is
//! the same either way (`api/tests/api/filters.rs` compares them); the flat rows cost the run
//! list about a sixth less of this process's CPU per page at 32 clients (docs/BENCHMARKS.md,
//! "A run list's rows without a future per field").
//!
//! A flat page is written once, through [`Out`]: as async-graphql's value tree when a
//! resolver answers it, or straight into the answer's JSON text when [`answer`] does.
//!
//! It skips what async-graphql does per field besides resolving it: its extensions' hooks.
//! The schema has no extensions (`schema()`); one that wants to see every field must turn
//! this off.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection};
use async_graphql::{
    ContextSelectionSet, EnumType, Name, OutputType, Positioned, ServerResult, Value,
};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use super::enums::{RunOutcome, RunStatus, TenantStatus};
use super::page::{encode, Cursor, PageRequest};
use super::types::{RunNode, TenantNode};

/// A [`RunNode`] in a list page: the same GraphQL type (`Run`).
pub struct ListedRun(pub RunNode);

/// A [`TenantNode`] in a list page: the same GraphQL type (`Tenant`).
pub struct ListedTenant(pub TenantNode);

/// Where a flat page is written: async-graphql's value tree ([`Tree`]) or JSON text
/// ([`Json`]). Values come in order; an object's each value follows its key.
pub(crate) trait Out {
    /// Opens an object.
    fn object(&mut self);
    /// Opens a list.
    fn list(&mut self);
    /// Closes the innermost object or list.
    fn end(&mut self);
    /// The next field's key in the open object.
    fn key(&mut self, key: &Name);
    fn null(&mut self);
    fn bool(&mut self, value: bool);
    fn str(&mut self, value: &str);
    /// An enum's value, by its GraphQL name.
    fn name(&mut self, value: &'static str);
}

/// A value tree being built: the objects and lists still open, innermost last.
#[derive(Default)]
pub(crate) struct Tree {
    open: Vec<Open>,
    done: Option<Value>,
}

enum Open {
    Object(IndexMap<Name, Value>, Option<Name>),
    List(Vec<Value>),
}

impl Tree {
    /// What `write` writes, as a value; None when it does not finish (not flat).
    fn of(write: impl FnOnce(&mut Tree) -> Option<()>) -> Option<Value> {
        let mut tree = Tree::default();
        write(&mut tree)?;
        tree.done
    }

    fn put(&mut self, value: Value) {
        match self.open.last_mut() {
            Some(Open::Object(fields, key)) => {
                if let Some(key) = key.take() {
                    fields.insert(key, value);
                }
            }
            Some(Open::List(items)) => items.push(value),
            None => self.done = Some(value),
        }
    }
}

impl Out for Tree {
    fn object(&mut self) {
        self.open.push(Open::Object(IndexMap::new(), None));
    }
    fn list(&mut self) {
        self.open.push(Open::List(Vec::new()));
    }
    fn end(&mut self) {
        let value = match self.open.pop() {
            Some(Open::Object(fields, _)) => Value::Object(fields),
            Some(Open::List(items)) => Value::List(items),
            None => return,
        };
        self.put(value);
    }
    fn key(&mut self, name: &Name) {
        if let Some(Open::Object(_, key)) = self.open.last_mut() {
            *key = Some(name.clone());
        }
    }
    fn null(&mut self) {
        self.put(Value::Null);
    }
    fn bool(&mut self, value: bool) {
        self.put(Value::Boolean(value));
    }
    fn str(&mut self, value: &str) {
        self.put(Value::String(value.to_owned()));
    }
    fn name(&mut self, value: &'static str) {
        self.put(Value::Enum(Name::new(value)));
    }
}

/// JSON text being written, as async-graphql's answer serialises the same value tree.
pub(crate) struct Json {
    text: Vec<u8>,
    /// Per open object or list: the byte that closes it, and whether nothing is in it yet.
    open: Vec<(u8, bool)>,
    /// A key was just written: its value needs no comma.
    after_key: bool,
}

impl Json {
    /// A response whose `data` has one field, `key`, whose value the caller writes next.
    fn response(key: &Name) -> Self {
        let mut json = Json {
            text: Vec::with_capacity(4096),
            open: Vec::with_capacity(8),
            after_key: false,
        };
        json.text.extend_from_slice(b"{\"data\":{");
        json.string(key);
        json.text.push(b':');
        json.after_key = true;
        json
    }

    /// The response's text.
    fn finish(mut self) -> Vec<u8> {
        self.text.extend_from_slice(b"}}");
        self.text
    }

    /// Before a key, or a value not after a key: the comma after the one before.
    fn next(&mut self) {
        if std::mem::take(&mut self.after_key) {
            return;
        }
        if let Some((_, empty)) = self.open.last_mut() {
            if !std::mem::take(empty) {
                self.text.push(b',');
            }
        }
    }

    fn string(&mut self, value: &str) {
        use serde::Serialize;
        // serde_json's escaping, as the value tree's serialisation does; a Vec cannot fail.
        let _ = value.serialize(&mut serde_json::Serializer::new(&mut self.text));
    }
}

impl Out for Json {
    fn object(&mut self) {
        self.next();
        self.text.push(b'{');
        self.open.push((b'}', true));
    }
    fn list(&mut self) {
        self.next();
        self.text.push(b'[');
        self.open.push((b']', true));
    }
    fn end(&mut self) {
        if let Some((close, _)) = self.open.pop() {
            self.text.push(close);
        }
    }
    fn key(&mut self, key: &Name) {
        self.next();
        self.string(key);
        self.text.push(b':');
        self.after_key = true;
    }
    fn null(&mut self) {
        self.next();
        self.text.extend_from_slice(b"null");
    }
    fn bool(&mut self, value: bool) {
        self.next();
        self.text
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
    fn str(&mut self, value: &str) {
        self.next();
        self.string(value);
    }
    fn name(&mut self, value: &'static str) {
        self.str(value);
    }
}

/// A flat selection's field, with the fields asked of its value (none for a scalar).
pub(crate) struct Plain<'a> {
    field: &'a Field,
    asked: Vec<Plain<'a>>,
}

impl Plain<'_> {
    fn name(&self) -> &str {
        self.field.name.node.as_str()
    }
}

/// The selection `items` as plain fields, checked once for a whole page: fields only (no
/// fragments), none with arguments or directives, no key twice, at every level; None
/// otherwise.
pub(crate) fn plain(items: &[Positioned<Selection>]) -> Option<Vec<Plain<'_>>> {
    let mut fields: Vec<Plain<'_>> = Vec::with_capacity(items.len());
    for selection in items {
        let Selection::Field(field) = &selection.node else {
            return None;
        };
        let field = &field.node;
        let key = &field.response_key().node;
        if !field.directives.is_empty()
            || !field.arguments.is_empty()
            || fields.iter().any(|f| &f.field.response_key().node == key)
        {
            return None;
        }
        fields.push(Plain {
            field,
            asked: plain(&field.selection_set.node.items)?,
        });
    }
    Some(fields)
}

/// An object of type `typename` with `fields`, each value written by `value` (None: not a
/// field this pass answers, and nothing is answered).
fn object<O: Out>(
    out: &mut O,
    fields: &[Plain<'_>],
    typename: &str,
    mut value: impl FnMut(&mut O, &Plain<'_>) -> Option<()>,
) -> Option<()> {
    out.object();
    for f in fields {
        out.key(&f.field.response_key().node);
        match f.name() {
            "__typename" => out.str(typename),
            _ => value(out, f)?,
        }
    }
    out.end();
    Some(())
}

/// A row field's writer: the field's value of a row, written to an [`Out`].
pub type Writer<R, O> = fn(&R, &mut O) -> Option<()>;

/// A row of a list page whose own scalar fields can be answered in one pass.
pub trait Row: OutputType {
    /// The read model's row it lists.
    type Node: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin;

    /// The row listed.
    fn listed(node: Self::Node) -> Self;

    /// The writer of the field `name`, when it is one of the row's own scalar fields: known
    /// before any row is read. A writer answers None for a value the row cannot show.
    fn field<O: Out>(name: &str) -> Option<Writer<Self, O>>;

    /// The row's place in its list, the keys its cursor is made of.
    fn key(&self) -> Vec<serde_json::Value>;

    /// Whether `fields` are all the row's own scalar fields (or `__typename`).
    fn answers(fields: &[Plain<'_>]) -> bool {
        fields.iter().all(|f| {
            f.name() == "__typename"
                || (f.asked.is_empty() && Self::field::<Tree>(f.name()).is_some())
        })
    }

    /// The row's object with `fields`; None when one is not its own scalar field.
    fn flat<O: Out>(&self, fields: &[Plain<'_>], out: &mut O) -> Option<()> {
        object(out, fields, &Self::type_name(), |out, f| {
            if f.asked.is_empty() {
                Self::field::<O>(f.name())?(self, out)
            } else {
                None
            }
        })
    }

    /// The row's cursor, as its edge and `pageInfo` write it.
    fn cursor(&self) -> String {
        encode(&self.key())
    }
}

/// A list page of rows under async-graphql's connection type (`RunConnection`,
/// `TenantConnection`): answered in one pass (the page, its `pageInfo`, its edges and their
/// rows) when the whole selection is flat, with a row's cursor made only when it is asked
/// for; as async-graphql's [`Connection`], whole, otherwise.
pub struct Page<T: Row> {
    rows: Vec<T>,
    has_previous: bool,
    has_next: bool,
}

impl<T: Row + Send + Sync> Page<T> {
    /// The page `req` asked for, from up to `req.limit()` rows (one more tells that another
    /// page follows).
    fn new(req: &PageRequest, mut rows: Vec<T>) -> Self {
        let has_next = rows.len() as i64 > req.first;
        rows.truncate(req.first as usize);
        Self {
            rows,
            has_previous: req.after.is_some(),
            has_next,
        }
    }

    /// The page `req` asked for, read with `q` (its list's statement) on `conn`.
    pub(crate) async fn read(
        q: &mut sqlx::QueryBuilder<'static, sqlx::Postgres>,
        conn: &mut sqlx::PgConnection,
        req: &PageRequest,
    ) -> Result<Self, sqlx::Error> {
        let nodes = q.build_query_as::<T::Node>().fetch_all(conn).await?;
        Ok(Self::new(req, nodes.into_iter().map(T::listed).collect()))
    }

    /// Whether the rows' part of `fields` (their edges' nodes, their nodes) is theirs to
    /// answer in the one pass: known before the page is read, so a page whose rows ask for
    /// more (a tenant's connections) is not read here and then again by async-graphql.
    fn rows_answer(fields: &[Plain<'_>]) -> bool {
        fields.iter().all(|f| match f.name() {
            "edges" => f
                .asked
                .iter()
                .filter(|g| g.name() == "node")
                .all(|g| T::answers(&g.asked)),
            "nodes" => T::answers(&f.asked),
            _ => true,
        })
    }

    /// The page with `fields`; None when they are not all its own.
    fn write<O: Out>(&self, fields: &[Plain<'_>], out: &mut O) -> Option<()> {
        let rows = &self.rows;
        let edge_type = <Edge<Cursor, T, EmptyFields> as OutputType>::type_name();
        let cursor = |out: &mut O, row: Option<&T>| match row {
            Some(row) => out.str(&row.cursor()),
            None => out.null(),
        };
        object(
            out,
            fields,
            &<Self as OutputType>::type_name(),
            |out, f| match f.name() {
                "pageInfo" => object(out, &f.asked, "PageInfo", |out, p| {
                    match p.name() {
                        "hasPreviousPage" => out.bool(self.has_previous),
                        "hasNextPage" => out.bool(self.has_next),
                        "startCursor" => cursor(out, rows.first()),
                        "endCursor" => cursor(out, rows.last()),
                        _ => return None,
                    }
                    Some(())
                }),
                "edges" => {
                    out.list();
                    for row in rows {
                        object(out, &f.asked, &edge_type, |out, g| match g.name() {
                            "cursor" => {
                                cursor(out, Some(row));
                                Some(())
                            }
                            "node" => row.flat(&g.asked, out),
                            _ => None,
                        })?;
                    }
                    out.end();
                    Some(())
                }
                "nodes" => {
                    out.list();
                    for row in rows {
                        row.flat(&f.asked, out)?;
                    }
                    out.end();
                    Some(())
                }
                _ => None,
            },
        )
    }
}

impl<T: Row + Send + Sync> OutputType for Page<T> {
    fn type_name() -> Cow<'static, str> {
        <Connection<Cursor, T> as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <Connection<Cursor, T> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        let flat = plain(&ctx.item.node.items)
            .and_then(|fields| Tree::of(|tree| self.write(&fields, tree)));
        if let Some(value) = flat {
            return Ok(value);
        }
        let mut page = Connection::<Cursor, &T>::new(self.has_previous, self.has_next);
        page.edges.extend(
            self.rows
                .iter()
                .map(|row| Edge::new(Cursor::of(row.key()), row)),
        );
        OutputType::resolve(&page, ctx, field).await
    }
}

fn text<O: Out>(out: &mut O, s: &str) -> Option<()> {
    out.str(s);
    Some(())
}

fn optional_text<O: Out>(out: &mut O, s: Option<&str>) -> Option<()> {
    match s {
        Some(s) => out.str(s),
        None => out.null(),
    }
    Some(())
}

fn boolean<O: Out>(out: &mut O, value: bool) -> Option<()> {
    out.bool(value);
    Some(())
}

/// A time as the `DateTime` scalar writes it.
fn time<O: Out>(out: &mut O, at: Option<DateTime<Utc>>) -> Option<()> {
    optional_text(out, at.map(|t| t.to_rfc3339()).as_deref())
}

/// An enum value, by its GraphQL name; None when it has none.
fn enum_value<O: Out, E: EnumType>(out: &mut O, value: E) -> Option<()> {
    out.name(enum_name(value)?);
    Some(())
}

/// An enum value's GraphQL name.
fn enum_name<E: EnumType>(value: E) -> Option<&'static str> {
    E::items()
        .iter()
        .find(|item| item.value == value)
        .map(|item| item.name)
}

impl Row for ListedRun {
    type Node = RunNode;

    fn listed(node: RunNode) -> Self {
        Self(node)
    }

    fn key(&self) -> Vec<serde_json::Value> {
        vec![
            self.0.queued_at.to_rfc3339().into(),
            self.0.run_id.to_string().into(),
        ]
    }

    fn field<O: Out>(name: &str) -> Option<Writer<Self, O>> {
        let write: Writer<Self, O> = match name {
            "id" => |r, out| text(out, &r.0.run_id.to_string()),
            "type" => |r, out| text(out, &r.0.run_type),
            "tenantId" => |r, out| optional_text(out, r.0.tenant_key.as_deref()),
            "status" => |r, out| {
                let status = domain::run::RunStatus::parse(&r.0.status)?;
                enum_value(out, RunStatus::from(status))
            },
            "outcome" => |r, out| {
                let outcome = domain::run::RunOutcome::parse(&r.0.outcome)?;
                enum_value(out, RunOutcome::from(outcome))
            },
            "cancelRequested" => |r, out| boolean(out, r.0.cancel_requested),
            "initiator" => |r, out| text(out, &r.0.initiator),
            "reasonCode" => |r, out| optional_text(out, r.0.reason_code.as_deref()),
            "queuedAt" => |r, out| time(out, Some(r.0.queued_at)),
            "startedAt" => |r, out| time(out, r.0.started_at),
            "completedAt" => |r, out| time(out, r.0.completed_at),
            "retryOf" => {
                |r, out| optional_text(out, r.0.retry_of.map(|id| id.to_string()).as_deref())
            }
            _ => return None,
        };
        Some(write)
    }
}

impl Row for ListedTenant {
    type Node = TenantNode;

    fn listed(node: TenantNode) -> Self {
        Self(node)
    }

    fn key(&self) -> Vec<serde_json::Value> {
        vec![
            self.0.display_name.clone().into(),
            self.0.tenant_key.clone().into(),
        ]
    }

    fn field<O: Out>(name: &str) -> Option<Writer<Self, O>> {
        let write: Writer<Self, O> = match name {
            "id" => |t, out| text(out, &t.0.tenant_key),
            "entraTenantId" => |t, out| text(out, &t.0.entra_tenant_id.to_string()),
            "displayName" => |t, out| text(out, &t.0.display_name),
            "primaryDomain" => |t, out| text(out, &t.0.primary_domain),
            "status" => |t, out| {
                let status = domain::tenant::TenantStatus::parse(&t.0.status)?;
                enum_value(out, TenantStatus::from(status))
            },
            "registeredAt" => |t, out| time(out, Some(t.0.registered_at)),
            "archivedAt" => |t, out| time(out, t.0.archived_at),
            "lastResyncedAt" => |t, out| time(out, t.0.last_resynced_at),
            _ => return None,
        };
        Some(write)
    }
}

macro_rules! listed {
    ($listed:ty, $node:ty) => {
        impl OutputType for $listed {
            fn type_name() -> Cow<'static, str> {
                <$node as OutputType>::type_name()
            }

            fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
                <$node as OutputType>::create_type_info(registry)
            }

            async fn resolve(
                &self,
                ctx: &ContextSelectionSet<'_>,
                field: &Positioned<Field>,
            ) -> ServerResult<Value> {
                let flat = plain(&ctx.item.node.items)
                    .and_then(|fields| Tree::of(|tree| self.flat(&fields, tree)));
                match flat {
                    Some(value) => Ok(value),
                    None => OutputType::resolve(&self.0, ctx, field).await,
                }
            }
        }
    };
}

listed!(ListedRun, RunNode);
listed!(ListedTenant, TenantNode);

/// A request for one list page, answered here without async-graphql's validation and
/// execution: the request's document is one query operation whose only field is `tenants`
/// (`first`, `after`, `search`) or `runs` (`first`, `after`; a `filter` goes the ordinary
/// way), with no fragments and no directives, and its page is flat. The caller must have
/// seen async-graphql validate `doc` (a request with it ran without errors): what
/// validation checks of a document is the same for every request with it, and what depends
/// on a request (its variables' values) is checked here as the resolvers check it. Anything
/// else, and every refusal, is None: the ordinary way answers it, with its own messages.
///
/// The page is read as the resolver reads it (the same statement, in the request's
/// confined snapshot, on the replica when the caller's writes allow) and written with the
/// same one pass straight into the response's JSON text (`{"data":{...}}`, byte for byte
/// what async-graphql's answer serialises to), which is returned. A tenant page asked for
/// this way costs about a tenth less of this process's CPU at 32 clients
/// (docs/BENCHMARKS.md).
pub(crate) async fn answer(
    request: &async_graphql::Request,
    doc: &async_graphql::parser::types::ExecutableDocument,
) -> Option<Vec<u8>> {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    if !doc.fragments.is_empty() {
        return None;
    }
    let op = match (&doc.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), None) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    let op = &op.node;
    if op.ty != OperationType::Query || !op.directives.is_empty() {
        return None;
    }
    let [selection] = op.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &selection.node else {
        return None;
    };
    let field = &field.node;
    if !field.directives.is_empty() {
        return None;
    }
    // Each argument's value, its variables replaced by the request's values or their
    // defaults; None when one is not a plain scalar.
    let mut args: Vec<(&str, Value)> = Vec::with_capacity(field.arguments.len());
    for (name, value) in &field.arguments {
        let value = value
            .node
            .clone()
            .into_const_with(|var| {
                let given = request.variables.get(&var).cloned();
                let declared = op
                    .variable_definitions
                    .iter()
                    .find(|d| d.node.name.node == var);
                match (given, declared) {
                    (Some(v), Some(_)) => Ok(v),
                    (None, Some(d)) => match d.node.default_value() {
                        Some(default) => Ok(default.clone()),
                        // A non-null one left out is async-graphql's refusal to make.
                        None if d.node.var_type.node.nullable => Ok(Value::Null),
                        None => Err(()),
                    },
                    (_, None) => Err(()),
                }
            })
            .ok()?;
        args.push((name.node.as_str(), value));
    }
    let state = data::<crate::AppState>(request)?;
    let caller = data::<crate::auth::Caller>(request)?;
    let (mut first, mut after, mut search) = (None, None, None);
    for (name, value) in args {
        match (name, value) {
            (_, Value::Null) => {}
            ("first", Value::Number(n)) => first = Some(i32::try_from(n.as_i64()?).ok()?),
            ("after", Value::String(s)) => after = Some(s),
            ("search", Value::String(s)) if field.name.node == "tenants" => search = Some(s),
            _ => return None,
        }
    }
    let page = PageRequest::parse(first, after).ok()?;
    let fields = plain(&field.selection_set.node.items)?;
    let mut out = Json::response(&field.response_key().node);
    match field.name.node.as_str() {
        "tenants" => {
            let q = super::query::tenants_query(&caller.workspace, search, &page).ok()?;
            own_page::<ListedTenant>(q, state, caller, &page, &fields, &mut out).await?;
        }
        "runs" => {
            let q = super::runs::RunList::page(&caller.workspace, &page)
                .ok()?
                .query();
            own_page::<ListedRun>(q, state, caller, &page, &fields, &mut out).await?;
        }
        _ => return None,
    }
    state.metrics.graphql_own_page();
    Some(out.finish())
}

/// The page `page` of `T` with `fields`, read with `q` in the request's snapshot and
/// written to `out`; None, before anything is read, when the rows' fields are not all theirs.
async fn own_page<T: Row + Send + Sync>(
    mut q: sqlx::QueryBuilder<'static, sqlx::Postgres>,
    state: &crate::AppState,
    caller: &crate::auth::Caller,
    page: &PageRequest,
    fields: &[Plain<'_>],
    out: &mut Json,
) -> Option<()> {
    if !Page::<T>::rows_answer(fields) {
        return None;
    }
    let mut tx = super::query::snapshot(state, caller).await.ok()?;
    Page::<T>::read(&mut q, &mut tx, page)
        .await
        .ok()?
        .write(fields, out)
}

/// The request's data of type `T` (what `api::http` gave it).
fn data<T: std::any::Any>(request: &async_graphql::Request) -> Option<&T> {
    request
        .data
        .get(&std::any::TypeId::of::<T>())
        .and_then(|d| d.downcast_ref::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a page's rows are the one pass's to answer is known from the selection
    /// alone, before the page is read: their own scalar fields are; a field with a
    /// selection of its own (a tenant's connections) or one the pass does not know is not.
    #[test]
    fn a_pages_rows_are_known_answerable_before_it_is_read() {
        let answers = |query: &str| {
            let doc = async_graphql::parser::parse_query(query).unwrap();
            let async_graphql::parser::types::DocumentOperations::Single(op) = &doc.operations
            else {
                panic!("one operation")
            };
            let Selection::Field(page) = &op.node.selection_set.node.items[0].node else {
                panic!("a field")
            };
            let fields = plain(&page.node.selection_set.node.items).expect("plain");
            Page::<ListedTenant>::rows_answer(&fields)
        };
        assert!(answers(
            "{ tenants { pageInfo { endCursor } edges { cursor node { __typename id \
             displayName status lastResyncedAt } } nodes { id entraTenantId } } }"
        ));
        assert!(!answers(
            "{ tenants { edges { node { id connections { id } } } } }"
        ));
        assert!(!answers(
            "{ tenants { nodes { id policyIntent { hash } } } }"
        ));
        assert!(!answers("{ tenants { edges { node { id nextSteps } } } }"));
    }

    /// The same values written both ways: the JSON text is what async-graphql serialises
    /// the value tree to, in a response, byte for byte.
    #[test]
    fn json_text_is_the_value_trees_serialisation() {
        let name = |s: &str| Name::new(s);
        fn values<O: Out>(out: &mut O) {
            let key = |s: &str| Name::new(s);
            out.object();
            out.key(&key("edges"));
            out.list();
            for text in [
                "plain",
                "a \"quoted\" \\ back\nslash\t\u{1}",
                "é 😀 \u{2028}",
            ] {
                out.object();
                out.key(&key("text"));
                out.str(text);
                out.key(&key("status"));
                out.name("succeeded");
                out.key(&key("none"));
                out.null();
                out.key(&key("yes"));
                out.bool(true);
                out.key(&key("no"));
                out.bool(false);
                out.end();
            }
            out.end();
            out.key(&key("empty"));
            out.list();
            out.end();
            out.key(&key("nothing"));
            out.object();
            out.end();
            out.key(&key("last"));
            out.list();
            out.str("x");
            out.null();
            out.end();
            out.end();
        }
        let tree = Tree::of(|tree| {
            values(tree);
            Some(())
        })
        .expect("a value");
        let mut data = IndexMap::new();
        data.insert(name("page"), tree);
        let expected =
            serde_json::to_string(&async_graphql::Response::new(Value::Object(data))).unwrap();
        let mut json = Json::response(&name("page"));
        values(&mut json);
        assert_eq!(String::from_utf8(json.finish()).unwrap(), expected);
    }
}
