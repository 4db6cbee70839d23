//! What was dropped from peers, by kind: never a panic, never a torn-down
//! session, always a count (exported as `weft_forged_total{kind}`).

use crate::ring::MergeOutcome;

/// Statements dropped because they were unsigned, badly signed, not the
/// signer's to make, or would break a limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Removal signatures that did not verify.
    pub removal_sig: u64,
    /// Good removal signatures by routers that own no space (may not sign).
    pub removal_signer: u64,
    /// Removal certificates for routers that own nothing here.
    pub removal_target: u64,
    /// Rings that took or split a range we own (refused whole).
    pub ring_takes_ours: u64,
    /// Space requests that did not verify: bad signature, another name than
    /// the sender's, another cluster, stale or replayed.
    pub space_request: u64,
    /// Space requests refused because the requester asked too often.
    pub space_rate: u64,
    /// Consensus claims not signed by their voter.
    pub claims: u64,
    /// Free-space hints not signed by the router they describe.
    pub free_hint: u64,
    /// Consensus claims that came after our ring was seeded: ignored
    /// unchecked (honest routers that lag send them too, so these are not
    /// all forgeries).
    pub late_claims: u64,
    /// Our own messages not sent because a receiver would refuse them.
    pub oversize: u64,
    /// States built longer ago than most of the removal horizon (delivered
    /// late, or replayed): they may bring back what the mesh forgot.
    pub old_state: u64,
}

impl Refused {
    pub(crate) fn count_removals(&mut self, out: &MergeOutcome) {
        self.removal_sig += u64::from(out.removals.forged);
        self.removal_signer += u64::from(out.removals.refused);
        self.removal_target += u64::from(out.removals_refused);
    }

    /// Every count with its metric label.
    pub fn by_kind(&self) -> [(&'static str, u64); 11] {
        [
            ("ipam_removal_sig", self.removal_sig),
            ("ipam_removal_signer", self.removal_signer),
            ("ipam_removal_target", self.removal_target),
            ("ipam_ring_takes_ours", self.ring_takes_ours),
            ("ipam_space_request", self.space_request),
            ("ipam_space_rate", self.space_rate),
            ("ipam_claims", self.claims),
            ("ipam_free_hint", self.free_hint),
            ("ipam_late_claims", self.late_claims),
            ("ipam_oversize", self.oversize),
            ("ipam_old_state", self.old_state),
        ]
    }

    /// Statements that did not verify at all (forgeries, not disagreements).
    pub fn forged(&self) -> u64 {
        self.removal_sig + self.space_request + self.claims + self.free_hint
    }
}
