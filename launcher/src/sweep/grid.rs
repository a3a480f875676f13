//! The sweep file and its expansion into runs.
//!
//! ```toml
//! name = "demo"                      # runs go to <out_dir>/demo/<run>/
//! base = "../train/demo.toml"        # the base train config, relative to this file
//! exclude = [{ model = "tiny", samples = 32000 }]   # by axis label or key
//!
//! [set]                              # overrides shared by every run
//! "log.every" = 20
//!
//! [[axis]]                           # any dotted config key
//! key = "model"
//! values = ["nano", "configs/models/sweep-s.toml"]
//!
//! [[axis]]                           # derived: schedule.steps = ⌈samples / global batch⌉, label `samples`
//! key = "samples_seen"
//! values = [16000, 32000]
//! cooldown_from = "trunk"            # optional: cooldowns branched from one constant-lr run
//!
//! [[zip]]                            # keys that move together, one row per value
//! keys = ["optim.lr", "schedule.warmup_steps"]
//! values = [[1e-3, 10], [5e-4, 20]]
//!
//! [eval]                             # optional: `ferroclip eval` after training
//! zeroshot = "data/emoji/shards/zeroshot"
//! classnames = "data/emoji/classnames.txt"
//! ```
//!
//! Runs are the cartesian product of the axes (in file order, the first outermost)
//! and then the zips, minus the excludes. A run's name is
//! `<sweep>-<label>=<value>-…` with the label the key's last segment (or the
//! axis' `label`), a path value shortened to its file stem, and characters other
//! than `A-Z a-z 0-9 . _ + -` replaced by `_`; two runs with the same name are an
//! error. Paths inside values and `[eval]` are relative to the working directory,
//! like the paths of a train config.
//!
//! Cooldown branching (Hägele et al. 2024): with `cooldown_from = "<label>"` on the
//! `samples_seen` axis, every run is a `const-cooldown` run ([`RunRole::Branch`]), and for
//! each combination of the other axes the sweep adds one constant-lr run, the trunk
//! `<sweep>-<other labels>-<label>` ([`RunRole::Trunk`], listed first). A branch starts from
//! the trunk's checkpoint at the step its cooldown starts, where the two schedules still
//! agree, so it equals an independent run of its length while training only its cooldown.
//! The trunk's length and checkpoint steps need the train config's cooldown rule, so the
//! caller sets them (`schedule.steps`, `checkpoint.at_steps`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SweepError;
use values::{check_key, flatten, lookup_tree, name_part, same_value, sanitize, value_text};

mod values;

/// The derived axis key: samples seen, turned into `schedule.steps`.
pub const SAMPLES_SEEN: &str = "samples_seen";

/// A sweep file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Sweep name: the folder under `out_dir` and the prefix of every run name.
    pub name: String,
    /// The base train config, relative to the sweep file.
    pub base: PathBuf,
    /// Folder holding sweep folders (relative to the working directory).
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Overrides applied to every run (dotted keys, or nested tables).
    #[serde(default)]
    pub set: toml::Table,
    /// Independent axes; the runs are their cartesian product.
    #[serde(default)]
    pub axis: Vec<Axis>,
    /// Groups of keys whose values move together.
    #[serde(default)]
    pub zip: Vec<Zip>,
    /// Combinations to leave out: every entry must match for a run to be dropped.
    #[serde(default)]
    pub exclude: Vec<toml::Table>,
    /// Evaluation after training; none when absent.
    #[serde(default)]
    pub eval: Option<EvalSpec>,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// One axis: a config key and the values it takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    /// Dotted train-config key (`model`, `optim.lr`, `schedule.steps`) or `samples_seen`.
    pub key: String,
    /// The values, in the order runs are listed.
    pub values: Vec<toml::Value>,
    /// Short name used in run names and result columns (default: the key's last segment).
    #[serde(default)]
    pub label: Option<String>,
    /// `samples_seen` only: branch every length's cooldown from one constant-lr run, whose
    /// name ends in this label.
    #[serde(default)]
    pub cooldown_from: Option<String>,
}

/// Keys whose values move together: row `i` of `values` gives every key its value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zip {
    /// Dotted train-config keys.
    pub keys: Vec<String>,
    /// One row per run variant, each with one value per key.
    pub values: Vec<Vec<toml::Value>>,
    /// Short names for the keys (default: each key's last segment).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

/// What `ferroclip eval` is run on after training (its flags of the same names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Zero-shot eval shards.
    pub zeroshot: Option<String>,
    /// Class names file (with `zeroshot`).
    pub classnames: Option<PathBuf>,
    /// Prompt templates file.
    pub templates: Option<PathBuf>,
    /// Retrieval eval shards.
    pub retrieval: Option<String>,
    /// Images per forward pass.
    pub batch_size: Option<usize>,
}

/// One dimension of the grid, after validation: its labelled keys and choices.
#[derive(Debug, Clone)]
struct Dimension {
    /// (key, label) per column.
    columns: Vec<(String, String)>,
    /// One row of values per choice, aligned with `columns`.
    choices: Vec<Vec<toml::Value>>,
}

/// A loaded, validated sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep file.
    pub path: PathBuf,
    /// Its contents.
    pub file: SweepFile,
    /// The base train config's path (resolved against the sweep file's folder).
    pub base_path: PathBuf,
    base_tree: toml::Table,
    dimensions: Vec<Dimension>,
    fixed: Vec<(String, toml::Value)>,
    excludes: Vec<Vec<(String, toml::Value)>>,
    /// The `cooldown_from` label of the `samples_seen` axis, when the sweep branches.
    cooldown_from: Option<String>,
}

/// What a run is to the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRole {
    /// Trained from scratch, a result of the sweep.
    Single,
    /// The constant-lr run that branches cool down from; not a result of the sweep.
    Trunk,
    /// A `const-cooldown` run that starts from the named trunk's checkpoint at the step
    /// its cooldown starts; a result of the sweep.
    Branch {
        /// The trunk's run name.
        trunk: String,
    },
}

/// The schedule of a trunk and of its branches.
const TRUNK_SCHEDULE: &str = "const";
const BRANCH_SCHEDULE: &str = "const-cooldown";
/// Keys a branching sweep sets itself.
const BRANCHING_KEYS: [&str; 2] = ["schedule.kind", "checkpoint.at_steps"];

/// One run of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Stable, readable name, e.g. `demo-model=nano-samples=16000`.
    pub name: String,
    /// Its folder, `<out_dir>/<sweep>/<name>`.
    pub dir: PathBuf,
    /// (label, value as text) for each swept key, in column order.
    pub values: Vec<(String, String)>,
    /// `key=value` overrides of the base config (TOML values), including `name` and `out_dir`.
    pub overrides: Vec<String>,
    /// Trained from scratch, a trunk, or a cooldown branched from one.
    pub role: RunRole,
}

impl RunSpec {
    /// Whether the run is a result of the sweep (a row of results.csv); trunks are not.
    pub fn is_result(&self) -> bool {
        self.role != RunRole::Trunk
    }
}

impl Sweep {
    /// Reads and validates a sweep file and its base config's TOML.
    pub fn load(path: &Path) -> Result<Sweep, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|source| SweepError::Io {
            path: path.to_owned(),
            source,
        })?;
        Sweep::parse(&text, path)
    }

    /// Validates `text`, the contents of the sweep file at `path` (the base path is
    /// resolved against `path`'s folder and read).
    pub fn parse(text: &str, path: &Path) -> Result<Sweep, SweepError> {
        let parse_err = |message: String| SweepError::Parse {
            path: path.to_owned(),
            message,
        };
        let value: toml::Value = toml::from_str(text).map_err(|e: toml::de::Error| parse_err(e.message().into()))?;
        let file: SweepFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            parse_err(format!("{field}: {}", e.into_inner().message()))
        })?;
        let invalid = |field: &str, message: String| SweepError::Invalid {
            path: path.to_owned(),
            field: field.to_string(),
            message,
        };
        if file.name.is_empty() || file.name.starts_with('.') || sanitize(&file.name) != file.name {
            return Err(invalid(
                "name",
                format!("{:?} must be a folder name of A-Z a-z 0-9 . _ + -", file.name),
            ));
        }
        let base_path = path.parent().unwrap_or(Path::new("")).join(&file.base);
        let base_text = std::fs::read_to_string(&base_path)
            .map_err(|e| invalid("base", format!("{}: {e}", base_path.display())))?;
        let base_tree: toml::Table = base_text
            .parse()
            .map_err(|e: toml::de::Error| invalid("base", format!("{}: {}", base_path.display(), e.message())))?;

        let mut dimensions = Vec::new();
        for (i, axis) in file.axis.iter().enumerate() {
            check_key(&axis.key).map_err(|m| invalid(&format!("axis[{i}].key"), m))?;
            if axis.values.is_empty() {
                return Err(invalid(&format!("axis[{i}].values"), "no values".into()));
            }
            let label = axis.label.clone().unwrap_or_else(|| default_label(&axis.key));
            dimensions.push(Dimension {
                columns: vec![(axis.key.clone(), label)],
                choices: axis.values.iter().map(|v| vec![v.clone()]).collect(),
            });
        }
        for (i, zip) in file.zip.iter().enumerate() {
            if zip.keys.is_empty() {
                return Err(invalid(&format!("zip[{i}].keys"), "no keys".into()));
            }
            for (k, key) in zip.keys.iter().enumerate() {
                check_key(key).map_err(|m| invalid(&format!("zip[{i}].keys[{k}]"), m))?;
            }
            if zip.values.is_empty() {
                return Err(invalid(&format!("zip[{i}].values"), "no rows".into()));
            }
            for (j, row) in zip.values.iter().enumerate() {
                if row.len() != zip.keys.len() {
                    return Err(invalid(
                        &format!("zip[{i}].values[{j}]"),
                        format!("{} values for {} keys", row.len(), zip.keys.len()),
                    ));
                }
            }
            let labels = match &zip.labels {
                Some(labels) if labels.len() != zip.keys.len() => {
                    return Err(invalid(
                        &format!("zip[{i}].labels"),
                        format!("{} labels for {} keys", labels.len(), zip.keys.len()),
                    ))
                }
                Some(labels) => labels.clone(),
                None => zip.keys.iter().map(|k| default_label(k)).collect(),
            };
            dimensions.push(Dimension {
                columns: zip.keys.iter().cloned().zip(labels).collect(),
                choices: zip.values.clone(),
            });
        }

        // Keys and labels must be unique; name/out_dir belong to the sweep.
        let columns: Vec<&(String, String)> = dimensions.iter().flat_map(|d| &d.columns).collect();
        for (n, (key, label)) in columns.iter().enumerate() {
            if key == "name" || key == "out_dir" {
                return Err(invalid(
                    key,
                    "is set by the sweep (run name and folder), not an axis".into(),
                ));
            }
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(invalid(
                    key,
                    format!("label {label:?} is a column of results.csv; choose another"),
                ));
            }
            if sanitize(label) != *label || label.is_empty() {
                return Err(invalid(
                    key,
                    format!("label {label:?} must be made of A-Z a-z 0-9 . _ + -"),
                ));
            }
            if let Some((other, _)) = columns[..n].iter().find(|(k, l)| k == key || l == label) {
                return Err(invalid(
                    key,
                    format!("swept twice (also as {other}); give one of them a different label or key"),
                ));
            }
        }
        let swept = |key: &str| columns.iter().any(|(k, _)| k == key);
        if swept(SAMPLES_SEEN) && swept("schedule.steps") {
            return Err(invalid(
                SAMPLES_SEEN,
                "sets schedule.steps, which is swept as well: keep one of them".into(),
            ));
        }
        let mut cooldown_from = None;
        for (i, axis) in file.axis.iter().enumerate() {
            let Some(from) = &axis.cooldown_from else { continue };
            let field = format!("axis[{i}].cooldown_from");
            if axis.key != SAMPLES_SEEN {
                return Err(invalid(
                    &field,
                    format!(
                        "branches the lengths of a samples_seen axis; this axis sweeps {}",
                        axis.key
                    ),
                ));
            }
            if from.is_empty() || sanitize(from) != *from {
                return Err(invalid(
                    &field,
                    format!("{from:?} names the trunk run: use A-Z a-z 0-9 . _ + -"),
                ));
            }
            if let Some(key) = BRANCHING_KEYS.iter().find(|k| swept(k)) {
                return Err(invalid(
                    key,
                    "is set by cooldown branching (const trunk, const-cooldown branches); do not sweep it".into(),
                ));
            }
            cooldown_from = Some(from.clone());
        }

        let mut fixed = Vec::new();
        flatten("", &file.set, &mut fixed);
        for (key, _) in &fixed {
            check_key(key).map_err(|m| invalid(&format!("set.{key}"), m))?;
            if swept(key) || key == "name" || key == "out_dir" || key == SAMPLES_SEEN {
                return Err(invalid(
                    &format!("set.{key}"),
                    "is swept or set by the sweep; remove it here".into(),
                ));
            }
            if cooldown_from.is_some() && BRANCHING_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    &format!("set.{key}"),
                    "is set by cooldown branching (const trunk, const-cooldown branches); remove it here".into(),
                ));
            }
        }

        let mut excludes = Vec::new();
        for (i, table) in file.exclude.iter().enumerate() {
            let mut entries = Vec::new();
            flatten("", table, &mut entries);
            if entries.is_empty() {
                return Err(invalid(
                    &format!("exclude[{i}]"),
                    "empty: it would drop every run".into(),
                ));
            }
            let mut by_key = Vec::new();
            for (name, value) in entries {
                let key = columns
                    .iter()
                    .find(|(k, l)| *k == name || *l == name)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| invalid(&format!("exclude[{i}].{name}"), "is not a swept key or label".into()))?;
                by_key.push((key, value));
            }
            excludes.push(by_key);
        }

        Ok(Sweep {
            path: path.to_owned(),
            base_path,
            base_tree,
            dimensions,
            fixed,
            excludes,
            cooldown_from,
            file,
        })
    }

    /// The sweep's folder, `<out_dir>/<name>`.
    pub fn root(&self) -> PathBuf {
        self.file.out_dir.join(&self.file.name)
    }

    /// Column labels of the swept keys, in the order of [`RunSpec::values`].
    pub fn labels(&self) -> Vec<String> {
        self.dimensions
            .iter()
            .flat_map(|d| d.columns.iter().map(|(_, l)| l.clone()))
            .collect()
    }

    /// Whether the sweep branches cooldowns from trunks (`cooldown_from`).
    pub fn branches_cooldowns(&self) -> bool {
        self.cooldown_from.is_some()
    }

    /// The runs, for `workers` processes per run (which sets the global batch that
    /// turns `samples_seen` into steps); trunks, if any, first.
    pub fn expand(&self, workers: usize) -> Result<Vec<RunSpec>, SweepError> {
        let invalid = |field: &str, message: String| SweepError::Invalid {
            path: self.path.clone(),
            field: field.to_string(),
            message,
        };
        // Cartesian product, first dimension outermost.
        let mut combos: Vec<Vec<(&str, &str, &toml::Value)>> = vec![Vec::new()];
        for dim in &self.dimensions {
            let mut next = Vec::with_capacity(combos.len() * dim.choices.len());
            for combo in &combos {
                for choice in &dim.choices {
                    let mut c = combo.clone();
                    c.extend(
                        dim.columns
                            .iter()
                            .zip(choice)
                            .map(|((k, l), v)| (k.as_str(), l.as_str(), v)),
                    );
                    next.push(c);
                }
            }
            combos = next;
        }
        let sweep_dir = self.root();
        let mut trunks: Vec<RunSpec> = Vec::new();
        let mut runs: Vec<RunSpec> = Vec::new();
        for combo in combos {
            let excluded = self.excludes.iter().any(|entries| {
                entries
                    .iter()
                    .all(|(key, want)| combo.iter().any(|(k, _, v)| k == key && same_value(v, want)))
            });
            if excluded {
                continue;
            }
            let mut name = self.file.name.clone();
            let mut values = Vec::new();
            let mut overrides: Vec<String> = self.fixed.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for (key, label, value) in &combo {
                name.push_str(&format!("-{label}={}", sanitize(&name_part(value))));
                values.push((label.to_string(), value_text(value)));
                if *key == SAMPLES_SEEN {
                    let steps = self
                        .steps_for(value, &combo, workers)
                        .map_err(|m| invalid(SAMPLES_SEEN, m))?;
                    overrides.push(format!("schedule.steps={steps}"));
                } else {
                    overrides.push(format!("{key}={value}"));
                }
            }
            let role = match &self.cooldown_from {
                None => RunRole::Single,
                Some(from) => {
                    overrides.push(format!("schedule.kind={}", toml::Value::from(BRANCH_SCHEDULE)));
                    let trunk = self.trunk(&combo, from);
                    let role = RunRole::Branch {
                        trunk: trunk.name.clone(),
                    };
                    if !trunks.iter().any(|t| t.name == trunk.name) {
                        trunks.push(trunk);
                    }
                    role
                }
            };
            overrides.extend(self.placement(&name));
            if let Some(other) = trunks.iter().chain(&runs).find(|r| r.name == name) {
                return Err(invalid(
                    "axis",
                    format!(
                        "two runs get the name {name:?} ({:?} and {:?}): give values that differ after shortening",
                        other.values, values
                    ),
                ));
            }
            runs.push(RunSpec {
                dir: sweep_dir.join(&name),
                name,
                values,
                overrides,
                role,
            });
        }
        trunks.extend(runs);
        Ok(trunks)
    }

    /// The `name` and `out_dir` overrides of the run `name`.
    fn placement(&self, name: &str) -> [String; 2] {
        [
            format!("name={}", toml::Value::String(name.to_string())),
            format!(
                "out_dir={}",
                toml::Value::String(self.root().to_string_lossy().into_owned())
            ),
        ]
    }

    /// The constant-lr trunk that the run of `combo` branches from: the same values but
    /// samples seen, which the caller sets from the branches' cooldown starts.
    fn trunk(&self, combo: &[(&str, &str, &toml::Value)], from: &str) -> RunSpec {
        let mut name = self.file.name.clone();
        let mut values = Vec::new();
        let mut overrides: Vec<String> = self.fixed.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (key, label, value) in combo {
            if *key == SAMPLES_SEEN {
                values.push((label.to_string(), from.to_string()));
                continue;
            }
            name.push_str(&format!("-{label}={}", sanitize(&name_part(value))));
            values.push((label.to_string(), value_text(value)));
            overrides.push(format!("{key}={value}"));
        }
        name.push_str(&format!("-{from}"));
        overrides.push(format!("schedule.kind={}", toml::Value::from(TRUNK_SCHEDULE)));
        overrides.extend(self.placement(&name));
        RunSpec {
            dir: self.root().join(&name),
            name,
            values,
            overrides,
            role: RunRole::Trunk,
        }
    }

    /// `⌈samples / (batch_size × accum_steps × workers)⌉`, with the batch looked up
    /// in this run's values, then `[set]`, then the base config.
    fn steps_for(
        &self,
        samples: &toml::Value,
        combo: &[(&str, &str, &toml::Value)],
        workers: usize,
    ) -> Result<u64, String> {
        let samples = samples
            .as_integer()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("{samples} is not a positive integer"))?;
        let lookup = |key: &str| -> Option<toml::Value> {
            combo
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, _, v)| (*v).clone())
                .or_else(|| self.fixed.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
                .or_else(|| lookup_tree(&self.base_tree, key).cloned())
        };
        let positive = |key: &str, default: Option<i64>| -> Result<u64, String> {
            match lookup(key) {
                Some(v) => v
                    .as_integer()
                    .filter(|n| *n > 0)
                    .map(|n| n as u64)
                    .ok_or_else(|| format!("needs a positive integer {key}, got {v}")),
                None => default.map(|d| d as u64).ok_or_else(|| {
                    format!("needs {key} (in the base config, [set] or an axis) to turn samples into steps")
                }),
            }
        };
        let global_batch =
            positive("data.batch_size", None)? * positive("data.accum_steps", Some(1))? * workers.max(1) as u64;
        Ok((samples as u64).div_ceil(global_batch))
    }
}

/// The key's last segment; `samples` for the derived `samples_seen`, whose own name
/// is the results table's column of the samples actually seen.
fn default_label(key: &str) -> String {
    if key == SAMPLES_SEEN {
        return "samples".into();
    }
    key.rsplit('.').next().unwrap_or(key).to_string()
}

/// Columns of results.csv that a label must not shadow.
const RESERVED_LABELS: &[&str] = &[
    "run",
    "macs_per_sample",
    "samples_seen",
    "compute",
    "final_loss",
    "final_step",
];

#[cfg(test)]
mod tests;
