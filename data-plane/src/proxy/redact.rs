//! Redaction: no injected secret value reaches the client through the upstream's response.
//!
//! An upstream can echo what it received (debug endpoints, error messages quoting the request,
//! `httpbin`-style mirrors). Before a response goes back to the client, every secret that was
//! injected into its request is replaced in the response headers (by [`REDACTED`]) and body
//! (by a mask of the same length, see [Bodies](#bodies)), in each form it plausibly takes
//! there:
//!
//! - the value itself;
//! - base64, standard and URL-safe alphabets, padded and unpadded; plus the characters that
//!   stay the same whatever precedes or follows the value, at each of the three byte
//!   alignments, so the value is also found inside a longer base64 text (`Basic
//!   base64(user:value)`, a JWT payload...);
//! - percent-encoded: as the template encodes URL components (RFC 3986 unreserved kept),
//!   form-encoded (`+` for space), as `encodeURIComponent` does, with `+` for space in
//!   component encoding, as Python's `quote` does (`/` kept: how werkzeug and others print
//!   the URL they received), as an RFC 3986 path (`pchar` kept), and with the WHATWG URL
//!   standard's query and path sets;
//! - JSON-escaped: minimally (as the template and serde do), ASCII-only (`\u00e9`, as Python
//!   does), HTML-safe (`\u003c`, as Go does) and with `\/` (as PHP does).
//!
//! Matching ignores ASCII case, so a value upper-cased by the upstream, or percent-encoded
//! with lower-case hex, is caught as well. Overlapping occurrences are merged and replaced by
//! a single marker (or mask).
//!
//! Each secret has its own Aho-Corasick automaton of its forms ([`RedactionIndex`]), built the
//! first time a request injects the secret, when it is opened (see [`crate::snapshot`]), and
//! kept with the opened value for as long as the snapshot lives. A request redacts exactly
//! the secrets it injected ([`RequestRedaction`]): each one's automaton is searched on its own
//! (overlapping, so one form cannot hide another that overlaps it) and the occurrences of all
//! of them are merged, so overlapping occurrences of different secrets become one marker (or
//! mask) too.
//! Secrets the request did not inject are not searched for at all.
//!
//! ## Speed
//!
//! An overlapping, ASCII-case-insensitive search gets none of aho-corasick's SIMD prefilters
//! and walks the automaton byte by byte (about 0.5 GB/s). So each automaton comes with a
//! prefilter: the same forms ASCII-lowercased, searched case-sensitively and leftmost-first
//! (which gets the packed, SIMD "Teddy" searcher for small pattern sets) in an
//! ASCII-lowercased copy of the text, made once per chunk for all the request's secrets. When
//! it finds nothing, no form occurs and the exact search is skipped; otherwise the exact
//! search only runs in short windows around what it found. Why that loses nothing is argued in
//! [`RedactionIndex::collect_spans`] and tested against the plain search. The exact automaton
//! is built only when a secret's prefilter first finds something (most responses hold no
//! secret), which halves what an opened secret costs in memory and at its first use. Text
//! shorter than a secret's shortest form (most header values) is not searched for it at all.
//!
//! ## Bodies
//!
//! In a body, an occurrence (merged with those it overlaps) of `L` bytes is replaced by a mask
//! of exactly `L` bytes ([`mask`]): `[REDACTED` + `*` × (`L` − 10) + `]` from 10 bytes on
//! (`[REDACTED]` for 10), `L` times `*` below. So a redacted body keeps its length: an
//! identity body keeps the upstream's `content-length` and goes out in one piece, not
//! re-chunked (Pingora would otherwise write the head, each chunk and the last chunk
//! separately). Header values keep the plain [`REDACTED`] marker: their length frames nothing.
//!
//! Bodies are redacted as they stream ([`StreamRedactor`]): the last `longest form - 1` bytes
//! of each chunk are held back until the next chunk arrives, so a value split across chunks is
//! still found, and the output is the same for every way the body is cut into chunks (and as
//! long as the input). An occurrence that runs into the held-back bytes may still grow, so its
//! mask is sent only as far as it is known: all of it but the last byte from 10 bytes on,
//! none of it below (such an occurrence waits for the next chunk). Bodies with `content-encoding: gzip` (or `x-gzip`) or `deflate` (zlib or raw) are
//! decompressed, redacted and sent **decoded**, without `content-encoding` and
//! `content-length` (so chunked): re-compressing
//! would cost CPU on the gateway to save bandwidth only on the last hop. Other encodings
//! (`br`, `zstd`...) cannot be inspected, so such a response is refused (fail closed); the
//! upstream request's `accept-encoding` is narrowed to what can be decoded so that a
//! well-behaved upstream never sends one.
//!
//! ## Short values
//!
//! Values shorter than [`MIN_SEARCH_LEN`] bytes are not searched for inside bodies or header
//! values: redacting every `a` or `42` would destroy responses, and so short a value is no
//! real secret. A response header whose whole value is such a short value is still redacted.
//! Longer values are searched for everywhere (so a value like `test` also changes unrelated
//! text that contains it). Header names cannot hold the marker, so a header whose name holds a
//! form of a secret is dropped, but only for forms of at least 8 bytes: dropping
//! `content-type` because a secret is `type` would break the response.
//!
//! ## Limits
//!
//! Forms not listed above (hex, other compressions, a value re-encoded twice, other mixes of
//! raw and percent-encoded characters, or transformed beyond ASCII case) are not recognised.
//! Trailers are not forwarded at all. A body mask has the length of what it replaces, so it
//! reveals how long the redacted text was (which form matched, hence roughly how long the
//! secret is), never its content. The headers of a redacted response lose `accept-ranges`
//! (and `content-length` when the body is decoded), and a strong `etag` is weakened: the
//! bytes differ from the upstream's even when the length does not; a `206` response's
//! `content-range` is left as the upstream sent it. The
//! automata's memory holds the forms and is not zeroized when a snapshot is replaced (secret
//! values themselves are).

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use aho_corasick::{packed, AhoCorasick, AhoCorasickKind, Input, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::http::ResponseHeader;
use zeroize::Zeroizing;

/// What replaces every occurrence of a secret in a response header value.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Bytes `range` of what replaces an occurrence `len` bytes long in a response body: a mask
/// of exactly `len` bytes, so the body keeps its length (and the upstream's `content-length`
/// still holds). From 10 bytes on it reads as the header marker, stretched: `[REDACTED` +
/// `*` × (`len` − 10) + `]` (exactly [`REDACTED`] for 10); shorter occurrences become `len`
/// times `*`. The first `len - 1` bytes of a mask of at least 10 bytes are also the first
/// bytes of every longer mask: that lets [`StreamRedactor`] send a long occurrence's mask
/// before it knows where the occurrence ends.
fn mask(len: usize, range: std::ops::Range<usize>) -> impl Iterator<Item = u8> {
    debug_assert!(range.end <= len);
    range.map(move |i| {
        if len < REDACTED.len() {
            b'*'
        } else if i + 1 == len {
            b']'
        } else if i + 1 < REDACTED.len() {
            REDACTED[i]
        } else {
            b'*'
        }
    })
}

/// Shortest value searched for inside bodies and header values.
pub const MIN_SEARCH_LEN: usize = 4;

/// Shortest base64 fragment (a value inside a longer base64 text) searched for: shorter
/// fragments would match random base64 too often.
const MIN_FRAGMENT_LEN: usize = 8;

/// RFC 3986 unreserved characters kept: how the template encodes URL components.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `application/x-www-form-urlencoded` (WHATWG): `*-._` kept, space becomes `+`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// JavaScript's `encodeURIComponent`.
const URI_COMPONENT_JS: &AsciiSet = &COMPONENT
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Python's `urllib.parse.quote` (default `safe='/'`), which many servers use to print the
/// URL they received: the component set with `/` kept.
const PATH_QUOTE: &AsciiSet = &COMPONENT.remove(b'/');

/// RFC 3986 `pchar` plus `/`: unreserved, sub-delims, `:` and `@` kept (paths as URL
/// libraries normalize them).
const PCHAR: &AsciiSet = &PATH_QUOTE
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// The WHATWG URL standard's query percent-encode set (special schemes): what browsers and
/// WHATWG URL parsers leave of a query.
const WHATWG_QUERY: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');

/// The WHATWG URL standard's path percent-encode set.
const WHATWG_PATH: &AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Every form in which `value` is searched for (see the module docs), without duplicates.
/// Empty when the value is shorter than [`MIN_SEARCH_LEN`].
pub fn encoded_forms(value: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let bytes = value.as_bytes();
    if bytes.len() < MIN_SEARCH_LEN {
        return Vec::new();
    }
    let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(24);
    let mut add = |form: Zeroizing<String>| {
        let form = Zeroizing::new(form.as_bytes().to_vec());
        if !forms.iter().any(|known| known.eq_ignore_ascii_case(&form)) {
            forms.push(form);
        }
    };

    add(Zeroizing::new(value.to_string()));

    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        add(Zeroizing::new(engine.encode(bytes)));
    }
    for offset in 0..3 {
        if let Some(fragment) = base64_fragment(bytes, offset) {
            let url_safe = Zeroizing::new(fragment.replace('+', "-").replace('/', "_"));
            add(fragment);
            add(url_safe);
        }
    }

    let component = Zeroizing::new(utf8_percent_encode(value, COMPONENT).to_string());
    add(Zeroizing::new(component.replace("%20", "+")));
    add(component);
    add(Zeroizing::new(
        utf8_percent_encode(value, FORM)
            .to_string()
            .replace("%20", "+"),
    ));
    for set in [
        URI_COMPONENT_JS,
        PATH_QUOTE,
        PCHAR,
        WHATWG_QUERY,
        WHATWG_PATH,
    ] {
        add(Zeroizing::new(utf8_percent_encode(value, set).to_string()));
    }

    for ascii_only in [false, true] {
        for html_safe in [false, true] {
            for escape_slash in [false, true] {
                add(json_escape(value, ascii_only, html_safe, escape_slash));
            }
        }
    }
    forms
}

/// The base64 characters that encode only bits of `value` when it starts `offset` bytes
/// (mod 3) into a longer base64-encoded text: they are the same whatever comes before or
/// after it.
fn base64_fragment(value: &[u8], offset: usize) -> Option<Zeroizing<String>> {
    let mut shifted = Zeroizing::new(vec![0u8; offset]);
    shifted.extend_from_slice(value);
    let encoded = Zeroizing::new(STANDARD_NO_PAD.encode(&*shifted));
    // Character i covers bits [6i, 6i + 6); the value covers bits [8 offset, 8 (offset + len)).
    let first = (8 * offset).div_ceil(6);
    let end = 8 * (offset + value.len()) / 6;
    (end >= first + MIN_FRAGMENT_LEN).then(|| Zeroizing::new(encoded[first..end].to_string()))
}

/// `value` as it appears inside a JSON string literal, escaped in one of the common styles.
fn json_escape(
    value: &str,
    ascii_only: bool,
    html_safe: bool,
    escape_slash: bool,
) -> Zeroizing<String> {
    use std::fmt::Write as _;
    let mut out = Zeroizing::new(String::with_capacity(value.len() + 8));
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if escape_slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html_safe => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 || (ascii_only && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Why a [`RedactionIndex`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the redaction automaton: {0}")]
pub struct IndexError(#[from] aho_corasick::BuildError);

/// The forms of one secret, compiled when the secret is first used.
pub struct RedactionIndex {
    /// The forms, searched for exactly (overlapping, ASCII-case-insensitive) where the
    /// prefilter found something. Built the first time that happens, from `patterns`; `None`
    /// if it could not be built (then whole prefilter windows are masked).
    matcher: OnceLock<Option<AhoCorasick>>,
    /// All forms of the secret (for `matcher`); empty when it is too short to search for.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// The same forms, ASCII-lowercased, searched case-sensitively, leftmost-first, in an
    /// ASCII-lowercased copy of the haystack: proves that no form occurs, or tells where
    /// they can (see [`RedactionIndex::collect_spans`]).
    prefilter: Option<Prefilter>,
    /// Length of the longest form: how much of a chunk must be held back.
    longest: usize,
    /// Length of the shortest form: shorter text cannot hold one (`usize::MAX`: no forms).
    shortest: usize,
    /// The value when it is too short to search for: only whole header values are compared.
    short_value: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for RedactionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactionIndex")
            .field("forms", &self.patterns.len())
            .field("longest", &self.longest)
            .field("shortest", &self.shortest)
            .field("short_value", &self.short_value.is_some())
            .finish()
    }
}

impl RedactionIndex {
    /// Compile the forms of the secret `value` (the prefilter now, the exact automaton when
    /// it is first needed).
    pub fn build(value: &str) -> Result<Self, IndexError> {
        Self::build_with(value, true)
    }

    /// [`Self::build`], with the packed prefilter allowed or not (tests compare both).
    fn build_with(value: &str, packed: bool) -> Result<Self, IndexError> {
        let short_value = (!value.is_empty() && value.len() < MIN_SEARCH_LEN)
            .then(|| Zeroizing::new(value.as_bytes().to_vec()));
        let patterns = encoded_forms(value);
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let shortest = patterns.iter().map(|p| p.len()).min().unwrap_or(usize::MAX);
        let prefilter = if patterns.is_empty() {
            None
        } else {
            let lowered: Vec<Zeroizing<Vec<u8>>> = patterns
                .iter()
                .map(|p| Zeroizing::new(p.to_ascii_lowercase()))
                .collect();
            Some(Prefilter::build(&lowered, packed)?)
        };
        Ok(Self {
            matcher: OnceLock::new(),
            patterns,
            prefilter,
            longest,
            shortest,
            short_value,
        })
    }

    /// The exact automaton, built on first use.
    fn matcher(&self) -> Option<&AhoCorasick> {
        self.matcher
            .get_or_init(|| {
                AhoCorasick::builder()
                    // Overlapping search needs standard semantics; see `collect_spans`.
                    .match_kind(MatchKind::Standard)
                    .ascii_case_insensitive(true)
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(self.patterns.iter().map(|p| p.as_slice()))
                    .inspect_err(|error| {
                        // The prefilter of the same forms was built, so this is not expected;
                        // masking whole windows instead over-redacts and never leaks.
                        tracing::error!(%error, "cannot build a redaction automaton; masking whole windows around matches");
                    })
                    .ok()
            })
            .as_ref()
    }

    /// Whether the exact automaton has been built (tests).
    #[cfg(test)]
    fn matcher_built(&self) -> bool {
        self.matcher.get().is_some()
    }

    /// Push the occurrences in `haystack` of the secret's forms onto `spans` (unsorted,
    /// overlapping). `lowered`, when given, is `haystack` ASCII-lowercased: then the prefilter
    /// runs first and the exact search only where it found something.
    fn collect_spans(
        &self,
        haystack: &[u8],
        lowered: Option<&[u8]>,
        spans: &mut Vec<(usize, usize)>,
    ) {
        if haystack.len() < self.shortest {
            return;
        }
        // Overlapping search: every occurrence of every form, also those inside or across
        // another (so that merging covers them all).
        let mut exact = |window: std::ops::Range<usize>| match self.matcher() {
            Some(matcher) => {
                for found in matcher.find_overlapping_iter(Input::new(haystack).range(window)) {
                    spans.push((found.start(), found.end()));
                }
            }
            None => spans.push((window.start, window.end)),
        };
        let (Some(prefilter), Some(lowered)) = (&self.prefilter, lowered) else {
            exact(0..haystack.len());
            return;
        };
        debug_assert_eq!(lowered.len(), haystack.len());
        // Why the prefilter loses nothing. `matcher` matches a form `f` at `[s, e)` exactly
        // when `haystack[s..e]` equals `f` up to ASCII case (aho-corasick's ASCII case
        // insensitivity folds the letters A-Z/a-z and nothing else, as `to_ascii_lowercase`
        // does), that is when `lowered[s..e] == lowercase(f)`, a pattern of `prefilter`.
        // `prefilter`'s leftmost-first search reports, from where it stands, the occurrence
        // with the smallest start among all occurrences of its patterns that start there or
        // later, then goes on at that occurrence's end. So every occurrence of any pattern
        // starts inside a reported match `[s, e)`: one starting between two reported matches
        // would have been reported instead of the second. Hence:
        // - no reported match means no form occurs at all, and the exact search is skipped;
        // - a form occurring at `q` with `s <= q < e` ends before `e - 1 + longest`, so the
        //   exact search over the windows `[s, e - 1 + longest)` (merged when they overlap,
        //   so that nothing is reported twice) finds every occurrence `matcher` finds in the
        //   whole haystack.
        let mut window: Option<std::ops::Range<usize>> = None;
        prefilter.for_each(lowered, |start, found_end| {
            let end = (found_end - 1 + self.longest).min(haystack.len());
            match &mut window {
                Some(open) if start < open.end => open.end = open.end.max(end),
                _ => {
                    if let Some(done) = window.replace(start..end) {
                        exact(done);
                    }
                }
            }
        });
        if let Some(done) = window {
            exact(done);
        }
    }
}

/// A leftmost-first search for a secret's lowered forms (see [`RedactionIndex`]), two ways:
/// which is faster depends on the text's length (criterion `redaction_small` against
/// `redaction_4KiB` and `redaction_64KiB`, `docs/BENCHMARKS.md`).
struct Prefilter {
    /// aho-corasick's packed searcher, for text shorter than [`PACKED_MAX_LEN`]: Rabin-Karp
    /// below 16 bytes, SIMD (Teddy) above. `None` without SIMD on this CPU or with too many
    /// forms.
    packed: Option<packed::Searcher>,
    /// For longer text: a contiguous NFA (not the DFA aho-corasick picks for so few patterns:
    /// it builds in about a fifth of the time, and this runs on the first request that injects
    /// the secret) with aho-corasick's own prefilter, which skips through text that lacks the
    /// forms' rare bytes at memchr speed, but stops at each of them: on short text, where
    /// the start-up of each stop dominates, the packed searcher wins by several times.
    automaton: AhoCorasick,
}

/// Text shorter than this is searched with the packed searcher (see [`Prefilter`]).
const PACKED_MAX_LEN: usize = 1024;

impl Prefilter {
    fn build(lowered: &[Zeroizing<Vec<u8>>], packed: bool) -> Result<Self, IndexError> {
        let packed = packed
            .then(|| {
                packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostFirst)
                    .builder()
                    .extend(lowered.iter().map(|p| p.as_slice()))
                    .build()
            })
            .flatten();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(lowered.iter().map(|p| p.as_slice()))?;
        Ok(Self { packed, automaton })
    }

    /// Call `found(start, end)` for each leftmost-first match in `lowered`, in order. (Both
    /// searchers find the same matches: leftmost-first semantics are the same.)
    fn for_each(&self, lowered: &[u8], mut found: impl FnMut(usize, usize)) {
        match &self.packed {
            Some(searcher) if lowered.len() < PACKED_MAX_LEN => {
                for m in searcher.find_iter(lowered) {
                    found(m.start(), m.end());
                }
            }
            _ => {
                for m in self.automaton.find_iter(lowered) {
                    found(m.start(), m.end());
                }
            }
        }
    }

    /// Heap bytes held by both searchers (tests).
    #[cfg(test)]
    fn memory_usage(&self) -> usize {
        self.automaton.memory_usage()
            + self
                .packed
                .as_ref()
                .map_or(0, packed::Searcher::memory_usage)
    }
}

/// Sort `spans` and merge the overlapping ones.
fn merge_spans(spans: &mut Vec<(usize, usize)>) {
    if spans.len() > 1 {
        spans.sort_unstable();
        let mut merged = 0;
        for i in 1..spans.len() {
            let (start, end) = spans[i];
            if start < spans[merged].1 {
                spans[merged].1 = spans[merged].1.max(end);
            } else {
                merged += 1;
                spans[merged] = (start, end);
            }
        }
        spans.truncate(merged + 1);
    }
}

/// `haystack` ASCII-lowercased into `buffer` (reused, so no allocation once it is large
/// enough), for the prefilter.
fn lowercase_into<'b>(haystack: &[u8], buffer: &'b mut Vec<u8>) -> &'b [u8] {
    buffer.clear();
    buffer.extend_from_slice(haystack);
    buffer.make_ascii_lowercase();
    buffer
}

/// What one request redacts: the forms of each secret it injected.
#[derive(Debug, Clone, Default)]
pub struct RequestRedaction {
    secrets: Vec<Arc<RedactionIndex>>,
    /// Length of the longest form of any of them (0: nothing to search for).
    longest: usize,
    /// Length of the shortest form of any of them: shorter text holds none.
    shortest: usize,
}

impl RequestRedaction {
    /// Redact the secrets whose forms are `secrets` (one index per injected secret).
    pub fn new(secrets: Vec<Arc<RedactionIndex>>) -> Self {
        let longest = secrets.iter().map(|s| s.longest).max().unwrap_or(0);
        let shortest = secrets
            .iter()
            .map(|s| s.shortest)
            .min()
            .unwrap_or(usize::MAX);
        Self {
            secrets,
            longest,
            shortest,
        }
    }

    /// Whether `haystack` is too short to hold any form of the secrets.
    fn too_short(&self, haystack: &[u8]) -> bool {
        haystack.len() < self.shortest
    }

    /// Occurrences in `haystack` of the forms of every secret, sorted, overlapping ones
    /// merged. `lowered`, when given, is `haystack` ASCII-lowercased ([`lowercase_into`]); the
    /// request path always gives it, tests also search without it.
    fn spans(&self, haystack: &[u8], lowered: Option<&[u8]>, spans: &mut Vec<(usize, usize)>) {
        spans.clear();
        for secret in &self.secrets {
            secret.collect_spans(haystack, lowered, spans);
        }
        merge_spans(spans);
    }

    /// A whole body with every form of the secrets replaced by a [`mask`] of its length (so
    /// the result is as long as `body`), or `None` if none occurs. [`StreamRedactor`] gives
    /// the same result piece by piece.
    pub fn redact(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.replace(body, |out, len| out.extend(mask(len, 0..len)))
    }

    /// `value` with every occurrence (merged) replaced by what `write` appends for its
    /// length, or `None` if none occurs.
    fn replace(&self, value: &[u8], write: impl Fn(&mut Vec<u8>, usize)) -> Option<Vec<u8>> {
        if self.too_short(value) {
            return None;
        }
        let mut spans = Vec::new();
        let mut lowered = Vec::new();
        let lowered = Some(lowercase_into(value, &mut lowered));
        self.spans(value, lowered, &mut spans);
        if spans.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(value.len() + spans.len() * REDACTED.len());
        let mut pos = 0;
        for (start, end) in spans {
            out.extend_from_slice(&value[pos..start]);
            write(&mut out, end - start);
            pos = end;
        }
        out.extend_from_slice(&value[pos..]);
        Some(out)
    }

    /// A header value with every occurrence of the secrets replaced by [`REDACTED`] (the
    /// length of a header value does not matter), or `None` when it holds none. Unlike
    /// bodies, a header value that is exactly a short secret value is redacted too.
    pub fn redact_header_value(&self, value: &[u8]) -> Option<Vec<u8>> {
        let trimmed = value.trim_ascii();
        let is_short_secret = self.secrets.iter().any(|secret| {
            secret
                .short_value
                .as_ref()
                .is_some_and(|short| !trimmed.is_empty() && trimmed.eq_ignore_ascii_case(short))
        });
        if is_short_secret {
            return Some(REDACTED.to_vec());
        }
        self.replace(value, |out, _| out.extend_from_slice(REDACTED))
    }

    /// Whether a form of the secrets at least `min_len` bytes long occurs in `haystack` (for
    /// header names, which cannot hold the marker: such a header is dropped).
    pub fn occurs_in(&self, haystack: &[u8], min_len: usize) -> bool {
        if self.too_short(haystack) {
            return false;
        }
        let mut spans = Vec::new();
        let mut lowered = Vec::new();
        let lowered = Some(lowercase_into(haystack, &mut lowered));
        self.spans(haystack, lowered, &mut spans);
        spans.iter().any(|(start, end)| end - start >= min_len)
    }
}

/// Redacts one body as it streams through (see the module docs).
pub struct StreamRedactor {
    redaction: RequestRedaction,
    /// Bytes received but not yet sent: fewer than `longest + 10` of them.
    pending: BytesMut,
    /// An occurrence whose mask is partly sent: it goes on into `pending`.
    open: Option<OpenMask>,
    spans: Vec<(usize, usize)>,
    /// `pending` ASCII-lowercased, for the prefilter (reused from chunk to chunk). Like
    /// `pending`, it is not zeroized: zeroizing every response body would cost more than
    /// scanning it.
    lowered: Vec<u8>,
}

impl StreamRedactor {
    /// A redactor for one response body.
    pub fn new(redaction: RequestRedaction) -> Self {
        Self {
            redaction,
            pending: BytesMut::new(),
            open: None,
            spans: Vec::new(),
            lowered: Vec::new(),
        }
    }

    /// Feed the next piece of the body; returns what can be sent now. With `end`, everything
    /// held back is released.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let longest = self.redaction.longest;
        if longest == 0 {
            return Bytes::copy_from_slice(chunk);
        }
        self.pending.extend_from_slice(chunk);
        let len = self.pending.len();
        // An occurrence that starts before `hold` is complete in `pending`; one that starts
        // later might continue in the next chunk.
        let hold = if end {
            len
        } else {
            len.saturating_sub(longest - 1)
        };
        // Lowered once for all the request's secrets.
        if self.redaction.too_short(&self.pending) {
            self.spans.clear();
        } else {
            let lowered = Some(lowercase_into(&self.pending, &mut self.lowered));
            self.redaction
                .spans(&self.pending, lowered, &mut self.spans);
        }
        if self.spans.is_empty() && self.open.is_none() {
            return self.pending.split_to(hold).freeze();
        }

        // Every byte before `hold` is sent, unless a short occurrence runs past it (then from
        // that occurrence on everything waits for the next chunk; see below).
        let mut sent = hold;
        let mut out = BytesMut::with_capacity(hold);
        let mut spans = self.spans.iter().copied().peekable();
        let mut pos = 0;
        if let Some(open) = self.open.take() {
            // Continue the mask already started: occurrences that overlap its covered bytes
            // join it, so its final length is only known once it stops growing.
            let mut end_of_span = open.covered;
            while let Some(&(start, end)) = spans.peek() {
                if start >= end_of_span {
                    break;
                }
                end_of_span = end_of_span.max(end);
                spans.next();
            }
            let len = open.sent + end_of_span;
            if end_of_span > hold {
                out.extend(mask(len, open.sent..open.sent + hold));
                self.open = Some(OpenMask {
                    sent: open.sent + hold,
                    covered: end_of_span - hold,
                });
                let _ = self.pending.split_to(hold);
                return out.freeze();
            }
            out.extend(mask(len, open.sent..len));
            pos = end_of_span;
        }
        for (start, end) in spans {
            if start >= hold {
                break;
            }
            out.extend_from_slice(&self.pending[pos..start]);
            let len = end - start;
            if end <= hold {
                out.extend(mask(len, 0..len));
                pos = end;
            } else if len >= REDACTED.len() {
                // It may still grow (an occurrence starting in the held-back bytes can overlap
                // it), but all but the last byte of its mask are already known: send the
                // mask up to `hold`.
                out.extend(mask(len, 0..hold - start));
                self.open = Some(OpenMask {
                    sent: hold - start,
                    covered: end - hold,
                });
                pos = hold;
                break;
            } else {
                // A mask shorter than 10 bytes changes entirely if it grows past 10: hold the
                // occurrence back (it is found again in the next chunk).
                sent = start;
                pos = start;
                break;
            }
        }
        if pos < sent {
            out.extend_from_slice(&self.pending[pos..sent]);
        }
        let _ = self.pending.split_to(sent);
        out.freeze()
    }
}

/// The part of a body occurrence already replaced when it runs into the held-back bytes.
#[derive(Debug, Clone, Copy)]
struct OpenMask {
    /// Bytes of its mask already sent (as many as the occurrence bytes before `pending`).
    sent: usize,
    /// How many leading bytes of `pending` it covers so far.
    covered: usize,
}

/// Response headers that frame the body: never redacted (they hold numbers and coding names,
/// and changing them would break the response). `content-encoding` is checked separately.
const FRAMING_HEADERS: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_ENCODING,
];

/// Shortest form that makes a response header be dropped because its name holds it.
const MIN_NAME_MATCH_LEN: usize = 8;

/// A response whose body cannot be redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its content-encoding `{0}` cannot be inspected for secrets (only gzip and deflate can)")]
pub struct UnredactableResponse(String);

/// Redact the response head for `redaction` and get its body ready: see
/// [`redact_headers`]; then, since the body's bytes may change, validators and ranges that
/// describe the upstream's bytes are weakened or removed. An identity body keeps its length
/// (body masks are as long as what they replace), so it keeps `content-length` and is not
/// re-chunked; a compressed body is sent decoded, so it loses `content-length` (and is sent
/// chunked) and is announced as decoded. Fails when the body is in a coding that cannot be
/// decoded.
pub fn redact_response_head(
    response: &mut ResponseHeader,
    redaction: &RequestRedaction,
) -> Result<BodyRedactor, UnredactableResponse> {
    let coding = content_coding(&response.headers).map_err(|coding| {
        // The coding is the upstream's text: it could hold a secret too.
        let shown = redaction
            .redact_header_value(coding.as_bytes())
            .map_or(coding, |redacted| {
                String::from_utf8_lossy(&redacted).into_owned()
            });
        UnredactableResponse(shown)
    })?;
    redact_headers(response, redaction);

    let empty_body = response
        .headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() == b"0");
    if coding != ContentCoding::Identity {
        response.remove_header(&header::CONTENT_ENCODING);
    }
    if !empty_body {
        if coding != ContentCoding::Identity {
            // The decoded length is unknown: Pingora then sends the body chunked.
            response.remove_header(&header::CONTENT_LENGTH);
        }
        // Same length or not, the bytes may differ from the upstream's.
        response.remove_header(&header::ACCEPT_RANGES);
        weaken_etag(response);
    }
    Ok(BodyRedactor::new(redaction.clone(), coding))
}

/// Redact the secrets of `redaction` from every header value (a header whose name holds one
/// is dropped: a name cannot hold the marker) and reset the free-text reason phrase.
pub fn redact_headers(response: &mut ResponseHeader, redaction: &RequestRedaction) {
    let mut dropped: Vec<HeaderName> = Vec::new();
    let mut rewritten: Vec<HeaderName> = Vec::new();
    for (name, value) in response.headers.iter() {
        if FRAMING_HEADERS.contains(name) {
            continue;
        }
        // Dropping a header is harsher than rewriting a value (a 4-byte secret such as `type`
        // would take `content-type` away), so names only count longer forms.
        if redaction.occurs_in(name.as_str().as_bytes(), MIN_NAME_MATCH_LEN) {
            if !dropped.contains(name) {
                dropped.push(name.clone());
            }
        } else if !rewritten.contains(name)
            && redaction.redact_header_value(value.as_bytes()).is_some()
        {
            rewritten.push(name.clone());
        }
    }
    for name in dropped {
        response.remove_header(&name);
    }
    for name in rewritten {
        // Every value of the header, in order.
        let values: Vec<HeaderValue> = response
            .headers
            .get_all(&name)
            .iter()
            .map(
                |value| match redaction.redact_header_value(value.as_bytes()) {
                    // Replacing part of a valid value with the (valid) marker keeps it valid.
                    Some(redacted) => HeaderValue::from_bytes(&redacted)
                        .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]")),
                    None => value.clone(),
                },
            )
            .collect();
        response.remove_header(&name);
        for value in values {
            // Appending a valid name and value cannot fail.
            let _ = response.append_header(name.clone(), value);
        }
    }
    // The upstream's reason phrase is free text: use the standard one.
    let _ = response.set_reason_phrase(None);
}

/// The body sent may differ from the upstream's bytes, so a strong validator no longer holds
/// (RFC 9110 8.8.1): weaken it, or drop one that is not well formed (as nginx does).
fn weaken_etag(response: &mut ResponseHeader) {
    let Some(etag) = response.headers.get(header::ETAG) else {
        return;
    };
    let etag = etag.as_bytes();
    if etag.starts_with(b"W/") {
        return;
    }
    let weakened = etag
        .starts_with(b"\"")
        .then(|| HeaderValue::from_bytes(&[b"W/", etag].concat()).ok())
        .flatten();
    match weakened {
        Some(weak) => {
            let _ = response.insert_header(header::ETAG, weak);
        }
        None => {
            response.remove_header(&header::ETAG);
        }
    }
}

/// A `content-encoding` the redactor can see through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCoding {
    /// Not encoded.
    Identity,
    /// `gzip` or `x-gzip`, possibly several members.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 9110) or, as some servers send it, raw.
    Deflate,
}

/// The coding of a response from its `content-encoding` headers; `Err` names an encoding
/// (or a stack of them) that cannot be decoded.
pub fn content_coding(headers: &http::HeaderMap) -> Result<ContentCoding, String> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| "(not valid text)".to_string())?;
        for coding in text.split(',').map(str::trim) {
            if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
                codings.push(coding.to_ascii_lowercase());
            }
        }
    }
    match codings.as_slice() {
        [] => Ok(ContentCoding::Identity),
        [one] if one == "gzip" || one == "x-gzip" => Ok(ContentCoding::Gzip),
        [one] if one == "deflate" => Ok(ContentCoding::Deflate),
        _ => Err(codings.join(", ")),
    }
}

/// `accept-encoding` narrowed to the codings [`content_coding`] can decode (quality values
/// kept; `*` and everything else removed); `identity` when nothing is left.
pub fn decodable_accept_encoding(value: &str) -> String {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|item| {
            let coding = item.split(';').next().unwrap_or("").trim();
            ["gzip", "x-gzip", "deflate", "identity"]
                .iter()
                .any(|known| coding.eq_ignore_ascii_case(known))
        })
        .collect();
    if kept.is_empty() {
        "identity".to_string()
    } else {
        kept.join(", ")
    }
}

/// Why a response body could not be redacted.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's {coding} body could not be decoded: {source}")]
pub struct DecodeError {
    coding: &'static str,
    source: std::io::Error,
}

/// Decompresses a body as it streams.
enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    /// `deflate` is zlib-wrapped by the standard but raw in some servers: the first two bytes
    /// tell which.
    DeflateUndecided(Vec<u8>),
}

impl Decoder {
    fn new(coding: ContentCoding) -> Option<Self> {
        match coding {
            ContentCoding::Identity => None,
            ContentCoding::Gzip => Some(Self::Gzip(flate2::write::MultiGzDecoder::new(Vec::new()))),
            ContentCoding::Deflate => Some(Self::DeflateUndecided(Vec::new())),
        }
    }

    fn coding(&self) -> &'static str {
        match self {
            Self::Gzip(_) => "gzip",
            _ => "deflate",
        }
    }

    /// Decode `input`; with `end`, check the stream is complete.
    fn push(&mut self, input: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        if let Self::DeflateUndecided(start) = self {
            start.extend_from_slice(input);
            if start.len() < 2 && !end {
                return Ok(Vec::new());
            }
            let start = std::mem::take(start);
            *self = if is_zlib_header(&start) {
                Self::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
            } else {
                Self::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
            };
            return self.push(&start, end);
        }
        match self {
            Self::Gzip(decoder) => {
                decoder.write_all(input)?;
                if end {
                    decoder.try_finish()?;
                }
                Ok(std::mem::take(decoder.get_mut()))
            }
            Self::Zlib(decoder) => {
                decoder.write_all(input)?;
                if end {
                    decoder.try_finish()?;
                }
                Ok(std::mem::take(decoder.get_mut()))
            }
            Self::RawDeflate(decoder) => {
                decoder.write_all(input)?;
                if end {
                    decoder.try_finish()?;
                }
                Ok(std::mem::take(decoder.get_mut()))
            }
            Self::DeflateUndecided(_) => unreachable!("decided above"),
        }
    }
}

/// RFC 1950: compression method 8 with a window of at most 32 KiB, and a header checksum.
fn is_zlib_header(start: &[u8]) -> bool {
    match start {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Redacts one response body: decodes it if needed, then streams it through a
/// [`StreamRedactor`].
pub struct BodyRedactor {
    decoder: Option<Decoder>,
    stream: StreamRedactor,
}

impl std::fmt::Debug for BodyRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Held-back bytes may be part of a secret: only their count is shown.
        f.debug_struct("BodyRedactor")
            .field("coding", &self.decoder.as_ref().map(Decoder::coding))
            .field("held_back", &self.stream.pending.len())
            .finish_non_exhaustive()
    }
}

impl BodyRedactor {
    /// A redactor for a body in `coding`; the output is always decoded.
    pub fn new(redaction: RequestRedaction, coding: ContentCoding) -> Self {
        Self {
            decoder: Decoder::new(coding),
            stream: StreamRedactor::new(redaction),
        }
    }

    /// Feed the next piece of the upstream body (`None`: no new bytes); returns what to send
    /// the client now, `None` when nothing is ready yet.
    pub fn push(&mut self, chunk: Option<&[u8]>, end: bool) -> Result<Option<Bytes>, DecodeError> {
        let chunk = chunk.unwrap_or_default();
        let out = match &mut self.decoder {
            None => self.stream.push(chunk, end),
            Some(decoder) => {
                let decoded =
                    Zeroizing::new(decoder.push(chunk, end).map_err(|source| DecodeError {
                        coding: decoder.coding(),
                        source,
                    })?);
                self.stream.push(&decoded, end)
            }
        };
        Ok((!out.is_empty()).then_some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const VALUE: &str = "sk-live-Zq9/x+Y=&ü \"k\"<1>";

    fn index(value: &str) -> Arc<RedactionIndex> {
        Arc::new(RedactionIndex::build(value).unwrap())
    }

    /// A request that injected every one of `values`.
    fn all(values: &[&str]) -> RequestRedaction {
        RequestRedaction::new(values.iter().map(|v| index(v)).collect())
    }

    fn redact_whole(redaction: &RequestRedaction, body: &[u8]) -> Vec<u8> {
        redaction.redact(body).unwrap_or_else(|| body.to_vec())
    }

    /// Feed `body` cut at `cuts` (sorted offsets) and collect the output.
    fn stream(redaction: &RequestRedaction, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut redactor = StreamRedactor::new(redaction.clone());
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            out.extend_from_slice(&redactor.push(&body[last..cut], false));
            last = cut;
        }
        out.extend_from_slice(&redactor.push(&body[last..], true));
        out
    }

    /// Streaming `body` cut at every pair of offsets gives `whole`.
    fn assert_every_two_cuts_agree(redaction: &RequestRedaction, body: &[u8], whole: &[u8]) {
        for a in 0..=body.len() {
            for b in a..=body.len() {
                assert_eq!(stream(redaction, body, &[a, b]), whole, "cuts {a}, {b}");
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The body mask for an occurrence of `len` bytes, as text.
    fn m(len: usize) -> String {
        text(&mask(len, 0..len).collect::<Vec<u8>>())
    }

    #[test]
    fn a_body_mask_is_as_long_as_what_it_replaces() {
        assert_eq!(m(4), "****");
        assert_eq!(m(9), "*********");
        assert_eq!(m(10), "[REDACTED]");
        assert_eq!(m(11), "[REDACTED*]");
        assert_eq!(m(48), format!("[REDACTED{}]", "*".repeat(38)));
        for len in 0..100 {
            assert_eq!(m(len).len(), len);
            // A long mask's first `len - 1` bytes start every longer mask (what lets the
            // stream send it before the occurrence ends).
            if len >= 10 {
                assert!(m(len + 7).starts_with(&m(len)[..len - 1]), "{len}");
            }
        }
    }

    #[test]
    fn every_encoded_form_is_redacted() {
        let redaction = all(&[VALUE]);
        let bytes = VALUE.as_bytes();
        let json_minimal = serde_json::to_string(VALUE).unwrap();
        let forms = [
            VALUE.to_string(),
            VALUE.to_ascii_uppercase(),
            STANDARD.encode(bytes),
            STANDARD_NO_PAD.encode(bytes),
            URL_SAFE.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            // As the template encodes a URL component, and in lower-case hex.
            utf8_percent_encode(VALUE, COMPONENT).to_string(),
            utf8_percent_encode(VALUE, COMPONENT)
                .to_string()
                .to_lowercase(),
            // Form encoding.
            utf8_percent_encode(VALUE, FORM)
                .to_string()
                .replace("%20", "+"),
            // Python's quote() (werkzeug's request.url); an RFC 3986 path and the WHATWG
            // query and path sets (the same for this value). Spelled out, not computed with
            // the sets under test.
            "sk-live-Zq9/x%2BY%3D%26%C3%BC%20%22k%22%3C1%3E".to_string(),
            "sk-live-Zq9/x+Y=&%C3%BC%20%22k%22%3C1%3E".to_string(),
            json_minimal[1..json_minimal.len() - 1].to_string(),
            // Python's json.dumps (ASCII only), Go's encoding/json (HTML-safe), PHP (`\/`).
            r#"sk-live-Zq9/x+Y=&\u00fc \"k\"<1>"#.to_string(),
            r#"sk-live-Zq9/x+Y=\u0026ü \"k\"\u003c1\u003e"#.to_string(),
            r#"sk-live-Zq9\/x+Y=&\u00fc \"k\"<1>"#.to_string(),
        ];
        for form in forms {
            let body = format!("before {form} after");
            let out = text(&redact_whole(&redaction, body.as_bytes()));
            // The form is gone and its mask stands exactly where it was.
            assert_eq!(
                out,
                format!("before {} after", m(form.len())),
                "form {form:?}"
            );
        }
    }

    #[test]
    fn base64_of_a_value_inside_longer_text_is_redacted_at_every_alignment() {
        let redaction = all(&["correct-horse-battery"]);
        for prefix in ["", "u:", "us:", "user:"] {
            for suffix in ["", "!", "!!", "!!!"] {
                let inner = format!("{prefix}correct-horse-battery{suffix}");
                for encoded in [STANDARD.encode(&inner), URL_SAFE_NO_PAD.encode(&inner)] {
                    let body = format!("Basic {encoded}");
                    let out = redact_whole(&redaction, body.as_bytes());
                    assert!(
                        contains(&out, b"[REDACTED"),
                        "{prefix:?}/{suffix:?}: {}",
                        text(&out)
                    );
                    assert_eq!(out.len(), body.len());
                    // What is left cannot be decoded back to the value (base64 has no `*`
                    // nor `]`, so trimming them takes off the rest of a mask).
                    let rest = text(&out);
                    for piece in rest.split("[REDACTED") {
                        let piece = piece.trim_start_matches(['*', ']']);
                        let piece = piece.trim_start_matches("Basic ");
                        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                            if let Ok(decoded) = engine.decode(piece.trim_end_matches('=')) {
                                assert!(!contains(&decoded, b"horse-battery"));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted_at_every_cut() {
        let redaction = all(&["secret-value-123", "other-token-xyz"]);
        let body = b"{\"a\":\"secret-value-123\",\"b\":\"c2VjcmV0LXZhbHVlLTEyMw==\",\"c\":\"other-token-xyz\"}";
        let whole = redact_whole(&redaction, body);
        assert!(!contains(&whole, b"secret-value-123"));
        assert!(!contains(&whole, b"c2VjcmV0LXZhbHVlLTEyMw"));
        assert!(!contains(&whole, b"other-token-xyz"));
        for cut in 0..=body.len() {
            assert_eq!(stream(&redaction, body, &[cut]), whole, "cut at {cut}");
        }
        assert_every_two_cuts_agree(&redaction, body, &whole);
        // One byte at a time.
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(stream(&redaction, body, &cuts), whole);
    }

    #[test]
    fn overlapping_occurrences_merge_into_one_marker_however_the_body_is_cut() {
        let redaction = all(&["abab"]);
        let body = b"xx ababab yy abababab zz abab";
        let whole = redact_whole(&redaction, body);
        assert_eq!(text(&whole), "xx ****** yy ******** zz ****");
        assert_every_two_cuts_agree(&redaction, body, &whole);
    }

    #[test]
    fn overlapping_values_of_different_secrets() {
        // One value contains the other; one overlaps the other's end.
        let redaction = all(&["token-abc", "abc-def", "xtoken-abc-defx"]);
        let body = b"1 token-abc-def 2 xtoken-abc-defx 3 abc-de";
        let whole = redact_whole(&redaction, body);
        assert_eq!(text(&whole), format!("1 {} 2 {} 3 abc-de", m(13), m(15)));
        // Pseudo-random cuts agree with the whole-body result.
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..500 {
            let mut cuts: Vec<usize> = (0..4)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as usize % (body.len() + 1)
                })
                .collect();
            cuts.sort_unstable();
            assert_eq!(stream(&redaction, body, &cuts), whole, "{cuts:?}");
        }
    }

    #[test]
    fn a_long_chain_of_overlapping_occurrences_is_one_mask_however_the_body_is_cut() {
        // Each `abab` overlaps the next: one 40-byte occurrence, whose mask is sent before the
        // stream knows where it ends; and short ones, held back until they are known.
        let redaction = all(&["abab", "xyz-token"]);
        let body = format!("<{}> ab <ababa> xyz-tokenabab", "ab".repeat(20));
        let body = body.as_bytes();
        let whole = redact_whole(&redaction, body);
        assert_eq!(
            text(&whole),
            // `ababa` holds one occurrence; adjacent ones (`xyz-token`, `abab`) stay two masks.
            format!("<{}> ab <****a> {}{}", m(40), m(9), m(4))
        );
        assert_every_two_cuts_agree(&redaction, body, &whole);
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(stream(&redaction, body, &cuts), whole);
    }

    /// Masks keep the length, so an identity body keeps its `content-length`: the stream's
    /// output must be exactly as long as its input, however the body is cut.
    #[test]
    fn the_streamed_body_is_as_long_as_the_upstream_body() {
        let secrets = ["secret-value-123", "abab", "Zq9/x+Y=&ü"];
        let redaction = all(&secrets);
        let mut seed = 0x1234_5678_u32;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % n
        };
        let pieces: Vec<Vec<u8>> = secrets
            .iter()
            .flat_map(|v| encoded_forms(v).into_iter().map(|f| f.to_vec()))
            .chain([b"ab".to_vec(), b"secret-".to_vec()])
            .collect();
        for round in 0..300 {
            let with_secrets = round % 2 == 0;
            let mut body = Vec::new();
            while body.len() < 50 + 3 * round {
                if with_secrets && next(3) == 0 {
                    body.extend_from_slice(&pieces[next(pieces.len())]);
                } else {
                    body.push(b" {}\"x-_q:,"[next(10)]);
                }
            }
            let whole = redact_whole(&redaction, &body);
            assert_eq!(whole.len(), body.len());
            assert_eq!(whole != body, with_secrets, "round {round}");
            for _ in 0..10 {
                let mut cuts: Vec<usize> = (0..next(8)).map(|_| next(body.len() + 1)).collect();
                cuts.sort_unstable();
                let out = stream(&redaction, &body, &cuts);
                assert_eq!(out.len(), body.len(), "round {round}, {cuts:?}");
                assert_eq!(out, whole, "round {round}, {cuts:?}");
            }
        }

        // The head: an identity body keeps its length, a decoded one loses it.
        let mut identity = response(&[("content-length", "120"), ("etag", "\"v1\"")]);
        redact_response_head(&mut identity, &redaction).unwrap();
        assert_eq!(values(&identity, "content-length"), ["120"]);
        assert_eq!(values(&identity, "etag"), ["W/\"v1\""]);
        let mut gzip = response(&[("content-encoding", "gzip"), ("content-length", "120")]);
        redact_response_head(&mut gzip, &redaction).unwrap();
        assert!(gzip.headers.get("content-length").is_none());
        assert!(gzip.headers.get("content-encoding").is_none());
    }

    /// The prefilter (on lowered text) and the windows it gives the exact search must find
    /// exactly what the exact search finds over the whole haystack.
    #[test]
    fn the_prefilter_loses_no_occurrence() {
        let values = [
            "token-abc",
            "abc-def",
            "xtoken-abc-defx",
            "Sk_Live_Q9/x+Y=&ü",
        ];
        let mut seed = 0x2545_f491_u32;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % n
        };
        let pieces: Vec<Vec<u8>> = values
            .iter()
            .flat_map(|v| encoded_forms(v).into_iter().map(|f| f.to_vec()))
            .chain([
                b"abc".to_vec(),
                b"token".to_vec(),
                b"-".to_vec(),
                "ü".into(),
            ])
            .collect();
        let mut found_some = 0;
        for round in 0..400 {
            // Noise with forms (and bits of forms) dropped in, some letters flipped in case.
            let mut body = Vec::new();
            // Mostly bodies, every fourth one header-sized.
            let len = if round % 4 == 0 {
                round % 60
            } else {
                300 + round
            };
            while body.len() < len {
                if next(4) == 0 {
                    let piece = &pieces[next(pieces.len())];
                    let cut = if next(3) == 0 { next(piece.len()) } else { 0 };
                    body.extend_from_slice(&piece[cut..]);
                } else {
                    body.push(b" aB{}\"x-_tokenDEF"[next(17)]);
                }
            }
            for byte in body.iter_mut() {
                if next(5) == 0 && byte.is_ascii_alphabetic() {
                    *byte ^= 0x20;
                }
            }
            let chosen: &[&str] = match round % 3 {
                0 => &values,
                1 => &values[1..2],
                _ => &[values[0], values[3]],
            };
            // Every other round with the automaton prefilter instead of the packed one.
            let packed = round % 2 == 0;
            let redaction = RequestRedaction::new(
                chosen
                    .iter()
                    .map(|v| Arc::new(RedactionIndex::build_with(v, packed).unwrap()))
                    .collect(),
            );
            assert!(redaction.secrets.iter().all(|s| s
                .prefilter
                .as_ref()
                .unwrap()
                .packed
                .is_some()
                == packed));
            let mut lowered = Vec::new();
            let lowered = lowercase_into(&body, &mut lowered);
            let (mut with, mut without) = (Vec::new(), Vec::new());
            redaction.spans(&body, Some(lowered), &mut with);
            redaction.spans(&body, None, &mut without);
            assert_eq!(with, without, "round {round}: {}", text(&body));
            found_some += usize::from(!with.is_empty());
        }
        assert!(found_some > 250, "{found_some}");
        // A clean body has no span either way.
        let clean = b"nothing to see here, ".repeat(20);
        let mut lowered = Vec::new();
        let lowered = lowercase_into(&clean, &mut lowered);
        let mut spans = vec![(1, 2)];
        all(&values).spans(&clean, Some(lowered), &mut spans);
        assert!(spans.is_empty());
    }

    #[test]
    fn the_exact_automaton_is_built_only_when_a_form_is_found() {
        let secret = index(VALUE);
        let redaction = RequestRedaction::new(vec![secret.clone()]);
        let clean = br#"{"ok":true,"id":"ord_4242","items":[{"sku":"A-1","qty":2}]}"#;
        assert_eq!(redaction.redact(clean), None);
        assert_eq!(redaction.redact_header_value(b"nginx/1.22.1"), None);
        assert!(!secret.matcher_built(), "nothing found, nothing built");
        let leaking = format!("echo: {VALUE}!");
        let redacted = redaction.redact(leaking.as_bytes()).unwrap();
        assert_eq!(text(&redacted), format!("echo: {}!", m(VALUE.len())));
        assert!(secret.matcher_built());
    }

    #[test]
    fn what_an_opened_secret_holds_for_redaction() {
        // A 44-byte API token, as in the benchmark harness.
        let secret = index("sk_live_642625ea_000000_9f8e7d6c5b4a39281706");
        let prefilter = secret.prefilter.as_ref().unwrap().memory_usage();
        let matcher = secret.matcher().unwrap().memory_usage();
        println!(
            "{} forms: prefilter {prefilter} bytes, exact automaton {matcher} bytes",
            secret.patterns.len()
        );
        assert!(prefilter < 16 * 1024, "{prefilter}");
    }

    #[test]
    fn text_shorter_than_every_form_is_not_searched_and_changes_nothing() {
        let redaction = all(&["abcdefgh-secret"]);
        assert_eq!(redaction.shortest, "abcdefgh-secret".len());
        assert_eq!(redaction.redact(b"abcdefgh-secre"), None);
        assert!(!redaction.occurs_in(b"abcdefgh-secre", 8));
        // One byte more and it is found, in any case.
        assert_eq!(
            redaction.redact_header_value(b"ABCDEFGH-SECRET").unwrap(),
            REDACTED
        );
        let body = b"abcdefgh-secret";
        assert_eq!(redact_whole(&redaction, body), m(body.len()).as_bytes());
        assert_every_two_cuts_agree(&redaction, body, m(body.len()).as_bytes());
    }

    #[test]
    fn without_the_exact_automaton_whole_windows_are_masked() {
        // If the exact automaton could not be built, each prefilter window (from where a form
        // starts to a longest form past it) is masked: more than needed, never less.
        let secret = index("token-abc");
        secret.matcher.set(None).unwrap();
        let redaction = RequestRedaction::new(vec![secret]);
        let body = b"before token-abc after and more text";
        let redacted = redaction.redact(body).unwrap();
        assert_eq!(redacted.len(), body.len());
        assert!(!contains(&redacted, b"token-abc"), "{}", text(&redacted));
        assert!(
            text(&redacted).starts_with("before ["),
            "{}",
            text(&redacted)
        );
        let clean = b"nothing to see here, really nothing";
        assert_eq!(redaction.redact(clean), None);
    }

    #[test]
    fn only_the_secrets_of_the_request_are_redacted() {
        let injected = index("injected-value");
        let other = index("not-injected-but-longer-injected-value-x");
        let redaction = RequestRedaction::new(vec![injected]);
        // The other secret's value contains the injected one: only the injected one is
        // replaced, and the other is not searched for at all.
        let body = b"not-injected-but-longer-injected-value-x";
        assert_eq!(
            text(&redact_whole(&redaction, body)),
            "not-injected-but-longer-[REDACTED****]-x"
        );
        assert_eq!(redact_whole(&redaction, b"nothing here"), b"nothing here");
        let both = RequestRedaction::new(vec![other, index("injected-value")]);
        assert_eq!(text(&redact_whole(&both, body)), m(body.len()));
    }

    #[test]
    fn short_values_are_only_redacted_as_whole_header_values() {
        let redaction = all(&["abc", "longer-value"]);
        assert_eq!(redaction.redact(b"abcabc abc"), None);
        assert_eq!(
            redaction.redact_header_value(b" abc "),
            Some(REDACTED.to_vec())
        );
        assert_eq!(redaction.redact_header_value(b"abcd"), None);
        assert_eq!(
            redaction.redact_header_value(b"Bearer longer-value"),
            Some(b"Bearer [REDACTED]".to_vec())
        );
        assert!(redaction.occurs_in(b"x-longer-value", 8));
        assert!(!redaction.occurs_in(b"x-longer-value", 13));
        assert!(!redaction.occurs_in(b"x-abc", 1));
        assert!(encoded_forms("abc").is_empty());
    }

    #[test]
    fn no_secret_means_pass_through() {
        let redaction = RequestRedaction::default();
        assert_eq!(stream(&redaction, b"hello world", &[3, 5]), b"hello world");
        // Nor does a secret too short to search for, in a body.
        let short = all(&["abc"]);
        assert_eq!(stream(&short, b"abc abc", &[3]), b"abc abc");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode_through(
        redaction: &RequestRedaction,
        coding: ContentCoding,
        encoded: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut redactor = BodyRedactor::new(redaction.clone(), coding);
        let mut out = Vec::new();
        for chunk in encoded.chunks(piece) {
            if let Some(bytes) = redactor.push(Some(chunk), false)? {
                out.extend_from_slice(&bytes);
            }
        }
        if let Some(bytes) = redactor.push(None, true)? {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    #[test]
    fn gzip_and_deflate_bodies_are_decoded_and_redacted() {
        let redaction = all(&["gzip-secret-value"]);
        let body = format!(
            "{}\"gzip-secret-value\"{}",
            "a".repeat(5000),
            "b".repeat(5000)
        );
        let expected = format!(
            "{}\"{}\"{}",
            "a".repeat(5000),
            m("gzip-secret-value".len()),
            "b".repeat(5000)
        );

        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zlib.write_all(body.as_bytes()).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        raw.write_all(body.as_bytes()).unwrap();
        let raw = raw.finish().unwrap();
        // Two gzip members, as concatenated files are.
        let mut two_members = gzip(&body.as_bytes()[..3000]);
        two_members.extend(gzip(&body.as_bytes()[3000..]));

        for (coding, encoded) in [
            (ContentCoding::Gzip, gzip(body.as_bytes())),
            (ContentCoding::Gzip, two_members),
            (ContentCoding::Deflate, zlib),
            (ContentCoding::Deflate, raw),
        ] {
            for piece in [1, 7, 100, 100_000] {
                let out = decode_through(&redaction, coding, &encoded, piece).unwrap();
                assert_eq!(text(&out), expected, "{coding:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_corrupt_or_truncated_compressed_body_is_an_error() {
        let redaction = all(&["gzip-secret-value"]);
        let encoded = gzip(b"some body with gzip-secret-value inside");
        let truncated = &encoded[..encoded.len() - 6];
        assert!(decode_through(&redaction, ContentCoding::Gzip, truncated, 5).is_err());
        let mut corrupt = encoded.clone();
        corrupt[12] ^= 0xff;
        corrupt[13] ^= 0xff;
        assert!(decode_through(&redaction, ContentCoding::Gzip, &corrupt, 5).is_err());
        assert!(decode_through(&redaction, ContentCoding::Gzip, b"not gzip at all", 5).is_err());
    }

    #[test]
    fn content_codings() {
        let headers = |values: &[&str]| {
            let mut map = http::HeaderMap::new();
            for v in values {
                map.append(http::header::CONTENT_ENCODING, v.parse().unwrap());
            }
            map
        };
        assert_eq!(content_coding(&headers(&[])), Ok(ContentCoding::Identity));
        assert_eq!(
            content_coding(&headers(&["identity"])),
            Ok(ContentCoding::Identity)
        );
        assert_eq!(content_coding(&headers(&["GZIP"])), Ok(ContentCoding::Gzip));
        assert_eq!(
            content_coding(&headers(&["x-gzip"])),
            Ok(ContentCoding::Gzip)
        );
        assert_eq!(
            content_coding(&headers(&["deflate"])),
            Ok(ContentCoding::Deflate)
        );
        assert_eq!(content_coding(&headers(&["br"])), Err("br".to_string()));
        assert_eq!(
            content_coding(&headers(&["gzip", "br"])),
            Err("gzip, br".to_string())
        );
        assert_eq!(
            content_coding(&headers(&["gzip, gzip"])),
            Err("gzip, gzip".to_string())
        );
    }

    fn response(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut response = ResponseHeader::build(200, None).unwrap();
        for (name, value) in headers {
            response.append_header(name.to_string(), *value).unwrap();
        }
        response
    }

    fn values(response: &ResponseHeader, name: &str) -> Vec<String> {
        response
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn response_headers_are_redacted() {
        let redaction = all(&["hdr-secret-value", "pin", "type"]);
        let encoded = STANDARD.encode("hdr-secret-value");
        let mut head = response(&[
            ("x-echo", "Bearer hdr-secret-value"),
            ("x-echo-b64", &encoded),
            ("x-multi", "first"),
            ("x-multi", "hdr-secret-value"),
            ("x-pin", "pin"),
            ("x-pinned", "spin"),
            ("x-hdr-secret-value", "the name holds it"),
            ("content-length", "42"),
            ("etag", "\"abc\""),
            ("accept-ranges", "bytes"),
            ("x-plain", "untouched"),
            ("content-type", "text/plain"),
        ]);
        head.set_reason_phrase(Some("OK hdr-secret-value")).unwrap();
        let redactor = redact_response_head(&mut head, &redaction);
        assert!(redactor.is_ok());
        assert_eq!(values(&head, "x-echo"), ["Bearer [REDACTED]"]);
        assert_eq!(values(&head, "x-echo-b64"), ["[REDACTED]"]);
        assert_eq!(values(&head, "x-multi"), ["first", "[REDACTED]"]);
        // A short value only as a whole header value.
        assert_eq!(values(&head, "x-pin"), ["[REDACTED]"]);
        assert_eq!(values(&head, "x-pinned"), ["spin"]);
        assert!(head.headers.get("x-hdr-secret-value").is_none());
        assert_eq!(head.get_reason_phrase(), Some("OK"));
        // The body's bytes may change but not its length: the length stays, no ranges, a weak
        // validator.
        assert_eq!(values(&head, "content-length"), ["42"]);
        assert!(head.headers.get("accept-ranges").is_none());
        assert_eq!(values(&head, "etag"), ["W/\"abc\""]);
        assert_eq!(values(&head, "x-plain"), ["untouched"]);
        // A short secret in a header name does not take the header away.
        assert_eq!(values(&head, "content-type"), ["text/plain"]);
    }

    #[test]
    fn compressed_responses_are_announced_decoded_and_unknown_codings_refused() {
        let redaction = all(&["hdr-secret-value"]);
        let mut gzip = response(&[("content-encoding", "gzip"), ("content-length", "10")]);
        redact_response_head(&mut gzip, &redaction).unwrap();
        assert!(gzip.headers.get("content-encoding").is_none());
        assert!(gzip.headers.get("content-length").is_none());

        // An empty body keeps its length (nothing to redact, and no chunked framing needed).
        let mut empty = response(&[("content-length", "0"), ("etag", "\"e\"")]);
        redact_response_head(&mut empty, &redaction).unwrap();
        assert_eq!(values(&empty, "content-length"), ["0"]);
        assert_eq!(values(&empty, "etag"), ["\"e\""]);

        let mut br = response(&[("content-encoding", "br")]);
        let error = redact_response_head(&mut br, &redaction).unwrap_err();
        assert!(error.to_string().contains("`br`"), "{error}");
        // The coding is the upstream's text and is redacted too.
        let mut sneaky = response(&[("content-encoding", "hdr-secret-value")]);
        let error = redact_response_head(&mut sneaky, &redaction).unwrap_err();
        assert!(!error.to_string().contains("hdr-secret-value"), "{error}");
    }

    #[test]
    fn accept_encoding_is_narrowed_to_decodable_codings() {
        assert_eq!(
            decodable_accept_encoding("br, gzip;q=0.8, zstd, deflate"),
            "gzip;q=0.8, deflate"
        );
        assert_eq!(decodable_accept_encoding("br, *"), "identity");
        assert_eq!(decodable_accept_encoding("Identity"), "Identity");
    }

    #[test]
    fn forms_never_hold_duplicates_and_debug_shows_no_value() {
        let forms = encoded_forms("plain-ascii-token");
        for (i, a) in forms.iter().enumerate() {
            for b in &forms[i + 1..] {
                assert!(!a.eq_ignore_ascii_case(b));
            }
        }
        let index = index("plain-ascii-token");
        assert!(!format!("{index:?}").contains("plain-ascii-token"));
    }
}
