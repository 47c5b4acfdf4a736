//! base64url without padding (PROTOCOL.md A4): what every binary value on the
//! wire is encoded as. Decoding accepts padded or unpadded input but nothing
//! outside the URL-safe alphabet.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENCODER: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Lenient about padding (the reference never pads, but a peer that does is
/// not wrong), strict about the alphabet and trailing bits.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a base64url field could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("not valid base64url: {0}")]
pub struct B64Error(#[from] base64::DecodeError);

/// Encodes bytes as base64url without padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENCODER.encode(bytes)
}

/// Decodes base64url, with or without padding.
pub fn decode(text: &str) -> Result<Vec<u8>, B64Error> {
    Ok(DECODER.decode(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_without_padding() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode(&data);
            assert!(!text.contains('='));
            assert_eq!(decode(&text).unwrap(), data);
        }
    }

    #[test]
    fn accepts_padding_and_rejects_foreign_alphabet() {
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert_eq!(decode("YQ").unwrap(), b"a");
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode("+/8").is_err(), "standard alphabet must be refused");
        assert!(decode("YQ!").is_err());
        assert!(decode("a").is_err());
    }
}
