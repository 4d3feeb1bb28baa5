//! Path matching: segment-aligned prefixes and templates with `{name}` placeholders.

/// A compiled path matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatcher {
    /// Literal segments, matched as a segment-aligned prefix (`/fhir` matches `/fhir` and
    /// `/fhir/Patient`, not `/fhirx`).
    Prefix(Vec<String>),
    /// Segments where `None` is a `{placeholder}` matching exactly one segment.
    Template(Vec<Option<String>>),
}

/// Where a request matched: how many leading segments the matcher consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Segments consumed by the prefix or template.
    pub consumed: usize,
}

impl PathMatcher {
    /// Match decoded request segments.
    pub fn matches(&self, segments: &[String]) -> Option<RouteMatch> {
        match self {
            PathMatcher::Prefix(prefix) => (segments.len() >= prefix.len() && prefix.iter().zip(segments).all(|(a, b)| a == b))
                .then_some(RouteMatch { consumed: prefix.len() }),
            PathMatcher::Template(t) => (t.len() == segments.len()
                && t.iter().zip(segments).all(|(a, b)| a.as_ref().is_none_or(|a| a == b)))
            .then_some(RouteMatch { consumed: t.len() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &str) -> Vec<String> {
        p.split('/').filter(|x| !x.is_empty()).map(String::from).collect()
    }

    #[test]
    fn prefix_is_segment_aligned() {
        let m = PathMatcher::Prefix(s("/fhir"));
        assert_eq!(m.matches(&s("/fhir")), Some(RouteMatch { consumed: 1 }));
        assert!(m.matches(&s("/fhir/Patient/1")).is_some());
        assert!(m.matches(&s("/fhirx/Patient")).is_none());
        assert!(m.matches(&s("/")).is_none());
        assert!(PathMatcher::Prefix(vec![]).matches(&s("/anything")).is_some());
    }

    #[test]
    fn templates() {
        let m = PathMatcher::Template(vec![Some("admin".into()), Some("reports".into()), None]);
        assert!(m.matches(&s("/admin/reports/7")).is_some());
        assert!(m.matches(&s("/admin/reports")).is_none());
        assert!(m.matches(&s("/admin/reports/7/x")).is_none());
        assert!(m.matches(&s("/admin/other/7")).is_none());
    }
}
