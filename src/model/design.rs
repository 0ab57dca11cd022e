//! The designs a model directory may hold: their names, how `config.json` writes them, and
//! which model settings fit each.

use serde::{Deserialize, Serialize};

use super::config::BoltConfig;

/// A model design: the native early-fusion model, one of the bolted-on baselines, or a
/// HuggingFace Fuyu checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Design {
    /// Fuyu-style: patches and frames linearly embedded straight into the decoder.
    Native,
    /// ViT + linear or MLP projector, one token slot per patch (LLaVA-1.0 / 1.5).
    Llava,
    /// ViT + learned queries cross-attending to its features (BLIP-2).
    QFormer,
    /// ViT + perceiver resampler + gated cross-attention in the decoder (Flamingo).
    Flamingo,
    /// A HuggingFace Fuyu directory (`FuyuForCausalLM`), loaded as the native model.
    HfFuyu,
}

impl Design {
    /// The designs one of our model directories may name (a HF Fuyu directory has its own config).
    pub const OURS: [Design; 4] = [
        Design::Native,
        Design::Llava,
        Design::QFormer,
        Design::Flamingo,
    ];

    /// Name in `config.json`, presets and reports.
    pub fn name(self) -> &'static str {
        match self {
            Design::Native => "native",
            Design::Llava => "llava",
            Design::QFormer => "qformer",
            Design::Flamingo => "flamingo",
            Design::HfFuyu => "hf-fuyu",
        }
    }

    /// True for the designs whose images reach the decoder through linear patch embeddings.
    pub fn is_native(self) -> bool {
        matches!(self, Design::Native | Design::HfFuyu)
    }

    /// The design a model name suggests (`fuyu…` native, `llava…`, `qformer…`, `flamingo…`).
    pub fn guess_from_name(model: &str) -> Option<Design> {
        let lower = model.to_lowercase();
        [
            ("fuyu", Design::Native),
            ("llava", Design::Llava),
            ("qformer", Design::QFormer),
            ("flamingo", Design::Flamingo),
        ]
        .into_iter()
        .find(|(k, _)| lower.contains(k))
        .map(|(_, d)| d)
    }

    /// Checks that the model settings fit the design: a native design has no `bolt` section,
    /// a bolted-on one has one with its own connector.
    pub fn check(self, bolt: Option<&BoltConfig>) -> Result<(), String> {
        let fits = match (self.is_native(), bolt) {
            (true, None) => true,
            (false, Some(b)) => b.connector.design() == self,
            _ => false,
        };
        if fits {
            return Ok(());
        }
        Err(match bolt {
            Some(b) if !self.is_native() => format!(
                "design {:?} does not match the model settings (its connector is {:?}, a {:?} design)",
                self.name(),
                b.connector.name(),
                b.connector.design().name()
            ),
            _ => format!(
                "design {:?} does not match the model settings (a bolt section is {})",
                self.name(),
                if bolt.is_some() { "present" } else { "missing" }
            ),
        })
    }
}

impl std::fmt::Display for Design {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Design {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Design::OURS
            .into_iter()
            .chain([Design::HfFuyu])
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Design::OURS.iter().map(|d| d.name()).collect();
                format!("unknown design {s:?} (expected one of {names:?})")
            })
    }
}

impl TryFrom<String> for Design {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Design> for String {
    fn from(d: Design) -> String {
        d.name().to_string()
    }
}

impl PartialEq<&str> for Design {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designs_round_trip_through_their_names() {
        for d in Design::OURS.into_iter().chain([Design::HfFuyu]) {
            assert_eq!(d.name().parse::<Design>(), Ok(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<Design>(&json).unwrap(), d);
        }
        let err = serde_json::from_str::<Design>("\"clip\"").unwrap_err();
        assert!(err.to_string().contains("unknown design \"clip\""), "{err}");
    }

    use crate::model::ConnectorKind;

    #[test]
    fn every_connector_makes_a_bolted_on_design() {
        for c in [
            ConnectorKind::Linear,
            ConnectorKind::Mlp,
            ConnectorKind::QFormer,
            ConnectorKind::Perceiver,
        ] {
            assert!(!c.design().is_native(), "{c:?}");
            assert_eq!(c.image_slots(8).is_none(), c.slots(5, 8) == 5, "{c:?}");
        }
    }
}
