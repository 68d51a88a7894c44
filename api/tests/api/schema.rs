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

#[test]
fn the_live_schema_breaks_nothing_the_committed_one_promised() {
    // Run before `tenantflow schema` rewrites the contract: it lists what the change would
    // break for dashboards that were built against the committed SDL.
    let committed = include_str!("../../schema.graphql");
    let changes = api::graphql::compat::breaking_changes(committed, &api::graphql::sdl())
        .expect("both schemas parse");
    let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert!(
        listed.is_empty(),
        "breaking changes (deprecate first, remove later):\n{}",
        listed.join("\n")
    );
}

#[test]
fn the_live_schema_breaks_nothing_the_last_release_promised() {
    // `schema.graphql` is rewritten with every change; the released contract is not (it is
    // copied from `schema.graphql` when a release is cut), so regenerating the SDL cannot
    // hide a break from dashboards built against the release.
    let released = include_str!("../../schema.released.graphql");
    let changes = api::graphql::compat::breaking_changes(released, &api::graphql::sdl())
        .expect("both schemas parse");
    let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert!(
        listed.is_empty(),
        "breaking changes since the last release (deprecate first, remove in a later release):\n{}",
        listed.join("\n")
    );
}

#[test]
fn the_compatibility_check_fails_on_a_removed_field_and_passes_on_an_added_one() {
    let committed = include_str!("../../schema.graphql");
    // A fixture made from the contract itself: one field of `Tenant` less, then one more.
    let (head, tenant) = committed
        .split_once("type Tenant implements Node {")
        .expect("the Tenant type");
    let with_tenant = |body: String| format!("{head}type Tenant implements Node {{{body}");
    let field = "\tprimaryDomain: String!\n";
    assert!(tenant.contains(field), "{tenant}");
    let removed = with_tenant(tenant.replacen(field, "", 1));
    let changes = api::graphql::compat::breaking_changes(committed, &removed).unwrap();
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["Tenant.primaryDomain: removed without @deprecated first"]
    );
    let added = with_tenant(tenant.replacen(field, &format!("{field}\ttimeZone: String\n"), 1));
    assert_eq!(
        api::graphql::compat::breaking_changes(committed, &added).unwrap(),
        vec![]
    );
}
