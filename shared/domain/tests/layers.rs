//! The domain's files form layers: no file imports, directly or through others, a file that
//! imports it back. Read from the sources (test code excluded): every `crate::` / `super::`
//! path of a `use` or an expression is resolved to the file that defines the item, through the
//! re-exports of `lib.rs` and the `mod.rs` facades.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path from the crate root, e.g. `["sync", "runner"]`; `[]` is `lib.rs`.
type ModPath = Vec<String>;

struct Source {
    path: ModPath,
    facade: bool,
    code: String,
}

fn module_path(src: &Path, file: &Path) -> (ModPath, bool) {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let facade = last == "mod" || (last == "lib" && parts.is_empty());
    if !facade {
        parts.push(last);
    }
    (parts, facade)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("readable dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "tests") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs")
            && path.file_name().is_some_and(|name| name != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The code of a file without its test module and without comments.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Expand a `use` tree (`a::{b, c::{d, E}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (at, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .flat_map(expand)
        .map(|path| match path.as_str() {
            "self" => prefix.trim_end_matches("::").to_owned(),
            _ => format!("{prefix}{path}"),
        })
        .collect()
}

/// Every `crate::` / `super::` path the code names, and whether it is a re-export.
fn paths(code: &str) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let statement_start = before.rfind([';', '}', '{']).map_or(0, |i| i + 1);
        let head = before[statement_start..].trim();
        let reexport = head.starts_with("pub");
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        let is_use = at == 0
            || rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_whitespace() || c == ')');
        if is_use {
            for path in expand(&after[..end]) {
                found.push((path, reexport));
            }
        }
        rest = &after[end.min(after.len())..];
    }
    for prefix in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            found.push((tail[..len].trim_end_matches(':').to_owned(), false));
            rest = &tail[len..];
        }
    }
    found
}

struct Crate {
    files: BTreeMap<ModPath, Source>,
    /// Facade module → re-exported name → the module it comes from.
    reexports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
}

impl Crate {
    /// The module a path names from `from`, and the name after it.
    fn split(&self, from: &ModPath, path: &str) -> Option<(ModPath, Vec<String>)> {
        let mut segments = path.split("::").map(str::to_owned).peekable();
        let mut module: ModPath = match segments.peek().map(String::as_str) {
            Some("crate") => {
                segments.next();
                Vec::new()
            }
            Some("super") => {
                let mut parent = from.clone();
                while segments.peek().map(String::as_str) == Some("super") {
                    segments.next();
                    parent.pop();
                }
                parent
            }
            _ => return None,
        };
        let rest: Vec<String> = segments.collect();
        let mut taken = 0;
        for segment in &rest {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.files.contains_key(&next) {
                module = next;
                taken += 1;
            } else {
                break;
            }
        }
        Some((module, rest[taken..].to_vec()))
    }

    /// The file that defines what `path` names, seen from `from`.
    fn resolve(&self, from: &ModPath, path: &str) -> Option<ModPath> {
        let (mut module, mut rest) = self.split(from, path)?;
        for _ in 0..8 {
            let Some(name) = rest.first() else { break };
            let Some(source) = self.reexports.get(&module).and_then(|map| map.get(name)) else {
                break;
            };
            module = source.clone();
            rest = rest[1..].to_vec();
        }
        Some(module)
    }
}

fn load(src: &Path) -> Crate {
    let mut files = BTreeMap::new();
    let mut list = Vec::new();
    rust_files(src, &mut list);
    for file in list {
        let (path, facade) = module_path(src, &file);
        let text = fs::read_to_string(&file).expect("readable source");
        let code = code_of(&text);
        files.insert(path.clone(), Source { path, facade, code });
    }
    let mut krate = Crate {
        files,
        reexports: BTreeMap::new(),
    };
    let mut reexports = BTreeMap::new();
    for source in krate.files.values().filter(|source| source.facade) {
        let mut names = BTreeMap::new();
        for (path, reexport) in paths(&source.code) {
            if !reexport {
                continue;
            }
            let full = if path.starts_with("crate::") || path.starts_with("super::") {
                path
            } else {
                let mut prefix = source.path.join("::");
                if !prefix.is_empty() {
                    prefix.push_str("::");
                }
                format!("crate::{prefix}{path}")
            };
            if let Some((module, rest)) = krate.split(&source.path, &full)
                && let Some(name) = rest.last()
            {
                names.insert(name.clone(), module);
            }
        }
        reexports.insert(source.path.clone(), names);
    }
    krate.reexports = reexports;
    krate
}

fn edges(krate: &Crate) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut edges = BTreeMap::new();
    for source in krate.files.values() {
        let targets: &mut BTreeSet<ModPath> = edges.entry(source.path.clone()).or_default();
        for (path, reexport) in paths(&source.code) {
            if reexport && source.facade {
                continue;
            }
            if let Some(target) = krate.resolve(&source.path, &path)
                && target != source.path
            {
                targets.insert(target);
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    fn visit(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn name(path: &ModPath) -> String {
    if path.is_empty() {
        "lib".to_owned()
    } else {
        path.join("/")
    }
}

#[test]
fn the_domain_files_import_each_other_in_layers_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let krate = load(&src);
    let edges = edges(&krate);
    assert!(edges.len() > 20, "the sources were found: {}", edges.len());
    // The checker sees real imports: the sync core's entry point uses the runner.
    assert!(
        edges[&vec!["sync".to_owned(), "to_crm".to_owned()]]
            .contains(&vec!["sync".to_owned(), "runner".to_owned()])
    );
    if let Some(cycle) = find_cycle(&edges) {
        let cycle: Vec<String> = cycle.iter().map(name).collect();
        panic!("import circle: {}", cycle.join(" → "));
    }
}

#[test]
fn a_circle_is_found() {
    let a = vec!["a".to_owned()];
    let b = vec!["b".to_owned()];
    let edges = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone()])),
    ]);
    assert_eq!(find_cycle(&edges), Some(vec![a.clone(), b, a]));
}

#[test]
fn use_trees_expand_to_their_paths() {
    assert_eq!(
        expand("crate::ports::{Ports, sync::{A, b::C}, self}"),
        vec![
            "crate::ports::Ports",
            "crate::ports::sync::A",
            "crate::ports::sync::b::C",
            "crate::ports"
        ]
    );
}
