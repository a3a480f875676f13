//! The curate config: an ordered list of `[[stage]]` tables, each owning its section.
//!
//! ```toml
//! [[stage]]
//! kind = "metaclip"
//! t = 20000
//! seed = 0
//! entry_files = ["bigrams.txt"]
//! ```
use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::align::{AlignConfig, AlignStage, ImageEmbedder};
use crate::dfn::{DfnConfig, DfnStage};
use crate::error::CurateError;
use crate::klite::{KliteConfig, KliteStage};
use crate::metaclip::{MetaclipConfig, MetaclipStage};
use crate::stage::NamedStage;

/// A whole curate config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurateConfig {
    /// The stages, in the order they run.
    #[serde(rename = "stage", default)]
    pub stages: Vec<StageConfig>,
}

/// One `[[stage]]` table, chosen by its `kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageConfig {
    /// MetaCLIP metadata matching and balancing.
    Metaclip(MetaclipConfig),
    /// K-LITE knowledge: append the WordNet gloss of the caption's rarest noun.
    Klite(KliteConfig),
    /// ALIGN's image and alt-text filters with exact and near-duplicate removal.
    Align(AlignConfig),
    /// DFN: keep the pairs a filtering model scores highest (DataComp's rule).
    Dfn(DfnConfig),
}

/// Builds a `dfn` stage from its name and config: the binary wires the scorer (curator links
/// no model code), see [`crate::dfn::build_stage`].
pub type DfnBuilder<'a> = dyn FnMut(&str, &DfnConfig) -> Result<DfnStage, CurateError> + 'a;

/// Loads the image embedder of an `align` stage whose near duplicates are decided by a model
/// (`near_duplicate_checkpoint`, resolved against the config folder): the binary wires it.
pub type EmbedderBuilder<'a> =
    dyn FnMut(&str, &AlignConfig, &Path) -> Result<std::sync::Arc<dyn ImageEmbedder>, CurateError> + 'a;

impl StageConfig {
    /// The stage's name: its `name` field, else its kind.
    pub fn name(&self) -> String {
        match self {
            StageConfig::Metaclip(c) => c.name.clone().unwrap_or_else(|| "metaclip".into()),
            StageConfig::Klite(c) => c.name.clone().unwrap_or_else(|| "klite".into()),
            StageConfig::Align(c) => c.name.clone().unwrap_or_else(|| "align".into()),
            StageConfig::Dfn(c) => c.name.clone().unwrap_or_else(|| "dfn".into()),
        }
    }
}

impl CurateConfig {
    /// Parse and validate the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, CurateError> {
        let text = std::fs::read_to_string(path).map_err(|e| CurateError::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate TOML `text`; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, CurateError> {
        let cfg: Self = toml::from_str(text).map_err(|e| CurateError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every stage; names must be unique and there must be at least one stage.
    pub fn validate(&self) -> Result<(), CurateError> {
        if self.stages.is_empty() {
            return Err(CurateError::BadField {
                field: "stage".into(),
                reason: "no stages: add at least one [[stage]] table".into(),
            });
        }
        let mut names = HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let at = format!("stage[{i}]");
            match stage {
                StageConfig::Metaclip(c) => c.validate(&at)?,
                StageConfig::Klite(c) => c.validate(&at)?,
                StageConfig::Align(c) => c.validate(&at)?,
                StageConfig::Dfn(c) => c.validate(&at)?,
            }
            if !names.insert(stage.name()) {
                return Err(CurateError::BadField {
                    field: format!("{at}.name"),
                    reason: format!("{:?} is already the name of an earlier stage", stage.name()),
                });
            }
        }
        Ok(())
    }

    /// Build the stages (loading metadata etc.); relative paths resolve against `base_dir`,
    /// normally the config file's folder.
    /// A `dfn` stage, and an `align` stage with `near_duplicate_checkpoint`, need a model: use
    /// [`CurateConfig::build_stages_with`] for them.
    pub fn build_stages(&self, base_dir: &Path) -> Result<Vec<NamedStage>, CurateError> {
        let needs_model = |name: &str| CurateError::BadField {
            field: format!("stage {name:?}"),
            reason: "this stage needs a model; run it through `ferroclip curate`".into(),
        };
        self.build_stages_with(base_dir, &mut |name, _| Err(needs_model(name)), &mut |name, _, _| {
            Err(needs_model(name))
        })
    }

    /// Like [`CurateConfig::build_stages`], building `dfn` stages with `dfn` and the model of
    /// embedding-based near-duplicate removal in `align` stages with `embedder`.
    pub fn build_stages_with(
        &self,
        base_dir: &Path,
        dfn: &mut DfnBuilder<'_>,
        embedder: &mut EmbedderBuilder<'_>,
    ) -> Result<Vec<NamedStage>, CurateError> {
        self.stages
            .iter()
            .map(|stage| {
                let built: Box<dyn crate::stage::Stage> = match stage {
                    StageConfig::Metaclip(c) => Box::new(MetaclipStage::new(c.metadata(base_dir)?, c)?),
                    StageConfig::Klite(c) => {
                        // A relative WordNet folder is relative to the config file.
                        let dictionary = crate::klite::GlossDictionary::load(&base_dir.join(&c.wordnet_dir))?;
                        Box::new(KliteStage::new(dictionary, c))
                    }
                    StageConfig::Align(c) => match (&c.near_duplicate_checkpoint, c.drop_near_duplicates) {
                        (Some(checkpoint), true) => {
                            let model = embedder(&stage.name(), c, &base_dir.join(checkpoint))?;
                            Box::new(AlignStage::with_embedder(c, model))
                        }
                        _ => Box::new(AlignStage::new(c)),
                    },
                    StageConfig::Dfn(c) => Box::new(dfn(&stage.name(), c)?),
                };
                Ok(NamedStage {
                    name: stage.name(),
                    stage: built,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CurateConfig, CurateError> {
        CurateConfig::from_toml(text, Path::new("configs/curate/x.toml"))
    }

    #[test]
    fn stages_parse_in_order_with_defaults() {
        let cfg = parse("[[stage]]\nkind = \"metaclip\"\nt = 5\n\n[[stage]]\nkind = \"metaclip\"\nname = \"again\"\n")
            .unwrap();
        assert_eq!(cfg.stages.len(), 2);
        let StageConfig::Metaclip(first) = &cfg.stages[0] else {
            panic!("the first stage is metaclip: {:?}", cfg.stages[0]);
        };
        assert_eq!(first.t, 5);
        assert_eq!(cfg.stages[1].name(), "again");
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = parse("[[stage]]\nkind = \"metaclip\"\nseeed = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("seeed"), "{err}");
        let err = parse("[[stage]]\nkind = \"fancy\"\n").unwrap_err().to_string();
        assert!(err.contains("fancy"), "{err}");
        let err = parse("[[stage]]\nkind = \"metaclip\"\n[[stage]]\nkind = \"metaclip\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage[1].name"), "{err}");
        let err = parse("[[stage]]\nkind = \"metaclip\"\nt = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage[0].t"), "{err}");
        assert!(parse("").unwrap_err().to_string().contains("no stages"));
    }

    #[test]
    fn entry_files_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.txt"), "zebra crossing\n").unwrap();
        let cfg =
            parse("[[stage]]\nkind = \"metaclip\"\nwordnet = false\nnumbers = false\nentry_files = [\"mine.txt\"]\n")
                .unwrap();
        let stages = cfg.build_stages(dir.path()).unwrap();
        assert_eq!(stages[0].name, "metaclip");
        assert_eq!(stages[0].stage.observation_len(), 1 + 2);
        let missing = cfg
            .build_stages(&dir.path().join("elsewhere"))
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("mine.txt"), "{missing}");
    }
}
