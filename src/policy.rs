//! The compiled policy: everything that depends only on configuration is done in
//! [`Policy::compile`], once per VM; [`Policy::decide`] only looks things up.

use crate::config::{Admission, Config};
use crate::error::ConfigError;
use crate::origin::{Origin, OriginAllowList};
use crate::request::Request;
use crate::verdict::{Denial, DenyReason, Verdict, NO_POLICY_BODY, NO_POLICY_STATUS};

/// A configuration checked and compiled for use on the request path.
#[derive(Clone, Debug)]
pub struct Policy {
    origins: OriginAllowList,
    missing_origin: Admission,
    null_origin: Admission,
    deny_status: u16,
    deny_body: String,
}

impl Policy {
    /// Checks and compiles a configuration. Every error names the field it is about.
    pub fn compile(config: Config) -> Result<Policy, ConfigError> {
        if config.allowed_origins.is_empty() {
            return Err(ConfigError::new(
                "allowed_origins",
                "is empty; list at least one origin",
            ));
        }
        let origins = OriginAllowList::compile(&config.allowed_origins).map_err(|e| {
            ConfigError::new(
                format!("allowed_origins[{}]", e.index),
                format!("{:?} is not an origin ({})", e.entry, e.error),
            )
        })?;
        if !(400..=599).contains(&config.deny_status) {
            return Err(ConfigError::new(
                "deny_status",
                format!(
                    "{} is not a client or server error status (400-599)",
                    config.deny_status
                ),
            ));
        }
        Ok(Policy {
            origins,
            missing_origin: config.missing_origin,
            null_origin: config.null_origin,
            deny_status: config.deny_status,
            deny_body: config.deny_body,
        })
    }

    /// Parses and compiles the JSON text of a plugin configuration.
    pub fn from_json(json: &[u8]) -> Result<Policy, ConfigError> {
        Policy::compile(Config::from_json(json)?)
    }

    /// Decides one request. `now` is the host's clock in seconds since the Unix epoch.
    pub fn decide(&self, request: &Request, _now: u64) -> Verdict<'_> {
        if !request.is_upgrade() {
            return Verdict::Pass;
        }
        match self.check_origin(request) {
            Ok(()) => Verdict::Admit,
            Err(reason) => Verdict::Deny(self.denial(reason)),
        }
    }

    fn check_origin(&self, request: &Request) -> Result<(), DenyReason> {
        let mut lines = request.values("origin");
        let admit = |admission, reason| match admission {
            Admission::Allow => Ok(()),
            Admission::Deny => Err(reason),
        };
        match (lines.next(), lines.next()) {
            (None, _) => admit(self.missing_origin, DenyReason::OriginMissing),
            // Envoy joins repeated Origin lines into one value; should a host ever not, two
            // lines are no more one origin than a joined list is.
            (Some(_), Some(_)) => Err(DenyReason::OriginMalformed),
            (Some(b"null"), None) => admit(self.null_origin, DenyReason::OriginNull),
            (Some(value), None) => {
                let origin = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| Origin::parse(text).ok())
                    .ok_or(DenyReason::OriginMalformed)?;
                if self.origins.allows(&origin) {
                    Ok(())
                } else {
                    Err(DenyReason::OriginNotAllowed)
                }
            }
        }
    }

    /// The one place where a reason becomes a reply.
    fn denial(&self, reason: DenyReason) -> Denial<'_> {
        match reason {
            DenyReason::NoPolicy => no_policy_denial(),
            DenyReason::OriginNotAllowed
            | DenyReason::OriginMissing
            | DenyReason::OriginNull
            | DenyReason::OriginMalformed => Denial {
                reason,
                status: self.deny_status,
                body: &self.deny_body,
            },
        }
    }

    /// A one-line description of what was compiled, for the log at load.
    pub fn summary(&self) -> String {
        format!(
            "{} allowed origin entries, missing_origin={:?}, null_origin={:?}, deny_status={}",
            self.origins.len(),
            self.missing_origin,
            self.null_origin,
            self.deny_status
        )
        .to_lowercase()
    }
}

fn no_policy_denial() -> Denial<'static> {
    Denial {
        reason: DenyReason::NoPolicy,
        status: NO_POLICY_STATUS,
        body: NO_POLICY_BODY,
    }
}

/// Decides one request with whatever policy the VM holds. Without a valid policy (none was
/// ever loaded) upgrades are refused with 503 and other requests pass: wsgate fails closed for
/// what it guards and does not take ordinary traffic down with it.
pub fn decide<'p>(policy: Option<&'p Policy>, request: &Request, now: u64) -> Verdict<'p> {
    match policy {
        Some(policy) => policy.decide(request, now),
        None if request.is_upgrade() => Verdict::Deny(no_policy_denial()),
        None => Verdict::Pass,
    }
}
