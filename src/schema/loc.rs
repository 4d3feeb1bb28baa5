//! Where a compile error is: a typed path into the policy document, built as the compiler
//! descends (`routes` → `[2]` → `minimize` → `allow` → `[5]`) and rendered only when an error is
//! reported (`routes[2].minimize.allow[5]`).

use std::fmt;

use thiserror::Error;

/// A policy that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{location}: {message}")]
pub struct CompileError {
    /// JSON path of the offending value (`routes[2].match`), or `policy` for the whole document.
    pub location: String,
    /// What is wrong, lowercase, quoting user input in backticks.
    pub message: String,
}

/// A location in the policy document: a chain of steps borrowed from the callers' stack
/// frames, so descending costs no allocation; `Copy`, and passed down by reference.
#[derive(Debug, Clone, Copy)]
pub struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    step: Step<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    /// The whole document.
    Root,
    /// An object member (a field, or a key of a map such as `resources.Patient`).
    Field(&'a str),
    /// An array element.
    Index(usize),
}

/// The whole document (rendered `policy`): every top-level section's location starts here.
pub static ROOT: Loc<'static> = Loc { parent: None, step: Step::Root };

impl<'a> Loc<'a> {
    /// The member `name` of this object.
    pub const fn field<'b>(&'b self, name: &'b str) -> Loc<'b> {
        Loc { parent: Some(self), step: Step::Field(name) }
    }

    /// The element `i` of this array.
    pub const fn index(&self, i: usize) -> Loc<'_> {
        Loc { parent: Some(self), step: Step::Index(i) }
    }

    /// A compile error at this location.
    pub fn error(&self, message: impl Into<String>) -> CompileError {
        CompileError { location: self.to_string(), message: message.into() }
    }

    /// `v` (or `default` when absent) if it lies in `range`, else an error here.
    pub fn bounded<T>(&self, v: Option<T>, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, CompileError>
    where
        T: PartialOrd + Copy + fmt::Display,
    {
        let v = v.unwrap_or(default);
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(self.error(format!("`{v}` must be between {} and {}", range.start(), range.end())))
        }
    }

    fn is_root(&self) -> bool {
        matches!(self.step, Step::Root)
    }
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = self.parent.filter(|p| !p.is_root());
        if let Some(p) = parent {
            p.fmt(f)?;
        }
        match self.step {
            Step::Root => f.write_str("policy"),
            Step::Field(name) if parent.is_some() => write!(f, ".{name}"),
            Step::Field(name) => f.write_str(name),
            Step::Index(i) => write!(f, "[{i}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_json_path() {
        assert_eq!(ROOT.to_string(), "policy");
        let routes = ROOT.field("routes");
        let route = routes.index(2);
        let allow = route.field("minimize").field("resources").field("Patient").field("allow").index(5).to_string();
        assert_eq!(allow, "routes[2].minimize.resources.Patient.allow[5]");
        assert_eq!(ROOT.field("acrLevels").index(0).to_string(), "acrLevels[0]");
        let e = route.field("id").error("duplicate route id `x`");
        assert_eq!(e.to_string(), "routes[2].id: duplicate route id `x`");
    }

    #[test]
    fn bounded_reports_the_range() {
        let limit = ROOT.field("limits").field("maxPathBytes").bounded(Some(8usize), 4096, 64..=65_536);
        assert_eq!(limit.unwrap_err().to_string(), "limits.maxPathBytes: `8` must be between 64 and 65536");
        assert_eq!(ROOT.field("x").bounded(None, 5u64, 1..=10), Ok(5));
    }
}
