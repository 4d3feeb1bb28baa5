//! The access decision: a pure function from (policy, request, now) to [`Decision`], and the
//! replies and response checks that follow from it.

mod check_scan;
pub mod engine;
pub mod phase;
pub mod preflight;
pub mod reply;
pub mod response;

pub use crate::auth::BreakGlass;
pub use crate::minimize::{Applied, ApplyCtx};
pub use crate::reason::DenyReason;
pub use engine::{decide, decide_with, Decision, Grant, Refusal, Request};
pub use phase::{BodyStep, HeadEdits, Released, ResponsePhase, CHECKED_RESPONSE_HEADERS};
pub use reply::{challenge_reply, refusal_reply, upstream_error_body, Challenge, Reply};
pub use response::{CompartmentCheck, Expected, Release, ResponseCheck, ResponsePlan, Screen, UpstreamHead};
