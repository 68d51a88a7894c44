//! Breaking changes between two versions of the schema (SDL), as a dashboard's generated
//! client would suffer them: a type, field, argument, input field or enum value removed or
//! retyped, or a required argument or input field added. A removal or retyping of what the
//! earlier schema had already marked `@deprecated` is announced, so it is not listed.
//!
//! Safe changes are not listed: additions, an output field that becomes non-null, an
//! argument or input field that becomes nullable.

use std::collections::HashMap;
use std::fmt;

use async_graphql::parser::types::{
    ConstDirective, FieldDefinition, InputValueDefinition, ServiceDocument, Type, TypeDefinition,
    TypeKind, TypeSystemDefinition,
};
use async_graphql::parser::Positioned;

/// One breaking change, at a schema coordinate (`Type.field(argument:)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakingChange {
    /// Where: `Type`, `Type.field`, `Type.field(arg:)` or `Enum.VALUE`.
    pub coordinate: String,
    pub kind: ChangeKind,
}

/// What broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A type is gone, or is of another kind (an object became an interface, ...).
    TypeRemoved,
    /// A field, argument, input field or enum value is gone without deprecation first.
    Removed,
    /// Its type changed in a way a client's types no longer fit.
    Retyped { from: String, to: String },
    /// A new argument or input field is required: existing requests lack it.
    RequiredAdded,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ChangeKind::TypeRemoved => {
                write!(f, "{}: type removed or changed kind", self.coordinate)
            }
            ChangeKind::Removed => {
                write!(f, "{}: removed without @deprecated first", self.coordinate)
            }
            ChangeKind::Retyped { from, to } => {
                write!(
                    f,
                    "{}: retyped from {from} to {to} without @deprecated first",
                    self.coordinate
                )
            }
            ChangeKind::RequiredAdded => write!(f, "{}: added as required", self.coordinate),
        }
    }
}

/// The breaking changes from `before` to `after` (both SDL), in a stable order.
pub fn breaking_changes(
    before: &str,
    after: &str,
) -> Result<Vec<BreakingChange>, async_graphql::parser::Error> {
    let (before, after) = (
        async_graphql::parser::parse_schema(before)?,
        async_graphql::parser::parse_schema(after)?,
    );
    let (before, after) = (types(&before), types(&after));
    let mut changes = Vec::new();
    let mut names: Vec<&&str> = before.keys().collect();
    names.sort();
    for name in names {
        let old = before[*name];
        let Some(new) = after.get(*name) else {
            changes.push(change(name.to_string(), ChangeKind::TypeRemoved));
            continue;
        };
        match (&old.kind, &new.kind) {
            (TypeKind::Object(o), TypeKind::Object(n)) => {
                fields(name, &o.fields, &n.fields, &mut changes)
            }
            (TypeKind::Interface(o), TypeKind::Interface(n)) => {
                fields(name, &o.fields, &n.fields, &mut changes)
            }
            (TypeKind::InputObject(o), TypeKind::InputObject(n)) => {
                inputs(name, &o.fields, &n.fields, false, &mut changes)
            }
            (TypeKind::Enum(o), TypeKind::Enum(n)) => {
                for value in &o.values {
                    let v = value.node.value.node.as_str();
                    let kept = n.values.iter().any(|x| x.node.value.node.as_str() == v);
                    if !kept && !deprecated(&value.node.directives) {
                        changes.push(change(format!("{name}.{v}"), ChangeKind::Removed));
                    }
                }
            }
            (TypeKind::Scalar, TypeKind::Scalar) | (TypeKind::Union(_), TypeKind::Union(_)) => {}
            _ => changes.push(change(name.to_string(), ChangeKind::TypeRemoved)),
        }
    }
    Ok(changes)
}

fn change(coordinate: String, kind: ChangeKind) -> BreakingChange {
    BreakingChange { coordinate, kind }
}

fn types(doc: &ServiceDocument) -> HashMap<&str, &TypeDefinition> {
    doc.definitions
        .iter()
        .filter_map(|d| match d {
            TypeSystemDefinition::Type(t) => Some((t.node.name.node.as_str(), &t.node)),
            _ => None,
        })
        .collect()
}

fn deprecated(directives: &[Positioned<ConstDirective>]) -> bool {
    directives.iter().any(|d| d.node.name.node == "deprecated")
}

/// Output fields: gone or retyped (other than becoming non-null), and their arguments.
fn fields(
    ty: &str,
    old: &[Positioned<FieldDefinition>],
    new: &[Positioned<FieldDefinition>],
    changes: &mut Vec<BreakingChange>,
) {
    for field in old {
        let f = &field.node;
        let at = format!("{ty}.{}", f.name.node);
        let announced = deprecated(&f.directives);
        let Some(now) = new.iter().find(|n| n.node.name.node == f.name.node) else {
            if !announced {
                changes.push(change(at, ChangeKind::Removed));
            }
            continue;
        };
        let (from, to) = (&f.ty.node, &now.node.ty.node);
        // An output that may no longer be null still fits a client that checks for null.
        let safe = from == to || (from.nullable && !to.nullable && from.base == to.base);
        if !safe && !announced {
            changes.push(change(at.clone(), retyped(from, to)));
        }
        inputs(&at, &f.arguments, &now.node.arguments, true, changes);
    }
}

/// Arguments (`arguments`) or input fields: gone or retyped (other than becoming
/// nullable), and new required ones.
fn inputs(
    owner: &str,
    old: &[Positioned<InputValueDefinition>],
    new: &[Positioned<InputValueDefinition>],
    arguments: bool,
    changes: &mut Vec<BreakingChange>,
) {
    let at = |name: &str| {
        if arguments {
            format!("{owner}({name}:)")
        } else {
            format!("{owner}.{name}")
        }
    };
    for input in old {
        let i = &input.node;
        let announced = deprecated(&i.directives);
        let Some(now) = new.iter().find(|n| n.node.name.node == i.name.node) else {
            if !announced {
                changes.push(change(at(&i.name.node), ChangeKind::Removed));
            }
            continue;
        };
        let (from, to) = (&i.ty.node, &now.node.ty.node);
        // An input that may now be left out still accepts what clients send.
        let safe = from == to || (!from.nullable && to.nullable && from.base == to.base);
        if !safe && !announced {
            changes.push(change(at(&i.name.node), retyped(from, to)));
        }
    }
    for input in new {
        let i = &input.node;
        let added = !old.iter().any(|o| o.node.name.node == i.name.node);
        if added && !i.ty.node.nullable && i.default_value.is_none() {
            changes.push(change(at(&i.name.node), ChangeKind::RequiredAdded));
        }
    }
}

fn retyped(from: &Type, to: &Type) -> ChangeKind {
    ChangeKind::Retyped {
        from: from.to_string(),
        to: to.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
        type Query { run(id: String!, verbose: Boolean): Run, old: Int @deprecated(reason: "gone soon") }
        type Run { id: ID!, status: RunStatus, note: String }
        enum RunStatus { queued running done @deprecated }
        input Filter { status: String, tenant: String! }
    "#;

    fn changes(after: &str) -> Vec<String> {
        breaking_changes(BEFORE, after)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn additions_and_announced_removals_break_nothing() {
        let after = r#"
            type Query { run(id: String!, verbose: Boolean, limit: Int = 5, x: Int): Run, runs: [Run!]! }
            type Run { id: ID!, status: RunStatus!, note: String, summary: String }
            enum RunStatus { queued running cancelled }
            input Filter { status: String, tenant: String, more: Int }
            type Extra { a: Int }
        "#;
        assert_eq!(changes(after), Vec::<String>::new());
    }

    #[test]
    fn removals_retypings_and_new_requirements_are_listed() {
        let after = r#"
            type Query { run(id: ID!, page: Int!): Run }
            type Run { id: ID!, status: String }
            enum RunStatus { queued }
            input Filter { tenant: Int! }
        "#;
        assert_eq!(
            changes(after),
            vec![
                "Filter.status: removed without @deprecated first",
                "Filter.tenant: retyped from String! to Int! without @deprecated first",
                "Query.run(id:): retyped from String! to ID! without @deprecated first",
                "Query.run(verbose:): removed without @deprecated first",
                "Query.run(page:): added as required",
                "Run.status: retyped from RunStatus to String without @deprecated first",
                "Run.note: removed without @deprecated first",
                "RunStatus.running: removed without @deprecated first",
            ]
        );
    }

    #[test]
    fn a_removed_type_is_listed() {
        let after = "type Query { run(id: String!, verbose: Boolean): Run }";
        assert_eq!(
            changes(after),
            vec![
                "Filter: type removed or changed kind",
                "Run: type removed or changed kind",
                "RunStatus: type removed or changed kind",
            ]
        );
    }
}
