//! Tenant domains: the host names a tenant is reached by, normalized and checked in
//! one place before the registry stores or looks one up.

use crate::error::Error;

/// A host name that may name a tenant: lowercase, no port, no trailing dot, not an IP
/// address and not `localhost` (see [`Domain::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Domain(String);

impl Domain {
    /// `raw` normalized (trimmed, lowercase, without a trailing dot: the one
    /// normalization, `tenant::normalized_domain`) and checked ([`Domain::check`]).
    pub(crate) fn parse(raw: &str) -> Result<Self, Error> {
        let domain = crate::tenant::normalized_domain(raw);
        Self::check(&domain)?;
        Ok(Self(domain))
    }

    /// Whether `domain`, normalized already, may name a tenant: a lowercase host name
    /// (no port, not an IP address, not `localhost`).
    pub(crate) fn check(domain: &str) -> Result<(), Error> {
        if domain.contains(':') {
            return Err(Error::Unprocessable(format!(
                "`domain` `{}` has a port or is an IPv6 address; give the bare host name",
                domain.escape_debug()
            )));
        }
        let ok = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !ok {
            return Err(Error::Validation(format!(
                "`domain` `{}` is not a lowercase host name",
                domain.escape_debug()
            )));
        }
        // A host name that is an address or this machine would let a tenant claim
        // every request made by IP or to localhost.
        let last = domain.rsplit('.').next().unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Unprocessable(format!(
                "`domain` `{domain}` is an IP address; give the tenant a host name"
            )));
        }
        if domain == "localhost" || domain.ends_with(".localhost") {
            return Err(Error::Unprocessable(format!(
                "`domain` `{domain}` is a local name; give the tenant a public host name"
            )));
        }
        Ok(())
    }

    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Domain;

    #[test]
    fn names_are_normalized_then_checked() {
        assert_eq!(
            Domain::parse(" Shop.Example.COM. ").unwrap().as_str(),
            "shop.example.com"
        );
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a_b.com",
            "example.com:8080",
            "[::1]",
            "10.0.0.1",
            "localhost",
            "x.localhost",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(crate::tenant::normalized_domain("A.B."), "a.b");
    }
}
