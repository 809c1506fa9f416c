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

/// How failed sign-ins are limited (OWASP's authentication guidance: no lock a stranger can
/// set off, limits on what one address may try, and delays that grow for an account under
/// attack).
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLimits {
    /// Failures are counted over this window.
    pub window: Duration,
    /// Failures one address may make on one account; past them that address waits for the
    /// window (429). Also how many failures an account takes before its delay starts.
    pub per_account_address: usize,
    /// Failures one address may make on any accounts (password spraying).
    pub per_address: usize,
    /// The longest an account's growing delay gets.
    pub max_delay: Duration,
}

/// Failed-login throttling, in memory (each auth replica keeps its own).
///
/// - An address that failed `per_account_address` times on an account, or `per_address`
///   times in all, waits out the window: it is the one guessing.
/// - An account that failed more than `per_account_address` times in the window, from
///   anywhere, is slowed rather than locked: each further attempt from an address it was
///   never signed in from must come at least a growing delay (1 s, 2 s, 4 s ... up to
///   `max_delay`) after the last failure. Addresses the account signed in from before pass
///   without delay, so strangers' failures cannot keep the owner out; a new address of the
///   owner's waits at most `max_delay`.
/// - A correct password is never refused for what others did: only for its own address's
///   failures.
pub struct Throttle {
    limits: ThrottleLimits,
    failures: HashMap<String, VecDeque<Instant>>,
    /// Account → addresses it signed in from, with when (most recent last).
    known: HashMap<String, VecDeque<(String, Instant)>>,
}

/// How many addresses are remembered per account, and for how long.
const KNOWN_ADDRESSES: usize = 8;
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);
/// Above this many keys, whoever is past the window is forgotten (a spray of distinct keys
/// must not grow memory without bound).
const MAX_KEYS: usize = 100_000;

impl Throttle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Throttle {
            limits,
            failures: HashMap::new(),
            known: HashMap::new(),
        }
    }

    fn recent(&mut self, key: &str, now: Instant) -> Option<&VecDeque<Instant>> {
        let window = self.limits.window;
        let q = self.failures.get_mut(key)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        Some(&*q)
    }

    /// Seconds until the oldest of `key`'s failures leaves the window, when it has `max`.
    fn over(&mut self, key: &str, max: usize, now: Instant) -> Option<u64> {
        let window = self.limits.window;
        let q = self.recent(key, now)?;
        let oldest = *q.front()?;
        (q.len() >= max).then(|| secs(window.saturating_sub(now.duration_since(oldest))))
    }

    /// `Some(seconds to wait)` when `address` has used up its failures on any accounts
    /// (registration checks this too: an email found taken counts as a failure).
    pub fn address_blocked(&mut self, address: &str, now: Instant) -> Option<u64> {
        let max = self.limits.per_address;
        self.over(&format!("ip:{address}"), max, now)
    }

    /// A failure of `address` that is about no account in particular (a registration that
    /// found its email taken).
    pub fn fail_address(&mut self, address: &str, now: Instant) {
        self.failures
            .entry(format!("ip:{address}"))
            .or_default()
            .push_back(now);
    }

    /// `Some(seconds to wait)` when this attempt must not be tried now.
    pub fn blocked(&mut self, account: &str, address: &str, now: Instant) -> Option<u64> {
        let l = self.limits;
        if let Some(wait) = self.over(&format!("ip:{address}"), l.per_address, now) {
            return Some(wait);
        }
        let pair = format!("acct:{account}|ip:{address}");
        if let Some(wait) = self.over(&pair, l.per_account_address, now) {
            return Some(wait);
        }
        if self.is_known(account, address, now) {
            return None;
        }
        let q = self.recent(&format!("acct:{account}"), now)?;
        let beyond = q.len().checked_sub(l.per_account_address)?;
        let last = *q.back()?;
        let delay = Duration::from_secs(1u64 << beyond.min(20)).min(l.max_delay);
        let ready = last + delay;
        (now < ready).then(|| secs(ready - now))
    }

    fn is_known(&self, account: &str, address: &str, now: Instant) -> bool {
        self.known.get(account).is_some_and(|list| {
            list.iter()
                .any(|(a, at)| a == address && now.duration_since(*at) < KNOWN_FOR)
        })
    }

    pub fn fail(&mut self, account: &str, address: &str, now: Instant) {
        if self.failures.len() > MAX_KEYS {
            let window = self.limits.window;
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for key in [
            format!("acct:{account}"),
            format!("ip:{address}"),
            format!("acct:{account}|ip:{address}"),
        ] {
            self.failures.entry(key).or_default().push_back(now);
        }
    }

    /// A correct password from `address`: its own failures on the account are forgotten
    /// and the address is remembered as the account's. The account's count stays: whoever
    /// else is guessing is still slowed.
    pub fn succeed(&mut self, account: &str, address: &str, now: Instant) {
        self.failures
            .remove(&format!("acct:{account}|ip:{address}"));
        if self.known.len() > MAX_KEYS {
            self.known.retain(|_, l| {
                l.back()
                    .is_some_and(|(_, at)| now.duration_since(*at) < KNOWN_FOR)
            });
        }
        let list = self.known.entry(account.to_owned()).or_default();
        list.retain(|(a, _)| a != address);
        list.push_back((address.to_owned(), now));
        while list.len() > KNOWN_ADDRESSES {
            list.pop_front();
        }
    }
}

/// A wait in whole seconds, at least one (what Retry-After carries).
fn secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
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

    fn throttle() -> Throttle {
        Throttle::new(ThrottleLimits {
            window: Duration::from_secs(60),
            per_account_address: 3,
            per_address: 10,
            max_delay: Duration::from_secs(30),
        })
    }

    #[test]
    fn an_address_that_keeps_failing_waits_out_the_window() {
        let mut th = throttle();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(th.blocked("ann", "1.1.1.1", t0).is_none());
            th.fail("ann", "1.1.1.1", t0 + Duration::from_secs(i));
        }
        // The address that failed three times on ann waits until its oldest failure is gone,
        // whether or not its next password would be right.
        assert_eq!(
            th.blocked("ann", "1.1.1.1", t0 + Duration::from_secs(10)),
            Some(50)
        );
        assert!(th
            .blocked("ann", "1.1.1.1", t0 + Duration::from_secs(61))
            .is_none());
        // Another account from that address is not affected by ann's failures.
        assert!(th
            .blocked("bob", "1.1.1.1", t0 + Duration::from_secs(10))
            .is_none());
    }

    #[test]
    fn strangers_failing_slow_the_account_but_never_keep_its_owner_out() {
        let mut th = throttle();
        let t0 = Instant::now();
        th.succeed("ann", "9.9.9.9", t0);
        // Eight strangers, one failure each.
        let mut refused = 0;
        for i in 0..8 {
            let stranger = format!("10.0.0.{i}");
            let at = t0 + Duration::from_millis(100 * i);
            match th.blocked("ann", &stranger, at) {
                Some(_) => refused += 1,
                None => th.fail("ann", &stranger, at),
            }
        }
        assert!(
            refused > 0,
            "past three failures, new addresses are made to wait"
        );
        let after = t0 + Duration::from_secs(1);
        // The owner's usual address passes at once.
        assert_eq!(th.blocked("ann", "9.9.9.9", after), None);
        // From a new address the owner is delayed, never by more than the cap.
        let wait = th.blocked("ann", "8.8.8.8", after).expect("a delay");
        assert!((1..=30).contains(&wait), "{wait}");
        // The delay grows with every failure and stops at the cap.
        for i in 0..30 {
            let at = after + Duration::from_millis(500 * i);
            th.fail("ann", &format!("11.0.0.{i}"), at);
        }
        let wait = th
            .blocked("ann", "8.8.8.8", after + Duration::from_millis(500 * 29))
            .expect("a delay");
        assert_eq!(wait, 30);
    }

    #[test]
    fn one_address_spraying_many_accounts_is_stopped() {
        let mut th = throttle();
        let t0 = Instant::now();
        for i in 0..10 {
            th.fail(&format!("user{i}"), "6.6.6.6", t0);
        }
        assert!(th.blocked("someone-else", "6.6.6.6", t0).is_some());
        assert!(th.blocked("someone-else", "7.7.7.7", t0).is_none());
    }

    #[test]
    fn success_forgets_only_its_own_failures() {
        let mut th = throttle();
        let t0 = Instant::now();
        for i in 0..2 {
            th.fail("ann", "1.1.1.1", t0 + Duration::from_secs(i));
        }
        th.succeed("ann", "1.1.1.1", t0 + Duration::from_secs(3));
        for i in 0..2 {
            assert!(th
                .blocked("ann", "1.1.1.1", t0 + Duration::from_secs(4))
                .is_none());
            th.fail("ann", "1.1.1.1", t0 + Duration::from_secs(4 + i));
        }
    }
}
