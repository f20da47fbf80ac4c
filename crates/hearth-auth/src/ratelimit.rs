//! Rate limits per client IP and per account, with `governor` keyed limiters.
//!
//! Each action (sign-up, sign-in, reset, refresh, ...) has its own limiter per
//! key kind, so exhausting one does not lock a user out of another. Keys are
//! strings (`ip` or normalized email / uid). A denied request learns how long
//! to wait, which the router sends as `Retry-After`.
//! Memory: [`RateLimiter::retain_recent`] drops idle keys; the service calls it
//! from a periodic task.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::{Rate, RateLimitConfig};
use crate::error::AuthError;

/// The rate-limited actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Signup,
    Login,
    Reset,
    Refresh,
    Anonymous,
    Email,
}

struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Limiter {
    fn new(rate: Option<Rate>) -> Option<Limiter> {
        let rate = rate?;
        let burst = NonZeroU32::new(rate.burst)?;
        let interval = rate.period / rate.burst;
        let quota = Quota::with_period(interval.max(Duration::from_nanos(1)))?.allow_burst(burst);
        Some(Limiter {
            limiter: governor::RateLimiter::keyed(quota),
        })
    }

    fn check(&self, key: &str) -> Result<(), AuthError> {
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| AuthError::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }
}

/// All limiters of the auth service.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    signup_ip: Option<Limiter>,
    login_ip: Option<Limiter>,
    login_account: Option<Limiter>,
    reset_ip: Option<Limiter>,
    reset_account: Option<Limiter>,
    refresh_ip: Option<Limiter>,
    refresh_account: Option<Limiter>,
    anonymous_ip: Option<Limiter>,
    email_account: Option<Limiter>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimiter")
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            inner: Arc::new(Inner {
                signup_ip: Limiter::new(config.signup_per_ip),
                login_ip: Limiter::new(config.login_per_ip),
                login_account: Limiter::new(config.login_per_account),
                reset_ip: Limiter::new(config.reset_per_ip),
                reset_account: Limiter::new(config.reset_per_account),
                refresh_ip: Limiter::new(config.refresh_per_ip),
                refresh_account: Limiter::new(config.refresh_per_account),
                anonymous_ip: Limiter::new(config.anonymous_per_ip),
                email_account: Limiter::new(config.email_per_account),
            }),
        }
    }

    /// Counts one request from this IP; `Err(RateLimited)` when over the limit.
    pub fn check_ip(&self, action: Action, ip: &str) -> Result<(), AuthError> {
        let i = &self.inner;
        let limiter = match action {
            Action::Signup => &i.signup_ip,
            Action::Login => &i.login_ip,
            Action::Reset => &i.reset_ip,
            Action::Refresh => &i.refresh_ip,
            Action::Anonymous => &i.anonymous_ip,
            Action::Email => &None,
        };
        limiter.as_ref().map_or(Ok(()), |l| l.check(ip))
    }

    /// Counts one request for this account (normalized email or uid).
    pub fn check_account(&self, action: Action, account: &str) -> Result<(), AuthError> {
        let i = &self.inner;
        let limiter = match action {
            Action::Login => &i.login_account,
            Action::Reset => &i.reset_account,
            Action::Refresh => &i.refresh_account,
            Action::Email => &i.email_account,
            Action::Signup | Action::Anonymous => &None,
        };
        limiter.as_ref().map_or(Ok(()), |l| l.check(account))
    }

    /// Forgets keys whose buckets are full again (bounds memory).
    pub fn retain_recent(&self) {
        let i = &self.inner;
        for l in [
            &i.signup_ip,
            &i.login_ip,
            &i.login_account,
            &i.reset_ip,
            &i.reset_account,
            &i.refresh_ip,
            &i.refresh_account,
            &i.anonymous_ip,
            &i.email_account,
        ]
        .into_iter()
        .flatten()
        {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_trips_after_burst_with_a_positive_retry_after() {
        let mut config = RateLimitConfig::disabled();
        config.login_per_ip = Some(Rate::new(3, Duration::from_secs(60)));
        let limiter = RateLimiter::new(&config);
        for _ in 0..3 {
            limiter.check_ip(Action::Login, "1.2.3.4").unwrap();
        }
        match limiter.check_ip(Action::Login, "1.2.3.4") {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Other keys and other actions are independent.
        limiter.check_ip(Action::Login, "5.6.7.8").unwrap();
        limiter.check_ip(Action::Signup, "1.2.3.4").unwrap();
    }

    #[test]
    fn disabled_limits_never_trip() {
        let limiter = RateLimiter::new(&RateLimitConfig::disabled());
        for _ in 0..1000 {
            limiter.check_account(Action::Login, "a@b.c").unwrap();
        }
    }
}
