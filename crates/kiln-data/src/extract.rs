//! HTML → main text: a single-pass tag scanner (no DOM) that drops scripts, styles, navigation,
//! headers/footers, forms and boilerplate-named blocks, restricts itself to `<main>`/`<article>`/
//! `role=main` when the page marks its main content, and writes one line per block.
//!
//! Why not a crate: the maintained Rust readability ports (`dom_smoothie`, `readability`) build a
//! full html5ever DOM per page, which costs most of the per-document budget this pipeline aims
//! for (≥10× datatrove+trafilatura per core), and they score whole subtrees where documentation
//! and news pages mostly say what is navigation through tags, roles and class names. The
//! precision/recall/F1 of this extractor against the doc packages' source texts is measured by
//! `cargo run --release -p kiln-data --example extract_f1` (figures in the README).
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

/// Elements that are boilerplate unless the page's main content sits inside them.
const SOFT_SKIP_TAGS: &[&str] = &["nav", "footer", "aside", "form", "header", "menu", "dialog"];

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
];

fn is_boilerplate_attr(value: &[u8]) -> bool {
    value
        .split(|&c| c == b'-' || c == b'_' || c.is_ascii_whitespace())
        .any(|part| {
            !part.is_empty()
                && BOILERPLATE
                    .iter()
                    .any(|b| part.eq_ignore_ascii_case(b.as_bytes()))
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
        } else if name.eq_ignore_ascii_case(b"style") {
            out.style = Some(value);
        } else if name.eq_ignore_ascii_case(b"hidden")
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
        let mut i = name_start;
        while i < n && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b':') {
            i += 1;
        }
        if i == name_start {
            // A lone '<' is text.
            sink.text(&html[lt..lt + 1]);
            pos = lt + 1;
            continue;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        // Find the closing '>' outside quotes.
        let mut j = i;
        let mut quote = 0u8;
        while j < n {
            let b = bytes[j];
            if quote != 0 {
                if b == quote {
                    quote = 0;
                }
            } else if b == b'"' || b == b'\'' {
                quote = b;
            } else if b == b'>' {
                break;
            }
            j += 1;
        }
        let self_closing = j > i && bytes[j - 1] == b'/';
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
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|e| e + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let code = if let Some(hex) = num.strip_prefix(['x', 'X']) {
                u32::from_str_radix(hex, 16).ok()
            } else {
                num.parse::<u32>().ok()
            };
            code.map(|c| char::from_u32(c).unwrap_or('\u{FFFD}'))
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

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "middot" => '·',
        "bull" => '•',
        "para" => '¶',
        "sect" => '§',
        "times" => '×',
        "divide" => '÷',
        "deg" => '°',
        "plusmn" => '±',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "shy" => '\u{ad}',
        "zwj" => '\u{200d}',
        "zwnj" => '\u{200c}',
        "thinsp" => '\u{2009}',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "rarr" => '→',
        "larr" => '←',
        "uarr" => '↑',
        "darr" => '↓',
        "harr" => '↔',
        "eacute" => 'é',
        "egrave" => 'è',
        "aacute" => 'á',
        "agrave" => 'à',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "auml" => 'ä',
        "szlig" => 'ß',
        "ccedil" => 'ç',
        "ntilde" => 'ñ',
        _ => return None,
    })
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
    fn push_pre(&mut self, s: &str) {
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                self.line_has_text = true;
                self.block_break();
            }
            let line = line.trim_end();
            if !line.is_empty() {
                self.text.push_str(line);
                self.line_has_text = true;
            }
        }
    }
}

struct Extractor<'c> {
    config: &'c ExtractConfig,
    /// Open elements: (name, state before it).
    stack: Vec<(String, State)>,
    state: State,
    pre_depth: usize,
    too_deep: bool,
    out: Out,
}

/// Whether text is being kept at this point of the page.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Inside a script/style/hidden element: nothing here is ever text.
    hard_skip: bool,
    /// Inside navigation/boilerplate: skipped unless main content starts inside it.
    soft_skip: bool,
    /// Inside the page's main content (always true when the page marks none).
    in_main: bool,
}

impl State {
    fn keeps_text(self) -> bool {
        !self.hard_skip && !self.soft_skip && self.in_main
    }
}

impl Sink for Extractor<'_> {
    fn tag(&mut self, tag: Tag<'_>) -> bool {
        let name = tag.name.as_str();
        let block = BLOCK_TAGS.contains(&name);
        if tag.end {
            if let Some(at) = self.stack.iter().rposition(|(n, _)| n == name) {
                for (n, _) in self.stack.drain(at + 1..) {
                    if n == "pre" {
                        self.pre_depth = self.pre_depth.saturating_sub(1);
                    }
                }
                let (_, before) = self.stack.pop().expect("found above");
                if name == "pre" {
                    self.pre_depth = self.pre_depth.saturating_sub(1);
                }
                self.state = before;
            }
            if block && self.state.keeps_text() {
                self.out.block_break();
            }
            return false;
        }
        if name == "br" || name == "hr" {
            if self.state.keeps_text() {
                self.out.line_has_text = true;
                self.out.block_break();
            }
            return false;
        }
        if VOID_TAGS.contains(&name) || tag.self_closing {
            return false;
        }
        // Implicitly closed elements: a new <p>/<li> closes an open one of the same kind.
        if matches!(
            name,
            "p" | "li" | "dt" | "dd" | "tr" | "td" | "th" | "option"
        ) && self.stack.last().is_some_and(|(top, _)| top == name)
        {
            let (_, before) = self.stack.pop().expect("non-empty");
            self.state = before;
        }
        if self.stack.len() >= self.config.max_depth {
            self.too_deep = true;
            return false;
        }
        self.stack.push((tag.name.clone(), self.state));
        if name == "pre" {
            self.pre_depth += 1;
        }
        if !self.state.hard_skip {
            let a = attrs(tag.attrs);
            if HARD_SKIP_TAGS.contains(&name) || a.hidden || a.style.is_some_and(hides) {
                self.state.hard_skip = true;
                return false;
            }
            let role = a.role.map(|r| r.to_ascii_lowercase());
            let role = role.as_deref();
            if name == "main" || name == "article" || role == Some(b"main".as_slice()) {
                // Main content wins over any boilerplate-looking wrapper around it.
                self.state.in_main = true;
                self.state.soft_skip = false;
            } else if !matches!(name, "html" | "body")
                && (SOFT_SKIP_TAGS.contains(&name)
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
                    || a.id.is_some_and(is_boilerplate_attr))
            {
                self.state.soft_skip = true;
            }
        }
        if self.state.keeps_text() {
            if block {
                self.out.block_break();
            }
            if name == "li" && self.config.list_bullets {
                self.out.text.push_str("- ");
                self.out.line_has_text = false;
                self.out.pending_space = false;
            }
            if (name == "td" || name == "th") && self.out.line_has_text {
                self.out.pending_space = true;
            }
        }
        false
    }

    fn text(&mut self, text: &str) {
        if !self.state.keeps_text() {
            return;
        }
        let decoded = decode_entities(text);
        if self.pre_depth > 0 {
            self.out.push_pre(&decoded);
        } else {
            self.out.push_inline(&decoded);
        }
    }
}

/// Extract the main text of an HTML page.
pub fn extract(html: &str, config: &ExtractConfig) -> Result<String, ExtractError> {
    if html.len() > config.max_html_bytes {
        return Err(ExtractError::TooLarge(config.max_html_bytes));
    }
    let has_main = config.prefer_main && page_has_main(html);
    let mut ex = Extractor {
        config,
        stack: Vec::with_capacity(64),
        state: State {
            hard_skip: false,
            soft_skip: false,
            in_main: !has_main,
        },
        pre_depth: 0,
        too_deep: false,
        out: Out {
            text: String::with_capacity(html.len() / 4),
            line_has_text: false,
            pending_space: false,
        },
    };
    scan(html, &mut ex);
    if ex.too_deep {
        return Err(ExtractError::TooDeep(config.max_depth));
    }
    ex.out.block_break();
    // Drop bullet-only lines left by empty list items; non-breaking spaces become spaces.
    let mut result = String::with_capacity(ex.out.text.len());
    for line in ex.out.text.lines() {
        let line = line.replace('\u{a0}', " ");
        let t = line.trim();
        if t.is_empty() || t == "-" {
            continue;
        }
        result.push_str(t);
        result.push('\n');
    }
    result.pop();
    Ok(result)
}

/// True when the page marks its main content (`<main>`, `<article>`, `role="main"`).
fn page_has_main(html: &str) -> bool {
    struct Finder(bool);
    impl Sink for Finder {
        fn tag(&mut self, tag: Tag<'_>) -> bool {
            if !tag.end && (tag.name == "main" || tag.name == "article") {
                self.0 = true;
            }
            false
        }
        fn text(&mut self, _: &str) {}
    }
    if memchr::memmem::find(html.as_bytes(), b"role=\"main\"").is_some() {
        return true;
    }
    let mut f = Finder(false);
    scan(html, &mut f);
    f.0
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
        assert_eq!(ex(html), "- one\n- two\ncode\nindented");
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
    fn f1_measures_overlap() {
        let (p, r, f) = token_f1("the cat sat", "the cat sat on the mat");
        assert!((p - 1.0).abs() < 1e-9 && (r - 0.5).abs() < 1e-9 && (f - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(token_f1("", "x"), (0.0, 0.0, 0.0));
    }
}
