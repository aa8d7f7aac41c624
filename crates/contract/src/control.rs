//! Control codes: `resource_control(code, input) -> output`.
//!
//! A type handles the codes it knows and answers
//! [`ControlError::NotSupported`](crate::ControlError::NotSupported) to the
//! rest; the monitor then applies its default handling for the codes below.
//! Inputs and outputs are bytes; by convention JSON.

/// Resource codes.
pub const GET_STATE: u32 = 1;
pub const GET_COMMON_PROPERTIES: u32 = 2;
pub const GET_CHARACTERISTICS: u32 = 3;
pub const GET_PRIVATE_PROPERTIES: u32 = 4;

/// Resource-type codes.
pub const GET_TYPE_INFO: u32 = 1;
pub const GET_PRIVATE_PROPERTY_NAMES: u32 = 4;

/// The largest control input accepted.
pub const MAX_INPUT: usize = 64 * 1024;
/// The largest control output returned.
pub const MAX_OUTPUT: usize = 1024 * 1024;

const RESOURCE_CODES: &[(&str, u32)] = &[
    ("get_state", GET_STATE),
    ("get_common_properties", GET_COMMON_PROPERTIES),
    ("get_characteristics", GET_CHARACTERISTICS),
    ("get_private_properties", GET_PRIVATE_PROPERTIES),
];

const TYPE_CODES: &[(&str, u32)] = &[
    ("get_type_info", GET_TYPE_INFO),
    ("get_private_property_names", GET_PRIVATE_PROPERTY_NAMES),
];

/// Why a control code could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("bad control code {0:?}: not a hexadecimal number")]
    BadHex(String),
    #[error("unknown control code {code:?}: use a number or one of {}", known.join(", "))]
    Unknown {
        code: String,
        known: Vec<&'static str>,
    },
}

/// Parses a code written as a number (`4`, `0x4`) or a name (`get_state`).
pub fn parse_code(text: &str, for_type: bool) -> Result<u32, CodeError> {
    let table = if for_type { TYPE_CODES } else { RESOURCE_CODES };
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).map_err(|_| CodeError::BadHex(text.to_owned()));
    }
    if let Ok(n) = t.parse::<u32>() {
        return Ok(n);
    }
    table
        .iter()
        .find(|(name, _)| *name == t)
        .map(|&(_, c)| c)
        .ok_or_else(|| CodeError::Unknown {
            code: text.to_owned(),
            known: table.iter().map(|(n, _)| *n).collect(),
        })
}

/// The name of a known code.
pub fn code_name(code: u32, for_type: bool) -> Option<&'static str> {
    let table = if for_type { TYPE_CODES } else { RESOURCE_CODES };
    table.iter().find(|&&(_, c)| c == code).map(|&(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_by_number_and_name() {
        assert_eq!(parse_code("get_state", false), Ok(GET_STATE));
        assert_eq!(parse_code("4", false), Ok(GET_PRIVATE_PROPERTIES));
        assert_eq!(parse_code("0x10", false), Ok(16));
        assert_eq!(parse_code("get_type_info", true), Ok(GET_TYPE_INFO));
        assert!(parse_code("get_type_info", false)
            .unwrap_err()
            .to_string()
            .contains("get_state"));
        assert!(parse_code("-1", false).is_err());
        assert_eq!(code_name(2, false), Some("get_common_properties"));
        assert_eq!(code_name(99, false), None);
    }
}
