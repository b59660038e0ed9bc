//! The crates' layering, read from `cargo metadata`: the runtime depends on no other flux2
//! crate, no flux2 crate depends on another in a circle, and the run-only `flux2` (no default
//! features) leaves out every crate that builds, converts or calibrates graphs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// flux2 package -> its normal dependencies on other flux2 packages, each with `optional`.
type Graph = BTreeMap<String, Vec<(String, bool)>>;

/// The flux2 crate graph and each package's `[features]`.
fn workspace_graph() -> (Graph, BTreeMap<String, Value>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut graph = BTreeMap::new();
    let mut features = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let deps = p["dependencies"].as_array().expect("dependencies");
        let flux2: Vec<(String, bool)> = deps
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies (dev/build ones do not link)
            .filter_map(|d| {
                let n = d["name"].as_str()?;
                n.starts_with("flux2-").then(|| (n.to_string(), d["optional"].as_bool().unwrap_or(false)))
            })
            .collect();
        features.insert(name.clone(), p["features"].clone());
        graph.insert(name, flux2);
    }
    (graph, features)
}

/// Every flux2 crate reachable from `from` through normal dependencies (optional ones too when asked).
fn closure(graph: &Graph, from: &str, optional: bool) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(n) = todo.pop() {
        for (d, opt) in graph.get(&n).into_iter().flatten() {
            if (optional || !opt) && seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn runtime_depends_on_no_other_flux2_crate() {
    let (graph, _) = workspace_graph();
    assert!(graph.contains_key("flux2-runtime"), "{graph:?}");
    let reach = closure(&graph, "flux2-runtime", true);
    assert!(reach.is_empty(), "flux2-runtime depends on {reach:?}");
}

#[test]
fn no_crate_depends_on_itself_through_others() {
    let (graph, _) = workspace_graph();
    assert!(graph.len() >= 6, "{graph:?}");
    for name in graph.keys() {
        let reach = closure(&graph, name, true);
        assert!(!reach.contains(name), "{name} is in a dependency cycle: reaches {reach:?}");
    }
}

#[test]
fn run_only_cli_leaves_out_graph_building_crates() {
    let (graph, features) = workspace_graph();
    let required = closure(&graph, "flux2-cli", false);
    assert_eq!(required, BTreeSet::from(["flux2-runtime".to_string()]), "without features");
    let full = features["flux2-cli"]["full"].as_array().expect("feature `full`");
    let full: BTreeSet<&str> = full.iter().filter_map(|v| v.as_str()?.strip_prefix("dep:")).collect();
    for c in ["flux2-graphs", "flux2-exporter", "flux2-calib", "flux2-deploy"] {
        assert!(full.contains(c), "`full` must enable {c}: {full:?}");
    }
    let default = features["flux2-cli"]["default"].as_array().expect("feature `default`");
    assert!(default.iter().any(|v| v == "full"), "the default flux2 has every command");
}
