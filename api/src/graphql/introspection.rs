//! Introspection gets its own limits. The standard introspection query that GraphiQL, code
//! generators, Apollo and Relay send nests type references nine `ofType`s deep (14 fields
//! in all), past the depth ordinary queries are held to. Depth is the wrong measure for
//! it anyway: what makes introspection expensive is nesting the *lists* of the schema
//! (`fields { type { fields { type { fields ...` multiplies the answer by the schema's
//! size at each level), and its chains of single `ofType`s cost nothing. So a query that
//! asks only for `__schema`, `__type` or `__typename` is executed by a schema whose depth
//! limit fits introspection, as introspection only, and is refused when it nests those
//! lists three deep (the rule graphql-js ships as `MaxIntrospectionDepthRule`).

use std::collections::HashSet;
use std::sync::LazyLock;

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{ErrorExtensions, Schema};

use super::{MutationRoot, QueryRoot, SubscriptionRoot, TenantflowSchema, MAX_COMPLEXITY};

/// Deepest introspection query accepted: the standard one is 14 deep.
pub const MAX_INTROSPECTION_DEPTH: usize = 20;
/// Introspection lists (`fields`, `inputFields`, `interfaces`, `possibleTypes`) nested this
/// deep are refused: the standard query nests two.
const MAX_LIST_NESTING: usize = 3;

/// How a request is to be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Anything but pure introspection (including what does not parse: the ordinary schema
    /// reports that).
    Ordinary,
    /// A query of introspection fields only, within the introspection limits.
    Introspection,
    /// Introspection that nests the schema's lists too deep.
    TooDeep,
}

/// Where `query` (with the operation the request names) goes.
pub(crate) fn route(doc: Option<&ExecutableDocument>, operation_name: Option<&str>) -> Route {
    let Some(doc) = doc else {
        return Route::Ordinary;
    };
    let Some(op) = super::cost::operation(doc, operation_name) else {
        return Route::Ordinary;
    };
    if op.node.ty != OperationType::Query
        || !only_introspection(doc, &op.node.selection_set.node, &mut HashSet::new())
    {
        return Route::Ordinary;
    }
    if list_nesting(doc, &op.node.selection_set.node, 0, &mut Vec::new()) >= MAX_LIST_NESTING {
        Route::TooDeep
    } else {
        Route::Introspection
    }
}

/// Whether every root field of `set` (through fragments) is an introspection field.
fn only_introspection<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> bool {
    set.items.iter().all(|s| match &s.node {
        Selection::Field(f) => f.node.name.node.starts_with("__"),
        Selection::InlineFragment(i) => only_introspection(doc, &i.node.selection_set.node, seen),
        Selection::FragmentSpread(s) => {
            let name = s.node.fragment_name.node.as_str();
            // A cycle is the ordinary schema's error to report.
            seen.insert(name)
                && doc
                    .fragments
                    .get(&s.node.fragment_name.node)
                    .is_some_and(|f| only_introspection(doc, &f.node.selection_set.node, seen))
        }
    })
}

/// The deepest nesting of introspection lists in `set`, counting `depth` above it;
/// `path` holds the fragments being expanded (a fragment inside itself is not followed).
fn list_nesting<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    depth: usize,
    path: &mut Vec<&'a str>,
) -> usize {
    let mut deepest = depth;
    for s in &set.items {
        let nested = match &s.node {
            Selection::Field(f) => {
                let list = matches!(
                    f.node.name.node.as_str(),
                    "fields" | "inputFields" | "interfaces" | "possibleTypes"
                );
                list_nesting(
                    doc,
                    &f.node.selection_set.node,
                    depth + usize::from(list),
                    path,
                )
            }
            Selection::InlineFragment(i) => {
                list_nesting(doc, &i.node.selection_set.node, depth, path)
            }
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                match doc.fragments.get(&s.node.fragment_name.node) {
                    Some(f) if !path.contains(&name) => {
                        path.push(name);
                        let d = list_nesting(doc, &f.node.selection_set.node, depth, path);
                        path.pop();
                        d
                    }
                    _ => depth,
                }
            }
        };
        deepest = deepest.max(nested);
        if deepest >= MAX_LIST_NESTING {
            break;
        }
    }
    deepest
}

/// The schema introspection queries are executed by: the same types, limits that fit
/// introspection. Built once, on first use.
pub(crate) fn schema() -> &'static TenantflowSchema {
    static SCHEMA: LazyLock<TenantflowSchema> = LazyLock::new(|| {
        Schema::build(
            QueryRoot::default(),
            MutationRoot::default(),
            SubscriptionRoot,
        )
        .limit_depth(MAX_INTROSPECTION_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
    });
    &SCHEMA
}

/// The answer to introspection that nests the schema's lists too deep.
pub(crate) fn too_deep() -> async_graphql::Response {
    let error = async_graphql::Error::new(format!(
        "Introspection query is nested too deep: `fields`, `inputFields`, `interfaces` and \
         `possibleTypes` may nest at most {} levels.",
        MAX_LIST_NESTING - 1
    ))
    .extend_with(|_, ext| ext.set("code", domain::ReasonCode::ValidationFailed.as_str()));
    async_graphql::Response::from_errors(vec![error.into_server_error(Default::default())])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the text `query` is routed (parsed as the HTTP layer parses it).
    fn route(query: &str, operation_name: Option<&str>) -> Route {
        let doc = async_graphql::parser::parse_query(query).ok();
        super::route(doc.as_ref(), operation_name)
    }

    #[test]
    fn a_query_of_introspection_fields_only_is_introspection() {
        let q = "query IntrospectionQuery { __schema { types { ...T } } } \
                 fragment T on __Type { name fields { name type { name ofType { name } } } }";
        assert_eq!(route(q, Some("IntrospectionQuery")), Route::Introspection);
        assert_eq!(
            route("{ __type(name: \"Run\") { name } }", None),
            Route::Introspection
        );
    }

    #[test]
    fn a_query_that_also_reads_data_is_ordinary() {
        assert_eq!(
            route("{ __schema { queryType { name } } me { role } }", None),
            Route::Ordinary
        );
        assert_eq!(
            route("{ ...F } fragment F on QueryRoot { me { role } }", None),
            Route::Ordinary
        );
        assert_eq!(route("mutation { __typename }", None), Route::Ordinary);
        assert_eq!(route("not graphql", None), Route::Ordinary);
    }

    #[test]
    fn nesting_the_schemas_lists_three_deep_is_refused_even_through_fragments() {
        let direct =
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
        assert_eq!(route(direct, None), Route::TooDeep);
        let spread = "{ __schema { types { ...A } } } \
                      fragment A on __Type { fields { type { ...B } } } \
                      fragment B on __Type { interfaces { possibleTypes { name } } }";
        assert_eq!(route(spread, None), Route::TooDeep);
        // Two levels (a type's fields' arguments' types) are what the standard query needs.
        let two = "{ __schema { types { fields { type { inputFields { name } } } } } }";
        assert_eq!(route(two, None), Route::Introspection);
    }

    #[test]
    fn a_fragment_that_spreads_itself_does_not_loop() {
        let q = "{ __schema { types { ...A } } } fragment A on __Type { name ofType { ...A } }";
        assert_eq!(route(q, None), Route::Introspection);
    }
}
