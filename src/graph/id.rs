//! Node ids: `source:NAME`, `build:IMAGE`, `test:IMAGE/SUITE`, `publish:IMAGE`,
//! `deliver:IMAGE@ENVIRONMENT`.
//!
//! A [`NodeId`] is made by its stage's constructor ([`NodeId::build`], …) or, for an id
//! that comes from outside (a command-line argument, a saved plan, the state file), by
//! [`NodeId::parse`], which checks its shape. Its text is what every JSON output, the
//! state file, saved plans and the journal hold (it serializes as a plain string), and
//! it is the id's identity: equality, order and hashing are the text's, so ids sort as
//! they always did and traversals stay deterministic.
//!
//! Names may hold `/` and `@` (config names are free text), so the text of a `test:` or
//! `deliver:` id can be split in more than one way. A constructor knows its parts; a
//! parsed id splits at the first separator. The text, and so the identity, is the same
//! either way; where the parts of an outside id matter, look it up in the
//! [`super::StageGraph`], whose ids carry the parts the config gave.
//!
//! [`NodeId::kind`] is the exhaustive view: a new stage is a new [`super::Stage`]
//! variant, a constructor here, and every `match` on `Stage` or [`NodeKind`] the
//! compiler then points at.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Stage;

/// The id of one stage node; see the module docs.
#[derive(Clone)]
pub struct NodeId {
    text: String,
    stage: Stage,
    /// Byte offset in `text` of the separator between the two names of a `test:` (`/`)
    /// or `deliver:` (`@`) id; unused (0) for the others.
    cut: usize,
}

/// What a [`NodeId`] names, by stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind<'a> {
    Source {
        name: &'a str,
    },
    Build {
        image: &'a str,
    },
    Test {
        image: &'a str,
        suite: &'a str,
    },
    Publish {
        image: &'a str,
    },
    Deliver {
        image: &'a str,
        environment: &'a str,
    },
}

/// An id that is not one of the five shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to read node id `{id}`: {problem}; write it as `imgraph plan` lists it: `build:IMAGE`, `test:IMAGE/SUITE`, `publish:IMAGE`, `deliver:IMAGE@ENVIRONMENT` or `source:NAME`")]
pub struct NodeIdError {
    pub id: String,
    pub problem: NodeIdProblem,
}

/// What is wrong with a [`NodeIdError`]'s id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdProblem {
    #[error("it has no stage (the part before `:`)")]
    NoStage,
    #[error("`{0}` is no stage")]
    UnknownStage(String),
    #[error("a name after the stage is empty")]
    EmptyName,
    #[error("a test id needs `/` between the image and the suite")]
    NoSuite,
    #[error("a delivery id needs `@` between the image and the environment")]
    NoEnvironment,
}

impl NodeId {
    fn with(stage: Stage, first: &str, second: Option<(char, &str)>) -> NodeId {
        let mut text = format!("{}:{first}", stage.as_str());
        let cut = match second {
            Some((sep, name)) => {
                let cut = text.len();
                text.push(sep);
                text.push_str(name);
                cut
            }
            None => 0,
        };
        NodeId { text, stage, cut }
    }

    pub fn source(name: &str) -> NodeId {
        Self::with(Stage::Source, name, None)
    }

    pub fn build(image: &str) -> NodeId {
        Self::with(Stage::Build, image, None)
    }

    pub fn test(image: &str, suite: &str) -> NodeId {
        Self::with(Stage::Test, image, Some(('/', suite)))
    }

    pub fn publish(image: &str) -> NodeId {
        Self::with(Stage::Publish, image, None)
    }

    pub fn deliver(image: &str, environment: &str) -> NodeId {
        Self::with(Stage::Deliver, image, Some(('@', environment)))
    }

    /// Checks an id that comes from outside (see the module docs on how it is split).
    pub fn parse(text: &str) -> Result<NodeId, NodeIdError> {
        let fail = |problem| NodeIdError {
            id: text.to_string(),
            problem,
        };
        let (prefix, body) = text
            .split_once(':')
            .ok_or_else(|| fail(NodeIdProblem::NoStage))?;
        let stage = Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == prefix)
            .ok_or_else(|| {
                fail(match prefix {
                    "" => NodeIdProblem::NoStage,
                    _ => NodeIdProblem::UnknownStage(prefix.to_string()),
                })
            })?;
        let two = |sep: char, missing: NodeIdProblem| match body.split_once(sep) {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
            Some(_) => Err(fail(NodeIdProblem::EmptyName)),
            None => Err(fail(missing)),
        };
        if body.is_empty() {
            return Err(fail(NodeIdProblem::EmptyName));
        }
        Ok(match stage {
            Stage::Source => Self::source(body),
            Stage::Build => Self::build(body),
            Stage::Publish => Self::publish(body),
            Stage::Test => {
                let (image, suite) = two('/', NodeIdProblem::NoSuite)?;
                Self::test(image, suite)
            }
            Stage::Deliver => {
                let (image, environment) = two('@', NodeIdProblem::NoEnvironment)?;
                Self::deliver(image, environment)
            }
        })
    }

    /// The id's text: `build:web`, `test:web/http`, `deliver:web@staging`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// What the id names, by stage.
    pub fn kind(&self) -> NodeKind<'_> {
        let body = &self.text[self.stage.as_str().len() + 1..];
        let first = || &self.text[self.stage.as_str().len() + 1..self.cut];
        let second = || &self.text[self.cut + 1..];
        match self.stage {
            Stage::Source => NodeKind::Source { name: body },
            Stage::Build => NodeKind::Build { image: body },
            Stage::Publish => NodeKind::Publish { image: body },
            Stage::Test => NodeKind::Test {
                image: first(),
                suite: second(),
            },
            Stage::Deliver => NodeKind::Deliver {
                image: first(),
                environment: second(),
            },
        }
    }

    /// The image this node belongs to (none for sources).
    pub fn image(&self) -> Option<&str> {
        match self.kind() {
            NodeKind::Source { .. } => None,
            NodeKind::Build { image }
            | NodeKind::Test { image, .. }
            | NodeKind::Publish { image }
            | NodeKind::Deliver { image, .. } => Some(image),
        }
    }
}

/// The text, padded and aligned as the format asks (`{:20}` lines up a table).
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for NodeId {}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl Hash for NodeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        NodeId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn every_stage() -> Vec<NodeId> {
        vec![
            NodeId::source("debian"),
            NodeId::build("web"),
            NodeId::test("web", "http"),
            NodeId::publish("web"),
            NodeId::deliver("web", "staging"),
        ]
    }

    #[test]
    fn text_is_todays_id_for_every_stage() {
        let texts: Vec<String> = every_stage().iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "source:debian",
                "build:web",
                "test:web/http",
                "publish:web",
                "deliver:web@staging"
            ]
        );
    }

    #[test]
    fn every_stage_round_trips_through_parse_and_json() {
        for id in every_stage() {
            let parsed: NodeId = id.as_str().parse().unwrap();
            assert_eq!(parsed, id);
            assert_eq!(parsed.stage(), id.stage());
            assert_eq!(parsed.kind(), id.kind());
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{}\"", id.as_str()));
            let back: NodeId = serde_json::from_str(&json).unwrap();
            assert_eq!(back.kind(), id.kind());
        }
    }

    #[test]
    fn kind_names_the_parts() {
        assert_eq!(
            NodeId::test("web", "http").kind(),
            NodeKind::Test {
                image: "web",
                suite: "http"
            }
        );
        assert_eq!(
            NodeId::deliver("web", "staging").kind(),
            NodeKind::Deliver {
                image: "web",
                environment: "staging"
            }
        );
        assert_eq!(
            NodeId::source("debian").kind(),
            NodeKind::Source { name: "debian" }
        );
        assert_eq!(NodeId::source("debian").image(), None);
        assert_eq!(NodeId::deliver("web", "prod").image(), Some("web"));
    }

    #[test]
    fn display_pads_like_the_text() {
        let id = NodeId::build("web");
        assert_eq!(format!("[{id:12}]"), "[build:web   ]");
        assert_eq!(format!("[{id:>12}]"), "[   build:web]");
    }

    #[test]
    fn ids_sort_by_their_text() {
        let mut ids = every_stage();
        ids.sort();
        let texts: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        let problem = |s: &str| NodeId::parse(s).unwrap_err().problem;
        assert_eq!(problem("web"), NodeIdProblem::NoStage);
        assert_eq!(problem(":web"), NodeIdProblem::NoStage);
        assert_eq!(
            problem("deploy:web"),
            NodeIdProblem::UnknownStage("deploy".into())
        );
        assert_eq!(
            problem("Build:web"),
            NodeIdProblem::UnknownStage("Build".into())
        );
        assert_eq!(problem("build:"), NodeIdProblem::EmptyName);
        assert_eq!(problem("test:web"), NodeIdProblem::NoSuite);
        assert_eq!(problem("test:web/"), NodeIdProblem::EmptyName);
        assert_eq!(problem("test:/http"), NodeIdProblem::EmptyName);
        assert_eq!(problem("deliver:web"), NodeIdProblem::NoEnvironment);
        assert_eq!(problem("deliver:@prod"), NodeIdProblem::EmptyName);
        let message = NodeId::parse("deliver:web").unwrap_err().to_string();
        assert!(
            message.starts_with("failed to read node id `deliver:web`: a delivery id needs `@`")
        );
        assert!(message.contains("`deliver:IMAGE@ENVIRONMENT`"));
        assert!(serde_json::from_str::<NodeId>("\"nope\"").is_err());
    }

    #[test]
    fn names_holding_a_separator_keep_their_text() {
        let id = NodeId::test("a/b", "c");
        assert_eq!(id.as_str(), "test:a/b/c");
        assert_eq!(
            id.kind(),
            NodeKind::Test {
                image: "a/b",
                suite: "c"
            }
        );
        // Parsed, the text splits at the first `/`: the same id, other parts.
        let parsed = NodeId::parse("test:a/b/c").unwrap();
        assert_eq!(parsed, id);
        assert_eq!(
            parsed.kind(),
            NodeKind::Test {
                image: "a",
                suite: "b/c"
            }
        );
        let deliver = NodeId::parse("deliver:web@eu@prod").unwrap();
        assert_eq!(deliver.image(), Some("web"));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9._ -][a-z0-9._:/@ -]{0,12}"
    }

    proptest! {
        #[test]
        fn constructed_ids_parse_back_to_the_same_text(a in name(), b in name()) {
            for id in [
                NodeId::source(&a),
                NodeId::build(&a),
                NodeId::test(&a, &b),
                NodeId::publish(&a),
                NodeId::deliver(&a, &b),
            ] {
                let parsed = NodeId::parse(id.as_str()).unwrap();
                prop_assert_eq!(parsed.as_str(), id.as_str());
                prop_assert_eq!(parsed.stage(), id.stage());
                // Without a separator in the first name, the parts are the same too.
                if !a.contains('/') && !a.contains('@') {
                    prop_assert_eq!(parsed.kind(), id.kind());
                }
            }
        }

        #[test]
        fn parse_never_panics_and_accepts_only_what_it_prints(s in "\\PC{0,24}") {
            if let Ok(id) = NodeId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }
    }
}
