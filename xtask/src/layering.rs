//! `cargo xtask layering`: no import circles between the modules of any
//! crate. `cargo-modules` (a crates.io tool on rust-analyzer) draws each
//! crate's "uses" edges between modules; a module that two others need must
//! sit in a leaf, never in one of the two, so the graph has no cycle.
//! (`cargo modules dependencies --acyclic` itself also counts a type and its
//! own methods as a cycle, so the modules' graph is checked here.)

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::project::Project;

#[derive(clap::Args)]
pub struct Layering {}

/// cargo-modules 0.28 needs rustc 1.98; 0.27 works on this project's 1.89 and later.
const INSTALL: &str = "cargo install cargo-modules@0.27.0 --locked";

/// Each crate's code that is checked: package and target.
const TARGETS: [(&str, &str); 4] = [
    ("llorch-checkpoint-spec", "--lib"),
    ("llorch-checkpoint-compare", "--lib"),
    ("llorch-checkpoint-extractor", "--lib"),
    ("xtask", "--bin=xtask"),
];

impl Layering {
    pub fn run(self, project: &Project) -> Result<()> {
        let sh = project.shell()?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        cmd!(sh, "{cargo} modules --version")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("cargo-modules is not installed: {INSTALL}"))?;
        let mut circles = 0;
        for (package, target) in TARGETS {
            let dot = cmd!(sh, "{cargo} modules dependencies -p {package} {target} --no-externs --no-sysroot --no-fns --no-types --no-traits --no-owns")
                .quiet()
                .ignore_stderr()
                .read()
                .with_context(|| format!("cargo modules could not read {package}"))?;
            let edges = use_edges(&dot);
            let modules: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
            let found = cycles(&edges);
            println!(
                "{package} {target}: {} modules, {} use edges between them, {}",
                modules.len(),
                edges.len(),
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

/// The `uses` edges of cargo-modules' DOT output: `"a" -> "b" [label="uses", ...]`.
fn use_edges(dot: &str) -> Vec<(String, String)> {
    dot.lines()
        .filter(|l| l.contains("[label=\"uses\""))
        .filter_map(|l| {
            let mut quoted = l.split('"').skip(1).step_by(2);
            Some((quoted.next()?.to_string(), quoted.next()?.to_string()))
        })
        .filter(|(a, b)| a != b)
        .collect()
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

    #[test]
    fn use_edges_are_read_from_the_dot_output() {
        let dot = r##"    "xtask::model" -> "xtask::model::parts" [label="uses", color="#7f7f7f", style="dashed"] [constraint=false]; // "uses" edge
    "xtask" -> "xtask::model" [label="owns", color="#000000", style="solid"] [constraint=true]; // "owns" edge"##;
        assert_eq!(
            use_edges(dot),
            edges(&[("xtask::model", "xtask::model::parts")])
        );
    }
}
