//! The man pages, shell completions and example configuration committed
//! under packaging/ are what the current command line definition generates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROCFLOW: &str = env!("CARGO_BIN_EXE_procflow");
const REGENERATE: &str =
    "regenerate them with `cargo run --release -p procflow -- generate-docs packaging` \
     (after `rm -r packaging/man packaging/completions packaging/procflow.toml`) and commit the result";

/// Every file under `dir/sub`, by its path relative to `dir`.
fn files(dir: &Path, sub: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        let rel = Path::new(sub).join(e.file_name());
        out.insert(rel, std::fs::read(e.path()).unwrap());
    }
    out
}

#[test]
fn committed_man_pages_and_completions_match_the_cli() {
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(PROCFLOW)
        .arg("generate-docs")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "procflow generate-docs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut problems = Vec::new();
    for sub in ["man", "completions"] {
        let generated = files(tmp.path(), sub);
        let committed = files(&packaging, sub);
        assert!(
            !generated.is_empty(),
            "generate-docs wrote nothing into {sub}/"
        );
        for (path, text) in &generated {
            match committed.get(path) {
                None => problems.push(format!("packaging/{} is missing", path.display())),
                Some(c) if c != text => {
                    problems.push(format!("packaging/{} is out of date", path.display()))
                }
                Some(_) => {}
            }
        }
        for path in committed.keys().filter(|p| !generated.contains_key(*p)) {
            problems.push(format!(
                "packaging/{} is no longer generated",
                path.display()
            ));
        }
    }
    let example = std::fs::read(tmp.path().join("procflow.toml")).unwrap();
    match std::fs::read(packaging.join("procflow.toml")) {
        Err(_) => problems.push("packaging/procflow.toml is missing".into()),
        Ok(c) if c != example => problems.push("packaging/procflow.toml is out of date".into()),
        Ok(_) => {}
    }
    assert!(
        problems.is_empty(),
        "the man pages, completions and example configuration differ from what the CLI generates:\n  {}\n{REGENERATE}",
        problems.join("\n  ")
    );
    // One page per subcommand, the hidden generator not among them.
    let man = files(tmp.path(), "man");
    for page in [
        "procflow.1",
        "procflow-run.1",
        "procflow-report.1",
        "procflow-rules.1",
        "procflow-rules-check.1",
        "procflow-rules-explain.1",
        "procflow-top.1",
        "procflow-ps.1",
        "procflow-flows.1",
        "procflow-config.1",
        "procflow-config-check.1",
        "procflow-config-show.1",
    ] {
        assert!(
            man.contains_key(&Path::new("man").join(page)),
            "no man page {page}: {:?}",
            man.keys()
        );
    }
    for (path, text) in files(tmp.path(), "man")
        .iter()
        .chain(&files(tmp.path(), "completions"))
    {
        assert!(
            !String::from_utf8_lossy(text).contains("generate-docs"),
            "{} mentions the hidden generate-docs",
            path.display()
        );
    }
}
