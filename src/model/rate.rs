//! A pace as operators and the settings app write it: `"N/DURATION"` (`"1/1s"`, `"100/1m"`),
//! paced with a burst by `pacing` (CONTRACT §1, §5a).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// `count` requests per `per`, sustained.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

/// Why a rate string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate like \"1/1s\" or \"100/1m\" (a count above 0, a slash, a duration)")]
pub struct InvalidRate(String);

impl FromStr for Rate {
    type Err = InvalidRate;

    fn from_str(text: &str) -> Result<Self, InvalidRate> {
        let invalid = || InvalidRate(text.to_owned());
        let (count, per) = text.trim().split_once('/').ok_or_else(invalid)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| invalid())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| invalid())?;
        if per.is_zero() {
            return Err(invalid());
        }
        Ok(Self { count, per })
    }
}

impl TryFrom<String> for Rate {
    type Error = InvalidRate;

    fn try_from(text: String) -> Result<Self, InvalidRate> {
        text.parse()
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse() {
        let rate: Rate = "100/1m".parse().unwrap();
        assert_eq!((rate.count.get(), rate.per), (100, Duration::from_secs(60)));
        let rate: Rate = " 5 / 2s ".parse().unwrap();
        assert_eq!((rate.count.get(), rate.per), (5, Duration::from_secs(2)));
        for bad in ["", "1", "0/1s", "-1/1s", "1/", "1/0s", "x/1s", "1/soon"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!(rate.to_string(), "5/2s");
    }
}
