//! `cargo xtask layering`: no import circles between the modules of any
//! crate. Every module's references to another module of its crate count:
//! `use` items and paths written inline (`crate::fetch::ensure_tree(..)`,
//! `super::report::Report`, `checks::run(..)` for a child module). A module
//! that two others need must sit in a leaf, never in one of the two, so the
//! graph has no cycle. Test modules (`#[cfg(test)]`) are left out: they read
//! their parent by design. `cargo test` runs the same check on every crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use syn::visit::Visit;

use crate::project::Project;

#[derive(clap::Args)]
pub struct Layering {}

/// Each crate's root file, under the project's root.
pub const CRATES: [(&str, &str); 7] = [
    ("llorch_checkpoint_spec", "extractor/spec/src/lib.rs"),
    (
        "llorch_checkpoint_matching",
        "extractor/matching/src/lib.rs",
    ),
    ("llorch_checkpoint_report", "extractor/report/src/lib.rs"),
    ("llorch_checkpoint_compare", "extractor/compare/src/lib.rs"),
    ("llorch_checkpoint_extractor", "extractor/src/lib.rs"),
    ("llorch_checkpoint_golden", "extractor/golden/src/lib.rs"),
    ("xtask", "xtask/src/main.rs"),
];

impl Layering {
    pub fn run(self, project: &Project) -> Result<()> {
        let mut circles = 0;
        for (name, root) in CRATES {
            let graph = Graph::of_crate(&project.root().join(root))?;
            let found = graph.cycles();
            println!(
                "{name}: {} modules, {} references between them, {}",
                graph.modules.len(),
                graph.edges.len(),
                match found.len() {
                    0 => "no cycles".to_string(),
                    n => format!("{n} cycle(s)"),
                }
            );
            for cycle in &found {
                println!("  cycle: {}", cycle.join(" <-> "));
            }
            circles += found.len();
        }
        if circles > 0 {
            bail!("{circles} import circle(s): move what both sides need into a leaf module");
        }
        Ok(())
    }
}

/// A crate's modules (`a::b`, the root as ``) and which refers to which.
pub struct Graph {
    pub modules: BTreeSet<String>,
    pub edges: BTreeSet<(String, String)>,
}

impl Graph {
    pub fn of_crate(root: &Path) -> Result<Graph> {
        let mut parsed = Vec::new();
        read_file(root, &[], &mut parsed)?;
        let mut krate = Crate::default();
        let mut references = Vec::new();
        for (path, items) in &parsed {
            let mut refs = References::default();
            for item in items {
                refs.visit_item(item);
            }
            krate.modules.insert(path.clone());
            krate.aliases.insert(path.clone(), refs.aliases);
            references.push((path, refs.paths));
        }
        let mut edges = BTreeSet::new();
        for (path, paths) in references {
            for target in paths.iter().filter_map(|p| krate.resolve(path, p, 0)) {
                if &target != path {
                    edges.insert((path.join("::"), target.join("::")));
                }
            }
        }
        Ok(Graph {
            modules: krate.modules.iter().map(|m| m.join("::")).collect(),
            edges,
        })
    }

    pub fn cycles(&self) -> Vec<Vec<String>> {
        let named = |m: &str| match m {
            "" => "(root)".to_string(),
            m => m.to_string(),
        };
        let edges: Vec<(String, String)> = self
            .edges
            .iter()
            .map(|(a, b)| (named(a), named(b)))
            .collect();
        cycles(&edges)
    }
}

/// Parses the module in `file` and, depth first, every module it declares,
/// test modules aside: (module path, its items).
fn read_file(
    file: &Path,
    path: &[String],
    out: &mut Vec<(Vec<String>, Vec<syn::Item>)>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let items = syn::parse_file(&text)
        .with_context(|| format!("cannot parse {}", file.display()))?
        .items;
    // `mod x;` is x.rs beside a crate root or a mod.rs, else in the folder named after the file.
    let dir = match file.file_stem().and_then(|s| s.to_str()) {
        Some("lib" | "main" | "mod") => file.parent().context("a file in a folder")?.to_path_buf(),
        _ => file.with_extension(""),
    };
    read_items(items, &dir, path, out)
}

fn read_items(
    items: Vec<syn::Item>,
    dir: &Path,
    path: &[String],
    out: &mut Vec<(Vec<String>, Vec<syn::Item>)>,
) -> Result<()> {
    for item in &items {
        let syn::Item::Mod(m) = item else { continue };
        if is_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        let child = [path, std::slice::from_ref(&name)].concat();
        match &m.content {
            Some((_, inline)) => read_items(inline.clone(), &dir.join(&name), &child, out)?,
            None => {
                let file = [
                    dir.join(format!("{name}.rs")),
                    dir.join(&name).join("mod.rs"),
                ]
                .into_iter()
                .find(|f| f.is_file())
                .with_context(|| {
                    format!(
                        "module {} has no file in {}",
                        child.join("::"),
                        dir.display()
                    )
                })?;
                read_file(&file, &child, out)?;
            }
        }
    }
    out.push((path.to_vec(), items));
    Ok(())
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every path a module's own items write (not those of modules inside it),
/// and the names its `use` items bring in, with the paths they stand for.
#[derive(Default)]
struct References {
    paths: Vec<Vec<String>>,
    aliases: BTreeMap<String, Vec<String>>,
}

impl<'ast> Visit<'ast> for References {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    /// `pub(super)` says who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut used = Vec::new();
        flatten_use(&item.tree, &mut Vec::new(), &mut used);
        for (alias, path) in used {
            if let Some(alias) = alias {
                self.aliases.insert(alias, path.clone());
            }
            self.paths.push(path);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.paths
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// A `use` tree as (the name it brings in, the path it stands for).
type Used = (Option<String>, Vec<String>);

fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Used>) {
    let path = |name: &syn::Ident| [prefix.clone(), vec![name.to_string()]].concat();
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push((Some(n.ident.to_string()), path(&n.ident))),
        syn::UseTree::Rename(r) => out.push((Some(r.rename.to_string()), path(&r.ident))),
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| flatten_use(t, prefix, out)),
    }
}

/// A crate's modules, and the names each one's `use` items bring in.
#[derive(Default)]
struct Crate {
    modules: BTreeSet<Vec<String>>,
    aliases: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
}

impl Crate {
    /// The module of the crate a path from module `from` lands in: the
    /// longest run of its leading segments that names a module (`crate::`,
    /// `super::`, `self::` or a child's name first), then through a name
    /// that module's `use` brings in (a re-export: `crate::Options` is where
    /// lib.rs's `pub use` finds it); none for other crates and locals.
    fn resolve(&self, from: &[String], path: &[String], depth: usize) -> Option<Vec<String>> {
        let (mut base, mut rest) = (from.to_vec(), path);
        match rest.first().map(String::as_str)? {
            "crate" => (base, rest) = (Vec::new(), &rest[1..]),
            "self" => rest = &rest[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            first => {
                let child = [from, &[first.to_string()]].concat();
                if !self.modules.contains(&child) {
                    return None;
                }
            }
        }
        for segment in rest {
            let deeper = [&base[..], std::slice::from_ref(segment)].concat();
            if self.modules.contains(&deeper) {
                base = deeper;
                continue;
            }
            let alias = self.aliases.get(&base).and_then(|a| a.get(segment));
            if let Some(alias) = alias.filter(|_| base != from && depth < 8) {
                return self.resolve(&base, alias, depth + 1).or(Some(base));
            }
            break;
        }
        Some(base)
    }
}

/// The strongly connected components of more than one module (Tarjan's
/// algorithm, iterative), each sorted; none when the graph is acyclic.
fn cycles(edges: &[(String, String)]) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    let nodes: Vec<&str> = next.keys().copied().collect();
    let (mut index, mut low, mut on_stack) = (BTreeMap::new(), BTreeMap::new(), BTreeSet::new());
    let (mut stack, mut found, mut counter) = (Vec::new(), Vec::new(), 0usize);
    for &root in &nodes {
        if index.contains_key(root) {
            continue;
        }
        // (node, how many of its successors are done)
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut done)) = work.last_mut() {
            if *done == 0 && !index.contains_key(v) {
                index.insert(v, counter);
                low.insert(v, counter);
                counter += 1;
                stack.push(v);
                on_stack.insert(v);
            }
            if let Some(&w) = next[v].get(*done) {
                *done += 1;
                if !index.contains_key(w) {
                    work.push((w, 0));
                } else if on_stack.contains(w) {
                    low.insert(v, low[v].min(index[w]));
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low.insert(parent, low[parent].min(low[v]));
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    found.push(component);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_circle_is_found_and_a_layered_graph_has_none() {
        let layered = edges(&[
            ("run", "decode"),
            ("decode", "captured"),
            ("run", "captured"),
        ]);
        assert!(cycles(&layered).is_empty());
        let circle = edges(&[
            ("run", "decode"),
            ("decode", "output"),
            ("output", "run"),
            ("x", "run"),
        ]);
        assert_eq!(cycles(&circle), [["decode", "output", "run"]]);
        let two = edges(&[("a", "b"), ("b", "a"), ("c", "d"), ("d", "c"), ("b", "c")]);
        assert_eq!(cycles(&two).len(), 2);
    }

    /// A small crate on disk: an inline path is a reference as much as a
    /// `use` is; a test module's are not.
    #[test]
    fn inline_paths_count_and_test_modules_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("lib.rs", "mod fetch;\nmod tree;\nmod model;\n");
        write(
            "fetch.rs",
            "pub fn ensure() { crate::tree::hashes(); }\n#[cfg(test)]\nmod tests { use crate::model::*; }\n",
        );
        write(
            "tree.rs",
            "use crate::fetch;\npub fn hashes() { fetch::ensure(); }\n",
        );
        write(
            "model/mod.rs",
            "mod parts;\npub fn load() { parts::one(); }\n",
        );
        write(
            "model/parts.rs",
            "pub fn one() { super::super::tree::hashes(); }\n",
        );
        let graph = Graph::of_crate(&dir.path().join("lib.rs")).unwrap();
        assert_eq!(
            graph.modules,
            BTreeSet::from(["", "fetch", "tree", "model", "model::parts"].map(String::from))
        );
        let want = [
            ("fetch", "tree"),
            ("tree", "fetch"),
            ("model", "model::parts"),
            ("model::parts", "tree"),
        ];
        assert_eq!(
            graph.edges,
            want.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        );
        assert_eq!(graph.cycles(), [["fetch", "tree"]]);
    }

    /// The house rule, on every crate of the workspace.
    #[test]
    fn no_crate_has_an_import_circle() {
        let project = Project::from_env().unwrap();
        for (name, root) in CRATES {
            let graph = Graph::of_crate(&project.root().join(root)).unwrap();
            assert!(
                graph.edges.len() > 3,
                "{name}: {} edges only",
                graph.edges.len()
            );
            let found = graph.cycles();
            assert!(found.is_empty(), "{name}: import circles {found:?}");
        }
    }
}
