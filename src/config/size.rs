//! The `mini_batch_size` grammar: an integer, or digits followed by `kb`, `mb` or `gb` (any case,
//! no spaces); binary units, so `10mb` is 10 x 1024 x 1024 bytes.

use crate::error::{PrsError, Result};

/// The parameter name used in error messages.
const FIELD: &str = "mini_batch_size";

/// What the grammar allows, appended to most errors.
const ALLOWED: &str =
    "use a whole number (e.g. \"1024\") or digits with KB, MB or GB (e.g. \"10MB\")";

/// A parsed `mini_batch_size`: the text the user wrote and its value.
///
/// For tabular inputs the value is a number of bytes; for file datasets it is a number of files
/// (and units are rejected).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MiniBatchSize {
    /// The text as written (kept so the config round-trips unchanged).
    pub raw: String,
    /// The value: bytes (with units applied) or a plain count.
    pub value: u64,
    /// True when the text had a unit suffix (kb/mb/gb).
    pub has_unit: bool,
}

impl MiniBatchSize {
    /// Parses the PRS grammar. Errors name `mini_batch_size`, quote the value and say what is
    /// allowed, e.g. `mini_batch_size "10 MB": no spaces allowed; use e.g. "10MB"`.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_for(FIELD, text)
    }

    /// Parses the same grammar for another parameter (e.g. `memory_limit`), naming `field` in
    /// errors.
    pub fn parse_for(field: &str, text: &str) -> Result<Self> {
        let fail = |reason: &str| PrsError::config(field, text, reason);
        if text.trim().is_empty() {
            return Err(fail(&format!("must not be empty; {ALLOWED}")));
        }
        if text.chars().any(char::is_whitespace) {
            let joined: String = text.split_whitespace().collect();
            return Err(fail(&format!("no spaces allowed; use e.g. {joined:?}")));
        }
        if text.starts_with('-') {
            return Err(fail(&format!("must be greater than 0; {ALLOWED}")));
        }
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(fail(&format!("must start with digits; {ALLOWED}")));
        }
        if unit.starts_with('.') || unit.starts_with(',') {
            return Err(fail(
                "no decimals allowed; use a smaller unit instead (e.g. \"1536KB\" for 1.5MB)",
            ));
        }
        let multiplier = unit_multiplier(unit).ok_or_else(|| {
            fail("unit must be KB, MB or GB (e.g. \"10MB\"), or none for a plain number")
        })?;
        let too_large = || fail(&format!("is too large; the maximum is {} bytes", u64::MAX));
        let count: u64 = digits.parse().map_err(|_| too_large())?;
        let value = count.checked_mul(multiplier).ok_or_else(too_large)?;
        if value == 0 {
            return Err(fail(&format!("must be greater than 0; {ALLOWED}")));
        }
        Ok(MiniBatchSize {
            raw: text.to_string(),
            value,
            has_unit: !unit.is_empty(),
        })
    }

    /// The value as files per mini-batch, for file datasets: a unit is an error there.
    pub fn as_file_count(&self) -> Result<u64> {
        if self.has_unit {
            return Err(PrsError::config(
                FIELD,
                &self.raw,
                "a file dataset takes a number of files per mini-batch, not a size; \
                 use a plain number (e.g. \"10\")",
            ));
        }
        Ok(self.value)
    }
}

/// The byte multiplier of a unit suffix (`""` for none), or `None` when it is not a unit.
fn unit_multiplier(unit: &str) -> Option<u64> {
    match unit.to_ascii_lowercase().as_str() {
        "" => Some(1),
        "kb" => Some(1 << 10),
        "mb" => Some(1 << 20),
        "gb" => Some(1 << 30),
        _ => None,
    }
}

impl std::fmt::Display for MiniBatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match MiniBatchSize::parse(text) {
            Ok(size) => panic!("{text:?} should be rejected, got {size:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn plain_integer_is_a_count_without_unit() {
        let size = MiniBatchSize::parse("1024").unwrap();
        assert_eq!(
            size,
            MiniBatchSize {
                raw: "1024".into(),
                value: 1024,
                has_unit: false
            }
        );
        assert_eq!(size.as_file_count().unwrap(), 1024);
        assert_eq!(size.to_string(), "1024");
    }

    #[test]
    fn units_are_binary_and_case_insensitive() {
        assert_eq!(MiniBatchSize::parse("1024KB").unwrap().value, 1024 * 1024);
        assert_eq!(
            MiniBatchSize::parse("10mb").unwrap().value,
            10 * 1024 * 1024
        );
        assert_eq!(
            MiniBatchSize::parse("10Mb").unwrap().value,
            10 * 1024 * 1024
        );
        assert_eq!(MiniBatchSize::parse("1GB").unwrap().value, 1 << 30);
        assert_eq!(MiniBatchSize::parse("1gB").unwrap().value, 1 << 30);
    }

    #[test]
    fn raw_text_is_kept() {
        let size = MiniBatchSize::parse("10mb").unwrap();
        assert_eq!(size.raw, "10mb");
        assert!(size.has_unit);
        assert_eq!(size.to_string(), "10mb");
    }

    #[test]
    fn spaces_are_rejected_with_a_suggestion() {
        assert_eq!(
            err("10 MB"),
            r#"mini_batch_size "10 MB": no spaces allowed; use e.g. "10MB""#
        );
        assert!(err(" 10").contains("no spaces"));
    }

    #[test]
    fn decimals_are_rejected() {
        let e = err("1.5MB");
        assert!(e.starts_with(r#"mini_batch_size "1.5MB""#), "{e}");
        assert!(e.contains("no decimals"), "{e}");
    }

    #[test]
    fn zero_negative_and_empty_are_rejected() {
        for text in ["0", "0KB", "-1", "-1MB"] {
            let e = err(text);
            assert!(
                e.contains("mini_batch_size") && e.contains("greater than 0"),
                "{e}"
            );
        }
        let e = err("");
        assert!(
            e.contains("mini_batch_size") && e.contains("must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn unknown_units_are_rejected() {
        let e = err("10TB");
        assert!(
            e.contains(r#""10TB""#) && e.contains("unit must be KB, MB or GB"),
            "{e}"
        );
        assert!(err("10tb").contains("unit must be KB, MB or GB"));
        assert!(err("10k").contains("unit must be KB, MB or GB"));
        assert!(err("10B").contains("unit must be KB, MB or GB"));
        assert!(err("MB").contains("must start with digits"));
    }

    #[test]
    fn overflow_is_rejected() {
        assert!(err("99999999999999999999").contains("too large"));
        assert!(err("99999999999GB").contains("too large"));
        assert_eq!(
            MiniBatchSize::parse("18446744073709551615").unwrap().value,
            u64::MAX
        );
    }

    #[test]
    fn file_count_rejects_units() {
        let e = MiniBatchSize::parse("10MB")
            .unwrap()
            .as_file_count()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mini_batch_size") && e.contains("\"10MB\"") && e.contains("files"),
            "{e}"
        );
    }
}
