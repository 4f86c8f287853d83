//! The code's shape, kept: no import circles between modules, and the
//! engine never reaches into the job side (ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every module of `src/` (`engine::gc`, `cli::run`, ...) and the modules
/// its code names with `crate::` (test code left out).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let name = |p: &Path| {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| name(f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        // Unit tests may use anything; only the code itself counts.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let mut uses = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let path: Vec<&str> = code[at + 7..]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .collect();
            // The longest prefix that is a module.
            if let Some(m) = (1..=path.len()).rev().map(|k| path[..k].join("::")).find(|m| modules.contains(m)) {
                uses.insert(m);
            }
        }
        let me = name(f);
        uses.remove(&me);
        if !me.is_empty() && !f.ends_with("decoder_fuzz.rs") {
            graph.insert(me, uses);
        }
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `module` cut to its first `depth` parts (`engine::backend::s3` → `engine`).
fn at_depth(module: &str, depth: usize) -> String {
    module.split("::").take(depth).collect::<Vec<_>>().join("::")
}

/// A circle of the graph folded to `depth`, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>, depth: usize) -> Option<Vec<String>> {
    let mut folded: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, uses) in graph {
        let from = at_depth(m, depth);
        for u in uses {
            let to = at_depth(u, depth);
            // Parents and children of one folded module are one node.
            if from != to && !from.is_empty() && !to.is_empty() {
                folded.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut circle = path[i..].to_vec();
            circle.push(n.to_string());
            return Some(circle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    folded.keys().find_map(|n| visit(n, &folded, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_its_way_back_to_itself() {
    let graph = module_graph();
    assert!(graph.contains_key("engine::gc") && graph.contains_key("cli::run"), "{:?}", graph.keys());
    for depth in [1, 2] {
        if let Some(circle) = find_circle(&graph, depth) {
            panic!("an import circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_engine_knows_nothing_of_jobs_hooks_or_databases() {
    // Besides itself, the engine uses only leaves: errors, private files,
    // and `units` (sizes, durations, text made safe to show), which use
    // nothing of the crate but errors.
    let graph = module_graph();
    let leaves = ["error", "fsutil", "units"];
    for (module, uses) in graph.iter().filter(|(m, _)| m.starts_with("engine")) {
        let outside: Vec<&String> =
            uses.iter().filter(|u| !u.starts_with("engine") && !leaves.contains(&u.as_str())).collect();
        assert!(outside.is_empty(), "{module} uses {outside:?}");
    }
    let units = graph.get("units").expect("a module `units`");
    assert!(units.iter().all(|u| u == "error"), "units must stay a leaf: it uses {units:?}");
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b::x".to_string()]));
    g.insert("b::x".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_circle(&g, 1).is_some());
    g.remove("b::x");
    assert!(find_circle(&g, 1).is_none());
}
