//! Writes a checked rule set back as a rules file (normalized: uids for
//! users named by number, cgroup paths without trailing `/`, prefixes in
//! canonical form). Parsing the output gives the same rules.

use std::fmt::Write;

use super::model::{PortRange, Rule, Rules};

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ports(list: &[PortRange]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|p| {
            if p.lo == p.hi {
                p.lo.to_string()
            } else {
                quote(&format!("{}-{}", p.lo, p.hi))
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn rule(out: &mut String, r: &Rule) {
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k} = {v}");
    };
    kv("name", quote(&r.name));
    kv("action", quote(&r.action.to_string()));
    if let Some(e) = &r.exe {
        kv("exe", quote(&e.to_string()));
    }
    if let Some(c) = &r.comm {
        kv("comm", quote(c));
    }
    if let Some(u) = &r.user {
        match &u.name {
            Some(n) => kv("user", quote(n)),
            None => kv("user", u.uid.to_string()),
        }
    }
    if let Some(c) = &r.cgroup {
        kv("cgroup", quote(c));
    }
    if let Some(d) = r.direction {
        kv("direction", quote(&d.to_string()));
    }
    if let Some(p) = r.proto {
        kv("proto", quote(&p.to_string()));
    }
    if let Some(f) = r.family {
        kv("family", quote(&f.to_string()));
    }
    if !r.remote.is_empty() {
        let items: Vec<String> = r.remote.iter().map(|p| quote(&p.to_string())).collect();
        kv("remote", format!("[{}]", items.join(", ")));
    }
    if !r.remote_port.is_empty() {
        kv("remote_port", ports(&r.remote_port));
    }
    if !r.local_port.is_empty() {
        kv("local_port", ports(&r.local_port));
    }
}

impl Rules {
    /// The rule set as a rules file.
    pub fn to_toml(&self) -> String {
        let mut out = format!("default = {}\n", quote(&self.default.to_string()));
        for r in &self.rules {
            out.push_str("\n[[rule]]\n");
            rule(&mut out, r);
        }
        out
    }
}
