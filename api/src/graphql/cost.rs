//! Bounded work before validation. async-graphql validates a query by walking it with its
//! fragments expanded, so a few hundred bytes of fragments that each spread the next one
//! twice cost 2^n steps before any depth or complexity limit answers (26 levels kept a
//! worker busy for a minute). Here the query is parsed once (linear in its size) and its
//! selections counted with each fragment's count computed once, so the expanded size is
//! known in time linear in the text, and a query over the limit is refused before anything
//! expensive runs. NUL characters, which PostgreSQL cannot store in text, are refused here
//! too rather than deep inside a resolver.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
    Type,
};
use async_graphql::parser::Positioned;
use async_graphql::{ErrorExtensions, Value};

use super::documents::{Documents, Parsed};

/// Limits on one request's query, checked before it is routed or validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest query text, in bytes.
    pub max_query_bytes: usize,
    /// Most selections (fields, each directive counting as one more) once every fragment
    /// spread is expanded.
    pub max_expanded_selections: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 100 * 1024,
            max_expanded_selections: 20_000,
        }
    }
}

/// Refuses a request whose query is over the limits or that carries a NUL character. The
/// document parsed for the checks is kept in the request, so execution does not parse it
/// again.
///
/// With `documents`, the document of a text the workspace sent before is taken from them
/// instead of parsed again, and returned instead of copied into the request: the caller
/// sets it (`set_parsed_query`) before executing the request. Without `documents` nothing
/// is returned.
pub(crate) fn check(
    request: &mut async_graphql::Request,
    limits: &QueryLimits,
    documents: Option<(&Documents, &str)>,
) -> Result<Option<Arc<Parsed>>, Box<async_graphql::Response>> {
    let query = &request.query;
    if query.len() > limits.max_query_bytes {
        return Err(refusal(format!(
            "the query is {} bytes; at most {} are accepted",
            query.len(),
            limits.max_query_bytes
        )));
    }
    if query.contains('\0') || request.variables.values().any(has_nul) {
        return Err(refusal(
            "NUL characters are not accepted in queries or variables".to_owned(),
        ));
    }
    // What does not parse is the ordinary validation's error to report (cheaply).
    let parse = |query: &str| {
        let doc = async_graphql::parser::parse_query(query).ok()?;
        let expanded = expanded_size(&doc);
        Some(Parsed {
            doc,
            expanded,
            validated: Default::default(),
        })
    };
    let parsed = match documents {
        Some((documents, workspace)) => documents.get_or_parse(workspace, query, parse),
        None => parse(query).map(Arc::new),
    };
    let Some(parsed) = parsed else {
        return Ok(None);
    };
    if parsed.expanded > limits.max_expanded_selections {
        return Err(refusal(format!(
            "the query expands to more than {} selections once its fragments are spread",
            limits.max_expanded_selections
        )));
    }
    check_variables(&parsed.doc, request)?;
    // Execution takes the document out of the request: one parsed for this request alone
    // is moved in; a kept one is returned, for the caller to copy in only if async-graphql
    // executes the request.
    match Arc::try_unwrap(parsed) {
        Ok(own) => {
            request.set_parsed_query(own.doc);
            Ok(None)
        }
        Err(kept) => Ok(Some(kept)),
    }
}

/// Each variable's value against the type its operation declares, for the built-in
/// scalars and the list and non-null wrappers around them: async-graphql lets a value of
/// another type through when the variable is used where that type fits (a string declared
/// `Int!` reached a `String!` argument), so a client's typing mistake would silently do
/// something. The message names the variable and the types, never the value (it may be a
/// secret). Enums, input objects and custom scalars are checked where they are used.
fn check_variables(
    doc: &ExecutableDocument,
    request: &async_graphql::Request,
) -> Result<(), Box<async_graphql::Response>> {
    let Some(operation) = operation(doc, request.operation_name.as_deref()) else {
        return Ok(());
    };
    for definition in &operation.node.variable_definitions {
        let name = &definition.node.name.node;
        let ty = &definition.node.var_type.node;
        let Some(value) = request.variables.get(name) else {
            continue;
        };
        if !fits(ty, value) {
            return Err(refusal(format!(
                "variable `${name}` is declared `{ty}` but its value is {}",
                kind_of(value)
            )));
        }
    }
    Ok(())
}

/// The operation a request runs: the only one, or the one it names.
pub(crate) fn operation<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, op)| op),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

fn fits(ty: &Type, value: &Value) -> bool {
    if matches!(value, Value::Null) {
        return ty.nullable;
    }
    match &ty.base {
        // A single value is coerced to a list of one.
        BaseType::List(inner) => match value {
            Value::List(items) => items.iter().all(|v| fits(inner, v)),
            other => fits(inner, other),
        },
        BaseType::Named(name) => match name.as_str() {
            "Int" => {
                matches!(value, Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()))
            }
            "Float" => matches!(value, Value::Number(_)),
            "String" => matches!(value, Value::String(_)),
            "Boolean" => matches!(value, Value::Boolean(_)),
            "ID" => {
                matches!(value, Value::String(_))
                    || matches!(value, Value::Number(n) if n.is_i64() || n.is_u64())
            }
            _ => true,
        },
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Boolean(_) => "a boolean",
        Value::List(_) => "a list",
        Value::Object(_) => "an object",
        _ => "of another kind",
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::List(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(k, v)| k.as_str().contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Selections of every operation of `doc` with its fragments expanded (saturating).
fn expanded_size(doc: &ExecutableDocument) -> u64 {
    let mut sizes = Sizes {
        doc,
        known: HashMap::new(),
    };
    doc.operations
        .iter()
        .map(|(_, op)| sizes.of(&op.node.selection_set.node))
        .fold(0u64, u64::saturating_add)
}

/// Each fragment's expanded size, computed once.
struct Sizes<'a> {
    doc: &'a ExecutableDocument,
    /// `None` while a fragment is being counted: a spread of it then is a cycle, counted
    /// as nothing (the validator reports cycles).
    known: HashMap<&'a str, Option<u64>>,
}

impl<'a> Sizes<'a> {
    fn of(&mut self, set: &'a SelectionSet) -> u64 {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => (1 + f.node.directives.len() as u64)
                    .saturating_add(self.of(&f.node.selection_set.node)),
                Selection::InlineFragment(i) => (i.node.directives.len() as u64)
                    .saturating_add(self.of(&i.node.selection_set.node)),
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    (spread.node.directives.len() as u64).saturating_add(self.fragment(name))
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    fn fragment(&mut self, name: &'a str) -> u64 {
        match self.known.get(name) {
            Some(Some(size)) => return *size,
            Some(None) => return 0,
            None => {}
        }
        let Some(fragment) = self.doc.fragments.get(name) else {
            return 0;
        };
        self.known.insert(name, None);
        let size = self.of(&fragment.node.selection_set.node);
        self.known.insert(name, Some(size));
        size
    }
}

fn refusal(message: String) -> Box<async_graphql::Response> {
    let error = async_graphql::Error::new(message)
        .extend_with(|_, ext| ext.set("code", domain::ReasonCode::ValidationFailed.as_str()));
    Box::new(async_graphql::Response::from_errors(vec![
        error.into_server_error(Default::default())
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fragments each spreading the next one twice, `levels` deep.
    fn doubling(levels: usize) -> String {
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..levels {
            q.push_str(&format!(
                "fragment F{i} on QueryRoot {{ ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        q.push_str(&format!(
            "fragment F{levels} on QueryRoot {{ me {{ workspace }} }}\n"
        ));
        q
    }

    fn size(query: &str) -> u64 {
        expanded_size(&async_graphql::parser::parse_query(query).unwrap())
    }

    #[test]
    fn fields_directives_and_spread_fragments_are_counted_once_per_place() {
        assert_eq!(size("{ me { workspace role } }"), 3);
        assert_eq!(size("{ me @include(if: true) { workspace } }"), 3);
        assert_eq!(
            size("{ ...A ...A } fragment A on QueryRoot { me { role } }"),
            4
        );
    }

    #[test]
    fn doubling_fragments_are_sized_without_being_expanded() {
        let started = std::time::Instant::now();
        // 2^60 selections: counted by arithmetic, not by walking them.
        assert_eq!(size(&doubling(60)), 2 * (1u64 << 60));
        assert!(
            size(&doubling(200)) == u64::MAX,
            "saturates instead of overflowing"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_fragment_cycle_counts_as_nothing_and_is_left_to_the_validator() {
        assert_eq!(
            size("{ ...A } fragment A on QueryRoot { me { role } ...B } fragment B on QueryRoot { ...A }"),
            2
        );
    }

    fn with_variables(query: &str, variables: serde_json::Value) -> async_graphql::Request {
        async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(variables))
    }

    #[test]
    fn variables_must_be_of_the_type_they_are_declared() {
        let limits = QueryLimits::default();
        let q = "query($i: Int!, $s: String, $l: [ID!], $b: Boolean!) { me { role } }";
        let kept = Documents::default();
        // Parsed each time, and from the kept document: each request's variables are
        // checked either way.
        for documents in [None, Some((&kept, "acme")), Some((&kept, "acme"))] {
            let ok = serde_json::json!({ "i": 5, "s": null, "l": ["a", 7], "b": true });
            assert!(check(&mut with_variables(q, ok), &limits, documents).is_ok());
            // A single value where a list is declared is a list of one.
            let one = serde_json::json!({ "i": 5, "l": "a", "b": false });
            assert!(check(&mut with_variables(q, one), &limits, documents).is_ok());
            for bad in [
                serde_json::json!({ "i": "s3cret", "b": true }),
                serde_json::json!({ "i": 1.5, "b": true }),
                serde_json::json!({ "i": 3_000_000_000i64, "b": true }),
                serde_json::json!({ "i": 1, "s": 5, "b": true }),
                serde_json::json!({ "i": 1, "l": [true], "b": true }),
                serde_json::json!({ "i": null, "b": true }),
                serde_json::json!({ "i": 1, "b": "yes" }),
            ] {
                let refused =
                    check(&mut with_variables(q, bad.clone()), &limits, documents).unwrap_err();
                let message = &refused.errors[0].message;
                assert!(message.contains("is declared"), "{bad}: {message}");
                assert!(
                    !message.contains("s3cret"),
                    "the value is never echoed: {message}"
                );
            }
        }
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn over_the_limit_or_with_a_nul_is_refused_as_validation_failed() {
        let limits = QueryLimits::default();
        let kept = Documents::default();
        for _ in 0..2 {
            // Kept or not, its document is over the limit.
            assert!(check(
                &mut async_graphql::Request::new(doubling(30)),
                &limits,
                Some((&kept, "acme"))
            )
            .is_err());
        }
        let refused = check(
            &mut async_graphql::Request::new(doubling(30)),
            &limits,
            None,
        )
        .unwrap_err();
        assert_eq!(
            refused.errors[0]
                .extensions
                .as_ref()
                .and_then(|e| e.get("code"))
                .map(|c| c.to_string()),
            Some("\"validation_failed\"".to_owned())
        );
        assert!(check(
            &mut async_graphql::Request::new("{ me { role } }"),
            &limits,
            None
        )
        .is_ok());
        assert!(check(
            &mut async_graphql::Request::new("{ me { role } }\0"),
            &limits,
            None
        )
        .is_err());
        let mut with_nul = async_graphql::Request::new("query($s: String) { me { role } }")
            .variables(async_graphql::Variables::from_json(
                serde_json::json!({ "s": "a\u{0}b" }),
            ));
        assert!(check(&mut with_nul, &limits, None).is_err());
        let long = "#".repeat(limits.max_query_bytes + 1);
        assert!(check(&mut async_graphql::Request::new(long), &limits, None).is_err());
    }
}
