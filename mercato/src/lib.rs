//! The Mercato binary's library: how services are put together into a running system.
//! `mercato up`, `mercato serve` and the scenario tests all start services through [`stack`].

pub mod load;
pub mod stack;
