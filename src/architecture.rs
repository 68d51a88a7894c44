//! The crate graph documented in docs/ARCHITECTURE.md is the one the manifests declare.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// Our crates' normal dependencies on each other, by short name (`tenantflow-store` ->
    /// `store`), from `cargo metadata`.
    fn declared() -> BTreeMap<String, BTreeSet<String>> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata failed");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        let short = |name: &str| name.trim_start_matches("tenantflow-").to_owned();
        let ours: BTreeSet<String> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .map(str::to_owned)
            .collect();
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                let deps = p["dependencies"]
                    .as_array()
                    .expect("dependencies")
                    .iter()
                    .filter(|d| d["kind"].is_null())
                    .filter_map(|d| d["name"].as_str())
                    .filter(|n| ours.contains(*n))
                    .map(short)
                    .collect();
                (short(p["name"].as_str().expect("name")), deps)
            })
            .collect()
    }

    /// The table between the `crate-graph` markers of docs/ARCHITECTURE.md.
    fn documented() -> BTreeMap<String, BTreeSet<String>> {
        let doc = include_str!("../docs/ARCHITECTURE.md");
        let start = doc.find("<!-- crate-graph -->").expect("start marker");
        let end = doc.find("<!-- /crate-graph -->").expect("end marker");
        doc[start..end]
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| crate"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let deps = cells[1]
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect();
                (cells[0].to_owned(), deps)
            })
            .collect()
    }

    #[test]
    fn the_documented_crate_graph_is_the_declared_one() {
        assert_eq!(
            documented(),
            declared(),
            "update the table in docs/ARCHITECTURE.md (or the manifests)"
        );
    }
}
