//! Why the dataplane's subscriber refused a published generation.

use fulcrum_model::Invalid;

/// Why a publication was not taken. The dataplane keeps serving the
/// generation it has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("payload length {0} out of range")]
    LengthOutOfRange(u64),
    #[error("payload checksum mismatch")]
    ChecksumMismatch,
    #[error("payload does not decode: {0}")]
    Undecodable(String),
    #[error("generation {found} is not newer than the accepted generation {accepted}")]
    GenerationNotIncreasing { found: u64, accepted: u64 },
    #[error("invalid configuration: {0}")]
    Invalid(Invalid),
}

/// Names of the reject codes stored in the segment, by code.
const CODES: [(u32, &str); 6] = [
    (0, "none"),
    (1, "length_out_of_range"),
    (2, "checksum_mismatch"),
    (3, "undecodable"),
    (4, "generation_not_increasing"),
    (100, "invalid"),
];

impl RejectReason {
    /// Stable numeric code stored in the segment (`DataplaneStatus::last_reject_code`).
    pub fn code(&self) -> u32 {
        match self {
            RejectReason::LengthOutOfRange(_) => 1,
            RejectReason::ChecksumMismatch => 2,
            RejectReason::Undecodable(_) => 3,
            RejectReason::GenerationNotIncreasing { .. } => 4,
            RejectReason::Invalid(_) => 100,
        }
    }
}

/// Human name of a reject code as stored in the segment (for tools that only
/// see the number).
pub fn reject_code_name(code: u32) -> &'static str {
    CODES.iter().find(|(c, _)| *c == code).map_or("unknown", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_named_code() {
        let reasons = [
            RejectReason::LengthOutOfRange(0),
            RejectReason::ChecksumMismatch,
            RejectReason::Undecodable(String::new()),
            RejectReason::GenerationNotIncreasing { found: 1, accepted: 2 },
            RejectReason::Invalid(Invalid::new("port", "x")),
        ];
        for r in reasons {
            assert_ne!(reject_code_name(r.code()), "unknown", "{r}");
        }
    }
}
