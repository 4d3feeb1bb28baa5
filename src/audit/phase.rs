//! The response phase's part of an allowed request's audit event. It lives here, not in
//! `decision::phase`, because audit records decisions: `audit` uses `decision`, never the
//! reverse (ARCHITECTURE.md, module dependencies).

use super::event::AuditEvent;
use crate::decision::ResponsePhase;

impl ResponsePhase {
    /// Finish the allowed request's audit event: upstream status, withheld paths, the
    /// refusal (a body still being checked when the stream ends never reached the client),
    /// restrictions and digest.
    pub fn finish(&self, event: AuditEvent) -> AuditEvent {
        let (_, withheld, _) = self.minimized();
        let mut event =
            event.with_response(self.status(), withheld.to_vec(), self.final_refusal()).with_restrictions(self.restriction_hits().to_vec());
        if let Some(d) = self.content_digest() {
            event = event.with_content_digest(d.to_owned());
        }
        event
    }
}
