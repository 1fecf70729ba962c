//! The runtime crate's modules import each other without a cycle: what
//! docs/ARCHITECTURE.md's module map claims, checked here rather than stated.
//!
//! The graph: one node per file of `runtime/src` (a folder's `mod.rs` is the folder's
//! node, `strategy/data.rs` is `strategy/data`); an edge for every path
//! `crate::<module>[::<file>]` in a file's code, and for every `super::<sibling>`
//! inside a folder. A file's `super::Type` (its folder's own items) is not an edge: the
//! files of a room may use what their room defines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, as (node name, source).
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("the source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under the root");
            let mut name = relative
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            if let Some(folder) = name.strip_suffix("/mod") {
                name = folder.to_owned();
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            out.push((name, text));
        }
    }
}

/// The source without `//` comments (doc comments name modules in links).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // Not inside a string such as "postgres://".
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier `s` starts with.
fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The identifiers that follow each `prefix` in `code` (`prefix{a, b}` gives both).
fn after(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            found.extend(group[..end].split(',').map(|p| ident(p.trim())));
        } else {
            found.push(ident(rest));
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/src"));
    let mut files = Vec::new();
    sources(root, root, &mut files);
    let nodes: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in &files {
        let code = code(text);
        let mut targets = Vec::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let top = ident(rest);
            let below = rest[top.len()..].strip_prefix("::").map(ident);
            match below.map(|b| format!("{top}/{b}")) {
                Some(file) if nodes.contains(&file) => targets.push(file),
                _ => targets.push(top),
            }
        }
        if let Some((folder, _)) = name.rsplit_once('/') {
            for sibling in after(&code, "super::") {
                targets.push(format!("{folder}/{sibling}"));
            }
        }
        for target in targets {
            if &target != name && nodes.contains(&target) && target != "lib" {
                edges.entry(name.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// A cycle through `from`, if there is one (depth-first).
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut found = path[i..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(found) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

#[test]
fn the_runtime_modules_import_no_cycle() {
    let edges = graph();
    // The check sees the imports it is about.
    assert!(edges["entity"].contains("column"), "{edges:?}");
    assert!(edges["strategy/row"].contains("mobility/copy"), "{edges:?}");
    assert!(edges["migrate"].contains("repository"), "{edges:?}");
    if let Some(found) = cycle(&edges) {
        panic!("an import cycle: {}", found.join(" -> "));
    }
}

#[test]
fn a_cycle_is_found() {
    let mut edges = graph();
    edges
        .entry("column".to_owned())
        .or_default()
        .insert("entity".to_owned());
    let found = cycle(&edges).expect("the planted cycle");
    assert!(
        found.contains(&"column".to_owned()) && found.contains(&"entity".to_owned()),
        "{found:?}"
    );
}
