//! Points in time, one type per unit: [`UnixSeconds`] (token claims, leases, key and policy
//! ages, the decision's `now`) and [`UnixMillis`] (the host's clock, audit event times, rate-limit
//! buckets, the audit sink's and key waiters' schedules). Mixing the two does not compile;
//! converting is explicit ([`UnixMillis::to_seconds`], [`UnixSeconds::to_millis`]) and, like
//! every operation here, saturates instead of overflowing.
//!
//! Durations stay plain `u64` whose unit is in their name (`clock_skew` documented in seconds,
//! `wait_ms`, `timeout_ms`): they come from configuration as numbers, and each method that takes
//! one names its unit (`add_secs`, `add_ms`).

use serde::Serialize;

/// An instant in whole seconds since the Unix epoch (a JWT `NumericDate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UnixSeconds(u64);

/// An instant in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UnixMillis(u64);

impl UnixSeconds {
    /// The instant `secs` seconds after the epoch.
    pub const fn new(secs: u64) -> Self {
        UnixSeconds(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// The same instant in milliseconds (saturating).
    pub const fn to_millis(self) -> UnixMillis {
        UnixMillis(self.0.saturating_mul(1000))
    }

    /// `secs` seconds later (saturating).
    #[must_use]
    pub const fn add_secs(self, secs: u64) -> Self {
        UnixSeconds(self.0.saturating_add(secs))
    }

    /// `secs` seconds earlier (saturating at the epoch).
    #[must_use]
    pub const fn sub_secs(self, secs: u64) -> Self {
        UnixSeconds(self.0.saturating_sub(secs))
    }

    /// Seconds from `earlier` to `self`; 0 if `earlier` is not earlier.
    pub const fn secs_since(self, earlier: UnixSeconds) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Big-endian bytes (the form kept in Envoy shared data).
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// From big-endian bytes (see [`UnixSeconds::to_be_bytes`]).
    pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
        UnixSeconds(u64::from_be_bytes(bytes))
    }
}

impl UnixMillis {
    /// The instant `ms` milliseconds after the epoch.
    pub const fn new(ms: u64) -> Self {
        UnixMillis(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The whole second this instant falls in (truncating).
    pub const fn to_seconds(self) -> UnixSeconds {
        UnixSeconds(self.0 / 1000)
    }

    /// `ms` milliseconds later (saturating).
    #[must_use]
    pub const fn add_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// `ms` milliseconds earlier (saturating at the epoch).
    #[must_use]
    pub const fn sub_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self`; 0 if `earlier` is not earlier.
    pub const fn ms_since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Big-endian bytes (the form kept in Envoy shared data).
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// From big-endian bytes (see [`UnixMillis::to_be_bytes`]).
    pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
        UnixMillis(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_explicit_and_saturate() {
        assert_eq!(UnixSeconds::new(1_800_000_000).to_millis(), UnixMillis::new(1_800_000_000_000));
        assert_eq!(UnixMillis::new(1_800_000_000_999).to_seconds(), UnixSeconds::new(1_800_000_000));
        assert_eq!(UnixSeconds::new(u64::MAX).to_millis(), UnixMillis::new(u64::MAX));
        assert_eq!(UnixMillis::new(u64::MAX).to_seconds(), UnixSeconds::new(u64::MAX / 1000));
    }

    #[test]
    fn arithmetic_saturates() {
        let t = UnixSeconds::new(100);
        assert_eq!(t.add_secs(u64::MAX), UnixSeconds::new(u64::MAX));
        assert_eq!(t.sub_secs(200), UnixSeconds::new(0));
        assert_eq!((t.add_secs(5).secs_since(t), t.secs_since(t.add_secs(5))), (5, 0));
        let m = UnixMillis::new(100);
        assert_eq!((m.add_ms(u64::MAX), m.sub_ms(200)), (UnixMillis::new(u64::MAX), UnixMillis::new(0)));
        assert_eq!((m.add_ms(5).ms_since(m), m.ms_since(m.add_ms(5))), (5, 0));
    }

    #[test]
    fn bytes_and_json_are_the_plain_number() {
        let t = UnixSeconds::new(0x0102_0304_0506_0708);
        assert_eq!(UnixSeconds::from_be_bytes(t.to_be_bytes()), t);
        assert_eq!(t.to_be_bytes(), 0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(UnixMillis::from_be_bytes(UnixMillis::new(7).to_be_bytes()), UnixMillis::new(7));
        assert_eq!(serde_json::to_string(&UnixSeconds::new(42)).ok().as_deref(), Some("42"));
        assert_eq!(serde_json::to_string(&UnixMillis::new(42)).ok().as_deref(), Some("42"));
    }
}
