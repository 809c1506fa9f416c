//! The Mercato binary's library: how services are put together into a running system.
//! `mercato up`, `mercato serve` and the scenario tests all start services through [`stack`];
//! `mercato load` and `mercato audit` ([`load`], [`audit`]) are clients of a running shop
//! ([`shop`]).

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod ceilings;
pub mod load;
pub mod shop;
pub mod stack;
