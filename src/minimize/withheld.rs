//! The record of what a minimization withheld: field paths (never values) and a count.
//!
//! Path syntax: the resource type, then field names joined by `.`, with array positions
//! omitted. A nested resource is written `field(Type)` (`Bundle.entry.resource(Observation)`,
//! `Observation.contained(Patient)`), an extension selected by url `extension(url)`, a
//! primitive-extension sibling under its element's name (`_birthDate` is `birthDate`). Plain
//! JSON bodies have no type prefix (`address.line`).

use std::collections::BTreeSet;

/// Collector used while walking; the current path is kept in one reused buffer.
#[derive(Debug, Default)]
pub struct Withheld {
    path: String,
    paths: BTreeSet<String>,
    count: usize,
    /// Paths in the order they were first recorded, so a walk can be undone ([`Withheld::rollback`]).
    log: Vec<String>,
}

/// A point to [`Withheld::rollback`] to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    count: usize,
    log: usize,
}

impl Withheld {
    /// Append a segment to the current path; returns the length to [`Withheld::pop`] back to.
    pub fn push(&mut self, segment: &str) -> usize {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(segment);
        len
    }

    /// Append `name(detail)`.
    pub fn push_qualified(&mut self, name: &str, detail: &str) -> usize {
        let len = self.push(name);
        self.path.push('(');
        self.path.push_str(detail);
        self.path.push(')');
        len
    }

    /// Append `(detail)` to the last segment (a nested resource's type); returns the length to
    /// [`Withheld::pop`] back to.
    pub fn qualify(&mut self, detail: &str) -> usize {
        let len = self.path.len();
        self.path.push('(');
        self.path.push_str(detail);
        self.path.push(')');
        len
    }

    /// Restore the path to an earlier length.
    pub fn pop(&mut self, len: usize) {
        self.path.truncate(len);
    }

    /// Record one withheld value at the current path.
    pub fn record(&mut self) {
        self.count += 1;
        // The same path recorded again (items of one array, one member in many resources) is
        // the common case: one comparison instead of a set lookup.
        if self.log.last().is_some_and(|l| *l == self.path) {
            return;
        }
        if !self.paths.contains(self.path.as_str()) {
            self.paths.insert(self.path.clone());
            self.log.push(self.path.clone());
        }
    }

    /// Record one withheld value at the current path plus `segment`.
    pub fn record_at(&mut self, segment: &str) {
        let len = self.push(segment);
        self.record();
        self.pop(len);
    }

    /// The state now, to come back to.
    pub fn mark(&self) -> Mark {
        Mark { count: self.count, log: self.log.len() }
    }

    /// Forget everything recorded since `mark` (a walk that is redone another way).
    pub fn rollback(&mut self, mark: Mark) {
        for p in self.log.drain(mark.log..) {
            self.paths.remove(&p);
        }
        self.count = mark.count;
    }

    /// Values withheld so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Distinct paths, sorted, and the count of withheld values.
    pub fn finish(self) -> (Vec<String>, usize) {
        (self.paths.into_iter().collect(), self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_counts() {
        let mut w = Withheld::default();
        let root = w.push("Bundle");
        let e = w.push("entry");
        let r = w.push_qualified("resource", "Patient");
        w.record_at("telecom");
        w.record_at("telecom");
        w.pop(r);
        w.push_qualified("resource", "Observation");
        w.record_at("performer");
        w.pop(e);
        w.pop(root);
        assert_eq!(w.count(), 3);
        let (paths, count) = w.finish();
        assert_eq!(count, 3);
        assert_eq!(paths, ["Bundle.entry.resource(Observation).performer", "Bundle.entry.resource(Patient).telecom"]);
    }
}
