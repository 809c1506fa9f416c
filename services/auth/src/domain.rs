//! The rules of accounts, free of HTTP and SQL: what an email and a password must be, who may
//! change whose role, what presenting a refresh token means, and when to throttle logins.

use mercato_kit::auth::Role;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// An email address, trimmed and lower-cased. Checked for shape only; ownership would need a
/// confirmation mail, which is out of scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Email {
    type Error = String;
    fn try_from(raw: &str) -> Result<Self, String> {
        let e = raw.trim().to_lowercase();
        const BAD: &str = "must be an email address like name@example.com";
        if e.is_empty() || e.len() > 254 {
            return Err(BAD.into());
        }
        // ASCII only: internationalised addresses (RFC 6531) are rare and many mail systems
        // on the way would refuse them; an IDN domain can still be given in punycode.
        if !e.is_ascii()
            || e.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '<' | '>' | '(' | ')' | ',' | ';' | '"' | '\\')
            })
        {
            return Err(BAD.into());
        }
        let Some((local, domain)) = e.rsplit_once('@') else {
            return Err(BAD.into());
        };
        let labels_ok = domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || !domain.contains('.')
            || !labels_ok
        {
            return Err(BAD.into());
        }
        Ok(Email(e))
    }
}

/// A few passwords too common to allow whatever their length.
const COMMON: &[&str] = &[
    "password123",
    "password1234",
    "1234567890",
    "qwertyuiop",
    "iloveyou123",
    "letmein1234",
    "welcome1234",
    "administrator",
    "passw0rd123",
    "abcdefghij",
    "0123456789",
    "qwerty12345",
];

pub const PASSWORD_MIN: usize = 10;
pub const PASSWORD_MAX: usize = 128;

/// The password policy: 10 to 128 characters, at least two kinds of character (letters,
/// digits, others), not a well-known password, and not built from the email's name part.
pub fn check_password(password: &str, email: Option<&Email>) -> Result<(), String> {
    let n = password.chars().count();
    if n < PASSWORD_MIN {
        return Err(format!("must be at least {PASSWORD_MIN} characters"));
    }
    if n > PASSWORD_MAX {
        return Err(format!("must be at most {PASSWORD_MAX} characters"));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    let letters = password.chars().any(|c| c.is_alphabetic());
    let digits = password.chars().any(|c| c.is_numeric());
    let others = password.chars().any(|c| !c.is_alphanumeric());
    if [letters, digits, others].iter().filter(|b| **b).count() < 2 {
        return Err("must mix at least two of letters, digits and symbols".into());
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("is too common".into());
    }
    if let Some(local) = email.and_then(|e| e.as_str().split('@').next()) {
        if local.len() >= 4 && lower.contains(local) {
            return Err("must not contain your email address".into());
        }
    }
    Ok(())
}

/// Whether an actor whose account has the role `actor_role` now (`None`: no such account)
/// may give `target` the role `new_role`.
pub fn may_change_role(
    actor_role: Option<Role>,
    target_is_actor: bool,
    new_role: Role,
) -> Result<(), String> {
    if actor_role != Some(Role::Admin) {
        return Err("only an admin changes roles".into());
    }
    if new_role == Role::Service {
        return Err("SERVICE is not a role a user can have".into());
    }
    // Not even to ADMIN: an admin demoting itself could leave the shop with no admin, and a
    // token that outlived a demotion must not be able to undo it.
    if target_is_actor {
        return Err("an admin cannot change its own role".into());
    }
    Ok(())
}

/// A stored refresh token as the rules need to see it.
#[derive(Clone, Debug)]
pub struct RefreshState {
    pub expires_at: i64,
    pub used: bool,
    pub revoked: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Valid: spend it and issue the next token of the family.
    Rotate,
    /// Already spent: someone replayed it, so the whole family is revoked.
    ReuseDetected,
    Revoked,
    Expired,
}

pub fn refresh_decision(t: &RefreshState, now_us: i64) -> RefreshDecision {
    if t.revoked {
        RefreshDecision::Revoked
    } else if t.used {
        RefreshDecision::ReuseDetected
    } else if t.expires_at <= now_us {
        RefreshDecision::Expired
    } else {
        RefreshDecision::Rotate
    }
}

/// Failed-login throttling: at most `max` failures per key within `window`. Keys are an
/// account (`acct:<email>`) or a client address (`ip:<addr>`), each with its own limit.
pub struct Throttle {
    window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Throttle {
    pub fn new(window: Duration) -> Self {
        Throttle {
            window,
            failures: HashMap::new(),
        }
    }

    /// `Some(seconds to wait)` when `key` has used up its `max` failures.
    pub fn blocked(&mut self, key: &str, max: usize, now: Instant) -> Option<u64> {
        let q = self.failures.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= max {
            let oldest = *q.front()?;
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            Some(wait.as_secs().max(1))
        } else {
            None
        }
    }

    pub fn fail(&mut self, key: &str, now: Instant) {
        if self.failures.len() > 100_000 {
            // Bound memory under a spray of distinct keys: forget whoever is past the window.
            let window = self.window;
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        self.failures
            .entry(key.to_owned())
            .or_default()
            .push_back(now);
    }

    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::try_from("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@-x.com",
            "a\0@example.com",
            "ada@example..com",
            "<script>@x.com",
            "emoji😀@example.com",
        ] {
            assert!(Email::try_from(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::try_from(&*format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn password_policy() {
        let email = Email::try_from("casey@example.com").unwrap();
        assert!(check_password("Correct-horse-42", Some(&email)).is_ok());
        assert!(check_password("short1!", None).is_err());
        assert!(check_password("onlyletterslong", None).is_err());
        assert!(
            check_password("Password123", None).is_err(),
            "common, case-insensitive"
        );
        assert!(check_password("casey-rules-2026", Some(&email)).is_err());
        assert!(check_password(&"a1".repeat(65), None).is_err());
        assert!(check_password("emoji😀😀😀😀😀1", None).is_ok());
        assert!(check_password("with\0nul-123", None).is_err());
    }

    proptest! {
        #[test]
        fn short_passwords_are_always_refused(p in ".{0,9}") {
            prop_assert!(check_password(&p, None).is_err());
        }
    }

    #[test]
    fn role_changes() {
        let admin = Some(Role::Admin);
        assert!(may_change_role(admin, false, Role::Seller).is_ok());
        assert!(may_change_role(admin, false, Role::Admin).is_ok());
        assert!(may_change_role(admin, true, Role::Customer).is_err());
        assert!(
            may_change_role(admin, true, Role::Admin).is_err(),
            "not even to the role it has"
        );
        assert!(may_change_role(admin, false, Role::Service).is_err());
        assert!(may_change_role(Some(Role::Seller), false, Role::Seller).is_err());
        assert!(
            may_change_role(None, false, Role::Seller).is_err(),
            "an account that no longer exists has no authority"
        );
    }

    #[test]
    fn refresh_decisions() {
        let t = |used, revoked, expires_at| RefreshState {
            expires_at,
            used,
            revoked,
        };
        assert_eq!(
            refresh_decision(&t(false, false, 100), 50),
            RefreshDecision::Rotate
        );
        assert_eq!(
            refresh_decision(&t(true, false, 100), 50),
            RefreshDecision::ReuseDetected
        );
        assert_eq!(
            refresh_decision(&t(true, true, 100), 50),
            RefreshDecision::Revoked
        );
        assert_eq!(
            refresh_decision(&t(false, false, 100), 100),
            RefreshDecision::Expired
        );
    }

    #[test]
    fn throttle_blocks_after_max_and_recovers_after_window() {
        let mut th = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(th.blocked("acct:a", 3, t0).is_none());
            th.fail("acct:a", t0 + Duration::from_secs(i));
        }
        let wait = th
            .blocked("acct:a", 3, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(wait, 50);
        assert!(
            th.blocked("acct:b", 3, t0).is_none(),
            "keys are independent"
        );
        assert!(th
            .blocked("acct:a", 3, t0 + Duration::from_secs(61))
            .is_none());
        th.fail("acct:a", t0);
        th.clear("acct:a");
        assert!(th.blocked("acct:a", 1, t0).is_none());
    }
}
