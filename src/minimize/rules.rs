//! Compiled field rules: a trie of path segments per resource type, built once from the policy.

use super::path::{FieldPath, Segment};
use super::transform::Transform;

/// Allowlist or denylist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Unlisted fields are removed.
    Allow,
    /// Listed fields are removed.
    Deny,
}

/// What a rule does to the value at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Release the whole value (allow mode), subject to rules below it.
    Keep,
    /// Withhold the value.
    Remove,
    /// Release a transformed value.
    Transform(Transform),
}

/// A trie node: the action at this path (if any) and rules for deeper paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Rule at exactly this path.
    pub action: Option<Action>,
    /// Rules below, keyed by segment.
    pub children: Vec<Edge>,
}

/// One labelled edge of the trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Segment this edge matches.
    pub segment: Segment,
    /// Subtree.
    pub node: Node,
}

impl Node {
    /// Child nodes matching `key`; with `url`, extension-selector edges for that url match too.
    pub fn matching<'a, 'k>(&'a self, key: &'k str, url: Option<&'k str>) -> impl Iterator<Item = &'a Node> + use<'a, 'k> {
        self.children
            .iter()
            .filter(move |e| e.segment.matches_key(key) && e.segment.url.as_deref().is_none_or(|u| Some(u) == url))
            .map(|e| &e.node)
    }

    /// Whether some edge for `key` selects extension elements by url.
    pub fn has_url_edges(&self, key: &str) -> bool {
        self.children.iter().any(|e| e.segment.url.is_some() && e.segment.matches_key(key))
    }

    /// Whether this node carries no rules at all.
    pub fn is_empty(&self) -> bool {
        self.action.is_none() && self.children.is_empty()
    }

    fn child_mut(&mut self, seg: &Segment) -> Option<&mut Node> {
        let idx = match self.children.iter().position(|e| e.segment == *seg) {
            Some(i) => i,
            None => {
                self.children.push(Edge { segment: seg.clone(), node: Node::default() });
                self.children.len() - 1
            }
        };
        self.children.get_mut(idx).map(|e| &mut e.node)
    }

    fn any_action_below(&self) -> bool {
        self.children.iter().any(|e| e.node.action.is_some() || e.node.any_action_below())
    }
}

/// Rules for one resource type (or a plain JSON body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Allow or deny.
    pub mode: Mode,
    /// Rules anchored at the resource root.
    pub root: Node,
    /// `**.` rules, anchored at every object.
    pub anywhere: Node,
    /// Some rule hashes (the HMAC key is required).
    pub needs_key: bool,
}

/// How an insertion treats a rule that is already covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A policy author's own rule: conflicts are errors.
    Strict,
    /// A `*` rule merged into a type's rules: the type's own rules win silently.
    Yield,
}

impl RuleSet {
    /// An empty rule set.
    pub fn new(mode: Mode) -> Self {
        RuleSet { mode, root: Node::default(), anywhere: Node::default(), needs_key: false }
    }

    /// Add a rule. Errors are lowercase messages quoting the path. Nothing is changed when the
    /// rule conflicts (an error for [`Merge::Strict`], silently skipped for [`Merge::Yield`]).
    pub fn insert(&mut self, path: &FieldPath, action: Action, merge: Merge) -> Result<(), String> {
        if path.anywhere && action == Action::Keep {
            return Err(format!("`{path}`: `**.` paths can only remove or transform"));
        }
        if self.mode == Mode::Deny && action == Action::Keep {
            return Err(format!("`{path}`: `allow` needs `\"mode\": \"allow\"`"));
        }
        if let Some(message) = self.conflict(path, action) {
            return match merge {
                Merge::Yield => Ok(()),
                Merge::Strict => Err(message),
            };
        }
        let mut node = if path.anywhere { &mut self.anywhere } else { &mut self.root };
        for seg in &path.segments {
            node = node.child_mut(seg).ok_or_else(|| format!("`{path}`: could not be added"))?;
        }
        if let Action::Transform(t) = action {
            self.needs_key |= t.needs_key();
        }
        node.action = Some(action);
        Ok(())
    }

    /// Why `action` at `path` would conflict with the rules already present, if it would.
    fn conflict(&self, path: &FieldPath, action: Action) -> Option<String> {
        let mut node = Some(if path.anywhere { &self.anywhere } else { &self.root });
        let mut inside_keep = false;
        for seg in &path.segments {
            let Some(n) = node else { break };
            match n.action {
                Some(Action::Remove | Action::Transform(_)) => {
                    return Some(format!("`{path}` has no effect: a shorter path already removes or transforms it"));
                }
                Some(Action::Keep) => inside_keep = true,
                None => {}
            }
            node = n.children.iter().find(|e| e.segment == *seg).map(|e| &e.node);
        }
        let existing = node.and_then(|n| n.action);
        let keep_below = node.is_some_and(|n| n.children.iter().any(|e| e.node.action == Some(Action::Keep)));
        let any_below = node.is_some_and(Node::any_action_below);
        match (existing, action) {
            (Some(e), _) if e == action => Some(format!("`{path}` is listed twice")),
            (Some(_), _) => Some(format!("`{path}` has conflicting rules")),
            (None, Action::Keep) if inside_keep => Some(format!("`{path}` is redundant: a shorter path already allows it")),
            (None, Action::Keep) if keep_below => Some(format!("`{path}` is redundant with the longer paths allowed below it")),
            (None, Action::Remove) if self.mode == Mode::Allow && !path.anywhere && !inside_keep => {
                Some(format!("`{path}` has no effect in allow mode: it is not inside an allowed path"))
            }
            (None, Action::Remove | Action::Transform(_)) if any_below => {
                Some(format!("`{path}` conflicts with rules for longer paths below it"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minimize::path::{parse, Dialect};

    fn p(s: &str) -> FieldPath {
        parse(s, Dialect::Fhir).unwrap()
    }

    #[test]
    fn builds_a_trie() {
        let mut r = RuleSet::new(Mode::Allow);
        r.insert(&p("name.family"), Action::Keep, Merge::Strict).unwrap();
        r.insert(&p("name.given"), Action::Keep, Merge::Strict).unwrap();
        r.insert(&p("address"), Action::Keep, Merge::Strict).unwrap();
        r.insert(&p("address.line"), Action::Remove, Merge::Strict).unwrap();
        r.insert(&p("address.postalCode"), Action::Transform(Transform::Zip3), Merge::Strict).unwrap();
        r.insert(&p("identifier.value"), Action::Transform(Transform::Hash), Merge::Strict).unwrap();
        assert!(r.needs_key);
        let name = r.root.matching("name", None).next().unwrap();
        assert_eq!(name.action, None);
        assert_eq!(name.children.len(), 2);
        let addr = r.root.matching("address", None).next().unwrap();
        assert_eq!(addr.action, Some(Action::Keep));
        assert_eq!(addr.matching("line", None).next().unwrap().action, Some(Action::Remove));
    }

    #[test]
    fn conflicts_are_errors() {
        let mut r = RuleSet::new(Mode::Allow);
        r.insert(&p("address"), Action::Keep, Merge::Strict).unwrap();
        assert!(r.insert(&p("address"), Action::Keep, Merge::Strict).unwrap_err().contains("listed twice"));
        assert!(r.insert(&p("address.city"), Action::Keep, Merge::Strict).unwrap_err().contains("redundant"));
        assert!(r.insert(&p("telecom.value"), Action::Remove, Merge::Strict).unwrap_err().contains("not inside an allowed path"));
        assert!(r.insert(&p("**.telecom"), Action::Keep, Merge::Strict).is_err());
        r.insert(&p("name.given"), Action::Keep, Merge::Strict).unwrap();
        assert!(r.insert(&p("name"), Action::Keep, Merge::Strict).unwrap_err().contains("redundant"));
        assert!(r.insert(&p("name"), Action::Transform(Transform::Hash), Merge::Strict).unwrap_err().contains("conflicts"));
        let mut d = RuleSet::new(Mode::Deny);
        d.insert(&p("identifier"), Action::Remove, Merge::Strict).unwrap();
        assert!(d.insert(&p("identifier.value"), Action::Transform(Transform::Hash), Merge::Strict).unwrap_err().contains("no effect"));
        assert!(d.insert(&p("x"), Action::Keep, Merge::Strict).unwrap_err().contains("mode"));
        // `*` rules yield to a type's own.
        d.insert(&p("identifier"), Action::Transform(Transform::Hash), Merge::Yield).unwrap();
        assert_eq!(d.root.matching("identifier", None).next().unwrap().action, Some(Action::Remove));
    }

    #[test]
    fn extension_selectors() {
        let mut r = RuleSet::new(Mode::Deny);
        r.insert(&p("**.extension[url=http://a]"), Action::Remove, Merge::Strict).unwrap();
        assert!(r.anywhere.has_url_edges("extension"));
        assert_eq!(r.anywhere.matching("extension", Some("http://a")).count(), 1);
        assert_eq!(r.anywhere.matching("extension", Some("http://b")).count(), 0);
        assert_eq!(r.anywhere.matching("extension", None).count(), 0);
    }
}
