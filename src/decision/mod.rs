//! The access decision: a pure function from (policy, request, now) to [`Decision`], and the
//! replies and response checks that follow from it.

pub mod engine;
pub mod ratelimit;
pub mod reason;
pub mod reply;
pub mod response;

pub use engine::{decide, decide_with, Decision, Grant, Refusal, Request};
pub use reason::DenyReason;
pub use reply::{refusal_reply, Reply};
pub use response::{ResponseCheck, ResponsePlan};
pub use crate::minimize::{Applied, ApplyCtx};
