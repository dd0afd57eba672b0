//! Checks that keep `docs/` honest, run by `cargo test --workspace` (and so by `cargo xtask test`):
//!
//! * the SVG diagrams under `docs/guide/diagrams/` are exactly what their generator,
//!   `make_diagrams.py` beside them, writes today (regenerated into a temporary directory and
//!   compared byte for byte), so a diagram cannot drift from its source;
//! * every relative Markdown link in `docs/` points at a file that exists, and a link whose text
//!   is a code span naming an item (`` [`E1000::receive_with`](../../drivers/e1000/src/lib.rs) ``)
//!   points at a Rust file that still declares that name — so the guide's "this step is done by
//!   that function" links fail loudly when the code is renamed.
#![cfg(test)]

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_path_buf()
}

fn svgs_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    names.sort();
    names
}

#[test]
fn diagrams_are_generated_from_their_source() {
    let dir = repo().join("docs/guide/diagrams");
    let script = dir.join("make_diagrams.py");
    let out = std::env::temp_dir().join(format!("dma-kernel-diagrams-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let status =
        Command::new("python3").arg(&script).arg("--out").arg(&out).status().unwrap_or_else(|e| {
            panic!("cannot run python3 {} (python3 is needed for this check): {e}", script.display())
        });
    assert!(status.success(), "{} failed", script.display());
    let fresh = svgs_in(&out);
    let checked_in = svgs_in(&dir);
    assert!(!fresh.is_empty(), "the generator wrote no SVG files");
    assert_eq!(
        fresh,
        checked_in,
        "docs/guide/diagrams/*.svg differ from what make_diagrams.py writes: run `python3 {}` and commit",
        script.display()
    );
    for name in &fresh {
        let new = fs::read(out.join(name)).unwrap();
        let old = fs::read(dir.join(name)).unwrap();
        assert!(
            new == old,
            "docs/guide/diagrams/{name} is stale: run `python3 docs/guide/diagrams/make_diagrams.py` and commit the result"
        );
    }
    let _ = fs::remove_dir_all(&out);
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// A link found in a Markdown file: its text, its target, its line number.
#[derive(Debug, PartialEq)]
struct Link {
    text: String,
    target: String,
    line: usize,
}

/// Inline links `[text](target)` and reference definitions `[label]: target`, outside fenced
/// code blocks and inline code spans.
fn links(markdown: &str) -> Vec<Link> {
    let mut found = Vec::new();
    let mut in_fence = false;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[')
            && let Some((label, target)) = rest.split_once("]:")
            && !label.contains(']')
        {
            let target = target.split_whitespace().next().unwrap_or("").to_string();
            found.push(Link { text: label.to_string(), target, line: n + 1 });
            continue;
        }
        let bytes = line.as_bytes();
        let mut i = 0;
        let mut in_code = false;
        let mut text_start: Vec<usize> = Vec::new();
        while i < bytes.len() {
            match bytes[i] {
                b'`' => {
                    // A code span inside link text is part of the text; elsewhere it hides brackets.
                    if text_start.is_empty() {
                        in_code = !in_code;
                    }
                }
                b'[' if !in_code => text_start.push(i + 1),
                b']' if !in_code => {
                    if let Some(start) = text_start.pop()
                        && bytes.get(i + 1) == Some(&b'(')
                        && let Some(close) = line[i + 2..].find(')')
                    {
                        let raw = &line[i + 2..i + 2 + close];
                        let target = raw.split_whitespace().next().unwrap_or("").to_string();
                        found.push(Link { text: line[start..i].to_string(), target, line: n + 1 });
                        i += 2 + close;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    found
}

/// The item a link's text names, if the text is one code span such as `` `Domain::unmap` ``,
/// `` `E1000::receive_with()` `` or `` `dev.map(buf, dir)` ``: (name, whether it is a call).
fn named_item(text: &str) -> Option<(String, bool)> {
    let inner = text.strip_prefix('`')?.strip_suffix('`')?;
    if inner.contains('`') || inner.contains(' ') && !inner.contains('(') {
        return None;
    }
    // A file name (`controller.rs`, `block/mod.rs`) names a file, not an item.
    if inner.contains('/') || [".rs", ".md", ".py", ".svg", ".toml"].iter().any(|ext| inner.ends_with(ext)) {
        return None;
    }
    let (head, call) = match inner.find('(') {
        Some(p) => (&inner[..p], true),
        None => (inner, false),
    };
    let head = head.split('<').next().unwrap_or(head);
    let last = head.rsplit("::").next().unwrap_or(head);
    let last = last.rsplit('.').next().unwrap_or(last).trim_start_matches('&');
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    ident(last).then(|| (last.to_string(), call))
}

fn contains_word(hay: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    hay.match_indices(word).any(|(at, _)| {
        let before = hay[..at].chars().next_back();
        let after = hay[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

fn declares_fn(source: &str, name: &str) -> bool {
    source.match_indices("fn ").any(|(at, _)| {
        let rest = &source[at + 3..];
        rest.starts_with(name) && !rest[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `path` with `.` and `..` folded away, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn relative_links_in_docs_resolve() {
    let root = repo();
    let mut files = Vec::new();
    markdown_files(&root.join("docs"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no Markdown files under docs/");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        for link in links(&text) {
            let target = link.target.as_str();
            if target.is_empty() || target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path_part = target.split('#').next().unwrap_or(target);
            let resolved = normalise(&file.parent().unwrap().join(path_part));
            checked += 1;
            if !resolved.starts_with(&root) {
                problems.push(format!("{shown}:{}: `{target}` leaves the repository", link.line));
                continue;
            }
            if !resolved.exists() {
                problems.push(format!("{shown}:{}: `{target}` does not exist", link.line));
                continue;
            }
            if resolved.extension().is_some_and(|e| e == "rs")
                && let Some((name, call)) = named_item(&link.text)
            {
                let source = fs::read_to_string(&resolved).unwrap_or_default();
                let ok = if call { declares_fn(&source, &name) } else { contains_word(&source, &name) };
                if !ok {
                    problems.push(format!(
                        "{shown}:{}: link text {} names `{name}`, which {} does not {}",
                        link.line,
                        link.text,
                        path_part,
                        if call { "declare as a fn" } else { "mention" }
                    ));
                }
            }
        }
    }
    assert!(checked > 0, "no relative links found under docs/");
    assert!(problems.is_empty(), "broken links in docs/:\n{}", problems.join("\n"));
}

#[test]
fn link_parser_finds_what_markdown_would() {
    let md = "See [`E1000::transmit_with()`](../e1000.rs) and [the guide](guide/README.md#top).\n\
              ```\n[not](a-link.md)\n```\n`[also not](x.md)` but [yes](y.md \"title\")\n[ref]: z.md\n";
    let found = links(md);
    let targets: Vec<&str> = found.iter().map(|l| l.target.as_str()).collect();
    assert_eq!(targets, ["../e1000.rs", "guide/README.md#top", "y.md", "z.md"]);
    assert_eq!(named_item("`E1000::transmit_with()`"), Some(("transmit_with".into(), true)));
    assert_eq!(named_item("`dev.map(buf, ToDevice)`"), Some(("map".into(), true)));
    assert_eq!(named_item("`DmaPool`"), Some(("DmaPool".into(), false)));
    assert_eq!(named_item("the guide"), None);
    assert_eq!(named_item("`controller.rs`"), None);
    assert_eq!(named_item("`kernel/src/services/block/mod.rs`"), None);
    assert!(declares_fn("pub fn map<B: DmaBuf>(", "map"));
    assert!(!declares_fn("pub fn map_range(", "map"));
    assert!(contains_word("struct DmaPool {", "DmaPool"));
    assert!(!contains_word("DmaPoolBlock", "DmaPool"));
}

/// `inject` (kernel/src/ktest/inject.rs) prints, for each failure it causes, the guide section
/// that explains it, as `docs/guide/FILE § HEADING`: each must name a chapter that exists and a
/// heading that chapter has, so renaming a section cannot leave `inject` pointing nowhere.
#[test]
fn inject_cases_name_guide_sections_that_exist() {
    let source = fs::read_to_string(repo().join("kernel/src/ktest/inject.rs")).expect("inject.rs");
    let refs: Vec<&str> =
        source.lines().filter_map(|l| l.trim().strip_prefix("guide: \"")?.strip_suffix("\",")).collect();
    assert!(refs.len() >= 7, "expected a guide section for every inject case, found {refs:?}");
    for r in refs {
        let (file, heading) = r.split_once(" § ").unwrap_or_else(|| panic!("`{r}` is not `FILE § HEADING`"));
        let text = fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file} (from `{r}`): {e}"));
        let found = text.lines().any(|l| l.trim_start_matches('#').trim() == heading && l.starts_with('#'));
        assert!(found, "{file} has no heading `{heading}` (named by an inject case)");
    }
}
