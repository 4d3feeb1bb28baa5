//! [`CompartmentCheck`] over the raw bytes of a validated body: the same decisions as
//! [`CompartmentCheck::check`] on a tree (a differential test and a fuzz target hold them to
//! it), without building one.
//!
//! Nested resources are found wherever they are (an object with a `resourceType` member); an
//! object whose `resourceType` is not its first member is walked as data until that member
//! turns up, then checked again as a resource.

use super::response::{CompartmentCheck, Expected};
use crate::fhir::compartment::{in_patient_compartment, member_patients, patient_paths};
use crate::fhir::resource_type;
use crate::json::{Kind, Reader};
use crate::reason::DenyReason;

type Res = Result<(), DenyReason>;

const VIOLATION: Res = Err(DenyReason::CompartmentViolation);

impl CompartmentCheck {
    /// Check a validated 2xx body (see [`CompartmentCheck::check`]).
    pub fn scan(&self, text: &[u8]) -> Res {
        let mut r = Reader::new(text);
        let object = r.kind()? == Kind::Object;
        let str_of = |name: &str| -> Result<Option<String>, DenyReason> {
            if !object {
                return Ok(None);
            }
            Ok(r.find_str(name)?.map(|s| s.decode().map(|d| d.into_owned())).transpose()?)
        };
        let rt = str_of("resourceType")?;
        match &self.expect {
            Expected::Resource { resource_type, id } => {
                if rt.as_deref() != Some(*resource_type) || str_of("id")?.as_deref() != Some(id.as_str()) {
                    return VIOLATION;
                }
                self.raw_resource(&r, false).map(|_| ()).map_err(|_| DenyReason::PatientMismatch)
            }
            Expected::Searchset | Expected::History { .. } => {
                let want = if matches!(self.expect, Expected::Searchset) { "searchset" } else { "history" };
                if !object || rt.as_deref() != Some("Bundle") || str_of("type")?.as_deref() != Some(want) {
                    return VIOLATION;
                }
                let mut m = r.clone();
                m.open()?;
                while let Some(k) = m.next_key()? {
                    if !k.is("entry") {
                        self.raw_nested(&mut m)?;
                        continue;
                    }
                    if m.kind()? != Kind::Array {
                        return VIOLATION;
                    }
                    m.open()?;
                    while m.next_item()? {
                        m.pos = self.raw_entry(&m)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// One Bundle entry (the reader stands at it; it does not move): returns where it ends.
    fn raw_entry(&self, r: &Reader<'_>) -> Result<usize, DenyReason> {
        let mut e = r.clone();
        if e.kind()? != Kind::Object {
            return Err(DenyReason::CompartmentViolation);
        }
        e.open()?;
        while let Some(k) = e.next_key()? {
            if !k.is("resource") {
                self.raw_nested(&mut e)?;
                continue;
            }
            let value = e.clone();
            let object = e.kind()? == Kind::Object;
            let field = |name: &str| -> Result<Option<String>, DenyReason> {
                if !object {
                    return Ok(None);
                }
                Ok(value.find_str(name)?.map(|s| s.decode().map(|d| d.into_owned())).transpose()?)
            };
            let rt = field("resourceType")?;
            if let Expected::History { resource_type, id } = &self.expect {
                if rt.as_deref() != Some(*resource_type) || field("id")?.as_deref() != Some(id.as_str()) {
                    return Err(DenyReason::CompartmentViolation);
                }
            }
            let outcome = rt.as_deref() == Some("OperationOutcome") && self.search_mode_is_outcome(r)?;
            if outcome {
                self.raw_members(&mut e)?;
            } else {
                e.pos = self.raw_resource(&e, false)?;
            }
        }
        Ok(e.pos)
    }

    /// Whether the entry at `r` has `search.mode` `outcome`.
    fn search_mode_is_outcome(&self, r: &Reader<'_>) -> Result<bool, DenyReason> {
        let Some(span) = r.find("search")? else {
            return Ok(false);
        };
        let mut s = r.at(span.start);
        if s.kind()? != Kind::Object {
            return Ok(false);
        }
        Ok(s.find_str("mode")?.is_some_and(|m| m.is("outcome")))
    }

    /// A released resource (the reader stands at it; it does not move) and every resource
    /// nested anywhere inside it.
    fn raw_resource(&self, r: &Reader<'_>, nested: bool) -> Result<usize, DenyReason> {
        let mut probe = r.clone();
        if probe.kind()? != Kind::Object {
            return Err(DenyReason::CompartmentViolation);
        }
        let rt = match r.find_str("resourceType")? {
            Some(s) => resource_type(&s.decode()?),
            None => None,
        };
        let Some(rt) = rt else {
            return Err(DenyReason::CompartmentViolation);
        };
        // One walk over the members: the patient links are read on the way.
        let compartment = in_patient_compartment(rt);
        let paths = patient_paths(rt);
        let mut patients = Vec::new();
        let mut own_id = false;
        let mut m = r.clone();
        m.open()?;
        while let Some(k) = m.next_key()? {
            if k.is("resourceType") {
                m.skip()?;
                continue;
            }
            if rt == "Patient" {
                if k.is("id") && m.kind()? == Kind::String {
                    own_id = m.clone().string()?.is(&self.patient);
                }
            } else if compartment {
                member_patients(paths, &k, &m, &mut patients)?;
            }
            self.raw_nested(&mut m)?;
        }
        let ok = if rt == "Patient" {
            own_id
        } else if compartment {
            !patients.is_empty() && patients.iter().all(|p| *p == self.patient)
        } else {
            nested || self.shared.binary_search(&rt).is_ok()
        };
        if ok {
            Ok(m.pos)
        } else {
            Err(DenyReason::CompartmentViolation)
        }
    }

    /// Every member of the object (or item of the array) here other than `resourceType`; the
    /// reader ends after it.
    fn raw_members(&self, r: &mut Reader<'_>) -> Res {
        match r.kind()? {
            Kind::Object => {
                r.open()?;
                while let Some(k) = r.next_key()? {
                    if k.is("resourceType") {
                        r.skip()?;
                    } else {
                        self.raw_nested(r)?;
                    }
                }
                Ok(())
            }
            Kind::Array => {
                r.open()?;
                while r.next_item()? {
                    self.raw_nested(r)?;
                }
                Ok(())
            }
            Kind::String | Kind::Scalar => {
                r.skip()?;
                Ok(())
            }
        }
    }

    /// Any value (the reader ends after it): an object with a `resourceType` is a nested
    /// resource; anything else is searched for them.
    fn raw_nested(&self, r: &mut Reader<'_>) -> Res {
        let kind = r.kind()?;
        if matches!(kind, Kind::String | Kind::Scalar) {
            r.skip()?;
            return Ok(());
        }
        // Most values hold no resource at all: no string in them names `resourceType` (a name
        // hidden behind an escape is looked for the slow way). An array is walked item by item.
        if kind == Kind::Object && !first_key_is(r, "resourceType")? {
            let mut probe = r.clone();
            if let Some(span) = probe.skip_plain(&[b"resourceType"], 0)? {
                r.pos = span.end;
                return Ok(());
            }
        }
        if kind != Kind::Object {
            return self.raw_members(r);
        }
        let start = r.clone();
        let first = first_key_is(r, "resourceType")?;
        if first {
            r.pos = self.raw_resource(&start, true)?;
            return Ok(());
        }
        // Walk it as data; a `resourceType` further on makes it a resource after all.
        r.open()?;
        while let Some(k) = r.next_key()? {
            if k.is("resourceType") {
                r.pos = self.raw_resource(&start, true)?;
                return Ok(());
            }
            self.raw_nested(r)?;
        }
        Ok(())
    }
}

/// Whether the object at `r` starts with member `name` (the reader does not move).
fn first_key_is(r: &Reader<'_>, name: &str) -> Result<bool, DenyReason> {
    let mut peek = r.clone();
    peek.open()?;
    Ok(peek.next_key()?.is_some_and(|k| k.is(name)))
}
