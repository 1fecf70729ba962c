//! The runtime crate's modules import each other without a cycle and only downwards,
//! floor by floor, as docs/ARCHITECTURE.md's module map says: the map is read from
//! the document and checked against the code, so neither drifts from the other.
//!
//! The graph: one node per file of `runtime/src` (a folder's `mod.rs` is the folder's
//! node, `mobility/copy.rs` is `mobility/copy`); an edge for every path
//! `crate::<module>[::<file>]` in a file's code (a group `crate::{a::X, b}` gives one
//! per member), and for every `super::<sibling>` inside a folder. A file's `super::Type` (its folder's own items) is not an edge: the
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
    edges_of(&files)
}

/// The edges among `files` (node name, source).
fn edges_of(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let nodes: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in files {
        let code = code(text);
        let mut targets = Vec::new();
        let mut rest = code.as_str();
        let target = |path: &str| {
            let top = ident(path);
            let below = path[top.len()..].strip_prefix("::").map(ident);
            match below.map(|b| format!("{top}/{b}")) {
                Some(file) if nodes.contains(&file) => file,
                _ => top,
            }
        };
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            match rest.strip_prefix('{') {
                // `crate::{a::X, b::{Y, Z}}`: each member's first two names.
                Some(group) => {
                    let mut depth = 0;
                    let end = group
                        .find(|c| {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => return true,
                                '}' => depth -= 1,
                                _ => {}
                            }
                            false
                        })
                        .unwrap_or(group.len());
                    let mut depth = 0;
                    let mut start = 0;
                    for (k, c) in group[..end].char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                targets.push(target(group[start..k].trim()));
                                start = k + 1;
                            }
                            _ => {}
                        }
                    }
                    targets.push(target(group[start..end].trim()));
                }
                None => targets.push(target(rest)),
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

/// The module map of docs/ARCHITECTURE.md: (floor, node, lines) per row, in order.
fn module_map() -> Vec<(String, String, usize)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/ARCHITECTURE.md"
    ))
    .expect("docs/ARCHITECTURE.md");
    let mut rows = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | floor | `file.rs` | lines | what |
        if cells.len() < 5 || !cells[2].starts_with('`') || !cells[2].ends_with(".rs`") {
            continue;
        }
        let Ok(lines) = cells[3].parse::<usize>() else {
            continue;
        };
        let file = cells[2].trim_matches('`').trim_end_matches(".rs");
        let node = file.strip_suffix("/mod").unwrap_or(file).to_owned();
        rows.push((cells[1].to_owned(), node, lines));
    }
    rows
}

/// The imports in `edges` that go from a floor of `map` to a higher one.
fn upward(
    map: &[(String, String, usize)],
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut floors: Vec<&str> = Vec::new();
    let mut floor_of = BTreeMap::new();
    for (floor, node, _) in map {
        if floors.last() != Some(&floor.as_str()) {
            floors.push(floor);
        }
        floor_of.insert(node.as_str(), floors.len() - 1);
    }
    let mut found = Vec::new();
    for (from, targets) in edges {
        for to in targets {
            if let (Some(a), Some(b)) = (floor_of.get(from.as_str()), floor_of.get(to.as_str()))
                && b > a
            {
                found.push(format!(
                    "`{from}` (floor `{}`) imports `{to}` (floor `{}`, above it)",
                    floors[*a], floors[*b]
                ));
            }
        }
    }
    found
}

#[test]
fn the_module_map_lists_every_file_and_every_import_goes_down() {
    let map = module_map();
    let mut floors: Vec<String> = Vec::new();
    let mut floor_of = BTreeMap::new();
    for (floor, node, _) in &map {
        if floors.last() != Some(floor) {
            assert!(
                !floors.contains(floor),
                "floor `{floor}` appears twice in the module map: list its files together"
            );
            floors.push(floor.clone());
        }
        assert!(
            floor_of.insert(node.clone(), floors.len() - 1).is_none(),
            "`{node}` is listed twice"
        );
    }
    assert!(
        floors.len() >= 5,
        "the module map was not found: {floors:?}"
    );

    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/src"));
    let mut files = Vec::new();
    sources(root, root, &mut files);
    let mut problems = Vec::new();
    for (node, text) in &files {
        let Some((_, _, listed)) = map.iter().find(|(_, n, _)| n == node) else {
            problems.push(format!("`{node}` is not in the module map"));
            continue;
        };
        let lines = text.lines().count();
        if lines.abs_diff(*listed) > (listed * 15 / 100).max(40) {
            problems.push(format!("`{node}` has {lines} lines; the map says {listed}"));
        }
    }
    for (_, node, _) in &map {
        if !files.iter().any(|(n, _)| n == node) {
            problems.push(format!(
                "the module map lists `{node}`, which is not a file"
            ));
        }
    }
    problems.extend(upward(&map, &graph()));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_import_upwards_is_found() {
    let map = module_map();
    let mut edges = graph();
    assert!(upward(&map, &edges).is_empty());
    // A planted import of the manager by the tenant model is reported, naming both.
    edges
        .entry("tenant".to_owned())
        .or_default()
        .insert("manager".to_owned());
    let found = upward(&map, &edges);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("`tenant` (floor `model`)") && found[0].contains("`manager`"),
        "{found:?}"
    );
}

#[test]
fn grouped_crate_paths_are_edges() {
    // Imports merged by crate (`use crate::{a::X, b::{Y, Z}}`) name every module: the
    // check does not go blind if rustfmt groups them.
    let file = |name: &str, text: &str| (name.to_owned(), text.to_owned());
    let edges = edges_of(&[
        file(
            "a",
            "use crate::{b::X, c::{Y, Z}, d::e::F};\nfn f() { crate::g::h(); }",
        ),
        file("b", ""),
        file("c", ""),
        file("d/e", ""),
        file("g", ""),
    ]);
    let expected: BTreeSet<String> = ["b", "c", "d/e", "g"].map(String::from).into();
    assert_eq!(edges["a"], expected);
}
