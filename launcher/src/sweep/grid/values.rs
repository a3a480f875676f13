//! Keys and values of a sweep file: checking keys, flattening tables, comparing values,
//! and turning values into the parts of run names.

use std::path::Path;

pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(format!("{key:?} is not a dotted config key (e.g. \"optim.lr\")"));
    }
    if key.contains(['=', ' ']) {
        return Err(format!("{key:?} must not contain '=' or spaces"));
    }
    Ok(())
}

/// Nested tables become dotted keys (`{ schedule = { steps = 5 } }` → `schedule.steps`).
pub(super) fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

pub(super) fn lookup_tree<'a>(tree: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = tree.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Equal values, with integers and floats compared as numbers (`500` = `500.0`).
pub(super) fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The value as a person wrote it (strings without quotes).
pub(super) fn value_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a value contributes to a run name: a path's file stem, else its text.
pub(super) fn name_part(value: &toml::Value) -> String {
    let text = value_text(value);
    let path = Path::new(&text);
    let is_path = text.contains('/') || matches!(path.extension().and_then(|e| e.to_str()), Some("toml" | "json"));
    match path.file_stem().and_then(|s| s.to_str()) {
        Some(stem) if is_path => stem.to_string(),
        _ => text,
    }
}

/// Keeps `A-Z a-z 0-9 . _ + -`, replaces anything else by `_`.
pub(super) fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
