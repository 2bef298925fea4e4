//! The project's own house rules, checked by `cargo test` (as rust-analyzer's
//! `tidy` test does): formatting, files short enough to read whole, and
//! functions a screen long.

use std::path::Path;
use std::process::Command;

/// A hand-written source file longer than this is split by job.
const MAX_LINES: usize = 600;
/// A function longer than this is split into steps that have names. Test
/// code (`tests/`, `tests.rs`, `#[cfg(test)]`, fixtures) is a list of cases
/// and exempt.
const MAX_FN_LINES: usize = 80;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn code_is_formatted() {
    let out = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--check"])
        .current_dir(root())
        .output()
        .expect("cargo fmt runs");
    assert!(
        out.status.success(),
        "run `cargo fmt`:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The hand-written files git tracks with these patterns.
fn tracked(patterns: &[&str]) -> Vec<String> {
    let out = Command::new("git")
        .arg("ls-files")
        .args(patterns)
        .current_dir(root())
        .output()
        .expect("git ls-files runs");
    let generated = ["extractor/src/ffi/bindings.rs"];
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|path| !generated.contains(path))
        .map(String::from)
        .collect()
}

#[test]
fn hand_written_files_are_at_most_600_lines() {
    let listed = tracked(&["*.rs", "*.py", "*.sh"]);
    let long: Vec<String> = listed
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(root().join(path))
                .ok()?
                .lines()
                .count();
            (lines > MAX_LINES).then(|| format!("{path}: {lines} lines"))
        })
        .collect();
    assert!(
        !listed.is_empty() && long.is_empty(),
        "split these by job (at most {MAX_LINES} lines): {long:?}"
    );
}

#[test]
fn functions_are_at_most_80_lines() {
    let listed = tracked(&["*.rs"]);
    let mut long = Vec::new();
    let test_code = |p: &&String| p.contains("/tests/") || p.ends_with("/tests.rs");
    for path in listed.iter().filter(|p| !test_code(p)) {
        let text = std::fs::read_to_string(root().join(path)).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut lengths = FnLengths::default();
        syn::visit::Visit::visit_file(&mut lengths, &file);
        long.extend(
            lengths
                .found
                .into_iter()
                .filter(|(_, lines)| *lines > MAX_FN_LINES)
                .map(|(name, lines)| format!("{path}: {name} {lines} lines")),
        );
    }
    assert!(
        listed.len() > 50 && long.is_empty(),
        "split these into named steps (at most {MAX_FN_LINES} lines): {long:#?}"
    );
}

/// Every function's name and line count, test code left out.
#[derive(Default)]
struct FnLengths {
    found: Vec<(String, usize)>,
}

impl FnLengths {
    fn add(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        self.found.push((name.to_string(), lines));
    }
}

/// `#[cfg(test)]`, `#[cfg(any(test, ...))]`, `#[test]`.
fn is_test_code(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg")
                && a.meta.require_list().is_ok_and(|l| {
                    l.tokens
                        .to_string()
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|w| w == "test")
                }))
    })
}

impl<'ast> syn::visit::Visit<'ast> for FnLengths {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_code(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_code(&f.attrs) {
            self.add(&f.sig.ident, syn::spanned::Spanned::span(f));
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_code(&f.attrs) {
            self.add(&f.sig.ident, syn::spanned::Spanned::span(f));
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
}

/// xtask's commands are leaves: what two of them share, or what verify
/// runs of theirs, lives in a library module (`runs/`, `models/`, ...), so
/// no module but `main.rs` names a command module.
#[test]
fn no_module_imports_a_command() {
    let by_path = format!("crate::{}::", "commands");
    let importers: Vec<String> = tracked(&["xtask/src/*.rs"])
        .into_iter()
        .filter(|path| path != "xtask/src/main.rs")
        .filter(|path| {
            let text = std::fs::read_to_string(root().join(path)).unwrap_or_default();
            let sibling = path.starts_with("xtask/src/commands/")
                && ["compare", "diff_trees", "doctor", "extract"]
                    .iter()
                    .any(|command| text.contains(&format!("super::{command}")));
            text.contains(&by_path) || sibling
        })
        .collect();
    assert!(
        importers.is_empty(),
        "these modules import a command module; move what they use into a library module: {importers:?}"
    );
}
