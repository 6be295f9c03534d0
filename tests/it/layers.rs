//! The modules of `src/` depend on each other one way: `http` -> `engine` -> (`states`,
//! `effects`) -> `node`, `spec` and the other low modules. Read from the source text: every
//! `crate::a::b` path (in `use` lines or inline, `super::` resolved) is an edge. Modules are
//! compared at the top level, and inside each folder one level down, as
//! `../shared/tools/import-cycles` does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path (`["effects", "storage", "template"]`) and its source, comments and
/// `#[cfg(test)]` modules left out (a test's `use super::*` is not a dependency).
fn modules() -> Vec<(Vec<String>, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let is_mod = parts.last().is_some_and(|p| p == "mod");
        if is_mod {
            parts.pop();
        }
        if parts == ["main"] || parts == ["lib"] || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = without_tests(&without_comments(&text));
        // `super::` of `a/b.rs` is `a`; of `a/b/mod.rs` it is `a` as well.
        let parent: String = parts[..parts.len() - 1]
            .iter()
            .map(|p| format!("{p}::"))
            .collect();
        let own: String = parts.iter().map(|p| format!("{p}::")).collect();
        let text = text
            .replace("super::", &format!("crate::{parent}"))
            .replace("self::", &format!("crate::{own}"));
        out.push((parts, text));
    }
    out
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cuts `#[cfg(test)]` items (to their closing brace at the same depth).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find(['{', ';']) else {
            break;
        };
        if after.as_bytes()[open] == b';' {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The paths a text names after `crate::`, each as its segments; `crate::a::{b, c::d}`
/// names `a::b` and `a::c::d`.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        expand(rest, Vec::new(), &mut out);
    }
    out
}

fn expand(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut rest = text;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !ident.is_empty() {
            rest = &rest[ident.len()..];
            path.push(ident);
        }
        if let Some(after) = rest.strip_prefix("::") {
            rest = after;
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut end = group.len();
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                for item in split_top(&group[..end]) {
                    expand(item.trim(), path.clone(), out);
                }
                return;
            }
            continue;
        }
        break;
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// Splits a group's items at the commas of its own level.
fn split_top(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Edges at the top level, and inside each folder one level down.
fn graphs() -> Vec<Graph> {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let is_module = |p: &[String]| known.iter().any(|m| m.starts_with(p));
    let mut top = Graph::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    for (module, text) in &modules {
        for path in paths(text) {
            if path.is_empty() || !is_module(&path[..1]) {
                continue;
            }
            if path[0] != module[0] {
                top.entry(module[0].clone())
                    .or_default()
                    .insert(path[0].clone());
            } else if module.len() >= 2
                && path.len() >= 2
                && is_module(&path[..2])
                && path[1] != module[1]
            {
                inner
                    .entry(module[0].clone())
                    .or_default()
                    .entry(module[1].clone())
                    .or_default()
                    .insert(path[1].clone());
            }
        }
    }
    std::iter::once(top).chain(inner.into_values()).collect()
}

/// One cycle of the graph, if it has any.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycles() {
    let cycles: Vec<String> = graphs()
        .iter()
        .filter_map(cycle)
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The top of the stack is named: HTTP sends requests and reads snapshots, it never touches
/// effects; only HTTP and the process's own watchers (signals, systemd) hold the engine.
#[test]
fn layers_run_top_down() {
    let top = &graphs()[0];
    let importers = |of: &str| -> BTreeSet<&str> {
        top.iter()
            .filter(|(_, to)| to.contains(of))
            .map(|(from, _)| from.as_str())
            .collect()
    };
    assert!(
        !top["http"].contains("effects"),
        "http imports effects: {:?}",
        top["http"]
    );
    assert_eq!(
        importers("engine"),
        BTreeSet::from(["http", "signals", "systemd"])
    );
    assert_eq!(importers("http"), BTreeSet::new());
    // The checker itself sees edges (a reader that found none would pass vacuously).
    assert!(top["effects"].contains("node") && top["engine"].contains("report"));
}
