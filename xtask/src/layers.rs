//! The kernel's layer rule, checked by `cargo test -p xtask` (and so by `cargo xtask test`).
//!
//! `kernel/src` is grouped in layers, one folder each (`docs/architecture.md`, "Layers"). A
//! module may use its own layer and the layers below it, never one above: a lower layer that
//! must reach up (the crash path telling the test runner, the serial port mirroring to the
//! screen, the shell running a service's command) gets a function registered with it at boot.
//!
//! The check reads every `kernel/src/**/*.rs`, finds each `crate::NAME` path outside comments
//! and string literals — in `use` lines, brace groups (`use crate::{a, b::c}`) and inline
//! paths, `$crate::` in macros too — and maps `NAME` to its layer with [`LAYERS`]. A path into
//! a higher layer, or to a name no layer lists, fails the test with the file and line.
//! Relative paths (`super::`) stay inside one module tree, so inside one layer.
#![cfg(test)]

use std::fs;
use std::path::{Path, PathBuf};

/// The layers from the bottom up, each with the names under `crate::` that belong to it: its
/// folder, and the macros exported at the crate root by its modules. `lib` and `main` are the
/// crate root's own files.
const LAYERS: &[(&str, &[&str])] = &[
    ("registry", &["registry"]),
    ("mm", &["mm"]),
    ("firmware", &["firmware"]),
    // `print!` and `println!` are exported by arch::serial.
    ("arch", &["arch", "print", "println"]),
    ("platform", &["platform"]),
    ("services", &["services"]),
    ("ui", &["ui"]),
    // `check!` is exported by ktest.
    ("test-support", &["ktest", "bench", "check"]),
    ("boot", &["boot", "lib", "main"]),
];

/// The index of the layer `name` belongs to.
fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, names)| names.contains(&name))
}

/// The name under `crate::` of the top-level module a file belongs to (`arch/apic.rs` → `arch`,
/// `bench.rs` → `bench`, `lib.rs` → `lib`).
fn top_module(relative: &Path) -> String {
    let first = relative.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// `source` with comments and the contents of string and character literals blanked out
/// (newlines kept, so offsets still give line numbers).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && !ident_before && matches!(next, Some('"') | Some('#')) {
            // A raw string: r"…" or r#"…"#.
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let end: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            out.push_str(&" ".repeat(2 + hashes));
            i += 2 + hashes;
            while i < chars.len() && !chars[i..].iter().take(end.len()).copied().eq(end.chars()) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.push_str(&" ".repeat(end.len().min(chars.len() - i)));
            i += end.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{…}'.
            out.push_str("  ");
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every `crate::NAME` in `code` with its line: the first segment after `crate::`, or each
/// first segment in a brace group.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item_start = 0;
            let offset = at + code[at..].find('{').unwrap_or(0) + 1;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        push_item(&mut found, &group[item_start..i], offset + item_start, &line_of, &ident);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_item(&mut found, &group[item_start..i], offset + item_start, &line_of, &ident);
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((line_of(at), name));
            }
        }
    }
    found
}

fn push_item(
    found: &mut Vec<(usize, String)>,
    item: &str,
    offset: usize,
    line_of: &dyn Fn(usize) -> usize,
    ident: &dyn Fn(&str) -> String,
) {
    let leading = item.len() - item.trim_start().len();
    let name = ident(item.trim_start());
    if !name.is_empty() && name != "self" {
        found.push((line_of(offset + leading), name));
    }
}

/// The layer-rule violations in one file (`relative` to `kernel/src`).
fn check_file(relative: &Path, source: &str) -> Vec<String> {
    let file = format!("kernel/src/{}", relative.display());
    let module = top_module(relative);
    let Some(own) = layer_of(&module) else {
        return vec![format!("{file}: `{module}` belongs to no layer (add it to LAYERS in xtask/src/layers.rs)")];
    };
    let mut violations = Vec::new();
    for (line, name) in crate_paths(&code_only(source)) {
        match layer_of(&name) {
            None => violations.push(format!(
                "{file}:{line}: `crate::{name}` belongs to no layer (add it to LAYERS in xtask/src/layers.rs)"
            )),
            Some(target) if target > own => violations.push(format!(
                "{file}:{line}: `crate::{name}`: layer `{}` must not import from `{}`, a layer above it",
                LAYERS[own].0, LAYERS[target].0
            )),
            Some(_) => {}
        }
    }
    violations
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn kernel_src() -> PathBuf {
    crate::build::workspace_root().join("kernel/src")
}

#[test]
fn kernel_modules_import_only_from_their_own_layer_or_below() {
    let src = kernel_src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let mut violations = Vec::new();
    for path in &files {
        let source = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        violations.extend(check_file(path.strip_prefix(&src).unwrap(), &source));
    }
    assert!(violations.is_empty(), "the layer rule is broken:\n{}", violations.join("\n"));
}

#[test]
fn every_module_of_the_crate_root_has_a_layer() {
    let lib = fs::read_to_string(kernel_src().join("lib.rs")).expect("kernel/src/lib.rs");
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ").and_then(|r| r.strip_suffix(';')) {
            assert!(layer_of(name).is_some(), "kernel/src/lib.rs declares `{name}`, which no layer in LAYERS lists");
        }
    }
}

#[test]
fn the_check_finds_upward_imports_and_ignores_comments_and_strings() {
    let source = "\
use crate::ui::shell; // line 1: arch → ui, up
use crate::mm::memory;
// crate::services::net in a comment
/* crate::services::net in a block comment */
let s = \"crate::ui in a string\";
let r = r#\"crate::ui in a raw string\"#;
let c = '\"'; crate::arch::time::now_us();
use crate::{
    firmware::acpi,
    services::{net, block},
};
macro_rules! m { () => { $crate::ktest::run() } }
use crate::nowhere;
";
    let violations = check_file(Path::new("arch/interrupts.rs"), source);
    assert_eq!(violations.len(), 4, "{violations:#?}");
    assert!(violations[0].starts_with("kernel/src/arch/interrupts.rs:1: `crate::ui`"), "{}", violations[0]);
    assert!(violations[0].contains("layer `arch` must not import from `ui`"), "{}", violations[0]);
    assert!(violations[1].starts_with("kernel/src/arch/interrupts.rs:10: `crate::services`"), "{}", violations[1]);
    assert!(violations[2].starts_with("kernel/src/arch/interrupts.rs:12: `crate::ktest`"), "{}", violations[2]);
    assert!(violations[3].contains(":13: `crate::nowhere` belongs to no layer"), "{}", violations[3]);

    // The same imports from the top are fine; a file outside every layer is reported.
    assert_eq!(check_file(Path::new("boot.rs"), "use crate::ui::shell;\nuse crate::ktest;\n"), Vec::<String>::new());
    assert_eq!(check_file(Path::new("ui/shell.rs"), "use crate::registry::commands;\n"), Vec::<String>::new());
    assert_eq!(check_file(Path::new("stray.rs"), "").len(), 1);
}
