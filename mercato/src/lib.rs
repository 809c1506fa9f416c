//! The Mercato binary's library: how services are put together into a running system.
//! `mercato up`, `mercato serve` and the scenario tests all start services through [`stack`];
//! `mercato load` and `mercato audit` ([`load`], [`audit`]) are clients of a running shop
//! ([`shop`]).

pub mod audit;
pub mod ceilings;
pub mod load;
pub mod shop;
pub mod stack;
