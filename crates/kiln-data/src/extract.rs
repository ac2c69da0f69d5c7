//! HTML → main text: a single-pass tag scanner (no DOM) that writes every visible text, one line
//! per block, and records the output range of each element that marks main content
//! (`<main>`, `<article>`, `role=main`, `itemprop=articleBody`), boilerplate (nav/header/footer/
//! aside/form tags, navigation roles, class/id tokens such as `menu`, `share`, `cookie`,
//! `comment`, `related`) or is mostly link text. Once the page is scanned, the kept text is the
//! main region (the whole page when none is marked) less its boilerplate and link-list blocks;
//! on a page that marks no main region, a boilerplate-named block holding half of the text in
//! running prose is kept (it is the content under an unlucky class name).
//!
//! Why not a crate: measured by `scripts/bench-data-extract.sh` (docs/benchmarks.md), the
//! maintained Rust extractors build an html5ever DOM per page and run 5–40× slower than this
//! scanner; `dom_smoothie` (Readability) is the closest in speed but below this extractor on the
//! doc sets, and `trafilatura`/`rs-trafilatura` are slower than the ≥10×-trafilatura budget
//! allows on some sets.
//!
//! Bad input: nesting deeper than [`ExtractConfig::max_depth`] is reported as
//! [`ExtractError::TooDeep`] (the document is skipped, not the run).

use serde::{Deserialize, Serialize};

/// Extraction settings (the `[extract]` table of the pipeline TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// Pages larger than this (bytes of HTML) are skipped as `html_too_large`.
    pub max_html_bytes: usize,
    /// Open-element depth beyond which a page is skipped as `html_too_deep`.
    pub max_depth: usize,
    /// Prefix list items with "- " (as trafilatura does).
    pub list_bullets: bool,
    /// Keep only `<main>`, `<article>` or `role="main"` content when the page has one.
    pub prefer_main: bool,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            max_html_bytes: 8 << 20,
            max_depth: 512,
            list_bullets: true,
            prefer_main: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("HTML nesting deeper than {0}")]
    TooDeep(usize),
    #[error("HTML larger than {0} bytes")]
    TooLarge(usize),
}

/// Elements whose whole content is never text.
const HARD_SKIP_TAGS: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "math", "head", "button", "select",
    "textarea", "iframe", "object", "embed", "canvas", "video", "audio", "map",
];

/// Start tags that may appear inside `<head>`; any other start tag closes an open head.
const HEAD_CONTENT_TAGS: &[&str] = &[
    "html", "head", "title", "meta", "link", "style", "script", "noscript", "base", "template",
];

/// Start tags that close an open `<p>` (HTML's "close a p element" step for flow content).
const P_CLOSING_TAGS: &[&str] = &[
    "p",
    "div",
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "details",
    "dialog",
    "dir",
    "dl",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "header",
    "hgroup",
    "main",
    "menu",
    "nav",
    "ol",
    "ul",
    "search",
    "section",
    "summary",
    "pre",
    "listing",
    "form",
    "table",
    "hr",
    "xmp",
    "plaintext",
];

/// Elements that are boilerplate unless the page's main content sits inside them.
const SOFT_SKIP_TAGS: &[&str] = &["nav", "footer", "aside", "form", "header", "menu", "dialog"];

/// A block whose link text is more than this share of its text is navigation.
const LINK_DENSITY_MAX: f64 = 0.7;

/// Bytes of text outside links that make a block that is not mostly links running prose (a
/// sentence, not a menu's column heading such as "Category 4").
const PROSE_MIN_BYTES: usize = 40;

/// A boilerplate-marked block holding at least this share of the main region's text is kept.
const CONTENT_SHARE: f64 = 0.5;

/// Elements with raw-text content (their end tag is searched for literally).
const RAW_TAGS: &[&str] = &["script", "style", "textarea", "title", "xmp", "plaintext"];

const VOID_TAGS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "pre",
    "blockquote",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "caption",
    "br",
    "hr",
    "body",
    "html",
    "center",
    "fieldset",
    "legend",
    "hgroup",
];

/// Parts of class/id values (split at `-`, `_`, space) that mark boilerplate blocks.
const BOILERPLATE: &[&str] = &[
    "nav",
    "navbar",
    "navigation",
    "menu",
    "sidebar",
    "sidebarwrapper",
    "sphinxsidebar",
    "footer",
    "breadcrumb",
    "breadcrumbs",
    "related",
    "share",
    "sharing",
    "social",
    "cookie",
    "cookies",
    "banner",
    "advert",
    "advertisement",
    "ad",
    "ads",
    "sponsor",
    "sponsored",
    "promo",
    "comment",
    "comments",
    "pagination",
    "pager",
    "masthead",
    "newsletter",
    "subscribe",
    "popup",
    "modal",
    "skip",
    "headerlink",
    "toc",
    "signup",
    "login",
    "copyright",
    "disqus",
    "widget",
    "gallery",
    "slideshow",
    "carousel",
    "player",
];

/// An id made from a heading's words (`sharing-with-a-single-developer`, as docutils and many
/// blog engines write them): three or more parts, one of them a function word. Its words say what
/// the section is about, not what role the block plays.
fn is_heading_slug(id: &[u8]) -> bool {
    const FUNCTION_WORDS: &[&str] = &[
        "a", "an", "the", "with", "to", "of", "and", "in", "for", "on", "is", "how", "your",
    ];
    let parts: Vec<&[u8]> = id
        .split(|&c| c == b'-' || c == b'_')
        .filter(|p| !p.is_empty())
        .collect();
    parts.len() >= 3
        && parts.iter().any(|p| {
            FUNCTION_WORDS
                .iter()
                .any(|w| p.eq_ignore_ascii_case(w.as_bytes()))
        })
}

/// Starts of class/id parts that mark boilerplate however they go on (`relatedposts`,
/// `commentlist`, `sidebarleft`): words no content block's name starts with.
const BOILERPLATE_PREFIXES: &[&str] =
    &["related", "comment", "sidebar", "breadcrumb", "newsletter"];

fn is_boilerplate_attr(value: &[u8]) -> bool {
    value
        .split(|&c| c == b'-' || c == b'_' || c.is_ascii_whitespace())
        .any(|part| {
            !part.is_empty()
                && (BOILERPLATE
                    .iter()
                    .any(|b| part.eq_ignore_ascii_case(b.as_bytes()))
                    || BOILERPLATE_PREFIXES.iter().any(|b| {
                        part.len() >= b.len() && part[..b.len()].eq_ignore_ascii_case(b.as_bytes())
                    }))
        })
}

struct Tag<'a> {
    name: String,
    end: bool,
    self_closing: bool,
    attrs: &'a [u8],
}

/// The attributes the extractor looks at, found in one pass over the tag.
#[derive(Default)]
struct Attrs<'a> {
    hidden: bool,
    style: Option<&'a [u8]>,
    role: Option<&'a [u8]>,
    class: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    itemprop: Option<&'a [u8]>,
}

fn attrs(attrs: &[u8]) -> Attrs<'_> {
    // Tiny attribute scanner: name[=value] pairs, values quoted or bare.
    let mut out = Attrs::default();
    let mut i = 0;
    let n = attrs.len();
    while i < n {
        while i < n && (attrs[i].is_ascii_whitespace() || attrs[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < n && !attrs[i].is_ascii_whitespace() && attrs[i] != b'=' && attrs[i] != b'/' {
            i += 1;
        }
        let name = &attrs[start..i];
        while i < n && attrs[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value: &[u8] = b"";
        if i < n && attrs[i] == b'=' {
            i += 1;
            while i < n && attrs[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < n && (attrs[i] == b'"' || attrs[i] == b'\'') {
                let q = attrs[i];
                i += 1;
                let vs = i;
                while i < n && attrs[i] != q {
                    i += 1;
                }
                value = &attrs[vs..i];
                i += 1;
            } else {
                let vs = i;
                while i < n && !attrs[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = &attrs[vs..i];
            }
        }
        if name.eq_ignore_ascii_case(b"class") {
            out.class = Some(value);
        } else if name.eq_ignore_ascii_case(b"id") {
            out.id = Some(value);
        } else if name.eq_ignore_ascii_case(b"role") {
            out.role = Some(value);
        } else if name.eq_ignore_ascii_case(b"itemprop") {
            out.itemprop = Some(value);
        } else if name.eq_ignore_ascii_case(b"style") {
            out.style = Some(value);
        } else if (name.eq_ignore_ascii_case(b"hidden")
            // `hidden="until-found"` is collapsed content the reader can expand and the
            // browser's find-in-page reveals (Wikipedia's mobile sections): it is text.
            && !value.eq_ignore_ascii_case(b"until-found"))
            || (name.eq_ignore_ascii_case(b"aria-hidden") && value.eq_ignore_ascii_case(b"true"))
        {
            out.hidden = true;
        }
        if start == i {
            i += 1;
        }
    }
    out
}

fn hides(style: &[u8]) -> bool {
    let s: Vec<u8> = style
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_lowercase)
        .collect();
    memchr::memmem::find(&s, b"display:none").is_some()
        || memchr::memmem::find(&s, b"visibility:hidden").is_some()
}

/// Receives tags and text in document order.
trait Sink {
    /// Returns true when the raw text of this (raw-text) element is wanted.
    fn tag(&mut self, tag: Tag<'_>) -> bool;
    fn text(&mut self, text: &str);
}

/// Scan tags and text of an HTML string, feeding `sink` in document order.
fn scan(html: &str, sink: &mut dyn Sink) {
    let bytes = html.as_bytes();
    let n = bytes.len();
    let mut pos = 0;
    while pos < n {
        let Some(lt) = memchr::memchr(b'<', &bytes[pos..]).map(|i| pos + i) else {
            sink.text(&html[pos..]);
            return;
        };
        if lt > pos {
            sink.text(&html[pos..lt]);
        }
        let rest = &bytes[lt..];
        if rest.starts_with(b"<!--") {
            pos = memchr::memmem::find(&rest[4..], b"-->").map_or(n, |e| lt + 4 + e + 3);
            continue;
        }
        if rest.len() > 1 && (rest[1] == b'!' || rest[1] == b'?') {
            if rest.starts_with(b"<![CDATA[") {
                let end = memchr::memmem::find(rest, b"]]>").map_or(n, |e| lt + e);
                sink.text(&html[lt + 9..end.max(lt + 9)]);
                pos = (end + 3).min(n);
            } else {
                pos = memchr::memchr(b'>', rest).map_or(n, |e| lt + e + 1);
            }
            continue;
        }
        let end_tag = rest.len() > 1 && rest[1] == b'/';
        let name_start = lt + 1 + end_tag as usize;
        // HTML's tokenizer opens a tag only when a letter follows `<` or `</`: `I <3 you`,
        // `x < 5`, `<-- here` are text.
        if !bytes.get(name_start).is_some_and(u8::is_ascii_alphabetic) {
            if end_tag {
                // `</>` is dropped and `</` + anything else is a bogus comment up to `>`.
                pos = memchr::memchr(b'>', rest).map_or(n, |e| lt + e + 1);
            } else {
                sink.text(&html[lt..lt + 1]);
                pos = lt + 1;
            }
            continue;
        }
        let mut i = name_start;
        while i < n && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b':') {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        let j = tag_end(bytes, i);
        // `/>` self-closes unless the slash ends a bare attribute value (`<a href=/>`).
        let self_closing = j > i
            && j <= n
            && bytes[j - 1] == b'/'
            && (j - 1 == i || matches!(bytes[j - 2], b'"' | b'\'' | b' ' | b'\t' | b'\n' | b'\r'));
        let attrs = &bytes[i..j.min(n)];
        let raw = !end_tag && RAW_TAGS.contains(&name.as_str());
        let wants_raw_text = sink.tag(Tag {
            name: name.clone(),
            end: end_tag,
            self_closing,
            attrs,
        });
        pos = (j + 1).min(n);
        if raw && !self_closing {
            // Raw text runs to `</name`, case-insensitively.
            let close = format!("</{name}");
            let mut k = pos;
            let found = loop {
                match memchr::memmem::find(&bytes[k..], b"</") {
                    Some(off) => {
                        let at = k + off;
                        if bytes.len() >= at + close.len()
                            && bytes[at..at + close.len()].eq_ignore_ascii_case(close.as_bytes())
                        {
                            break Some(at);
                        }
                        k = at + 2;
                    }
                    None => break None,
                }
            };
            let end = found.unwrap_or(n);
            if wants_raw_text {
                sink.text(&html[pos..end]);
            }
            // Emit the end tag so the caller's stack stays balanced.
            sink.tag(Tag {
                name,
                end: true,
                self_closing: false,
                attrs: b"",
            });
            pos = found.map_or(n, |at| {
                memchr::memchr(b'>', &bytes[at..]).map_or(n, |e| at + e + 1)
            });
        }
    }
}

/// The index of the `>` that ends a tag whose attributes start at `from` (`bytes.len()` when
/// none does). A quote opens a quoted value only right after `=` (and optional whitespace), as in
/// HTML's attribute-value states: an apostrophe inside a bare value or name (`ALT=Joe's`) is
/// just a character.
fn tag_end(bytes: &[u8], from: usize) -> usize {
    let mut j = from;
    let mut quote = 0u8;
    let mut after_equals = false;
    while j < bytes.len() {
        let b = bytes[j];
        if quote != 0 {
            if b == quote {
                quote = 0;
            }
        } else if b == b'>' {
            break;
        } else if after_equals && (b == b'"' || b == b'\'') {
            quote = b;
            after_equals = false;
        } else if b == b'=' {
            after_equals = true;
        } else if !b.is_ascii_whitespace() {
            after_equals = false;
        }
        j += 1;
    }
    j
}

/// Decode HTML character references (`&amp;`, `&#233;`, `&#x2014;`, common named ones).
pub fn decode_entities(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('&') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let mut end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|e| e + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let (digits, radix) = match num.strip_prefix(['x', 'X']) {
                Some(hex) => (hex, 16),
                None => (num, 10),
            };
            // The reference is the run of digits (`&#8217s` is ’ then "s").
            let len = digits
                .find(|c: char| !c.is_digit(radix))
                .unwrap_or(digits.len());
            end -= digits.len() - len;
            (len > 0).then(|| {
                // Too many digits for a u32 is out of range too.
                u32::from_str_radix(&digits[..len], radix).map_or('\u{FFFD}', numeric_entity)
            })
        } else {
            named_entity(name)
        };
        match decoded {
            Some(c) => {
                out.push(c);
                let skip = if rest[end..].starts_with(';') {
                    end + 1
                } else {
                    end
                };
                rest = &rest[skip..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Named character references: the HTML 4 set (all of Latin-1, Greek letters, general
/// punctuation, arrows, math symbols and the Latin Extended letters Œ, Š, Ÿ, ƒ), `&apos;` and
/// the upper-case spellings HTML accepts for a few, sorted by name for a binary search. The
/// full HTML5 table (2,231 names) was not taken: no small maintained crate providing it was
/// reachable from this build, and the HTML5 additions are rare on real pages.
#[rustfmt::skip]
const NAMED_ENTITIES: &[(&str, char)] = &[
    ("AElig", 'Æ'), ("AMP", '&'), ("Aacute", 'Á'), ("Acirc", 'Â'), ("Agrave", 'À'), ("Alpha", 'Α'),
    ("Aring", 'Å'), ("Atilde", 'Ã'), ("Auml", 'Ä'), ("Beta", 'Β'), ("COPY", '©'), ("Ccedil", 'Ç'),
    ("Chi", 'Χ'), ("Dagger", '‡'), ("Delta", 'Δ'), ("ETH", 'Ð'), ("Eacute", 'É'), ("Ecirc", 'Ê'),
    ("Egrave", 'È'), ("Epsilon", 'Ε'), ("Eta", 'Η'), ("Euml", 'Ë'), ("GT", '>'), ("Gamma", 'Γ'),
    ("Iacute", 'Í'), ("Icirc", 'Î'), ("Igrave", 'Ì'), ("Iota", 'Ι'), ("Iuml", 'Ï'), ("Kappa", 'Κ'),
    ("LT", '<'), ("Lambda", 'Λ'), ("Mu", 'Μ'), ("Ntilde", 'Ñ'), ("Nu", 'Ν'), ("OElig", 'Œ'),
    ("Oacute", 'Ó'), ("Ocirc", 'Ô'), ("Ograve", 'Ò'), ("Omega", 'Ω'), ("Omicron", 'Ο'),
    ("Oslash", 'Ø'), ("Otilde", 'Õ'), ("Ouml", 'Ö'), ("Phi", 'Φ'), ("Pi", 'Π'), ("Prime", '″'),
    ("Psi", 'Ψ'), ("QUOT", '"'), ("REG", '®'), ("Rho", 'Ρ'), ("Scaron", 'Š'), ("Sigma", 'Σ'),
    ("THORN", 'Þ'), ("Tau", 'Τ'), ("Theta", 'Θ'), ("Uacute", 'Ú'), ("Ucirc", 'Û'), ("Ugrave", 'Ù'),
    ("Upsilon", 'Υ'), ("Uuml", 'Ü'), ("Xi", 'Ξ'), ("Yacute", 'Ý'), ("Yuml", 'Ÿ'), ("Zeta", 'Ζ'),
    ("aacute", 'á'), ("acirc", 'â'), ("acute", '´'), ("aelig", 'æ'), ("agrave", 'à'),
    ("alefsym", 'ℵ'), ("alpha", 'α'), ("amp", '&'), ("and", '∧'), ("ang", '∠'), ("apos", '\u{27}'),
    ("aring", 'å'), ("asymp", '≈'), ("atilde", 'ã'), ("auml", 'ä'), ("bdquo", '„'), ("beta", 'β'),
    ("brvbar", '¦'), ("bull", '•'), ("cap", '∩'), ("ccedil", 'ç'), ("cedil", '¸'), ("cent", '¢'),
    ("chi", 'χ'), ("circ", 'ˆ'), ("clubs", '♣'), ("cong", '≅'), ("copy", '©'), ("crarr", '↵'),
    ("cup", '∪'), ("curren", '¤'), ("dArr", '⇓'), ("dagger", '†'), ("darr", '↓'), ("deg", '°'),
    ("delta", 'δ'), ("diams", '♦'), ("divide", '÷'), ("eacute", 'é'), ("ecirc", 'ê'),
    ("egrave", 'è'), ("empty", '∅'), ("emsp", '\u{2003}'), ("ensp", '\u{2002}'), ("epsilon", 'ε'),
    ("equiv", '≡'), ("eta", 'η'), ("eth", 'ð'), ("euml", 'ë'), ("euro", '€'), ("exist", '∃'),
    ("fnof", 'ƒ'), ("forall", '∀'), ("frac12", '½'), ("frac14", '¼'), ("frac34", '¾'),
    ("frasl", '⁄'), ("gamma", 'γ'), ("ge", '≥'), ("gt", '>'), ("hArr", '⇔'), ("harr", '↔'),
    ("hearts", '♥'), ("hellip", '…'), ("iacute", 'í'), ("icirc", 'î'), ("iexcl", '¡'),
    ("igrave", 'ì'), ("image", 'ℑ'), ("infin", '∞'), ("int", '∫'), ("iota", 'ι'), ("iquest", '¿'),
    ("isin", '∈'), ("iuml", 'ï'), ("kappa", 'κ'), ("lArr", '⇐'), ("lambda", 'λ'), ("lang", '〈'),
    ("laquo", '«'), ("larr", '←'), ("lceil", '⌈'), ("ldquo", '“'), ("le", '≤'), ("lfloor", '⌊'),
    ("lowast", '∗'), ("loz", '◊'), ("lrm", '\u{200e}'), ("lsaquo", '‹'), ("lsquo", '‘'),
    ("lt", '<'), ("macr", '¯'), ("mdash", '—'), ("micro", 'µ'), ("middot", '·'), ("minus", '−'),
    ("mu", 'μ'), ("nabla", '∇'), ("nbsp", '\u{a0}'), ("ndash", '–'), ("ne", '≠'), ("ni", '∋'),
    ("not", '¬'), ("notin", '∉'), ("nsub", '⊄'), ("ntilde", 'ñ'), ("nu", 'ν'), ("oacute", 'ó'),
    ("ocirc", 'ô'), ("oelig", 'œ'), ("ograve", 'ò'), ("oline", '‾'), ("omega", 'ω'),
    ("omicron", 'ο'), ("oplus", '⊕'), ("or", '∨'), ("ordf", 'ª'), ("ordm", 'º'), ("oslash", 'ø'),
    ("otilde", 'õ'), ("otimes", '⊗'), ("ouml", 'ö'), ("para", '¶'), ("part", '∂'), ("permil", '‰'),
    ("perp", '⊥'), ("phi", 'φ'), ("pi", 'π'), ("piv", 'ϖ'), ("plusmn", '±'), ("pound", '£'),
    ("prime", '′'), ("prod", '∏'), ("prop", '∝'), ("psi", 'ψ'), ("quot", '"'), ("rArr", '⇒'),
    ("radic", '√'), ("rang", '〉'), ("raquo", '»'), ("rarr", '→'), ("rceil", '⌉'), ("rdquo", '”'),
    ("real", 'ℜ'), ("reg", '®'), ("rfloor", '⌋'), ("rho", 'ρ'), ("rlm", '\u{200f}'),
    ("rsaquo", '›'), ("rsquo", '’'), ("sbquo", '‚'), ("scaron", 'š'), ("sdot", '⋅'), ("sect", '§'),
    ("shy", '\u{ad}'), ("sigma", 'σ'), ("sigmaf", 'ς'), ("sim", '∼'), ("spades", '♠'),
    ("sub", '⊂'), ("sube", '⊆'), ("sum", '∑'), ("sup", '⊃'), ("sup1", '¹'), ("sup2", '²'),
    ("sup3", '³'), ("supe", '⊇'), ("szlig", 'ß'), ("tau", 'τ'), ("there4", '∴'), ("theta", 'θ'),
    ("thetasym", 'ϑ'), ("thinsp", '\u{2009}'), ("thorn", 'þ'), ("tilde", '˜'), ("times", '×'),
    ("trade", '™'), ("uArr", '⇑'), ("uacute", 'ú'), ("uarr", '↑'), ("ucirc", 'û'), ("ugrave", 'ù'),
    ("uml", '¨'), ("upsih", 'ϒ'), ("upsilon", 'υ'), ("uuml", 'ü'), ("weierp", '℘'), ("xi", 'ξ'),
    ("yacute", 'ý'), ("yen", '¥'), ("yuml", 'ÿ'), ("zeta", 'ζ'), ("zwj", '\u{200d}'),
    ("zwnj", '\u{200c}'),
];

fn named_entity(name: &str) -> Option<char> {
    NAMED_ENTITIES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| NAMED_ENTITIES[i].1)
}

/// What a numeric character reference stands for, as HTML decodes it: 0, surrogates and
/// numbers past U+10FFFF become U+FFFD, and 128–159 are read as windows-1252 bytes (pages
/// written on Windows put `&#146;` for ’).
fn numeric_entity(code: u32) -> char {
    const WINDOWS_1252_80_9F: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match code {
        0x80..=0x9F => WINDOWS_1252_80_9F[(code - 0x80) as usize],
        0 => '\u{FFFD}',
        _ => char::from_u32(code).unwrap_or('\u{FFFD}'),
    }
}

/// Output builder: blocks separated by "\n", inline whitespace collapsed, `<pre>` kept verbatim.
struct Out {
    text: String,
    line_has_text: bool,
    pending_space: bool,
}

impl Out {
    fn block_break(&mut self) {
        if self.line_has_text {
            // Trim a trailing space of the finished line.
            while self.text.ends_with(' ') {
                self.text.pop();
            }
            self.text.push('\n');
            self.line_has_text = false;
        }
        self.pending_space = false;
    }
    fn push_inline(&mut self, s: &str) {
        for (i, word) in s.split(|c: char| c.is_whitespace()).enumerate() {
            if i > 0 {
                self.pending_space = true;
            }
            if word.is_empty() {
                self.pending_space = true;
                continue;
            }
            if self.pending_space && self.line_has_text {
                self.text.push(' ');
            }
            self.text.push_str(word);
            self.line_has_text = true;
            self.pending_space = false;
        }
        // `split` yields "" after trailing whitespace, so pending_space is already set.
    }
    /// Preformatted text goes out as it is: spaces (also whole whitespace-only text nodes
    /// between highlighter spans), indentation and blank lines; CR and CRLF become LF.
    fn push_pre(&mut self, s: &str) {
        let normalized;
        let s = if s.contains('\r') {
            normalized = s.replace("\r\n", "\n").replace('\r', "\n");
            normalized.as_str()
        } else {
            s
        };
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                self.text.push('\n');
                self.line_has_text = false;
            }
            if !line.is_empty() {
                self.text.push_str(line);
                self.line_has_text = true;
            }
        }
        self.pending_space = false;
    }
}

/// What an element marks for the decisions taken once the whole page is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    None,
    /// `<main>`, `<article>`, `role="main"`, `itemprop="articleBody"`.
    Main,
    /// Navigation or boilerplate by tag, role, class or id.
    Boilerplate,
}

/// An open element: its name, the state before it, and where its output starts.
struct Open {
    name: String,
    before: State,
    block: bool,
    mark: Mark,
    start: usize,
    links_at_open: usize,
    /// A block of running prose (not mostly links) was closed inside this element.
    holds_prose: bool,
    /// For `<a>`: text was written in it outside any block inside it.
    inline_text: bool,
}

/// A closed element's range of the output text and how many of its bytes were link text.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    links: usize,
}

impl Span {
    fn len(&self) -> usize {
        self.end - self.start
    }
    #[cfg(test)]
    fn contains(&self, other: &Span) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

struct Extractor<'c> {
    config: &'c ExtractConfig,
    stack: Vec<Open>,
    state: State,
    pre_depth: usize,
    /// Just after a `<pre>` start tag, where HTML drops one leading newline.
    pre_just_opened: bool,
    /// Output ranges of the outermost `<pre>` blocks, in document order: their lines keep
    /// their indentation and inner blank lines.
    pre_blocks: Vec<(usize, usize)>,
    link_depth: usize,
    too_deep: bool,
    out: Out,
    /// Bytes of the output written inside `<a>`.
    link_bytes: usize,
    mains: Vec<Span>,
    boilerplate: Vec<Span>,
    /// Blocks whose text is mostly link text (menus, link lists, tag clouds, related stories).
    link_blocks: Vec<Span>,
}

/// Whether text is being kept at this point of the page.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Inside a script/style/hidden element: nothing here is ever text.
    hard_skip: bool,
}

impl Extractor<'_> {
    fn close(&mut self, open: Open) {
        match open.name.as_str() {
            "pre" => self.pre_depth = self.pre_depth.saturating_sub(1),
            "a" => self.link_depth = self.link_depth.saturating_sub(1),
            _ => {}
        }
        self.state = open.before;
        if open.block && !self.state.hard_skip {
            self.out.block_break();
        }
        let span = Span {
            start: open.start,
            end: self.out.text.len(),
            links: self.link_bytes - open.links_at_open,
        };
        if open.name == "pre" && self.pre_depth == 0 && span.len() > 0 {
            self.pre_blocks.push((span.start, span.end));
        }
        if span.len() == 0 {
            return;
        }
        match open.mark {
            Mark::Main => self.mains.push(span),
            Mark::Boilerplate => self.boilerplate.push(span),
            Mark::None => {}
        }
        // Link density is judged on the innermost blocks: a block around a paragraph of prose
        // is not a link list however many menus sit beside that paragraph (a mega-menu can
        // outweigh the article), and <html>/<body> are the whole page, never a link list.
        let link_dense = span.links as f64 > LINK_DENSITY_MAX * span.len() as f64;
        let is_prose = open.block && !link_dense && span.len() - span.links >= PROSE_MIN_BYTES;
        if open.holds_prose || is_prose {
            if let Some(parent) = self.stack.last_mut() {
                parent.holds_prose = true;
            }
        }
        if open.block
            && link_dense
            && !open.holds_prose
            && !matches!(open.name.as_str(), "html" | "body")
        {
            self.link_blocks.push(span);
        }
    }

    /// Pops an open `<head>` and everything above it. `</head>` is optional in HTML: any start
    /// tag that cannot live in the head (`<body>`, `<p>`, `<div>`, …) ends it implicitly. Inside
    /// a `<template>` the head's rules do not apply, so the head stays open there. A head
    /// sits at the root or under `<html>`, so only the first two open elements are looked at.
    fn close_open_head(&mut self) {
        let Some(at) = self.stack.iter().take(2).position(|o| o.name == "head") else {
            return;
        };
        if self.stack[at..].iter().any(|o| o.name == "template") {
            return;
        }
        while self.stack.len() > at {
            let open = self.stack.pop().expect("non-empty");
            self.close(open);
        }
    }

    /// Where the stack is cut (everything from this index up is closed) before the start tag
    /// `name` opens, following HTML's optional end tags: without them, pages that leave
    /// `</td>`, `</li>`, `</p>`, `</dd>` out nest one level per row or item and soon look
    /// deeper than `max_depth`.
    fn implied_end(&self, name: &str) -> Option<usize> {
        // Walks down from the current node: `Some(true)` closes up to and including that
        // element, `Some(false)` stops the search (a scope boundary).
        let find = |verdict: &dyn Fn(&str) -> Option<bool>| {
            for (i, open) in self.stack.iter().enumerate().rev() {
                match verdict(open.name.as_str()) {
                    Some(true) => return Some(i),
                    Some(false) => return None,
                    None => {}
                }
            }
            None
        };
        match name {
            // A new row ends the open cell and row, not beyond its table (section).
            "tr" => find(&|n| match n {
                "tr" => Some(true),
                "table" | "thead" | "tbody" | "tfoot" => Some(false),
                _ => None,
            }),
            // A new cell ends the open cell of the same row.
            "td" | "th" => find(&|n| match n {
                "td" | "th" => Some(true),
                "tr" | "table" => Some(false),
                _ => None,
            }),
            // A new table section ends whatever of the previous section is open.
            "thead" | "tbody" | "tfoot" => {
                let table = self.stack.iter().rposition(|o| o.name == "table")?;
                (table + 1 < self.stack.len()).then_some(table + 1)
            }
            // "li" and "dd"/"dt" close the nearest open item of their kind, searching past
            // inline elements and div/p/address but no other block (a nested list's own item
            // is not closed by an item of the outer list).
            "li" => find(&|n| match n {
                "li" => Some(true),
                _ if Self::is_list_scope_boundary(n) => Some(false),
                _ => None,
            })
            .or_else(|| self.open_p_in_button_scope()),
            "dd" | "dt" => find(&|n| match n {
                "dd" | "dt" => Some(true),
                _ if Self::is_list_scope_boundary(n) => Some(false),
                _ => None,
            })
            .or_else(|| self.open_p_in_button_scope()),
            // A link inside a link is not allowed: the new <a> ends the open one (what HTML's
            // adoption agency does for a formatting element left open).
            "a" => find(&|n| match n {
                "a" => Some(true),
                "td" | "th" | "caption" | "object" | "template" | "applet" | "marquee"
                | "button" => Some(false),
                _ => None,
            }),
            "option" | "optgroup" => find(&|n| match n {
                "option" => Some(true),
                _ => Some(false),
            }),
            // A heading directly inside a heading ends it (a parse error the spec repairs so).
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => self
                .stack
                .last()
                .is_some_and(|o| matches!(o.name.as_str(), "h1" | "h2" | "h3" | "h4" | "h5" | "h6"))
                .then(|| self.stack.len() - 1)
                .or_else(|| self.open_p_in_button_scope()),
            _ if P_CLOSING_TAGS.contains(&name) => self.open_p_in_button_scope(),
            _ => None,
        }
    }

    /// An `<a>` that was most likely never closed: the block start tag `name` arrives inside
    /// it after it wrote inline text (`<a href="/">Home` then `<h1>`). Closing it there keeps
    /// the rest of the page from counting as link text. A link around blocks that starts with
    /// a block (`<a><h3>Title</h3><p>Summary</p></a>`, a teaser card) stays open.
    fn unclosed_link_before_block(&self, name: &str) -> Option<usize> {
        if self.link_depth == 0 || !BLOCK_TAGS.contains(&name) || matches!(name, "br" | "hr") {
            return None;
        }
        let at = self.stack.iter().rposition(|o| o.block || o.name == "a")?;
        let open = &self.stack[at];
        (open.name == "a" && open.inline_text).then_some(at)
    }

    /// An open `<p>` that a block start tag closes: the spec's "has a p element in button
    /// scope" (tables, cells, buttons and embedded objects are the boundaries).
    fn open_p_in_button_scope(&self) -> Option<usize> {
        for (i, open) in self.stack.iter().enumerate().rev() {
            match open.name.as_str() {
                "p" => return Some(i),
                "html" | "table" | "td" | "th" | "caption" | "object" | "template" | "button"
                | "marquee" | "applet" | "svg" | "math" => return None,
                _ => {}
            }
        }
        None
    }

    /// The "special" elements that stop the search for an open `<li>`/`<dd>`/`<dt>`, less
    /// address, div and p, which the spec lets the search pass.
    fn is_list_scope_boundary(name: &str) -> bool {
        !matches!(name, "div" | "p" | "address")
            && (BLOCK_TAGS.contains(&name)
                || matches!(
                    name,
                    "td" | "th"
                        | "nav"
                        | "aside"
                        | "header"
                        | "footer"
                        | "form"
                        | "menu"
                        | "button"
                        | "object"
                        | "template"
                        | "svg"
                        | "math"
                ))
    }

    fn mark(name: &str, a: &Attrs<'_>) -> Mark {
        let role = a.role.map(|r| r.to_ascii_lowercase());
        let role = role.as_deref();
        if name == "main"
            || name == "article"
            || role == Some(b"main".as_slice())
            || a.itemprop.is_some_and(|p| {
                p.split(u8::is_ascii_whitespace)
                    .any(|w| w.eq_ignore_ascii_case(b"articleBody"))
            })
        {
            return Mark::Main;
        }
        if matches!(name, "html" | "body") {
            return Mark::None;
        }
        if SOFT_SKIP_TAGS.contains(&name)
            || role.is_some_and(|r| {
                matches!(
                    r,
                    b"navigation"
                        | b"banner"
                        | b"contentinfo"
                        | b"complementary"
                        | b"search"
                        | b"menu"
                )
            })
            || a.class.is_some_and(is_boilerplate_attr)
            || a.id
                .is_some_and(|id| is_boilerplate_attr(id) && !is_heading_slug(id))
        {
            return Mark::Boilerplate;
        }
        Mark::None
    }
}

impl Sink for Extractor<'_> {
    fn tag(&mut self, tag: Tag<'_>) -> bool {
        self.pre_just_opened = false;
        let name = tag.name.as_str();
        let block = BLOCK_TAGS.contains(&name);
        if tag.end {
            if let Some(at) = self.stack.iter().rposition(|o| o.name == name) {
                while self.stack.len() > at {
                    let open = self.stack.pop().expect("non-empty");
                    self.close(open);
                }
            } else if block && !self.state.hard_skip {
                self.out.block_break();
            }
            return false;
        }
        if name == "br" || name == "hr" {
            if !self.state.hard_skip {
                self.out.line_has_text = true;
                self.out.block_break();
            }
            return false;
        }
        if !HEAD_CONTENT_TAGS.contains(&name) {
            self.close_open_head();
        }
        if VOID_TAGS.contains(&name) || tag.self_closing {
            return false;
        }
        if let Some(at) = self
            .implied_end(name)
            .or_else(|| self.unclosed_link_before_block(name))
        {
            while self.stack.len() > at {
                let open = self.stack.pop().expect("non-empty");
                self.close(open);
            }
        }
        if self.stack.len() >= self.config.max_depth {
            self.too_deep = true;
            return false;
        }
        let before = self.state;
        let mut mark = Mark::None;
        if !self.state.hard_skip {
            let a = attrs(tag.attrs);
            if HARD_SKIP_TAGS.contains(&name) || a.hidden || a.style.is_some_and(hides) {
                self.state.hard_skip = true;
            } else if self.pre_depth == 0 {
                // Inside <pre>, class names are syntax highlighting (`hljs-comment`,
                // `token comment`), not page structure.
                mark = Self::mark(name, &a);
                // A <header> inside an article or main region is that content's own header
                // (its title, byline), not the page's banner.
                if name == "header"
                    && mark == Mark::Boilerplate
                    && a.class.is_none_or(|c| !is_boilerplate_attr(c))
                    && self.stack.iter().any(|o| o.mark == Mark::Main)
                {
                    mark = Mark::None;
                }
            }
        }
        if !self.state.hard_skip && block {
            self.out.block_break();
        }
        match name {
            "pre" => {
                self.pre_depth += 1;
                self.pre_just_opened = true;
            }
            "a" => self.link_depth += 1,
            _ => {}
        }
        let start = self.out.text.len();
        if !self.state.hard_skip {
            if name == "li" && self.config.list_bullets {
                self.out.text.push_str("- ");
                self.out.line_has_text = false;
                self.out.pending_space = false;
            }
            if (name == "td" || name == "th") && self.out.line_has_text {
                self.out.pending_space = true;
            }
        }
        self.stack.push(Open {
            name: tag.name,
            before,
            block,
            mark,
            start,
            links_at_open: self.link_bytes,
            holds_prose: false,
            inline_text: false,
        });
        false
    }

    fn text(&mut self, text: &str) {
        // HTML's "in head" insertion mode: text that is not whitespace ends the head.
        if self.stack.last().is_some_and(|o| o.name == "head")
            && !text.bytes().all(|b| b.is_ascii_whitespace())
        {
            self.close_open_head();
        }
        if self.state.hard_skip {
            return;
        }
        let mut text = text;
        if std::mem::take(&mut self.pre_just_opened) {
            // A newline right after `<pre>` is not content (HTML's "in body" rule for pre).
            text = text
                .strip_prefix("\r\n")
                .or_else(|| text.strip_prefix(['\n', '\r']))
                .unwrap_or(text);
        }
        let decoded = decode_entities(text);
        let before = self.out.text.len();
        if self.pre_depth > 0 {
            self.out.push_pre(&decoded);
        } else {
            self.out.push_inline(&decoded);
        }
        if self.link_depth > 0 && self.out.text.len() > before {
            self.link_bytes += self.out.text.len() - before;
            if let Some(at) = self.stack.iter().rposition(|o| o.block || o.name == "a") {
                if self.stack[at].name == "a" {
                    self.stack[at].inline_text = true;
                }
            }
        }
    }
}

/// Extract the main text of an HTML page.
///
/// One pass over the tags writes every visible text and records the output range of each
/// element that marks main content or boilerplate; the decisions that need the whole page (which
/// main region, which boilerplate-looking block is in fact the content) are taken afterwards on
/// those ranges, so no DOM is built.
pub fn extract(html: &str, config: &ExtractConfig) -> Result<String, ExtractError> {
    if html.len() > config.max_html_bytes {
        return Err(ExtractError::TooLarge(config.max_html_bytes));
    }
    let mut ex = Extractor {
        config,
        stack: Vec::with_capacity(64),
        state: State { hard_skip: false },
        pre_depth: 0,
        pre_just_opened: false,
        pre_blocks: Vec::new(),
        link_depth: 0,
        too_deep: false,
        out: Out {
            text: String::with_capacity(html.len() / 4),
            line_has_text: false,
            pending_space: false,
        },
        link_bytes: 0,
        mains: Vec::new(),
        boilerplate: Vec::new(),
        link_blocks: Vec::new(),
    };
    scan(html, &mut ex);
    if ex.too_deep {
        return Err(ExtractError::TooDeep(config.max_depth));
    }
    while let Some(open) = ex.stack.pop() {
        ex.close(open);
    }
    ex.out.block_break();
    let dropped = dropped_ranges(&ex, config);
    let text = &ex.out.text;
    // Copy what is kept; a cut inside a line becomes one space.
    // The kept pieces as (offset in `text`, offset in `kept`, length), to find the pre blocks.
    let mut kept = String::with_capacity(text.len());
    let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
    let mut at = 0;
    for (start, end) in dropped {
        if start > at {
            let to = push_piece(&mut kept, &text[at..start]);
            pieces.push((at, to, start - at));
        }
        at = at.max(end);
    }
    if at < text.len() {
        let to = push_piece(&mut kept, &text[at..]);
        pieces.push((at, to, text.len() - at));
    }
    let pre_blocks = kept_ranges(&ex.pre_blocks, &pieces);
    // Lines are trimmed, and blank and bullet-only lines (empty list items) dropped, except
    // inside a pre block, whose lines keep their indentation and whose blank lines between
    // two lines of the block stay. Non-breaking spaces become spaces.
    let mut result = String::with_capacity(kept.len());
    let mut pre_at = 0;
    let mut line_start = 0;
    // The pre block of the last line written, and blank lines of it not yet written.
    let mut last_pre: Option<usize> = None;
    let mut blank_pre_lines = 0;
    for line in kept.split('\n') {
        let offset = line_start;
        line_start += line.len() + 1;
        while pre_at < pre_blocks.len() && pre_blocks[pre_at].1 <= offset {
            pre_at += 1;
        }
        let in_pre =
            (pre_at < pre_blocks.len() && pre_blocks[pre_at].0 <= offset).then_some(pre_at);
        let line = line.replace('\u{a0}', " ");
        if in_pre.is_some() {
            let code = line.trim_end();
            if code.is_empty() {
                blank_pre_lines += 1;
                continue;
            }
            if last_pre == in_pre {
                result.extend(std::iter::repeat_n('\n', blank_pre_lines));
            }
            blank_pre_lines = 0;
            result.push_str(code);
            result.push('\n');
            last_pre = in_pre;
            continue;
        }
        let t = line.trim();
        if t.is_empty() || t == "-" {
            continue;
        }
        blank_pre_lines = 0;
        last_pre = None;
        result.push_str(t);
        result.push('\n');
    }
    result.pop();
    Ok(result)
}

/// Appends a kept piece of the output, with a space where a cut falls inside a line; returns
/// where the piece starts in `out`.
fn push_piece(out: &mut String, piece: &str) -> usize {
    if !out.is_empty()
        && !out.ends_with(char::is_whitespace)
        && !piece.starts_with(char::is_whitespace)
    {
        out.push(' ');
    }
    out.push_str(piece);
    out.len() - piece.len()
}

/// `ranges` of the scanned output (sorted, disjoint) mapped onto the kept text, given the kept
/// `pieces` as (offset in the output, offset in the kept text, length), in order.
fn kept_ranges(ranges: &[(usize, usize)], pieces: &[(usize, usize, usize)]) -> Vec<(usize, usize)> {
    let mut mapped = Vec::new();
    let mut p = 0;
    for &(start, end) in ranges {
        while p < pieces.len() && pieces[p].0 + pieces[p].2 <= start {
            p += 1;
        }
        let mut q = p;
        while q < pieces.len() && pieces[q].0 < end {
            let (from, to, len) = pieces[q];
            let (s, e) = (start.max(from), end.min(from + len));
            if s < e {
                mapped.push((to + s - from, to + e - from));
            }
            q += 1;
        }
    }
    mapped
}

/// The marked main regions that hold the page's content: the largest, and every other that is
/// not mostly link text. Those are teaser cards (an `<article>` per related or trending story)
/// and do not make their surroundings content.
///
/// Tried and dropped: also leaving out regions under a fifth of the largest one's text. It gave
/// +0.001 F1 on readability-pages dev and −0.03 on held-out (2026-12-03).
fn main_regions(marked: &[Span]) -> Vec<Span> {
    let Some(largest) = marked.iter().map(Span::len).max() else {
        return Vec::new();
    };
    marked
        .iter()
        .filter(|m| m.len() == largest || (m.links as f64) <= LINK_DENSITY_MAX * m.len() as f64)
        .copied()
        .collect()
}

/// Answers "does this block contain one of the spans?" in O(log n): the spans sorted by start,
/// with the smallest end among each suffix. A block contains a span exactly when some span
/// starting at or after the block's start ends at or before its end, and the smallest such end
/// is the suffix minimum from the first span starting there. Asking every boilerplate block
/// against every main region was quadratic (28.9 s on a 7.7 MB page of 240k article/nav pairs).
struct SpanIndex {
    starts: Vec<usize>,
    min_end_from: Vec<usize>,
}

impl SpanIndex {
    fn new(spans: &[Span]) -> Self {
        let mut sorted: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.end)).collect();
        sorted.sort_unstable();
        let mut min_end_from = vec![usize::MAX; sorted.len()];
        let mut min_end = usize::MAX;
        for (i, &(_, end)) in sorted.iter().enumerate().rev() {
            min_end = min_end.min(end);
            min_end_from[i] = min_end;
        }
        Self {
            starts: sorted.iter().map(|&(start, _)| start).collect(),
            min_end_from,
        }
    }

    fn any_inside(&self, block: &Span) -> bool {
        let first = self.starts.partition_point(|&s| s < block.start);
        self.min_end_from
            .get(first)
            .is_some_and(|&end| end <= block.end)
    }
}

/// The output ranges to leave out, sorted and merged: everything outside the page's main
/// region (when it marks one) and the boilerplate blocks inside it.
fn dropped_ranges(ex: &Extractor<'_>, config: &ExtractConfig) -> Vec<(usize, usize)> {
    let total = ex.out.text.len();
    let mut dropped: Vec<(usize, usize)> = Vec::new();
    let mains: Vec<Span> = if config.prefer_main {
        main_regions(&ex.mains)
    } else {
        Vec::new()
    };
    if !mains.is_empty() {
        // Keep the union of the main regions.
        let mut regions: Vec<(usize, usize)> = mains.iter().map(|m| (m.start, m.end)).collect();
        regions.sort_unstable();
        let mut at = 0;
        for (s, e) in regions {
            if s > at {
                dropped.push((at, s));
            }
            at = at.max(e);
        }
        if at < total {
            dropped.push((at, total));
        }
    }
    // The text the main region holds (the whole page when it marks none).
    let region_text = if mains.is_empty() {
        total
    } else {
        total - dropped.iter().map(|(s, e)| e - s).sum::<usize>()
    };
    let main_index = SpanIndex::new(&mains);
    for b in &ex.boilerplate {
        // Main content wins over a boilerplate-looking wrapper around it.
        if main_index.any_inside(b) {
            continue;
        }
        // A block holding most of the page's text in running prose is the content, whatever
        // its class says (`widget Blog`, `l-sidebar-fixed`, a share-button id on the body).
        if mains.is_empty()
            && b.len() as f64 >= CONTENT_SHARE * region_text as f64
            && (b.links as f64) < LINK_DENSITY_MAX * b.len() as f64
        {
            continue;
        }
        dropped.push((b.start, b.end));
    }
    for l in &ex.link_blocks {
        if main_index.any_inside(l) {
            continue;
        }
        dropped.push((l.start, l.end));
    }
    dropped.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(dropped.len());
    for (s, e) in dropped {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Precision, recall and F1 of `extracted` against `gold` over lower-cased word tokens
/// (multiset overlap), the measure trafilatura's own evaluation uses.
pub fn token_f1(extracted: &str, gold: &str) -> (f64, f64, f64) {
    use std::collections::HashMap;
    let tokens = |s: &str| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for w in s
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *m.entry(w.to_lowercase()).or_insert(0) += 1;
        }
        m
    };
    let e = tokens(extracted);
    let g = tokens(gold);
    let ne: usize = e.values().sum();
    let ng: usize = g.values().sum();
    let common: usize = e.iter().map(|(w, &c)| c.min(*g.get(w).unwrap_or(&0))).sum();
    if ne == 0 || ng == 0 {
        return (0.0, 0.0, 0.0);
    }
    let p = common as f64 / ne as f64;
    let r = common as f64 / ng as f64;
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(html: &str) -> String {
        extract(html, &ExtractConfig::default()).unwrap()
    }

    #[test]
    fn drops_scripts_styles_nav_and_footer() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <nav><a href="/">Home</a> <a href="/x">Other</a></nav>
            <div class="sidebar">Sidebar junk</div>
            <h1>Real   title</h1><p>First &amp; <b>bold</b> paragraph.</p>
            <script>var x = "<p>not text</p>";</script>
            <p>Second<br>line</p>
            <footer>© 2024 footer</footer></body></html>"#;
        assert_eq!(
            ex(html),
            "Real title\nFirst & bold paragraph.\nSecond\nline"
        );
    }

    #[test]
    fn main_content_wins_and_lists_get_bullets() {
        let html = r#"<body><div>Outside text</div><div role="main"><ul><li>one<li>two</ul>
            <pre>code
  indented</pre></div><div>After</div></body>"#;
        assert_eq!(ex(html), "- one\n- two\ncode\n  indented");
    }

    #[test]
    fn entities_and_hidden_blocks() {
        assert_eq!(
            ex("<p>caf&eacute; &#233; &#x2014; &bogus; &lt;tag&gt;</p><p hidden>gone</p><p style=\"display: none\">gone</p>"),
            "café é — &bogus; <tag>"
        );
    }

    #[test]
    fn deep_nesting_and_huge_pages_are_errors() {
        let deep = "<div>".repeat(1000) + "x";
        assert_eq!(
            extract(&deep, &ExtractConfig::default()),
            Err(ExtractError::TooDeep(512))
        );
        let cfg = ExtractConfig {
            max_html_bytes: 10,
            ..Default::default()
        };
        assert_eq!(
            extract("<p>more than ten</p>", &cfg),
            Err(ExtractError::TooLarge(10))
        );
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for html in [
            "<",
            "<p",
            "<p class=\"unterminated>text",
            "</div></div>x",
            "<script>never closed",
            "<!-- open",
            "<![CDATA[x",
            "a < b > c",
        ] {
            let _ = ex(html);
        }
        assert_eq!(ex("a < b and c > d"), "a < b and c > d");
    }

    #[test]
    fn teaser_articles_do_not_make_their_list_content() {
        let story = "The story itself, long enough to be the page's main text by far. ".repeat(4);
        let html = format!(
            r#"<body><article><h1>Title</h1><p>{story}</p></article>
            <ul><li><article><a href="/1"><h2>Another story</h2></a></article></li>
            <li><article><a href="/2"><h2>Yet another story's headline</h2></a> <p>2 min</p></article></li></ul></body>"#
        );
        assert_eq!(ex(&html), format!("Title\n{}", story.trim_end()));
    }

    #[test]
    fn a_section_whose_id_is_its_heading_is_not_boilerplate() {
        let html = r#"<body><div class="section" id="sharing-with-a-single-developer">
            <h2>Sharing with a single developer</h2><p>Push drafts between your two clones.</p></div>
            <div id="share-buttons"><p>Share this on every network you know.</p></div></body>"#;
        assert_eq!(
            ex(html),
            "Sharing with a single developer\nPush drafts between your two clones."
        );
    }

    #[test]
    fn link_lists_go_and_prose_with_links_stays() {
        let html = r#"<body><p>Real text with <a href="/a">one link</a> in a long sentence.</p>
            <ul><li><a href="/1">Related one</a></li><li><a href="/2">Related two</a></li></ul>
            <div><a href="/x">Next story</a></div></body>"#;
        assert_eq!(ex(html), "Real text with one link in a long sentence.");
    }

    #[test]
    fn article_body_is_main_and_its_boilerplate_goes() {
        let html = r#"<body><div>Top stories teaser</div>
            <div class="text" itemprop="description articleBody" id="share-btns-parent">
            <p>The body.</p><div class="dnd-widget-wrapper">Gallery 1/50</div>
            <p>More body.</p></div><div>After</div></body>"#;
        assert_eq!(ex(html), "The body.\nMore body.");
    }

    #[test]
    fn boilerplate_named_block_holding_the_prose_is_kept_when_no_main_is_marked() {
        let prose = "This sentence is part of the story and carries the page's content. ".repeat(8);
        let html = format!(
            r#"<body><div class="menu"><a href="/">Home</a> <a href="/n">News</a></div>
            <div class="l-sidebar-fixed"><p>{prose}</p><p>{prose}</p></div>
            <div class="sidebar">Short sidebar note</div></body>"#
        );
        let text = ex(&html);
        assert!(text.starts_with("This sentence"), "{text}");
        assert!(
            !text.contains("Home") && !text.contains("sidebar note"),
            "{text}"
        );
        // The same block on a page that marks its main content elsewhere is dropped.
        let marked = format!("<main><p>Main.</p></main>{html}");
        assert_eq!(ex(&marked), "Main.");
    }

    #[test]
    fn a_cut_inside_a_line_leaves_a_space() {
        assert_eq!(
            ex(r#"<p>foo<span class="share">Share</span>bar</p>"#),
            "foo bar"
        );
    }

    #[test]
    fn a_head_left_open_is_closed_by_body_content() {
        let page = r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>T</title>
            <link rel="stylesheet" href="a.css"><body><p>Kept one.</p><p>Kept two.</p>"#;
        assert_eq!(ex(page), "Kept one.\nKept two.");
        // No <body> tag either: the first flow element ends the head.
        let page = "<html><head><meta charset=utf-8><title>x</title>\n<p>Body text.</p>";
        assert_eq!(ex(page), "Body text.");
        // Nor any tag: text that is not whitespace ends the head.
        assert_eq!(ex("<head><title>x</title>Bare text"), "Bare text");
        // What lives in the head is still not text.
        assert_eq!(
            ex("<head><style>p{}</style><script>x</script><noscript><link></noscript><p>Body</p>"),
            "Body"
        );
    }

    #[test]
    fn optional_end_tags_do_not_nest() {
        let rows = "<tr><td>Item<td>3 kg".repeat(600);
        assert_eq!(
            ex(&format!("<table>{rows}</table><p>After</p>"))
                .lines()
                .count(),
            601
        );
        let text = ex(&format!(
            "<table><tr><td>a<td>b{}</table>",
            "<tr><th>c<td>d"
        ));
        assert_eq!(text, "a b\nc d");
        let glossary = "<dt>Term<dd>Meaning".repeat(600);
        let text = ex(&format!("<dl>{glossary}</dl>"));
        assert_eq!(text.lines().count(), 1200, "{}", &text[..80]);
        let items = "<li><p>Point".repeat(600);
        assert_eq!(ex(&format!("<ul>{items}</ul>")).lines().count(), 600);
        let paras = "<p><font face=Arial>Para".repeat(600);
        assert_eq!(ex(&paras).lines().count(), 600);
        // A nested list's item does not close the outer item; the outer item's next one does.
        assert_eq!(
            ex("<ul><li>a<ul><li>a1<li>a2</ul><li>b</ul>"),
            "- a\n- a1\n- a2\n- b"
        );
        // A cell's nested table keeps its own rows.
        assert_eq!(
            ex("<table><tr><td>x<table><tr><td>in1<tr><td>in2</table><td>y<tr><td>z</table>"),
            "x\nin1\nin2\ny\nz"
        );
        // Really nested input is still refused.
        let deep = "<div>".repeat(10_000) + "x";
        assert_eq!(
            extract(&deep, &ExtractConfig::default()),
            Err(ExtractError::TooDeep(512))
        );
    }

    #[test]
    fn a_less_than_sign_not_followed_by_a_letter_is_text() {
        assert_eq!(
            ex("<p>I <3 my cat and she <3s me. It's true.</p><p>Click <-- here, or x<5 and y>2.</p><p>a <: b < c</p>"),
            "I <3 my cat and she <3s me. It's true.\nClick <-- here, or x<5 and y>2.\na <: b < c"
        );
        // `</` + a non-letter is a bogus comment, `</>` nothing.
        assert_eq!(ex("<p>a</>b</ 3 x>c</p>"), "abc");
    }

    #[test]
    fn an_apostrophe_in_a_bare_attribute_value_does_not_open_a_quote() {
        assert_eq!(
            ex("<p>Welcome to <IMG SRC=logo.gif ALT=Joe's> our shop.</p><p>Open daily.</p>"),
            "Welcome to our shop.\nOpen daily."
        );
        // A slash that ends a bare value does not self-close the tag.
        assert_eq!(
            ex("<div><A HREF=/>Home</A> <A HREF=/a/>About</A></div><p>Prose here.</p>"),
            "Prose here."
        );
        // Quoted values still hide their '>' and the other quote.
        assert_eq!(ex(r#"<p title="a > b" data-x = 'it"s'>Text</p>"#), "Text");
    }

    #[test]
    fn preformatted_code_keeps_its_spaces_indentation_and_blank_lines() {
        let html = "<p>Run:</p><pre><code class=\"language-python\"><span class=\"kn\">import</span> <span class=\"nn\">os</span>\n\n<span class=\"k\">def</span> <span class=\"nf\">main</span>():\n    <span class=\"k\">for</span> x <span class=\"ow\">in</span> y:  <span class=\"c1\"># note</span>\n\n\n</code></pre><p>Then:</p><pre class=\"language-js\"><code>a &amp;&amp; b; <span class=\"hljs-comment\">// short</span> <span class=\"token comment\">// one</span></code></pre>";
        assert_eq!(
            ex(html),
            "Run:\nimport os\n\ndef main():\n    for x in y:  # note\nThen:\na && b; // short // one"
        );
        // CR and CRLF become LF; one newline right after <pre> is dropped; leading blank lines
        // of the block are not kept, tabs are.
        assert_eq!(
            ex("<pre>\r\nline one\rline two\r    three\r\rafter blank</pre><pre>\n\n\tTabbed</pre>"),
            "line one\nline two\n    three\n\nafter blank\n\tTabbed"
        );
    }

    #[test]
    fn named_and_numeric_references_follow_html() {
        assert_eq!(
            decode_entities(
                "&Eacute; &oacute; &iacute; &iquest; &bdquo; &Uuml; &oslash; &aring; &frac12; &sup2; &micro; &le; &ne; &alpha; &Omega; &lrm;&rlm; &AMP; &copy"
            ),
            "É ó í ¿ „ Ü ø å ½ ² µ ≤ ≠ α Ω \u{200e}\u{200f} & ©"
        );
        assert_eq!(
            decode_entities("&#146;s &#128; &#x96; &#129; &#0; &#xD800; &#x110000; &#99999999999; &#; &#x; &#65 it&#8217s &#x41g"),
            "’s € – \u{81} \u{FFFD} \u{FFFD} \u{FFFD} \u{FFFD} &#; &#x; A it’s Ag"
        );
        // Unknown names and case mismatches stay literal.
        assert_eq!(
            decode_entities("&bogus; &EACUTE; &Nbsp;"),
            "&bogus; &EACUTE; &Nbsp;"
        );
        assert!(NAMED_ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_link_heavy_page_keeps_its_prose() {
        let column = |c: usize| {
            let links: String = (0..8)
                .map(|i| {
                    format!(r#"<div><a href="/c{c}/{i}">Subcategory link {c}.{i} title</a></div>"#)
                })
                .collect();
            format!(r#"<div class="col"><h4>Category {c}</h4>{links}</div>"#)
        };
        let menu: String = (0..6).map(column).collect();
        let html = format!(
            r#"<html><body><div class="mega">{menu}</div><div class="content"><h1>Library opens on Sundays</h1>
            <p>From next month the central library will open on Sundays from ten until four.</p>
            <p>Staff will work the extra hours on a voluntary rota.</p></div></body></html>"#
        );
        assert_eq!(
            ex(&html),
            "Library opens on Sundays\nFrom next month the central library will open on Sundays from ten until four.\nStaff will work the extra hours on a voluntary rota."
        );
    }

    #[test]
    fn an_unclosed_link_does_not_make_the_page_link_text() {
        let prose = "This is a perfectly ordinary paragraph of running prose in the body.";
        let html = format!(
            r#"<html><body><a href="/">Home
            <h1>Notice</h1><p>{prose}</p><p>{prose} Second.</p></body></html>"#
        );
        assert_eq!(ex(&html), format!("Home\nNotice\n{prose}\n{prose} Second."));
        // A new <a> ends an open one.
        let html = format!(r#"<div><a href="/1">One<a href="/2">Two</div><p>{prose}</p>"#);
        assert_eq!(ex(&html), prose);
        // A link around blocks (a teaser card) is still link text.
        let html = format!(
            r#"<div><a href="/s"><h3>Story title</h3><p>Its summary in a few words.</p></a></div><p>{prose}</p>"#
        );
        assert_eq!(ex(&html), prose);
    }

    #[test]
    fn span_index_agrees_with_asking_every_span() {
        let span = |start, end| Span {
            start,
            end,
            links: 0,
        };
        let spans = [
            span(10, 20),
            span(0, 100),
            span(30, 35),
            span(50, 80),
            span(55, 60),
        ];
        let index = SpanIndex::new(&spans);
        for start in 0..110 {
            for end in start + 1..=110 {
                let block = span(start, end);
                assert_eq!(
                    index.any_inside(&block),
                    spans.iter().any(|m| block.contains(m)),
                    "{start}..{end}"
                );
            }
        }
        assert!(!SpanIndex::new(&[]).any_inside(&span(0, 10)));
    }

    #[test]
    fn many_main_regions_and_boilerplate_blocks_take_linear_time() {
        // 200k article/nav pairs: asking every nav against every article took ~20 s in a
        // release build; the index answers in well under a second.
        let html = "<article>x</article><nav>y</nav>".repeat(200_000);
        let started = std::time::Instant::now();
        let text = ex(&html);
        assert_eq!(text.lines().count(), 200_000);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_article_header_is_content_and_until_found_is_not_hidden() {
        let body = "The committee met for three hours and agreed on a plan.";
        assert_eq!(
            ex(&format!(
                r#"<header><a href="/">Site</a> banner</header><article><header class="entry-header"><h1>Ten years</h1><p class="byline">by Ana</p></header><p>{body}</p></article>"#
            )),
            format!("Ten years\nby Ana\n{body}")
        );
        assert_eq!(
            ex(
                r#"<p>One.</p><div hidden="until-found"><p>Collapsed section.</p></div><p hidden>Gone.</p>"#
            ),
            "One.\nCollapsed section."
        );
    }

    #[test]
    fn f1_measures_overlap() {
        let (p, r, f) = token_f1("the cat sat", "the cat sat on the mat");
        assert!((p - 1.0).abs() < 1e-9 && (r - 0.5).abs() < 1e-9 && (f - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(token_f1("", "x"), (0.0, 0.0, 0.0));
    }
}
