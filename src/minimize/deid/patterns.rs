//! Recognisers for HIPAA Safe Harbor identifier patterns in free text.
//!
//! Everything is one `regex::bytes::Regex` built from the per-kind constants
//! below, joined by alternation. One regex means one lazy-DFA pass over the
//! text; strings without identifiers (the vast majority) cost a single scan.
//! Each alternative is wrapped in a named group `e<N>` so a match can be
//! classified, and labelled patterns mark the part to redact with a group
//! written `(?P<v>` (renamed to `v<N>` at build time) so labels stay readable.
//!
//! The regex runs in ASCII mode (`(?-u)`): the crate is built without Unicode
//! tables, and ASCII `\b` is what lets the lazy DFA handle word boundaries.
//! Alternation is leftmost-first, so within one position the order of
//! alternatives matters: longer/more specific forms are listed first.

use std::ops::Range;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// The Safe Harbor pattern a match belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Social security number.
    Ssn,
    /// Telephone or fax number.
    Phone,
    /// E-mail address.
    Email,
    /// Web URL.
    Url,
    /// IPv4 or IPv6 address.
    Ip,
    /// A date element more precise than a year.
    Date,
    /// A ZIP code.
    Zip,
    /// A labelled record, account, licence, device or similar number.
    RecordNumber,
}

// ---------------------------------------------------------------------------
// Shared fragments. Macros (not consts) so they can be spliced with `concat!`
// into `&'static str` constants at compile time.
// ---------------------------------------------------------------------------

/// Separator between a label and its value: punctuation, whitespace, and a
/// few inline xhtml tags (`<b>MRN:</b> 123`), bounded to keep the DFA small.
macro_rules! lsep {
    () => {
        r"(?:[\s:#=.\-]|<[^<>]{0,40}>){0,8}"
    };
}

/// Day of month 1-31, optional leading zero.
macro_rules! day {
    () => {
        r"(?:0?[1-9]|[12][0-9]|3[01])"
    };
}

/// Optional English ordinal suffix ("4th").
macro_rules! ord {
    () => {
        r"(?:st|nd|rd|th)?"
    };
}

/// Year 1800-2199: plain 4-digit numbers outside that range are not years.
macro_rules! year4 {
    () => {
        r"(?:1[89]|2[01])[0-9]{2}"
    };
}

/// Month names and abbreviations except "May" (which is an English word and
/// gets stricter rules). Word-bounded, optional trailing dot ("Mar.").
macro_rules! mon_not_may {
    () => {
        r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?"
    };
}

/// All month names including "May" (used only where a year is required).
macro_rules! mon_all {
    () => {
        r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?"
    };
}

/// Capitalised "May": treated as the month even without a year, while
/// lower-case "may" ("1-2 may be taken") needs a year or an ordinal.
macro_rules! may_cap {
    () => {
        r"\b(?-i:May|MAY)\b\.?"
    };
}

/// Optional year after a month/day: ", 2019", " 2019", "-2019", "/19".
macro_rules! opt_year {
    () => {
        concat!(r"(?:[ \t]*,?[ \t]*", year4!(), r"\b|[\-/](?:", year4!(), r"|[0-9]{2})\b)?")
    };
}

/// Separator between a month name and a day ("Mar 4", "Mar-04", "Mar.4").
macro_rules! md_sep {
    () => {
        r"[ \t]*[\-/]?[ \t]*"
    };
}

/// Separator between a day and a month name ("4 Mar", "4-Mar", "4th of March").
macro_rules! dm_sep {
    () => {
        r"(?:[ \t]*[\-/.][ \t]*|[ \t]+(?:of[ \t]+)?)"
    };
}

/// Optional phone separator: one `.`/`-` with optional blanks, or blanks.
macro_rules! psep {
    () => {
        r"(?:[ \t]*[.\-][ \t]*|[ \t]{1,2})?"
    };
}

/// Phone extension ("x123", "ext. 123", ", extension 12").
macro_rules! pext {
    () => {
        r"[ \t]*,?[ \t]*(?:x|ext\.?|extension)[ \t]*[0-9]{1,6}\b"
    };
}

/// One IPv6 group.
macro_rules! h6 {
    () => {
        r"[0-9a-f]{1,4}"
    };
}

/// One IPv4 octet 0-255 (longest alternatives first so "255" is not "25").
macro_rules! oct {
    () => {
        r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    };
}

/// Value of a labelled record number: starts alphanumeric, may contain `-`,
/// must contain a digit (so "MRN pending" is left alone), at least 3 chars.
/// Digit groups split by single spaces ("MRN: 12 345 678") are one value:
/// first branch, so leftmost-first prefers it over the first group alone.
/// The 30-char maximum is checked after matching (exact upper bounds across
/// the three branches would multiply automaton states).
macro_rules! rec_value {
    () => {
        r"(?P<v>(?:[0-9]{1,10}(?:[ ][0-9]{2,10}){1,4}|[0-9][a-z0-9\-]{2,29}|[a-z][0-9][a-z0-9\-]{1,28}|[a-z][a-z\-]{1,28}[0-9][a-z0-9\-]{0,28}))\b"
    };
}

/// ZIP or ZIP+4 value after a label or state.
macro_rules! zip_value {
    () => {
        r"(?P<v>[0-9]{5}(?:-[0-9]{4})?)\b"
    };
}

// ---------------------------------------------------------------------------
// Per-kind patterns. Each element is one alternative of the combined regex.
// ---------------------------------------------------------------------------

/// Text that must NOT be redacted but would otherwise be partly matched:
/// dotted numbers with 5+ parts (versions, OIDs) contain IPv4-looking runs.
/// Listed first so, at the same start, it wins and swallows the run.
/// Bounded (like everything that can span digits) so a long dotted run that
/// finally fails does not get rescanned for each IP inside it.
const SINKS: &[&str] = &[r"\b[0-9]{1,10}(?:\.[0-9]{1,10}){4,16}\b"];

/// URLs: scheme or `www.` up to whitespace/quote/angle bracket; the last
/// character may not be `.`, `,` or `)` (sentence punctuation). The end of a
/// match is therefore always before an ASCII byte, i.e. on a char boundary.
const URL: &[&str] = &[r#"\b(?:(?:https?|ftp)://|www\.)[^\s"'<>]*[^\s"'<>.,)]"#];

/// E-mail addresses (a `mailto:` prefix stays; only the address is replaced).
/// Lengths are bounded (RFC 5321 limits: 64-byte local part, 63-byte labels)
/// on purpose: an unbounded local part keeps a DFA thread alive across any
/// long run of digits/dots/dashes ("12-12-12-..."), and every match inside
/// that run would rescan it to the end - quadratic time.
const EMAIL: &[&str] = &[r"[a-z0-9._%+\-]{1,64}@[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){0,6}\.[a-z]{2,24}\b"];

/// IP addresses. The `::` forms come before the plain colon form so that
/// "2001:db8:85a3::1" is not cut at the `::`. The plain colon form (last but
/// one) is only a candidate: it is accepted after matching if it has a hex
/// letter or at least 6 groups, which rejects times "10:30:00" and "1:2:3".
const IP: &[&str] = &[
    // IPv4-mapped IPv6.
    concat!(r"::ffff:", oct!(), r"\.", oct!(), r"\.", oct!(), r"\.", oct!(), r"\b"),
    // Compressed with `::` in the middle.
    concat!(r"\b", h6!(), r"(?::", h6!(), r"){0,6}::", h6!(), r"(?::", h6!(), r"){0,6}\b"),
    // Leading `::` (at least two groups after it).
    concat!(r"::", h6!(), r"(?::", h6!(), r"){1,6}\b"),
    // Trailing `::` (at least two groups before it).
    concat!(r"\b", h6!(), r"(?::", h6!(), r"){1,6}::"),
    // Uncompressed, 3-8 groups: validated after matching (see above).
    concat!(r"\b", h6!(), r"(?::", h6!(), r"){2,7}\b"),
    // IPv4.
    concat!(r"\b", oct!(), r"\.", oct!(), r"\.", oct!(), r"\.", oct!(), r"\b"),
];

/// Index (within `IP`) of the uncompressed IPv6 candidate needing validation.
const IP_CANDIDATE: usize = 4;

/// Dates more precise than a year.
const DATE: &[&str] = &[
    // ISO 8601 date, optionally with a time ("2019-03-04T10:30:00Z").
    concat!(
        r"\b",
        year4!(),
        r"[\-/](?:0?[1-9]|1[0-2])[\-/]",
        day!(),
        r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:z|[+\-][0-9]{2}:?[0-9]{2})?)?\b"
    ),
    // Numeric day/month/year either order, 2- or 4-digit year ("3/4/19",
    // "3-4-2019"). A bare "3/4" is a dose fraction and is not matched.
    concat!(r"\b", day!(), r"[/\-]", day!(), r"[/\-](?:[0-9]{4}|[0-9]{2})\b"),
    // Dotted form only with a 4-digit year: "4.1.12" is more likely a version.
    concat!(r"\b", day!(), r"\.", day!(), r"\.", year4!(), r"\b"),
    // ISO year-month "2019-03" (after the full ISO form: leftmost-first).
    concat!(r"\b", year4!(), r"-(?:0[1-9]|1[0-2])\b"),
    // Numeric month/year "3/2019".
    concat!(r"\b(?:0?[1-9]|1[0-2])/", year4!(), r"\b"),
    // Month name, day, optional year: "March 4, 2019", "Mar 4th", "Mar-04-19".
    concat!(mon_not_may!(), md_sep!(), day!(), ord!(), r"\b", opt_year!()),
    concat!(may_cap!(), md_sep!(), day!(), ord!(), r"\b", opt_year!()),
    // Lower-case "may" with a day needs an ordinal or a year.
    concat!(r"\bmay\b", md_sep!(), day!(), r"(?:st|nd|rd|th)\b", opt_year!()),
    concat!(r"\bmay\b", md_sep!(), day!(), r"\b[ \t]*,?[ \t]*", year4!(), r"\b"),
    // Day, month name, optional year: "4 March 2019", "4-Mar-2019", "4th of March".
    concat!(r"\b", day!(), ord!(), dm_sep!(), mon_not_may!(), opt_year!()),
    concat!(r"\b", day!(), ord!(), dm_sep!(), may_cap!(), opt_year!()),
    concat!(r"\b", day!(), ord!(), dm_sep!(), r"\bmay\b\.?[ \t]*[,\-/]?[ \t]*", year4!(), r"\b"),
    // Compact "04MAR2019" / "4mar19".
    r"\b[0-3]?[0-9](?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)(?:[0-9]{4}|[0-9]{2})\b",
    // Month name and year: "March 2019", "Mar. 2019", "May of 2019".
    concat!(mon_all!(), r"[ \t]*[,\-/]?[ \t]*(?:of[ \t]+)?", year4!(), r"\b"),
];

/// Social security numbers.
const SSN: &[&str] = &[
    // 3-2-4 with `-`, `.`, or blanks between groups ("123 - 45 - 6789").
    r"\b[0-9]{3}(?:[ \t]*[.\-][ \t]*|[ \t])[0-9]{2}(?:[ \t]*[.\-][ \t]*|[ \t])[0-9]{4}\b",
    // Bare 9 digits only when labelled.
    concat!(
        r"\b(?:ssn|ss[ \t]*#|soc(?:ial)?[ \t]+sec(?:urity)?(?:[ \t]*(?:number|num|no\b\.?|#))?)",
        lsep!(),
        r"(?P<v>[0-9]{3}[ \t.\-]?[0-9]{2}[ \t.\-]?[0-9]{4})\b"
    ),
];

/// Telephone and fax numbers.
const PHONE: &[&str] = &[
    // NANP with optional country code, parenthesised or bare area code,
    // optional separators, optional extension. `\b` before bare digits keeps
    // "1234567890123" from matching in part.
    concat!(
        r"(?:(?:\+[ \t]*1|\b1)",
        psep!(),
        r"(?:\([ \t]*[2-9][0-9]{2}[ \t]*\)|[2-9][0-9]{2})|\([ \t]*[2-9][0-9]{2}[ \t]*\)|\b[2-9][0-9]{2})",
        psep!(),
        r"[0-9]{3}",
        psep!(),
        r"[0-9]{4}(?:",
        pext!(),
        r"|\b)"
    ),
    // International: `+` then 8-15 digits, single separators or a "(0)"
    // between any of them.
    r"\+[0-9](?:[ \t.\-]?\(?[0-9]\)?){7,14}\b",
    // Seven-digit local number, only when labelled.
    concat!(
        r"\b(?:tel(?:ephone)?|phone|ph|cell(?:phone)?|mobile|mob|fax|call(?:ed)?|pager|beeper)\b(?:[ \t]*(?:number|no\b\.?|#))?",
        lsep!(),
        r"(?P<v>[0-9]{3}[ \t.\-]?[0-9]{4}(?:",
        pext!(),
        r"|\b))"
    ),
];

/// ZIP codes.
const ZIP: &[&str] = &[
    // ZIP+4 is distinctive enough on its own.
    r"\b[0-9]{5}-[0-9]{4}\b",
    // Labelled.
    concat!(r"\b(?:zip(?:[ \t]*code)?|postal[ \t]*code|post[ \t]*code)", lsep!(), zip_value!()),
    // After a state abbreviation. Upper case only: "in 12345", "or 12345".
    concat!(
        r"\b(?-i:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC|PR|VI|GU|AS|MP)\b[ \t]{0,4},?\s{0,4}",
        zip_value!()
    ),
    // After a full state / territory name.
    concat!(
        r"\b(?:alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|georgia|hawaii|idaho|illinois|indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts|michigan|minnesota|mississippi|missouri|montana|nebraska|nevada|new\s+hampshire|new\s+jersey|new\s+mexico|new\s+york|north\s+carolina|north\s+dakota|ohio|oklahoma|oregon|pennsylvania|rhode\s+island|south\s+carolina|south\s+dakota|tennessee|texas|utah|vermont|virginia|washington|west\s+virginia|wisconsin|wyoming|district\s+of\s+columbia|puerto\s+rico|virgin\s+islands|guam|american\s+samoa|northern\s+mariana\s+islands)\b[ \t]{0,4},?\s{0,4}",
        zip_value!()
    ),
];

/// Labelled record, account, plan, licence, certificate, device numbers.
const RECORD: &[&str] = &[
    // Labels that are ordinary words alone ("record", "chart", "group") and
    // so only count with a number/no/#/id suffix.
    concat!(
        r"\b(?:(?:medical[ \t]+)?record|chart|account|policy|group|certificate|serial|licen[cs]e|health[ \t]*plan|beneficiary|medicare|member|subscriber|insurance|device|patient|pt\.?|mr)",
        r"[ \t]*(?:number\b|num\b|nbr\b|no\b\.?|#|id\b|identifier\b)",
        lsep!(),
        rec_value!()
    ),
    // Labels that identify on their own. DL / SN are upper case only:
    // "mg/dL 120" must survive. No `\b` after the label so "MRN12345" is
    // caught; a letter glued to the label ("plateau1") is rejected later.
    concat!(
        r"\b(?:mrn|acct|medicaid|passport|npi|dea|udi|vin|imei|badge|licen[cs]e[ \t]+plate|plate|driver'?s?[ \t]+licen[cs]e|(?-i:DL|SN))",
        r"(?:[ \t]*(?:number\b|num\b|nbr\b|no\b\.?|#|id\b))?",
        lsep!(),
        rec_value!()
    ),
];

/// Patterns of one kind and how to label each alternative.
type KindTable = (&'static [&'static str], fn(usize) -> Role);

/// What an alternative of the combined regex stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Matched text is kept (consumed only to block a false positive).
    Sink,
    /// Redact as this kind, no post-check.
    Plain(Kind),
    /// IPv6 candidate that needs a hex letter or 6+ groups.
    Ipv6Candidate,
    /// Labelled record number: value must be 3-30 chars and not glued
    /// letter-to-letter onto its label.
    Record,
}

/// One alternative compiled on its own, used to classify a match of the
/// combined regex and to locate the labelled value inside it.
#[derive(Debug)]
struct Alt {
    role: Role,
    re: Regex,
    /// Whether `re` has capture group 1 marking the value to redact.
    has_value: bool,
}

/// The compiled recognisers (compile once per policy; cheap to share behind an `Arc`).
#[derive(Debug)]
pub struct Recognisers {
    /// All alternatives joined, no capture groups: finds match spans with the
    /// lazy DFA only (capture engines on this big NFA cost ~0.5 µs a match).
    combined: Regex,
    /// The same alternatives as a set, run on a match's short window to learn
    /// which alternatives can be involved.
    set: RegexSet,
    /// The alternatives one by one, in priority order (index = set index).
    alts: Vec<Alt>,
}

/// NFA size cap per regex. The patterns compile to well under this; the cap
/// only turns an accidental blow-up into an error instead of an OOM.
const SIZE_LIMIT: usize = 8 << 20;
/// Lazy-DFA cache for the combined regex. Big enough that mixed clinical text
/// does not keep flushing the cache (which would fall back to slow engines).
const DFA_SIZE_LIMIT: usize = 4 << 20;

/// ASCII mode; labels and month names are case-insensitive.
const FLAGS: &str = "(?i-u)";

impl Recognisers {
    /// Compile; an error is a message (never panic).
    pub fn new() -> Result<Self, String> {
        let table: [KindTable; 8] = [
            (SINKS, |_| Role::Sink),
            (URL, |_| Role::Plain(Kind::Url)),
            (EMAIL, |_| Role::Plain(Kind::Email)),
            (IP, |i| if i == IP_CANDIDATE { Role::Ipv6Candidate } else { Role::Plain(Kind::Ip) }),
            (DATE, |_| Role::Plain(Kind::Date)),
            (SSN, |_| Role::Plain(Kind::Ssn)),
            (PHONE, |_| Role::Plain(Kind::Phone)),
            (ZIP, |_| Role::Plain(Kind::Zip)),
        ];
        let all: Vec<(&str, Role)> = table
            .iter()
            .flat_map(|(pats, role)| pats.iter().enumerate().map(move |(i, p)| (*p, role(i))))
            .chain(RECORD.iter().map(|p| (*p, Role::Record)))
            .collect();
        let err = |e: regex::Error| format!("phi-guard patterns failed to compile: {e}");

        // Without groups for the combined regex and the set.
        let bare: Vec<String> = all.iter().map(|(p, _)| format!("{FLAGS}(?:{})", p.replace("(?P<v>", "(?:"))).collect();
        let combined =
            RegexBuilder::new(&bare.join("|")).unicode(false).size_limit(SIZE_LIMIT).dfa_size_limit(DFA_SIZE_LIMIT).build().map_err(err)?;
        let set = RegexSetBuilder::new(&bare).unicode(false).size_limit(SIZE_LIMIT).build().map_err(err)?;
        let mut alts = Vec::with_capacity(all.len());
        for (pat, role) in &all {
            let re = RegexBuilder::new(&format!("{FLAGS}(?:{pat})")).unicode(false).size_limit(SIZE_LIMIT).build().map_err(err)?;
            let has_value = re.captures_len() > 1;
            alts.push(Alt { role: *role, re, has_value });
        }
        Ok(Self { combined, set, alts })
    }

    /// Append the byte ranges of `text` to replace, sorted by start, non-overlapping, each on UTF-8 char boundaries.
    pub fn find(&self, text: &str, out: &mut Vec<(Range<usize>, Kind)>) {
        let bytes = text.as_bytes();
        let base = out.len();
        let mut pos = 0;
        while pos <= bytes.len() {
            let Some(m) = self.combined.find_at(bytes, pos) else {
                break;
            };
            let (start, end) = (m.start(), m.end());
            // Never loop on an empty match (no pattern can be empty, but this
            // keeps termination obvious).
            let next = if end > start { end } else { end + 1 };
            match self.classify(bytes, start, end) {
                Verdict::Redact(range, kind) => {
                    push_merged(out, base, snap(text, range), kind);
                    pos = next;
                }
                Verdict::Keep => pos = next,
                // A rejected candidate may overlap a real identifier that starts
                // inside it; rescan from the next byte. Candidates are short
                // (bounded repetitions), so this stays linear in practice.
                Verdict::Retry => pos = start + 1,
            }
        }
    }

    /// Decide what to do with the combined regex's match `start..end`.
    ///
    /// The winning alternative is the first (in priority order) that matches
    /// at `start` without running past `end`. The search window ends one byte
    /// after the match so a trailing `\b` still sees its real right neighbour.
    fn classify(&self, bytes: &[u8], start: usize, end: usize) -> Verdict {
        let window = bytes.get(..end.saturating_add(1).min(bytes.len())).unwrap_or(bytes);
        let candidates = self.set.matches_at(window, start);
        for idx in candidates.iter() {
            let Some(alt) = self.alts.get(idx) else {
                continue;
            };
            let value = if alt.has_value {
                let mut locs = alt.re.capture_locations();
                match alt.re.captures_read_at(&mut locs, window, start) {
                    Some(m) if m.start() == start && m.end() <= end => locs.get(1),
                    _ => continue,
                }
            } else {
                match alt.re.find_at(window, start) {
                    Some(m) if m.start() == start && m.end() <= end => None,
                    _ => continue,
                }
            };
            return judge(alt.role, bytes, start, end, value);
        }
        // Unreachable in practice (the combined match came from one of the
        // alternatives); redacting is the safe default.
        Verdict::Redact(start..end, Kind::RecordNumber)
    }
}

/// Apply an alternative's post-checks to the combined match `start..end`;
/// `value` is the labelled part to redact, if the alternative has a label.
fn judge(role: Role, bytes: &[u8], start: usize, end: usize, value: Option<(usize, usize)>) -> Verdict {
    match role {
        Role::Sink => Verdict::Keep,
        // Unlabelled: the whole combined match (if the lone alternative's match
        // is shorter it is an edge case, and the larger span is the safe one).
        Role::Plain(kind) => {
            let (vs, ve) = value.unwrap_or((start, end));
            Verdict::Redact(vs..ve, kind)
        }
        Role::Ipv6Candidate => {
            let s = bytes.get(start..end).unwrap_or_default();
            let has_hex_letter = s.iter().any(|b| matches!(b, b'a'..=b'f' | b'A'..=b'F'));
            let groups = s.iter().filter(|&&b| b == b':').count() + 1;
            if has_hex_letter || groups >= 6 {
                Verdict::Redact(start..end, Kind::Ip)
            } else {
                Verdict::Retry
            }
        }
        Role::Record => {
            let (vs, ve) = value.unwrap_or((start, end));
            let len_ok = (3..=30).contains(&ve.saturating_sub(vs));
            // "MRN12345" is fine; "plateau1" (letter glued to the label) is not.
            let glued = vs.checked_sub(1).and_then(|p| bytes.get(p)).is_some_and(|b| b.is_ascii_alphanumeric());
            let starts_alpha = bytes.get(vs).is_some_and(|b| b.is_ascii_alphabetic());
            if len_ok && !(glued && starts_alpha) {
                Verdict::Redact(vs..ve, Kind::RecordNumber)
            } else {
                Verdict::Retry
            }
        }
    }
}

/// Outcome of classifying one match.
enum Verdict {
    /// Replace this range.
    Redact(Range<usize>, Kind),
    /// Deliberately left as is (sink); continue after it.
    Keep,
    /// Not an identifier after all; rescan from just after its start.
    Retry,
}

/// Widen a range to char boundaries. Patterns start and end on ASCII bytes so
/// this is a no-op in practice; it guarantees the contract regardless.
fn snap(text: &str, r: Range<usize>) -> Range<usize> {
    let mut s = r.start.min(text.len());
    while !text.is_char_boundary(s) {
        s -= 1;
    }
    let mut e = r.end.clamp(s, text.len());
    while !text.is_char_boundary(e) {
        e += 1;
    }
    s..e
}

/// Push a range, merging with the previous one pushed by this call if they
/// overlap (keeping the earlier kind). Matches arrive in start order.
fn push_merged(out: &mut Vec<(Range<usize>, Kind)>, base: usize, r: Range<usize>, kind: Kind) {
    if r.is_empty() {
        return;
    }
    if out.len() > base {
        if let Some((last, _)) = out.last_mut() {
            if r.start < last.end {
                last.end = last.end.max(r.end);
                return;
            }
        }
    }
    out.push((r, kind));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rec() -> Recognisers {
        Recognisers::new().unwrap()
    }

    fn redact(r: &Recognisers, s: &str) -> String {
        let mut v = Vec::new();
        r.find(s, &mut v);
        let mut out = String::new();
        let mut last = 0;
        for (range, _) in &v {
            out.push_str(&s[last..range.start]);
            out.push_str("[REDACTED]");
            last = range.end;
        }
        out.push_str(&s[last..]);
        out
    }

    fn kinds(r: &Recognisers, s: &str) -> Vec<Kind> {
        let mut v = Vec::new();
        r.find(s, &mut v);
        v.into_iter().map(|(_, k)| k).collect()
    }

    fn check(cases: &[(&str, &str)], kind: Kind) {
        let r = rec();
        let mut failures = Vec::new();
        for (input, want) in cases {
            let got = redact(&r, input);
            if got != *want {
                failures.push(format!("  {input:?}\n    got  {got:?}\n    want {want:?}"));
            } else if !kinds(&r, input).contains(&kind) {
                failures.push(format!("  {input:?}: no {kind:?} match ({:?})", kinds(&r, input)));
            }
        }
        assert!(failures.is_empty(), "{kind:?} failures:\n{}", failures.join("\n"));
    }

    #[test]
    fn compiles() {
        assert!(Recognisers::new().is_ok());
    }

    #[test]
    fn ssn() {
        check(
            &[
                ("SSN 123 45 6789", "SSN [REDACTED]"),
                ("ssn: 123-45-6789.", "ssn: [REDACTED]."),
                ("his number is 123.45.6789 ok", "his number is [REDACTED] ok"),
                ("id 123 - 45 - 6789 end", "id [REDACTED] end"),
                ("SSN 123456789", "SSN [REDACTED]"),
                ("SS# 123456789", "SS# [REDACTED]"),
                ("Social Security No. 123456789", "Social Security No. [REDACTED]"),
                ("social security number: 123-45-6789", "social security number: [REDACTED]"),
            ],
            Kind::Ssn,
        );
    }

    #[test]
    fn phone() {
        check(
            &[
                ("Pt called from (555) 123-4567 re: refill", "Pt called from [REDACTED] re: refill"),
                ("cb 555-123-4567", "cb [REDACTED]"),
                ("cb 555.123.4567.", "cb [REDACTED]."),
                ("cb 555 123 4567", "cb [REDACTED]"),
                ("cb +1 555 123 4567", "cb [REDACTED]"),
                ("cb 1-555-123-4567", "cb [REDACTED]"),
                ("cb +1 (555) 123-4567", "cb [REDACTED]"),
                ("cb 5551234567 today", "cb [REDACTED] today"),
                ("tel 555-1234", "tel [REDACTED]"),
                ("Fax: 555-1234", "Fax: [REDACTED]"),
                ("pager 555 1234", "pager [REDACTED]"),
                ("office 555-123-4567 x123", "office [REDACTED]"),
                ("office 555-123-4567 ext. 123 daily", "office [REDACTED] daily"),
                ("London +44 20 7946 0958", "London [REDACTED]"),
                ("Berlin +49 30 901820.", "Berlin [REDACTED]."),
                ("mobile: +44 (0)20 7946 0958", "mobile: [REDACTED]"),
            ],
            Kind::Phone,
        );
    }

    #[test]
    fn email() {
        check(
            &[
                ("email john.doe@example.org today", "email [REDACTED] today"),
                ("<a href=\"mailto:j_doe+x@mail.example.co.uk\">x</a>", "<a href=\"mailto:[REDACTED]\">x</a>"),
                ("(JOHN@EXAMPLE.COM)", "([REDACTED])"),
            ],
            Kind::Email,
        );
    }

    #[test]
    fn url() {
        check(
            &[
                ("see https://portal.example.org/pt/123?x=1.", "see [REDACTED]."),
                ("(http://example.com/a)", "([REDACTED])"),
                ("ftp://files.example.com/x, then", "[REDACTED], then"),
                ("visit www.example.org/jdoe now", "visit [REDACTED] now"),
                ("<a href=\"https://x.org/p\">link</a>", "<a href=\"[REDACTED]\">link</a>"),
            ],
            Kind::Url,
        );
    }

    #[test]
    fn ip() {
        check(
            &[
                ("from 192.168.1.20 at noon", "from [REDACTED] at noon"),
                ("host 10.0.0.255.", "host [REDACTED]."),
                ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok", "v6 [REDACTED] ok"),
                ("v6 2001:db8::8a2e:370:7334 ok", "v6 [REDACTED] ok"),
                ("v6 fe80::1:2 ok", "v6 [REDACTED] ok"),
                ("v6 ::ffff:192.168.1.1 ok", "v6 [REDACTED] ok"),
                ("mac 00:1a:2b:3c:4d:5e", "mac [REDACTED]"),
                ("v6 1:2:3:4:5:6 ok", "v6 [REDACTED] ok"),
            ],
            Kind::Ip,
        );
    }

    #[test]
    fn date() {
        check(
            &[
                ("seen on 3/4/2019 by dr", "seen on [REDACTED] by dr"),
                ("on 2019-03-04 ok", "on [REDACTED] ok"),
                ("at 2019-03-04T10:30:00Z ok", "at [REDACTED] ok"),
                ("since 2019-03 ok", "since [REDACTED] ok"),
                ("on 3/4/19 ok", "on [REDACTED] ok"),
                ("on 3-4-2019 ok", "on [REDACTED] ok"),
                ("on 04.03.2019 ok", "on [REDACTED] ok"),
                ("on March 4, 2019 ok", "on [REDACTED] ok"),
                ("on Mar 4 2019 ok", "on [REDACTED] ok"),
                ("on 4 March 2019 ok", "on [REDACTED] ok"),
                ("on 4-Mar-2019 ok", "on [REDACTED] ok"),
                ("in March 2019 ok", "in [REDACTED] ok"),
                ("in Mar. 2019 ok", "in [REDACTED] ok"),
                ("on March 4th ok", "on [REDACTED] ok"),
                ("on the 4th of March ok", "on the [REDACTED] ok"),
                ("on Sept 12 ok", "on [REDACTED] ok"),
                ("DOB: May 5, 1950", "DOB: [REDACTED]"),
                ("on May 5 ok", "on [REDACTED] ok"),
                ("in may 2019 ok", "in [REDACTED] ok"),
                ("ADMIT 04MAR2019 ok", "ADMIT [REDACTED] ok"),
                ("since 3/2019 ok", "since [REDACTED] ok"),
                ("on 12/25/2019.", "on [REDACTED]."),
            ],
            Kind::Date,
        );
    }

    #[test]
    fn zip() {
        check(
            &[
                ("zip 02139-4307 ok", "zip [REDACTED] ok"),
                ("lives at 02139-4307", "lives at [REDACTED]"),
                ("Zip code: 02139", "Zip code: [REDACTED]"),
                ("postal code 02139", "postal code [REDACTED]"),
                ("Boston, MA 02139", "Boston, MA [REDACTED]"),
                ("Boston, MA, 02139", "Boston, MA, [REDACTED]"),
                ("Boston, MA 02139-4307", "Boston, MA [REDACTED]"),
                ("Cambridge Massachusetts 02139", "Cambridge Massachusetts [REDACTED]"),
                ("Albany, New York 12207", "Albany, New York [REDACTED]"),
            ],
            Kind::Zip,
        );
    }

    #[test]
    fn record_number() {
        check(
            &[
                ("MRN 12345678", "MRN [REDACTED]"),
                ("MRN: 12 345 678 seen", "MRN: [REDACTED] seen"),
                ("MRN: A1234-56 seen", "MRN: [REDACTED] seen"),
                ("MR# 998877", "MR# [REDACTED]"),
                ("MRN12345", "MRN[REDACTED]"),
                ("Medical record number: 4455667", "Medical record number: [REDACTED]"),
                ("chart no. 55521", "chart no. [REDACTED]"),
                ("Patient ID: PT-000123", "Patient ID: [REDACTED]"),
                ("acct #778899", "acct #[REDACTED]"),
                ("Member ID XYZ123456", "Member ID [REDACTED]"),
                ("policy number 123-456-789", "policy number [REDACTED]"),
                ("Medicare ID 1EG4TE5MK73", "Medicare ID [REDACTED]"),
                ("medicaid 99887766", "medicaid [REDACTED]"),
                ("driver's license D1234567", "driver's license [REDACTED]"),
                ("DL S12345678", "DL [REDACTED]"),
                ("passport no. 123456789", "passport no. [REDACTED]"),
                ("NPI 1234567893", "NPI [REDACTED]"),
                ("DEA AB1234563", "DEA [REDACTED]"),
                ("pacemaker serial no. PM12345", "pacemaker serial no. [REDACTED]"),
                ("SN: X99Y88", "SN: [REDACTED]"),
                ("VIN 1HGCM82633A004352", "VIN [REDACTED]"),
                ("license plate 7ABC123", "license plate [REDACTED]"),
                ("IMEI 490154203237518", "IMEI [REDACTED]"),
                ("<td><b>MRN:</b> 0012345</td>", "<td><b>MRN:</b> [REDACTED]</td>"),
            ],
            Kind::RecordNumber,
        );
    }

    #[test]
    fn negatives_unchanged() {
        let r = rec();
        let negatives = [
            "BP 120/80 mmHg, HR 72",
            "take 3/4 tab twice daily",
            "LOINC 8302-2",
            "SNOMED 44054006",
            "10000 units",
            "heparin 10000 units subcut",
            "in 2019",
            "at 10:30",
            "at 10:30:00",
            "version 4.0.1",
            "version 1.2.3.4.5",
            "Hemoglobin A1c 6.5 %",
            "Dose 2.5 mg/kg",
            "ratio 1:2:3",
            "BMI 27.5",
            "5 mg",
            "glucose 110 mg/dL 2 h post",
            "LDL 130 mg/dl 1234 hmm",
            "1-2 tabs may be taken 3 times",
            "you may 2x daily",
            "1234567890123",
            "platelets 250",
            "Patient ID: pending",
            "record 120/80 tomorrow",
            "group A strep",
            "in 12345 cases",
            "or 12345 more",
            "Temp 37.2 C, SpO2 98%",
            "creatinine 1.2 mg/dL (0.6-1.3)",
            "Na 140, K 4.1, Cl 102",
            "1:10000 dilution",
            "OID 2.16.840.1.113883",
            "follow up in 2-3 weeks",
            "score 12/15",
            "Take 1 tab by mouth",
            "Chart reviewed; no changes",
        ];
        let changed: Vec<String> = negatives
            .iter()
            .filter_map(|s| {
                let got = redact(&r, s);
                (got != *s).then(|| format!("{s:?} -> {got:?}"))
            })
            .collect();
        assert!(changed.is_empty(), "negatives changed:\n{}", changed.join("\n"));
    }

    #[test]
    fn overlaps_merge_and_order() {
        let r = rec();
        let s = "url https://x.org/2019-03-04/a then 3/4/2019 and call 555-123-4567";
        let mut v = Vec::new();
        r.find(s, &mut v);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].1, Kind::Url);
        assert_eq!(v[1].1, Kind::Date);
        assert_eq!(v[2].1, Kind::Phone);
        // Append semantics: existing entries untouched.
        let mut w = vec![(0..1, Kind::Zip)];
        r.find(s, &mut w);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0], (0..1, Kind::Zip));
    }

    #[test]
    fn utf8_boundaries() {
        let r = rec();
        let s = "Patiënt José Müller, né le 3/4/2019 à Montréal (QC) — tél (555) 123-4567, \
                 courriel josé.müller@exemple.fr, 住所 MA 02139, MRN:Ä12345 ünd ßSSN 123-45-6789é";
        let mut v = Vec::new();
        r.find(s, &mut v);
        assert!(!v.is_empty());
        let mut prev_end = 0;
        for (range, _) in &v {
            assert!(range.start >= prev_end && range.start < range.end && range.end <= s.len());
            assert!(s.is_char_boundary(range.start) && s.is_char_boundary(range.end));
            prev_end = range.end;
        }
        let out = redact(&r, s);
        assert!(!out.contains("123-4567") && !out.contains("3/4/2019") && !out.contains("02139"));
        assert!(!out.contains("6789"));
    }

    #[test]
    fn random_inputs_never_panic() {
        let r = rec();
        // Deterministic xorshift; pieces chosen to hit pattern fragments.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "0",
            "1",
            "2",
            "5",
            "9",
            "12",
            "555",
            "2019",
            "-",
            ".",
            "/",
            ":",
            "::",
            " ",
            "  ",
            "\t",
            "\n",
            "(",
            ")",
            "+",
            "@",
            "#",
            "x",
            "ext",
            "MRN",
            "SSN",
            "MA",
            "zip",
            "Mar",
            "May",
            "th",
            "www.",
            "http://",
            "a",
            "f",
            "é",
            "ü",
            "日本",
            "—",
            "\u{1F600}",
            "<b>",
            "</b>",
            ",",
            "'",
            "\"",
            "T",
            "Z",
            "of",
            "DL",
            "tel",
            "\u{a0}",
        ];
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let n = (next() % 24) as usize;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            out.clear();
            r.find(&s, &mut out);
            let mut prev_end = 0;
            for (range, _) in &out {
                assert!(range.start >= prev_end, "{s:?} {out:?}");
                assert!(range.start < range.end && range.end <= s.len(), "{s:?} {out:?}");
                assert!(s.is_char_boundary(range.start) && s.is_char_boundary(range.end));
                prev_end = range.end;
            }
        }
    }

    /// Adversarial inputs: prints time per KiB so super-linear blow-ups show.
    #[test]
    #[ignore]
    fn timing_adversarial() {
        let r = rec();
        let t = std::time::Instant::now();
        let _again = Recognisers::new().unwrap();
        println!("compile: {:?}", t.elapsed());
        let n = 256 * 1024;
        let inputs = [
            ("digits", "1".repeat(n)),
            ("letters", "a".repeat(n)),
            ("at-signs", "a.b@".repeat(n / 4)),
            ("colons", "1:".repeat(n / 2)),
            ("times", "10:30:00 ".repeat(n / 9)),
            ("dots", "1.".repeat(n / 2)),
            ("dots then letter", format!("{}1a", "1.".repeat(n / 2))),
            ("digit dash letter", format!("{}1a", "1-".repeat(n / 2))),
            ("mixed local", "a1.-".repeat(n / 4)),
            ("dashes", "12-".repeat(n / 3)),
            ("spaced digits", "123 ".repeat(n / 4)),
            ("mrn short", "MRN 12 ".repeat(n / 7)),
            ("url", format!("http://{}", "a/".repeat(n / 2))),
            ("www", "www.".repeat(n / 4)),
            ("month day", "Mar 4 ".repeat(n / 6)),
            ("tags", "MRN <b>".repeat(n / 7)),
            ("plus", "+1 ".repeat(n / 3)),
        ];
        for (name, s) in &inputs {
            let mut out = Vec::new();
            let t = std::time::Instant::now();
            r.find(s, &mut out);
            let ns = t.elapsed().as_nanos() as f64 / (s.len() as f64 / 1024.0);
            println!("{name:>14}: {ns:>9.0} ns/KiB, {} ranges", out.len());
        }
    }

    /// ~1 MiB of mixed clinical text with identifiers sprinkled in.
    fn corpus() -> String {
        let lines = [
            "Patient seen in clinic today for follow-up of type 2 diabetes mellitus. ",
            "BP 132/84 mmHg, HR 76, Temp 36.9 C, SpO2 97% on room air. BMI 31.2. ",
            "Hemoglobin A1c 7.4 % (LOINC 4548-4), up from 6.9 % in 2019. ",
            "Continue metformin 1000 mg PO BID; start empagliflozin 10 mg daily. ",
            "Take 1/2 tab at bedtime. Heparin 5000 units subcut q8h. ",
            "Pt called from (617) 555-0123 re: refill on 3/4/2021; MRN 00123456. ",
            "Dx: Essential hypertension (SNOMED 59621000), CKD stage 3a. ",
            "Reviewed labs: Na 139, K 4.4, Cr 1.1 mg/dL, eGFR 68. ",
            "Patient lives in Boston, MA 02118 with spouse; email pt@example.com. ",
            "Return to clinic in 3 months or sooner if symptoms worsen. ",
            "Über-Patientin klagt über Müdigkeit seit März, keine Dyspnoe. ",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Discharged 2021-05-06.</p></div> ",
        ];
        let mut s = String::with_capacity(1 << 20);
        let mut i = 0;
        while s.len() < (1 << 20) {
            s.push_str(lines[i % lines.len()]);
            i += 1;
        }
        s
    }

    #[test]
    #[ignore]
    fn timing() {
        let r = rec();
        let text = corpus();
        // Chunk like per-field strings (~300 bytes) as well as one big blob.
        let chunks: Vec<&str> = {
            let mut v = Vec::new();
            let mut start = 0;
            while start < text.len() {
                let mut end = (start + 300).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                v.push(&text[start..end]);
                start = end;
            }
            v
        };
        let mut out = Vec::new();
        r.find(&text, &mut out); // warm the DFA cache
        let found = out.len();
        let iters = 5;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            out.clear();
            r.find(std::hint::black_box(&text), &mut out);
        }
        let whole = t.elapsed().as_nanos() as f64 / iters as f64;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            for c in &chunks {
                out.clear();
                r.find(std::hint::black_box(c), &mut out);
            }
        }
        let chunked = t.elapsed().as_nanos() as f64 / iters as f64;
        let kib = text.len() as f64 / 1024.0;
        let clean = "Continue metformin 1000 mg PO BID; BP 132/84 mmHg, HR 76. ".repeat(18_000);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            out.clear();
            r.find(std::hint::black_box(&clean), &mut out);
        }
        let clean_ns = t.elapsed().as_nanos() as f64 / iters as f64;
        let t = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..iters {
            n += r.combined.find_iter(std::hint::black_box(text.as_bytes())).count();
        }
        let floor = t.elapsed().as_nanos() as f64 / iters as f64;
        println!("find_iter only (no classification): {:.0} ns/KiB ({n})", floor / (text.len() as f64 / 1024.0));
        println!(
            "{:.0} KiB, {found} matches: whole {:.0} ns/KiB, 300-byte chunks {:.0} ns/KiB, \
             identifier-free text {:.0} ns/KiB",
            kib,
            whole / kib,
            chunked / kib,
            clean_ns / (clean.len() as f64 / 1024.0)
        );
    }
}
