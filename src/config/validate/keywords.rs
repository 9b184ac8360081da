//! The words of every keyword choice (`provider "local"`, `build "packer"`,
//! `trigger="rollup"`, …) and the model enum each parses into. A choice is matched by word
//! to its variant, never by its position in a list, so reordering a list cannot swap two
//! meanings; the order of `ALL` is only the order help texts list the words in. Each
//! `word` is an exhaustive match: a new variant does not compile until it has a word.

use crate::config::model::{Builder, Network, ProbePlace, ProviderType, Sandbox, Trigger};

/// A value written as one of a fixed set of words.
pub(super) trait Keyword: Copy + 'static {
    /// Every value, in the order help texts list them.
    const ALL: &'static [Self];

    /// The word that names `self` in the config.
    fn word(self) -> &'static str;

    /// The value `word` names.
    fn from_word(word: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.word() == word)
    }

    /// Every word, in the order of [`Keyword::ALL`].
    fn words() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.word()).collect()
    }
}

impl Keyword for ProviderType {
    const ALL: &'static [Self] = &ProviderType::ALL;
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Keyword for Builder {
    const ALL: &'static [Self] = &Builder::ALL;
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Keyword for Trigger {
    const ALL: &'static [Self] = &[Trigger::Immediate, Trigger::Rollup];
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Keyword for Sandbox {
    // `chroot` is refused before the choice, with its own message.
    const ALL: &'static [Self] = &[Sandbox::None, Sandbox::Bwrap];
    fn word(self) -> &'static str {
        match self {
            Sandbox::None => "none",
            Sandbox::Bwrap => "bwrap",
        }
    }
}

impl Keyword for Network {
    const ALL: &'static [Self] = &[Network::Host, Network::None];
    fn word(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

impl Keyword for ProbePlace {
    const ALL: &'static [Self] = &[ProbePlace::Project, ProbePlace::Image];
    fn word(self) -> &'static str {
        match self {
            ProbePlace::Project => "project",
            ProbePlace::Image => "image",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<K: Keyword + PartialEq + std::fmt::Debug>() {
        for &k in K::ALL {
            assert_eq!(K::from_word(k.word()), Some(k));
        }
        let mut words = K::words();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), K::ALL.len(), "two values share a word");
    }

    #[test]
    fn every_keyword_reads_back_as_itself() {
        round_trips::<ProviderType>();
        round_trips::<Builder>();
        round_trips::<Trigger>();
        round_trips::<Sandbox>();
        round_trips::<Network>();
        round_trips::<ProbePlace>();
        assert_eq!(Builder::from_word("docker"), None);
    }

    #[test]
    fn help_texts_list_the_words_in_their_documented_order() {
        assert_eq!(Builder::words(), ["rootfs", "packer", "ec2"]);
        assert_eq!(ProviderType::words(), ["local", "aws"]);
        assert_eq!(Sandbox::words(), ["none", "bwrap"]);
    }
}
