//! The GraphQL schema is a contract with dashboards: it changes only on purpose.

#[test]
fn the_committed_schema_matches_the_code() {
    let committed = include_str!("../../schema.graphql");
    let current = api::graphql::sdl();
    assert!(
        committed == current,
        "the GraphQL schema changed; review the change, then run `cargo run -- schema > api/schema.graphql`"
    );
}

#[test]
fn public_descriptions_carry_no_requirement_tags() {
    // Tags such as `(R9.1)` point into the project's own requirements: meaningless to the
    // API's users.
    let sdl = api::graphql::sdl();
    let tagged: Vec<&str> = sdl
        .lines()
        .filter(|l| {
            l.match_indices("(R")
                .any(|(i, _)| l[i + 2..].starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert!(tagged.is_empty(), "{tagged:#?}");
}

#[test]
fn the_provider_connection_type_is_not_named_like_a_page_of_edges() {
    // Relay reads a type named `Connection` (and its list, `ConnectionConnection`) as
    // pagination; the domain's word is `ProviderConnection`.
    let sdl = api::graphql::sdl();
    let names: Vec<&str> = sdl
        .lines()
        .filter(|l| l.starts_with("type "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(names.contains(&"ProviderConnection"), "{names:?}");
    assert!(names.contains(&"ProviderConnectionConnection"), "{names:?}");
    for gone in ["Connection", "ConnectionConnection", "ConnectionEdge"] {
        assert!(!names.contains(&gone), "`{gone}` is still a type");
    }
}
