//! Rewriting of Bundle link and request URLs of minimized bundles, so search values the caller
//! could not see in the entries (a name, a birth date, an identifier) do not come back in a
//! `self` or `next` link.

use super::profile::BundleLinks;

/// Query parameters kept by `paging-only`: server paging state and result shaping, whose values
/// are tokens or numbers rather than search values. Servers that need the original search
/// parameters in their `next` links (instead of a server-side paging token) must use `keep`.
pub const PAGING_PARAMS: [&str; 16] = [
    "_getpages",
    "_getpagesoffset",
    "_page_token",
    "_pageToken",
    "_page",
    "page",
    "_count",
    "_offset",
    "ct",
    "searchId",
    "_bundletype",
    "_format",
    "_pretty",
    "_summary",
    "_elements",
    "_sort",
];

/// The rewritten URL, or `None` when it is already acceptable.
pub fn rewrite(url: &str, policy: BundleLinks) -> Option<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // A fragment is never needed for paging and can carry anything.
    let (base, fragment) = match base.split_once('#') {
        Some((b, _)) => (b, true),
        None => (base, false),
    };
    let query = query.map(|q| q.split_once('#').map_or(q, |(q, _)| q));
    match policy {
        BundleLinks::Keep => None,
        BundleLinks::DropQuery | BundleLinks::Drop => (query.is_some() || fragment).then(|| base.to_owned()),
        BundleLinks::PagingOnly => {
            let Some(q) = query else {
                return fragment.then(|| base.to_owned());
            };
            let kept: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                    PAGING_PARAMS.contains(&name)
                })
                .collect();
            let out = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
            (out != url).then_some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_only_keeps_tokens() {
        let u = "https://example.com/base/MedicationRequest?patient=347&searchId=ff15fd40&page=2";
        assert_eq!(
            rewrite(u, BundleLinks::PagingOnly).as_deref(),
            Some("https://example.com/base/MedicationRequest?searchId=ff15fd40&page=2")
        );
        let u = "https://h/fhir/Patient/?_count=10&_elements=id&_page_token=Cjj3YXDNF%2F%2F";
        assert_eq!(rewrite(u, BundleLinks::PagingOnly), None);
        let u = "https://example.org/fhir/Observation?patient.identifier=http://example.com/fhir/identifier/mrn|123456";
        assert_eq!(rewrite(u, BundleLinks::PagingOnly).as_deref(), Some("https://example.org/fhir/Observation"));
        assert_eq!(rewrite("https://h/fhir/Patient?name=Smith#x", BundleLinks::PagingOnly).as_deref(), Some("https://h/fhir/Patient"));
        assert_eq!(rewrite("https://h/fhir/Patient", BundleLinks::PagingOnly), None);
        assert_eq!(rewrite("Patient?identifier=123&_count=5", BundleLinks::PagingOnly).as_deref(), Some("Patient?_count=5"));
    }

    #[test]
    fn other_policies() {
        assert_eq!(rewrite("https://h/p?_count=1", BundleLinks::DropQuery).as_deref(), Some("https://h/p"));
        assert_eq!(rewrite("https://h/p", BundleLinks::DropQuery), None);
        assert_eq!(rewrite("https://h/p?name=x", BundleLinks::Keep), None);
    }
}
