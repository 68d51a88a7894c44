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
