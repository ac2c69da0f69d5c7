//! Offline language identification with `whatlang` (a trigram model compiled into the crate,
//! nothing to download). FineWeb keeps English with fastText score > 0.65; here the score is
//! whatlang's confidence, and the kept languages and threshold come from `[language]`.
//!
//! Only the first `max_chars` characters are scored: the model's answer is stable well before
//! that, and it keeps the cost per document flat for very long pages.

use serde::{Deserialize, Serialize};

/// `[language]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageConfig {
    pub enabled: bool,
    /// ISO 639-1 codes where one exists (`en`, `de`), else whatlang's 639-3 code.
    pub languages: Vec<String>,
    /// Keep a document only when its score is strictly above this.
    pub min_score: f64,
    pub max_chars: usize,
}

impl Default for LanguageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            languages: vec!["en".into()],
            min_score: 0.65,
            max_chars: 3000,
        }
    }
}

/// A language code (639-1 when known) and score in [0, 1].
pub fn identify(text: &str, max_chars: usize) -> (String, f64) {
    let cut = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| i);
    // fastText (FineWeb) sees the text with newlines as spaces; whatlang does not care.
    match whatlang::detect(&text[..cut]) {
        Some(info) => (code(info.lang()).to_string(), info.confidence()),
        None => ("unknown".to_string(), 0.0),
    }
}

fn code(lang: whatlang::Lang) -> &'static str {
    use whatlang::Lang::*;
    match lang {
        Eng => "en",
        Deu => "de",
        Fra => "fr",
        Spa => "es",
        Ita => "it",
        Por => "pt",
        Nld => "nl",
        Rus => "ru",
        Ukr => "uk",
        Pol => "pl",
        Ces => "cs",
        Swe => "sv",
        Dan => "da",
        Nob => "nb",
        Fin => "fi",
        Tur => "tr",
        Ell => "el",
        Ara => "ar",
        Heb => "he",
        Hin => "hi",
        Jpn => "ja",
        Cmn => "zh",
        Kor => "ko",
        Vie => "vi",
        Ind => "id",
        Ron => "ro",
        Hun => "hu",
        Cat => "ca",
        other => other.code(),
    }
}

/// `None` to keep, or the reason to drop, with the detected language and score.
pub fn check(text: &str, c: &LanguageConfig) -> (Option<&'static str>, String, f64) {
    let (lang, score) = identify(text, c.max_chars);
    if !c.languages.contains(&lang) {
        return (Some("language_not_kept"), lang, score);
    }
    if score <= c.min_score {
        return (Some("language_score_low"), lang, score);
    }
    (None, lang, score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_kept_others_dropped() {
        let c = LanguageConfig::default();
        let en = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch and drinks his coffee.";
        let (reason, lang, score) = check(en, &c);
        assert_eq!((reason, lang.as_str()), (None, "en"), "score {score}");
        let de = "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer von der Veranda aus zusieht.";
        assert_eq!(check(de, &c).0, Some("language_not_kept"));
        assert_eq!(check(de, &c).1, "de");
        let both = LanguageConfig {
            languages: vec!["en".into(), "de".into()],
            ..c.clone()
        };
        assert_eq!(check(de, &both).0, None);
        let strict = LanguageConfig {
            min_score: 1.0,
            ..c
        };
        assert_eq!(check(en, &strict).0, Some("language_score_low"));
    }
}
