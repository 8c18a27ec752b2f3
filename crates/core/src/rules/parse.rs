//! First stage of reading a rules file: TOML syntax, known keys and value
//! shapes, every value kept with its byte span. Meaning (paths, addresses,
//! ranges, users) is checked afterwards, in `check`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{closest, Diags};
use super::model::MAX_RULES;

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At<T> {
    pub span: Range<usize>,
    pub value: T,
}

/// An integer or a string, as `user` and port values may be either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scalar {
    Int(i128),
    Str(String),
}

#[derive(Debug, Default)]
pub(crate) struct RawRule {
    /// Span of the `[[rule]]` table.
    pub span: Range<usize>,
    pub name: Option<At<String>>,
    pub action: Option<At<String>>,
    pub exe: Option<At<String>>,
    pub comm: Option<At<String>>,
    pub user: Option<At<Scalar>>,
    pub cgroup: Option<At<String>>,
    pub direction: Option<At<String>>,
    pub proto: Option<At<String>>,
    pub family: Option<At<String>>,
    pub remote: Option<At<Vec<At<String>>>>,
    pub remote_port: Option<At<Vec<At<Scalar>>>>,
    pub local_port: Option<At<Vec<At<Scalar>>>>,
}

#[derive(Debug, Default)]
pub(crate) struct RawRules {
    pub default: Option<At<String>>,
    /// The rules, up to one more than [`MAX_RULES`]: a file with more is
    /// refused, and what its further rules say is not looked at.
    pub rules: Vec<RawRule>,
    /// How many `[[rule]]` sections the file has.
    pub total: usize,
}

pub(crate) const TOP_KEYS: &[&str] = &["default", "rule"];
pub(crate) const RULE_KEYS: &[&str] = &[
    "name",
    "action",
    "exe",
    "comm",
    "user",
    "cgroup",
    "direction",
    "proto",
    "family",
    "remote",
    "remote_port",
    "local_port",
];

/// What a TOML value is, for messages ("found an integer").
pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn unknown_key(diags: &mut Diags<'_>, span: &Range<usize>, key: &str, valid: &[&str], at: &str) {
    let hint = match closest(key, valid) {
        Some(k) => format!("did you mean `{k}`?"),
        None => format!("valid keys are: {}", valid.join(", ")),
    };
    diags.error(span, format!("unknown key `{key}` {at}; {hint}"));
}

fn string(
    diags: &mut Diags<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    expect: &str,
) -> Option<At<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some(At {
            span: v.span(),
            value: s.to_string(),
        }),
        other => {
            diags.error(
                &v.span(),
                format!("`{key}` must be {expect}, found {}", type_name(other)),
            );
            None
        }
    }
}

fn scalar(
    diags: &mut Diags<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    expect: &str,
) -> Option<At<Scalar>> {
    let value = match v.get_ref() {
        DeValue::String(s) => Scalar::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            match i128::from_str_radix(&digits, i.radix()) {
                Ok(n) => Scalar::Int(n),
                Err(_) => {
                    diags.error(&v.span(), format!("`{key}`: integer {i} is out of range"));
                    return None;
                }
            }
        }
        other => {
            diags.error(
                &v.span(),
                format!("`{key}` must be {expect}, found {}", type_name(other)),
            );
            return None;
        }
    };
    Some(At {
        span: v.span(),
        value,
    })
}

/// A single item or an array of them; an empty array is refused.
fn list<T>(
    diags: &mut Diags<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    item: impl Fn(&mut Diags<'_>, &Spanned<DeValue<'_>>) -> Option<T>,
) -> Option<At<Vec<T>>> {
    let items = match v.get_ref() {
        DeValue::Array(a) => {
            if a.is_empty() {
                diags.error(
                    &v.span(),
                    format!(
                        "`{key}` is an empty list, which would match nothing; \
                         remove the key to match any value"
                    ),
                );
                return None;
            }
            let mut out = Vec::with_capacity(a.len());
            let mut ok = true;
            for e in a.iter() {
                match item(diags, e) {
                    Some(x) => out.push(x),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            out
        }
        _ => vec![item(diags, v)?],
    };
    Some(At {
        span: v.span(),
        value: items,
    })
}

fn raw_rule(diags: &mut Diags<'_>, span: Range<usize>, t: &DeTable<'_>) -> RawRule {
    let mut r = RawRule {
        span,
        ..RawRule::default()
    };
    for (k, v) in t.iter() {
        let key: &str = k.get_ref();
        const S: &str = "a string";
        match key {
            "name" => r.name = string(diags, key, v, S),
            "action" => r.action = string(diags, key, v, "\"allow\" or \"block\""),
            "exe" => r.exe = string(diags, key, v, "a path or pattern string"),
            "comm" => r.comm = string(diags, key, v, S),
            "user" => r.user = scalar(diags, key, v, "a user name or a uid"),
            "cgroup" => r.cgroup = string(diags, key, v, "a cgroup path string"),
            "direction" => r.direction = string(diags, key, v, "\"out\" or \"in\""),
            "proto" => r.proto = string(diags, key, v, "\"tcp\", \"udp\", \"icmp\" or \"any\""),
            "family" => r.family = string(diags, key, v, "\"ip\" or \"packet\""),
            "remote" => {
                r.remote = list(diags, key, v, |d, e| {
                    string(d, key, e, "an address or CIDR prefix string")
                })
            }
            "remote_port" | "local_port" => {
                let ports = list(diags, key, v, |d, e| {
                    scalar(d, key, e, "a port number or a \"low-high\" range")
                });
                if key == "remote_port" {
                    r.remote_port = ports;
                } else {
                    r.local_port = ports;
                }
            }
            _ => unknown_key(diags, &k.span(), key, RULE_KEYS, "in [[rule]]"),
        }
    }
    r
}

/// Reads the TOML document into raw rules. Syntax errors, unknown keys and
/// values of the wrong type are recorded in `diags`; what could be read is
/// returned all the same, so that later checks report their problems too.
pub(crate) fn parse_raw(diags: &mut Diags<'_>, text: &str) -> RawRules {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            diags.error(&span, format!("TOML syntax: {}", e.message().trim_end()));
            return RawRules::default();
        }
    };
    let mut out = RawRules::default();
    for (k, v) in doc.get_ref().iter() {
        let key: &str = k.get_ref();
        match key {
            "default" => {
                out.default = string(diags, key, v, "\"allow\" or \"block\"");
            }
            "rule" => match v.get_ref() {
                DeValue::Array(a) => {
                    for e in a.iter() {
                        match e.get_ref() {
                            DeValue::Table(_) if out.rules.len() > MAX_RULES => out.total += 1,
                            DeValue::Table(t) => {
                                out.total += 1;
                                out.rules.push(raw_rule(diags, e.span(), t));
                            }
                            other => diags.error(
                                &e.span(),
                                format!(
                                    "each rule must be a table (write `[[rule]]` sections), \
                                     found {}",
                                    type_name(other)
                                ),
                            ),
                        }
                    }
                }
                DeValue::Table(_) => diags.error(
                    &k.span(),
                    "`[rule]` is a single table; write each rule as an `[[rule]]` section",
                ),
                other => diags.error(
                    &v.span(),
                    format!(
                        "`rule` must be `[[rule]]` sections, found {}",
                        type_name(other)
                    ),
                ),
            },
            _ => {
                if RULE_KEYS.contains(&key) {
                    diags.error(
                        &k.span(),
                        format!("`{key}` belongs to a rule; put it under an `[[rule]]` header"),
                    );
                } else {
                    unknown_key(diags, &k.span(), key, TOP_KEYS, "at the top level");
                }
            }
        }
    }
    out
}
